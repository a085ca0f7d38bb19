"""The Blocks/Conv tab's reference tables: which UNet modules each block holds, for SD1.x/SD2.x (25 blocks
IN00…OUT11) and for SDXL (23 slots EMB, IN00…IN08, MID00…MID02, OUT00…OUT08, END).

Worked out from the block formula of ``trainer.network.blocks`` (sd-scripts ``get_block_index``) for the
standard SD1.x/SD2.x UNet layout, without importing torch: down block i holds IN(1+3i+j) for its resnets
and attentions j ∈ {0, 1} and IN(1+3i+2) for its downsampler; the mid block is MID; up block i holds
OUT(3i+j) for j ∈ {0, 1, 2}, its upsampler sharing OUT(3i+2).
"""
from __future__ import annotations

# SD1.x/SD2.x: down blocks 0–2 have attention and a downsampler, block 3 neither; up block 0 has no
# attention, up blocks 0–2 have an upsampler.
DOWN_HAS_ATTENTION = (True, True, True, False)
DOWN_HAS_SAMPLER = (True, True, True, False)
UP_HAS_ATTENTION = (False, True, True, True)
UP_HAS_SAMPLER = (True, True, True, False)


def block_rows() -> list[tuple[str, str, str]]:
    """(label, modules LoRA adapts, modules LoCon/LoHa add) for the 25 blocks in kohya's order."""
    rows = [("IN00", "— (conv_in: never adapted)", "—")]
    for i in range(4):
        for j in range(2):
            attention = f"down_blocks.{i}.attentions.{j}" if DOWN_HAS_ATTENTION[i] else "—"
            rows.append((f"IN{1 + 3 * i + j:02d}", attention, f"down_blocks.{i}.resnets.{j}"))
        if i < 3:
            sampler = f"down_blocks.{i}.downsamplers.0" if DOWN_HAS_SAMPLER[i] else "—"
            rows.append((f"IN{1 + 3 * i + 2:02d}", "—", sampler))
    rows.append(("MID", "mid_block.attentions.0", "mid_block.resnets.0, mid_block.resnets.1"))
    for i in range(4):
        for j in range(3):
            attention = f"up_blocks.{i}.attentions.{j}" if UP_HAS_ATTENTION[i] else "—"
            conv = f"up_blocks.{i}.resnets.{j}"
            if j == 2 and UP_HAS_SAMPLER[i]:
                conv += f", up_blocks.{i}.upsamplers.0"
            rows.append((f"OUT{3 * i + j:02d}", attention, conv))
    return rows


# SDXL (sd-scripts' original layout): down block 0 has no attention; each level has two resnets; down
# blocks 0–1 and up blocks 0–1 have a sampler; up block 2 has no attention.
SDXL_DOWN_HAS_ATTENTION = (False, True, True)
SDXL_UP_HAS_ATTENTION = (True, True, False)


def sdxl_block_rows() -> list[tuple[str, str, str]]:
    """(label, modules LoRA adapts, modules LoCon/LoHa add) for SDXL's 23 slots in kohya's order."""
    rows = [("EMB", "— (time and size embeddings: never adapted)", "—"), ("IN00", "— (conv_in: never adapted)", "—")]
    for i in range(3):
        for j in range(2):
            attention = f"down_blocks.{i}.attentions.{j}" if SDXL_DOWN_HAS_ATTENTION[i] else "—"
            rows.append((f"IN{1 + 3 * i + j:02d}", attention, f"down_blocks.{i}.resnets.{j}"))
        if i < 2:
            rows.append((f"IN{3 + 3 * i:02d}", "—", f"down_blocks.{i}.downsamplers.0"))
    rows += [("MID00", "—", "mid_block.resnets.0"), ("MID01", "mid_block.attentions.0", "—"),
             ("MID02", "—", "mid_block.resnets.1")]
    for i in range(3):
        for j in range(3):
            attention = f"up_blocks.{i}.attentions.{j}" if SDXL_UP_HAS_ATTENTION[i] else "—"
            conv = f"up_blocks.{i}.resnets.{j}" + (f", up_blocks.{i}.upsamplers.0" if j == 2 and i < 2 else "")
            rows.append((f"OUT{3 * i + j:02d}", attention, conv))
    rows.append(("END", "— (final norm and conv: never adapted)", "—"))
    return rows


def _table(rows) -> list[str]:
    return ["| block | LoRA (attention layers) | LoCon / LoHa also adapt |", "|---|---|---|",
            *(f"| {label} | {attention} | {conv} |" for label, attention, conv in rows)]


def blocks_markdown() -> str:
    return "\n".join([
        "**SD1.x / SD2.x**: block-wise lists hold 25 values in this order (a smaller UNet simply lacks some). "
        "Block LR weights: 12 down, 1 mid, 12 up.",
        "", *_table(block_rows()), "",
        "**SDXL**: block-wise lists hold 23 values in this order (module names as diffusers calls them; the "
        "LoRA file uses the original names, e.g. `input_blocks_4_1_…`). Block LR weights: 9 down, 3 mid, 9 up.",
        "", *_table(sdxl_block_rows()),
    ])
