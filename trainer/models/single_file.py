"""Whole single-file checkpoints (original LDM layout) ↔ diffusers / transformers models.

``ldm_state_dict(unet, vae, text_encoders, family)`` writes the original layout; ``models_from_ldm(tensors,
metadata, family)`` builds the diffusers UNet, VAE and transformers text encoders from it with configs
derived from the shapes (``ldm_configs``). Both directions use the same name tables (``ldm_layout`` and
``ldm_text``): the reading side renames every parameter of the empty target model into its LDM name and
looks that up, so a parameter the file lacks is reported by name instead of left at random init.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import partial

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trainer.models.errors import ModelLoadError
from trainer.models.ldm_configs import (
    HEADS_METADATA_KEY, declared_heads, sdxl_time_embed_dim, text_configs_from_ldm, unet_config_from_ldm,
    vae_config_from_ldm,
)
from trainer.models.ldm_layout import (
    UNET_PREFIX, VAE_PREFIX, LayoutError, UNetLayout, VaeLayout, is_vae_attention_matrix, name_map,
    unet_name_to_ldm, vae_name_to_ldm,
)
from trainer.models.ldm_text import (
    SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, SDXL_TEXT_PREFIXES, TextLayoutError, hf_clip_to_ldm, hf_to_openclip,
    ldm_to_hf_clip, openclip_to_hf,
)

FAMILIES = ("sd1", "sd2", "sdxl")
TEXT_MODEL_LEVEL = "text_model."


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ModelLoadError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def text_encoder_to_ldm(state: dict, family: str, index: int = 0) -> dict[str, torch.Tensor]:
    """One text encoder's weights in the family's original layout (CLIP as is, OpenCLIP fused)."""
    if family == "sd1":
        return hf_clip_to_ldm(state, SD1_TEXT_PREFIX)
    if family == "sd2":
        return hf_to_openclip(state, SD2_TEXT_PREFIX)
    if index == 0:
        return hf_clip_to_ldm(state, SDXL_TEXT_PREFIXES[0])
    return hf_to_openclip(_without_text_model_level(state), SDXL_TEXT_PREFIXES[1])


def _without_text_model_level(state: dict) -> dict:
    """transformers 5 keeps ``text_model.`` in CLIPTextModelWithProjection's names (not in CLIPTextModel's)."""
    return {name.removeprefix(TEXT_MODEL_LEVEL): tensor for name, tensor in state.items()}


def _with_text_model_level(state: dict) -> dict:
    """The inverse, for a CLIPTextModelWithProjection: every name but the projection under ``text_model.``."""
    return {name if name.startswith("text_projection.") else TEXT_MODEL_LEVEL + name: tensor
            for name, tensor in state.items()}


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    mapping = name_map(state, partial(unet_name_to_ldm, layout=UNetLayout.from_config(unet.config)))
    return {UNET_PREFIX + mapping[name]: tensor for name, tensor in state.items()}


def vae_to_ldm(vae: AutoencoderKL, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """The VAE in LDM names; the mid-block attention's Linear weights become 1×1 conv kernels."""
    state = vae.state_dict()
    mapping = name_map(state, partial(vae_name_to_ldm, layout=VaeLayout.from_config(vae.config)))
    return {prefix + mapping[name]: tensor[:, :, None, None] if is_vae_attention_matrix(name) else tensor
            for name, tensor in state.items()}


def ldm_state_dict(unet, vae, text_encoders: list, family: str) -> dict[str, torch.Tensor]:
    """The whole model in the original single-file layout of ``family``."""
    _check_family(family)
    tensors = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    for index, encoder in enumerate(text_encoders):
        tensors.update(text_encoder_to_ldm(encoder.state_dict(), family, index))
    return tensors


