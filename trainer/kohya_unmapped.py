"""Why a kohya_ss key did not become a LoRA Loom setting: the tables of known keys and the explanation for
each, so an import report can say, key by key, what was left out and whether anything was lost by it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Unmapped:
    """A key of the kohya file that did not become a LoRA Loom setting, and why.

    ``neutral``: its value is kohya_ss's off/default value, so leaving it out changes nothing.
    """

    key: str
    value: Any
    reason: str
    neutral: bool = False


FAMILY_KEY_PREFIXES = {"flux1_": "Flux.1", "sd3_": "SD3", "hunyuan_": "HunyuanImage-2.1",
                       "anima_": "Anima", "lumina_": "Lumina", "ggpo_": "Flux.1", "train_lora_ggpo": "Flux.1",
                       "t5xxl": "Flux.1/SD3", "clip_l": "Flux.1/SD3", "clip_g": "SD3"}
# Keys with a specific explanation; anything else that is not ours is "not a LoRA Loom setting".
EXPLAINED_KEYS = {
    "model_list": "a hidden kohya_ss GUI field, not a setting",
    "save_as_bool": "a kohya_ss GUI field that leaked into saved files, not a setting",
    "use_8bit_adam": "an old kohya_ss flag, used only in files without the optimizer setting",
    "use_wandb": "an old kohya_ss flag, used only in files without the log_with setting",
    "train_inpainting": "LoRA Loom trains 4-channel UNets only (9-channel inpainting models are refused)",
    "sdxl": "marks an SDXL config; LoRA Loom reads the model family from the checkpoint's weights, so the "
            "flag is not needed",
    "sdxl_no_half_vae": "LoRA Loom always keeps an SDXL model's VAE in fp32 (its fp16 VAE overflows)",
    "sdxl_cache_text_encoder_outputs": "LoRA Loom caches text encoder outputs by itself whenever the text "
                                       "encoders are not trained",
}
# Keys whose meaning LoRA Loom applies by itself, whatever their value: leaving them out loses nothing.
SELF_APPLIED_KEYS = frozenset({"sdxl", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs"})
UNSUPPORTED_FEATURES = frozenset({
    "scale_weight_norms", "network_dropout", "rank_dropout", "module_dropout", "fp8_base_unet",
    "lowvram",
    "LyCORIS_preset", "factor", "bypass_mode", "dora_wd", "use_cp", "use_tucker", "use_scalar", "rank_dropout_scale",
    "constrain", "rescaled", "train_norm", "decompose_both", "train_on_input", "blocks_to_swap", "caption_separator",
    "token_warmup_step",
})
# kohya_ss defaults that mean "off" beyond the plain False / "" / 0 (so nothing is lost by leaving them out).
NEUTRAL_KOHYA_VALUES = {"max_timestep": 1000, "factor": -1, "train_on_input": True, "LyCORIS_preset": "full",
                        "save_model_as": "safetensors", "model_list": "custom", "loss_type": "l2",
                        "huber_schedule": "snr", "huber_c": 0.1, "huber_scale": 1.0, "ggpo_sigma": 0.03,
                        "ggpo_beta": 0.01}
def is_neutral(key: str, raw: Any) -> bool:
    """Whether leaving this key out loses nothing: off, blank or zero, kohya_ss's own default for the key,
    or something LoRA Loom applies by itself."""
    if key in SELF_APPLIED_KEYS or raw is None or raw is False:
        return True
    if isinstance(raw, str) and raw.strip() in ("", "0", "0.0"):
        return True
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == 0:
        return True
    if key not in NEUTRAL_KOHYA_VALUES:
        return False
    expected = NEUTRAL_KOHYA_VALUES[key]
    try:
        return raw == expected or (not isinstance(raw, bool) and float(str(raw).strip()) == float(str(expected)))
    except (TypeError, ValueError):
        return False


def _explanation(key: str) -> str:
    if key in EXPLAINED_KEYS:
        return EXPLAINED_KEYS[key]
    for prefix, family in FAMILY_KEY_PREFIXES.items():
        if key.startswith(prefix):
            return f"an option of the {family} model family, which LoRA Loom does not support yet"
    if key.startswith("sdxl_"):
        return "an SDXL option LoRA Loom does not have"
    if key.startswith("huggingface_") or key in ("save_state_to_huggingface", "resume_from_huggingface",
                                                 "async_upload"):
        return "uploading to Hugging Face, which LoRA Loom does not do (nothing leaves this machine)"
    if key.startswith("metadata_"):
        return "a LoRA metadata field LoRA Loom does not support yet"
    if key in UNSUPPORTED_FEATURES:
        return "a kohya_ss feature LoRA Loom does not support yet"
    return "not a LoRA Loom setting"


def explain_unmapped(key: str, raw: Any) -> Unmapped:
    """Why a kohya_ss key that is not one of our settings is not imported."""
    neutral = is_neutral(key, raw)
    if key in SELF_APPLIED_KEYS:
        tail = "nothing is lost"
    else:
        tail = "kohya_ss's off/default value here, so nothing is lost" if neutral else "this value is not used"
    return Unmapped(key, raw, f"{_explanation(key)}; {tail}", neutral)
