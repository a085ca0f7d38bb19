"""What a model file or folder is, from its parameter names and shapes alone: fast and torch-free.

``inspect_model(path)`` reads only a ``.safetensors`` header (8-byte little-endian length + JSON), or a
diffusers folder's config files, and answers: a full checkpoint (and its family sd1 / sd2 / sdxl), a LoRA,
a VAE, or something else, with a sentence a person can act on. The page calls it before a run starts;
``python -m trainer.models.detect PATH`` prints the same as JSON. A ``.ckpt`` is a pickle: reading its
names needs torch, so it is only looked into when ``allow_torch`` is True (the trainer does so).

Family rules (the text encoder's layout is the surest sign):
  SD1.x  ``cond_stage_model.transformer.…`` (OpenAI CLIP ViT-L in transformers' layout)
  SD2.x  ``cond_stage_model.model.…`` (OpenCLIP ViT-H, fused attention)
  SDXL   ``conditioner.embedders.1.model.…`` (a second, OpenCLIP bigG encoder) and ``label_emb`` in the UNet
"""
from __future__ import annotations

import json
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.models.errors import ModelLoadError

UNET_PREFIX = "model.diffusion_model."
MAX_HEADER_BYTES = 100 * 1024 * 1024
LORA_MARKERS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", ".lora_down.", ".lora_A.", ".hada_w1_a", "lora_up")
V_PREDICTION_NORM_KEY = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "Stable Diffusion XL"}


class ModelFileError(ModelLoadError):
    """The file cannot be read as a model (missing, truncated, corrupt); the message names the file."""


@dataclass
class ModelInfo:
    """What ``inspect_model`` found. ``kind``: checkpoint | diffusers_folder | lora | vae | unknown."""

    path: str
    kind: str
    family: str | None = None
    v_prediction: bool | None = None  # declared by the file (metadata / scheduler config); None: not said
    suggest_v_parameterization: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> bool:
        return self.kind in ("checkpoint", "diffusers_folder") and self.family is not None

    def summary(self) -> str:
        """One line for the page: the family, or why this file cannot be trained on."""
        if self.trainable:
            text = f"{FAMILY_NAMES[self.family or '']} ({'diffusers folder' if self.kind == 'diffusers_folder' else 'single file'})"
            if self.v_prediction or self.suggest_v_parameterization:
                text += ", v-prediction" + ("" if self.v_prediction else " suggested")
        elif self.kind == "checkpoint":
            text = "a pickled checkpoint (its family is checked when training starts)"
        else:
            text = {"lora": "a LoRA file, not a base model", "vae": "a VAE file, not a base model"}.get(
                self.kind, "not a Stable Diffusion checkpoint this app can train on")
        return "; ".join([text, *self.notes])


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """({tensor name: {"dtype", "shape", "data_offsets"}}, metadata) of a .safetensors file, validated."""
    try:
        with path.open("rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) < 8:
                raise ModelFileError(f"{path} is empty or truncated (no safetensors header)")
            (header_size,) = struct.unpack("<Q", size_bytes)
            if header_size > MAX_HEADER_BYTES:
                raise ModelFileError(f"{path} is not a valid .safetensors file (header size {header_size})")
            header = json.loads(handle.read(header_size).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path} is not a valid .safetensors file: {error}") from error
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a valid .safetensors file (header is not a table)")
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if path.stat().st_size < 8 + header_size + data_end:
        raise ModelFileError(f"{path} is truncated: the header promises {data_end} bytes of tensors "
                             "that are not in the file (an interrupted download?)")
    return header, metadata


def family_from_names(names) -> str | None:
    """'sd1' | 'sd2' | 'sdxl' for a full checkpoint in the original layout, else None."""
    names = list(names)
    has_unet = any(name.startswith(UNET_PREFIX) for name in names)
    if not has_unet:
        return None
    if any(name.startswith("conditioner.embedders.1.model.") for name in names):
        return "sdxl" if any(name.startswith("conditioner.embedders.0.transformer.") for name in names) else None
    if any(name.startswith("cond_stage_model.model.") for name in names):
        return "sd2"
    if any(name.startswith("cond_stage_model.transformer.") for name in names):
        return "sd1"
    return None


def kind_from_names(names) -> str:
    """checkpoint | lora | vae | unknown from parameter names."""
    names = list(names)
    if family_from_names(names):
        return "checkpoint"
    if any(marker in name for name in names for marker in LORA_MARKERS):
        return "lora"
    stripped = [name.removeprefix("first_stage_model.") for name in names]
    if stripped and all(name.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))
                        for name in stripped):
        return "vae"
    return "unknown"


def _unknown_reason(names: list[str]) -> str:
    if not names:
        return "the file holds no tensors"
    if any(name.startswith(UNET_PREFIX) for name in names):
        if any(name.startswith("conditioner.embedders.0.model.") for name in names):
            return "an SDXL refiner (one OpenCLIP encoder) is not supported; use an SDXL base model"
        return "it has a UNet but no text encoder this app knows (SD1.x, SD2.x or SDXL expected)"
    if any(name.startswith(("down_blocks.", "mid_block.")) for name in names):
        return "it holds a diffusers UNet alone; point at the whole diffusers folder instead"
    return f"unknown parameter names (first: {names[0]!r})"