def heads_metadata(unet, text_encoders: list, vae=None) -> dict[str, str]:
    """The attention head counts, which shapes cannot tell, as safetensors metadata for our own files
    (with the GroupNorm group counts of the UNet and VAE where they are not SD's 32)."""
    config = unet.config
    heads = config.num_attention_heads or config.attention_head_dim
    levels = len(config.block_out_channels)
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * levels
    record = {"unet": heads}
    for index, encoder in enumerate(text_encoders):
        record["text_encoder" if index == 0 else "text_encoder_2"] = encoder.config.num_attention_heads
    for part, model in (("unet", unet), ("vae", vae)):
        if model is not None and model.config.norm_num_groups != 32:
            record[f"{part}_norm_groups"] = model.config.norm_num_groups
    return {HEADS_METADATA_KEY: json.dumps(record)}


class _Prefixed(Mapping):
    """The tensors under ``prefix``, named without it; a view, so a streamed file is still read lazily."""

    def __init__(self, tensors: Mapping, prefix: str):
        self.tensors, self.prefix = tensors, prefix
        self.names = [name[len(prefix):] for name in tensors if name.startswith(prefix)]

    def __contains__(self, name: object) -> bool:  # by name: Mapping's own would read the tensor
        return isinstance(name, str) and (self.prefix + name) in self.tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[self.prefix + name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class _Renamed(Mapping):
    """Target name → the LDM tensor (reshaped where the layouts differ), looked up when asked for."""

    def __init__(self, ldm: Mapping, mapping: dict[str, str], reshape=None):
        self.ldm, self.reshape = ldm, reshape
        self.mapping = {name: ldm_name for name, ldm_name in mapping.items() if ldm_name in ldm}

    def __contains__(self, name: object) -> bool:
        return name in self.mapping

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.ldm[self.mapping[name]]
        return self.reshape(name, tensor) if self.reshape else tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.mapping)

    def __len__(self) -> int:
        return len(self.mapping)


def _strip(tensors: Mapping, prefix: str) -> Mapping:
    return _Prefixed(tensors, prefix)


def _streamed(tensors: Mapping) -> bool:
    from trainer.models.streamed_file import StreamedTensors

    return isinstance(tensors, StreamedTensors) or (isinstance(tensors, _Prefixed) and _streamed(tensors.tensors))


