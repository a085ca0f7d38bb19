"""Loading a saved LoRA file back the way LyCORIS's own loader does, and a UNet output to compare.

LyCORIS's ``create_network_from_weights`` finds each file module by ``lora_unet_`` + the model's module path;
an SDXL file carries SGM paths (as sd-scripts' SDXL UNet names them, and as ComfyUI/A1111 read them), so the
map from kohya names to layers is built here with the project's naming, and each module is then made exactly
as LyCORIS's loader makes it (``get_module`` + ``make_module`` + ``apply_to``). For SD1 the plain LyCORIS
loader is used as well (``load_sd1_with_lycoris_kohya``).
"""
from __future__ import annotations

import torch

from trainer.models.ldm_layout import UNetLayout
from trainer.network.sdxl_blocks import is_sdxl_unet, sgm_module_path
from trainer.network.targets import (
    UNET_PREFIX, kohya_name, text_encoder_module_path_for_kohya, text_encoder_prefixes,
)


def kohya_name_map(unet, text_encoders) -> dict[str, torch.nn.Module]:
    """kohya name → layer, for every Linear / Conv2d / norm layer of the UNet and the text encoders."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    layout = UNetLayout.from_config(unet.config) if is_sdxl_unet(unet) else None
    names = {}
    for path, module in unet.named_modules():
        if isinstance(module, kinds):
            try:
                kohya_path = sgm_module_path(path, layout) if layout else path
            except (KeyError, ValueError):
                continue
            names[kohya_name(UNET_PREFIX, kohya_path)] = module
    for prefix, encoder in zip(text_encoder_prefixes(len(text_encoders)), text_encoders):
        for path, module in encoder.named_modules():
            if isinstance(module, kinds):
                names[kohya_name(prefix, text_encoder_module_path_for_kohya(path, encoder))] = module
    return names


def _make(module_class, params, name: str, layer):
    from lycoris.modules import IA3Module, make_module

    if module_class is IA3Module:
        # LyCORIS 4.1.3's IA3 loader passes on_input to a constructor that does not take it (a TypeError);
        # ComfyUI reads on_input. Build the module as the file says (its own class, its own load).
        weight, on_input = params
        module = IA3Module(name, layer, 1.0, train_on_input=bool(on_input))
        module.weight.data.copy_(weight)
        return module
    return make_module(module_class, params, name, layer)


def load_with_lycoris(tensors: dict[str, torch.Tensor], unet, text_encoders) -> list:
    """Apply every module of a LoRA file onto (fresh) models as LyCORIS's loader does; returns the modules.
    Every module of the file must find its layer and a LyCORIS algorithm."""
    from lycoris.modules import get_module

    layers = kohya_name_map(unet, text_encoders)
    file_modules = sorted({key.split(".", 1)[0] for key in tensors})
    missing = [name for name in file_modules if name not in layers]
    assert not missing, f"no layer for {missing[:5]}"
    modules = []
    for name in file_modules:
        module_class, params = get_module(tensors, name)
        assert module_class is not None, f"LyCORIS recognises no algorithm in {name}"
        module = _make(module_class, params, name, layers[name])
        module.to(next(layers[name].parameters()).device)
        module.apply_to()
        module.eval()
        modules.append(module)
    return modules


def fixed_unet_output(unet, seed: int = 7) -> torch.Tensor:
    """The UNet's prediction on one fixed input (SDXL with its added conditions), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    channels = unet.config.in_channels
    cross = unet.config.cross_attention_dim
    latents = torch.randn(1, channels, 16, 16, generator=generator)
    states = torch.randn(1, 8, cross, generator=generator)
    extra = {}
    if is_sdxl_unet(unet):
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled_dim, generator=generator),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}}
    dtype = next(unet.parameters()).dtype
    was_training = unet.training
    unet.eval()
    with torch.no_grad():
        out = unet(latents.to(dtype), torch.tensor([500]), states.to(dtype), **extra).sample.float()
    unet.train(was_training)
    return out
