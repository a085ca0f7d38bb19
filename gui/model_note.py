"""The note beside the base model field: what the chosen file or folder is, before anything starts.

``trainer.models.detect.inspect_model`` reads only a ``.safetensors`` header or a diffusers folder's configs,
so the note is cheap enough to redo on every edit and never imports torch. It suggests ``v2`` and
``v_parameterization`` when the weights point that way; it never changes a setting itself.
"""
from __future__ import annotations

from pathlib import Path

from trainer.models.detect import FAMILY_NAMES, ModelFileError, ModelInfo, inspect_model

MODEL_KEY = "pretrained_model_name_or_path"


def model_note(path: str, v2: bool = False, v_parameterization: bool = False) -> str:
    """Markdown for the note: the model's family, or why it cannot be trained on, plus any suggestion."""
    if not path or not str(path).strip():
        return "Choose the base model: a single `.safetensors` / `.ckpt` file or a diffusers folder."
    try:
        info = inspect_model(str(path).strip())
    except ModelFileError as error:
        return f"❌ {error}"
    if info.kind == "checkpoint" and info.family is None:  # a pickle: reading its names needs torch
        return (f"ℹ️ Model: a pickled checkpoint ({Path(info.path).suffix}); its family is checked when "
                "training starts.")
    if not info.trainable:
        return (f"❌ {Path(info.path).name} is {info.summary()}. Choose a full Stable Diffusion "
                "checkpoint (one file) or a diffusers folder as the base model.")
    return "\n\n".join([f"✅ Model: {info.summary()}.", "\n".join(suggestions(info, v2, v_parameterization))]).strip()


def suggestions(info: ModelInfo, v2: bool, v_parameterization: bool) -> list[str]:
    """Lines suggesting settings the weights point to (shown, never applied)."""
    lines = []
    if info.family == "sd2" and not v2:
        lines.append("- 💡 Its weights say SD2.x, and **SD2.x model** (`v2`) is off. The family is detected "
                     "either way; turn `v2` on to make the run insist on an SD2.x model, as kohya_ss does.")
    if info.family != "sd2" and v2:
        lines.append(f"- ⚠️ **SD2.x model** (`v2`) is on, but the weights say {FAMILY_NAMES.get(info.family or '', 'another family')}: "
                     "the run will refuse this model. Clear `v2` or choose an SD2.x model.")
    if info.v_prediction and not v_parameterization:
        lines.append("- ℹ️ The model declares v-prediction; it is used even with **v-parameterization** off.")
    elif info.suggest_v_parameterization and not v_parameterization:
        lines.append("- 💡 This looks like an SD2.x 768-v model: consider turning on **v-parameterization** "
                     "(`v_parameterization`). It is not turned on for you.")
    return lines
