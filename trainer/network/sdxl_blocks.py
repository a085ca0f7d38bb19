"""SDXL's UNet as kohya names it: original (SGM) module names and the 23-entry block table.

sd-scripts trains SDXL on its own UNet (``library/sdxl_original_unet.py``), which keeps the original
Stability layout, so an SDXL LoRA's UNet keys read ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``
where an SD1 key reads ``lora_unet_down_blocks_…``. We train diffusers' UNet, so each adapted module's
diffusers path is renamed into its SGM path with the same table that writes single-file checkpoints
(``trainer.models.ldm_layout``): ``down_blocks.1.attentions.0`` → ``input_blocks.4.1``,
``down_blocks.0.resnets.0.conv1`` → ``input_blocks.1.0.in_layers.2``, ``down_blocks.0.downsamplers.0.conv``
→ ``input_blocks.3.0.op``, ``up_blocks.0.upsamplers.0.conv`` → ``output_blocks.2.2.conv`` and so on.

Block-wise dims, alphas and LR weights for SDXL have 23 entries (sd-scripts ``get_block_index``):

====  ==========================================  =============
 0    ``time_embed``, ``label_emb``                EMB
 1–9  ``input_blocks.0`` … ``input_blocks.8``      IN00 … IN08
10–12 ``middle_block.0`` … ``middle_block.2``      MID00 … MID02
13–21 ``output_blocks.0`` … ``output_blocks.8``    OUT00 … OUT08
22    ``out`` (final norm and conv)                END
====  ==========================================  =============

LoRA never targets EMB, IN00 (the input conv) or END; they keep their slots so lists line up with kohya's.
Block LR weights are given as 9 down, 3 mid and 9 up values and wrapped with 1.0 for EMB and END.
"""
from __future__ import annotations

from trainer.models.ldm_layout import UNetLayout, unet_name_to_ldm
from trainer.spec.block_layout import SDXL_LAYOUT

SDXL_BLOCK_COUNT = SDXL_LAYOUT.count
SDXL_BLOCK_LABELS: tuple[str, ...] = SDXL_LAYOUT.labels
# SGM block list → (first table index, how many blocks it holds).
_SGM_BLOCKS = {"input_blocks": (SDXL_LAYOUT.down.start, SDXL_LAYOUT.half),
               "middle_block": (SDXL_LAYOUT.middle.start, SDXL_LAYOUT.mid),
               "output_blocks": (SDXL_LAYOUT.up.start, SDXL_LAYOUT.half)}
_UNET_KEY_PREFIX = "lora_unet_"


def is_sdxl_unet(unet) -> bool:
    """An SDXL UNet conditions on pooled text and image sizes (diffusers' ``addition_embed_type="text_time"``)."""
    config = getattr(unet, "config", None)
    return config is not None and config.get("addition_embed_type") == "text_time"


def sgm_module_path(diffusers_path: str, layout: UNetLayout) -> str:
    """The original-layout path of a diffusers UNet module (``down_blocks.1.attentions.0.proj_in`` →
    ``input_blocks.4.1.proj_in``); modules are renamed like their weights."""
    return unet_name_to_ldm(diffusers_path + ".weight", layout).removesuffix(".weight")


def sdxl_block_index(name: str) -> int:
    """Block index 0…22 of an SDXL UNet module, from its SGM path or its kohya name.

    ``time_embed``/``label_emb`` → 0, ``input_blocks.k`` → 1 + k, ``middle_block.k`` → 10 + k,
    ``output_blocks.k`` → 13 + k, ``out`` → 22. Raises ValueError for anything else (a diffusers path,
    or a block number SDXL does not have).
    """
    stem = name.removeprefix(_UNET_KEY_PREFIX).replace(".", "_")
    if stem.startswith(("time_embed_", "label_emb_")):
        return 0
    if stem.startswith("out_"):
        return SDXL_BLOCK_COUNT - 1
    for kind, (first, count) in _SGM_BLOCKS.items():
        if stem.startswith(kind + "_"):
            number = stem[len(kind) + 1:].split("_", 1)[0]
            if number.isdigit() and int(number) < count:
                return first + int(number)
            raise ValueError(f"SDXL UNet module {name!r}: {kind} has blocks 0…{count - 1}")
    raise ValueError(f"UNet module {name!r} has no SDXL block (expected an original-layout name such as "
                     "input_blocks_4_1_…)")