def declared_v_prediction(metadata: dict[str, str]) -> bool | None:
    """What SAI model-spec metadata says about the prediction type, when it says anything."""
    prediction = metadata.get("modelspec.prediction_type")
    if prediction in ("v", "v_prediction"):
        return True
    if prediction in ("epsilon", "eps"):
        return False
    architecture = metadata.get("modelspec.architecture", "")
    return True if architecture.endswith("-v") else None


def _std_of_tensor(path: Path, header: dict, name: str) -> float | None:
    """Population standard deviation of one small fp16/fp32 tensor, read straight from the file."""
    entry = header.get(name)
    formats = {"F16": "e", "F32": "f"}
    if entry is None or entry["dtype"] not in formats:
        return None
    start, end = entry["data_offsets"]
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + header_size + start)
        raw = handle.read(end - start)
    code = formats[entry["dtype"]]
    values = struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw)
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def suggests_sd2_v(path: Path, header: dict) -> tuple[bool, str]:
    """Does an SD2.x file look like a 768-v (v-prediction) model? A heuristic, shown as a suggestion only.

    The 768-v models' last transformer block has LayerNorm biases spread far wider (std > 0.09, the
    threshold ComfyUI uses) than the 512 epsilon models; a '768' in the file name is a second clue.
    """
    spread = _std_of_tensor(path, header, V_PREDICTION_NORM_KEY)
    if spread is not None and spread > 0.09:
        return True, "its weights look like an SD2.x 768-v model: v_parameterization suggested"
    if "768" in path.name:
        return True, "the name says 768: if this is an SD2.x 768-v model, set v_parameterization"
    return False, ""


def inspect_safetensors(path: Path) -> ModelInfo:
    header, metadata = read_safetensors_header(path)
    names = sorted(header)
    info = ModelInfo(str(path), kind_from_names(names), family_from_names(names))
    info.v_prediction = declared_v_prediction(metadata) if info.kind == "checkpoint" else None
    if info.kind == "unknown":
        info.notes.append(_unknown_reason(names))
    if info.family == "sd2" and info.v_prediction is None:
        info.suggest_v_parameterization, note = suggests_sd2_v(path, header)
        info.notes += [note] if note else []
    return info


def inspect_ckpt(path: Path) -> ModelInfo:
    """A pickled checkpoint, read with torch's safe loader (imports torch)."""
    from trainer.models.checkpoint_file import read_checkpoint  # torch only here

    tensors, _ = read_checkpoint(path)
    names = sorted(tensors)
    info = ModelInfo(str(path), kind_from_names(names), family_from_names(names))
    if info.kind == "unknown":
        info.notes.append(_unknown_reason(names))
    return info


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"Cannot read {path}: {error}") from error


def folder_family(folder: Path) -> str:
    """'sd1', 'sd2' or 'sdxl' from a diffusers folder's configs (pipeline class, UNet conditioning)."""
    index_path = folder / "model_index.json"
    pipeline_class = _read_config(index_path).get("_class_name", "") if index_path.is_file() else ""
    unet_config = _read_config(folder / "unet" / "config.json")
    if "XL" in pipeline_class or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    text_config_path = folder / "text_encoder" / "config.json"
    text_config = _read_config(text_config_path) if text_config_path.is_file() else {}
    if unet_config.get("cross_attention_dim") == 1024 or text_config.get("hidden_act") == "gelu":
        return "sd2"  # OpenCLIP encoders use exact GELU; OpenAI CLIP uses quick_gelu
    return "sd1"


def inspect_folder(folder: Path) -> ModelInfo:
    if (folder / "unet" / "config.json").is_file():
        info = ModelInfo(str(folder), "diffusers_folder", folder_family(folder))
        scheduler = folder / "scheduler" / "scheduler_config.json"
        if scheduler.is_file():
            info.v_prediction = _read_config(scheduler).get("prediction_type") == "v_prediction"
        return info
    config = folder / "config.json"
    if config.is_file() and _read_config(config).get("_class_name") == "AutoencoderKL":
        return ModelInfo(str(folder), "vae")
    return ModelInfo(str(folder), "unknown", notes=["the folder is not a diffusers model (no unet/config.json)"])


def inspect_model(path: str | Path, allow_torch: bool = False) -> ModelInfo:
    """Inspect a model file or folder; raises ModelFileError when it is missing or cannot be read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path} does not exist")
    if path.is_dir():
        return inspect_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return inspect_safetensors(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        if allow_torch:
            return inspect_ckpt(path)
        return ModelInfo(str(path), "checkpoint")
    return ModelInfo(str(path), "unknown", notes=[f"{suffix or 'no extension'}: expected .safetensors, .ckpt or a folder"])


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.models.detect PATH``: the ModelInfo as one JSON object (``error`` when unreadable)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.models.detect PATH", file=sys.stderr)
        return 2
    try:
        info = inspect_model(argv[0], allow_torch=True)
    except ModelFileError as error:
        print(json.dumps({"path": argv[0], "error": str(error)}))
        return 1
    print(json.dumps({**asdict(info), "trainable": info.trainable, "summary": info.summary()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
