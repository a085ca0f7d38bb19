"""LoRA networks and the kohya-format LoRA file.

Public API (what the training loop and the GUI call):

    NetworkConfig(lora_type="Standard"|"LoCon"|"LoHa"|"DyLoRA", dim, alpha, conv_dim, conv_alpha, unit,
                  train_unet, train_text_encoder, block_dims, block_alphas, conv_block_dims,
                  conv_block_alphas, block_lr_weights, seed, family)
    apply_network(unet, text_encoders, config) -> LoraNetwork
        .param_groups(unet_lr, text_encoder_lr) -> [{"name", "params", "lr"}, …]
        .kohya_state_dict(dtype=None) / .load_kohya_state_dict(tensors)
        .set_text_encoder_trainable(bool) / .trainable_parameters() / .metadata() / .module_names(part)
    save_lora_file(path, tensors, metadata) -> Path     (atomic, adds sshs hashes)
    read_lora_file(path) -> (tensors, metadata)
    block_index(module_name) -> 0..24, describe_blocks(unet) -> {"IN00": [paths], …}, BLOCK_LABELS
    (SDXL: sdxl_blocks.sdxl_block_index -> 0..22, SDXL_BLOCK_LABELS; blocks.block_labels(family))
    network_config_from_job(job, seed=0, family="sd1") -> NetworkConfig   (trainer.network.from_job)

Modules: targets (which modules, kohya names), blocks (the block table), sdxl_blocks (SDXL's SGM
names and 23-block table), config (settings and
metadata), module_plan (rank/alpha per module), adapters (injection, LoraNetwork), kohya_keys
(adapter ↔ kohya keys), dylora (our DyLoRA module), lora_file (save/load, hashes), from_job.
"""
from trainer.network.adapters import LoraNetwork, apply_network
from trainer.network.blocks import BLOCK_COUNT, BLOCK_LABELS, block_index, describe_blocks
from trainer.network.config import LORA_TYPES, NetworkConfig
from trainer.network.lora_file import read_lora_file, save_lora_file, sshs_hashes

__all__ = [
    "BLOCK_COUNT",
    "BLOCK_LABELS",
    "LORA_TYPES",
    "LoraNetwork",
    "NetworkConfig",
    "apply_network",
    "block_index",
    "describe_blocks",
    "read_lora_file",
    "save_lora_file",
    "sshs_hashes",
]