def _fill(model: torch.nn.Module, state: Mapping, what: str, fresh: bool = False) -> torch.nn.Module:
    """Load ``state`` (target names) into an empty model, every parameter required. ``fresh``: each access
    to ``state`` reads a new tensor (a streamed file), which the model takes as it is."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise ModelLoadError(f"the checkpoint's {what} lacks {len(missing)} weights (first: {missing[0]}); "
                             "the file is incomplete or of another architecture")
    # Fresh, aligned tensors: tensors sliced out of a file buffer can take other (equally valid) SIMD paths,
    # which would make a model loaded from a file differ from the same model loaded from a folder in the
    # last bits. Copies also free the file's buffer once the caller drops it; a streamed file's tensors are
    # fresh allocations already, read one at a time, so the model's weights are never held twice.
    model.load_state_dict({name: state[name] if fresh else state[name].clone() for name in sorted(expected)},
                          strict=True, assign=True)
    return model


def _fill_from_ldm(model, ldm: Mapping, to_ldm, what: str, reshape=None) -> torch.nn.Module:
    try:
        mapping = name_map(model.state_dict(), to_ldm)
    except LayoutError as error:
        raise ModelLoadError(f"the {what} has an unexpected structure: {error}") from error
    return _fill(model, _Renamed(ldm, mapping, reshape), what, fresh=_streamed(ldm))


def unet_from_ldm(unet_tensors: Mapping, config: dict) -> UNet2DConditionModel:
    """A UNet2DConditionModel holding the LDM UNet tensors (names without ``model.diffusion_model.``)."""
    with init_empty_weights():
        unet = UNet2DConditionModel(**config)
    to_ldm = partial(unet_name_to_ldm, layout=UNetLayout.from_config(unet.config))
    return _fill_from_ldm(unet, unet_tensors, to_ldm, "UNet")


def _vae_matrix(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[:2]) if is_vae_attention_matrix(name) and tensor.ndim == 4 else tensor


def vae_from_ldm(vae_tensors: Mapping, family: str, shapes: Mapping | None = None,
                 norm_groups: int = 32) -> AutoencoderKL:
    """An AutoencoderKL holding LDM VAE tensors (names without ``first_stage_model.``); ``shapes``: the same
    names as meta tensors, for a streamed file (its config comes from shapes, nothing read twice)."""
    with init_empty_weights():
        vae = AutoencoderKL(**vae_config_from_ldm(vae_tensors if shapes is None else shapes, family, norm_groups))
    to_ldm = partial(vae_name_to_ldm, layout=VaeLayout.from_config(vae.config))
    return _fill_from_ldm(vae, vae_tensors, to_ldm, "VAE", reshape=_vae_matrix)


def _text_state(ldm: dict, family: str, index: int, config: dict) -> dict:
    if family == "sd1" or (family == "sdxl" and index == 0):
        return ldm_to_hf_clip(ldm, SD1_TEXT_PREFIX if family == "sd1" else SDXL_TEXT_PREFIXES[0])
    if family == "sd2":
        return openclip_to_hf(ldm, SD2_TEXT_PREFIX, config["num_hidden_layers"], with_projection=False)
    return _with_text_model_level(openclip_to_hf(ldm, SDXL_TEXT_PREFIXES[1], config["num_hidden_layers"],
                                                 with_projection=True))


def text_encoders_from_ldm(ldm: Mapping, family: str, heads: dict, shapes: Mapping | None = None) -> list:
    """The family's text encoders (transformers models) from the full LDM tensor table (``shapes``: the same
    names as meta tensors, for a streamed file; its text encoders' tensors are then read, converted, and
    dropped before the UNet is read)."""
    encoders = []
    if shapes is not None:
        prefixes = {"sd1": (SD1_TEXT_PREFIX,), "sd2": (SD2_TEXT_PREFIX,)}.get(family, tuple(SDXL_TEXT_PREFIXES))
        ldm = {name: ldm[name] for name in ldm if name.startswith(prefixes)}
    for index, config in enumerate(text_configs_from_ldm(ldm if shapes is None else shapes, family, heads)):
        model_class = CLIPTextModelWithProjection if family == "sdxl" and index == 1 else CLIPTextModel
        with init_empty_weights():
            encoder = model_class(CLIPTextConfig(**config))
        try:
            state = _text_state(ldm if isinstance(ldm, dict) else dict(ldm), family, index, config)
        except TextLayoutError as error:
            raise ModelLoadError(f"text encoder {index + 1}: {error}") from error
        encoders.append(_fill(encoder, state, f"text encoder {index + 1}"))
    return encoders


def models_from_ldm(tensors: Mapping, metadata: dict, family: str, v_prediction: bool = False):
    """(unet, vae, [text encoders]) from a single file's tensors (a dict, or a :class:`StreamedTensors`
    read one tensor at a time); ModelLoadError when something is missing."""
    _check_family(family)
    heads = declared_heads(metadata)
    shapes = tensors.shapes() if _streamed(tensors) else None  # type: ignore[attr-defined]
    text_encoders = text_encoders_from_ldm(tensors, family, heads, shapes)
    unet_tensors = _strip(tensors, UNET_PREFIX)
    config = unet_config_from_ldm(_strip(shapes, UNET_PREFIX) if shapes else unet_tensors, family, heads.get("unet"),
                                  v_prediction, heads.get("unet_norm_groups", 32))
    if config["in_channels"] != 4:
        raise ModelLoadError(f"the UNet takes {config['in_channels']} input channels (an inpainting or "
                             "instruct model?); LoRA training needs a plain text-to-image model (4 channels)")
    if family == "sdxl":
        config["addition_time_embed_dim"] = sdxl_time_embed_dim(config, text_encoders[1].config.projection_dim)
    vae_tensors = _strip(tensors, VAE_PREFIX)
    vae_shapes = _strip(shapes, VAE_PREFIX) if shapes else None
    vae = vae_from_ldm(vae_tensors, family, vae_shapes, heads.get("vae_norm_groups", 32))
    return unet_from_ldm(unet_tensors, config), vae, text_encoders
