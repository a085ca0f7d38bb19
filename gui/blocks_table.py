"""The Blocks/Conv tab's reference table: which SD1.x/SD2.x UNet modules each block IN00…OUT11 holds.

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


def blocks_markdown() -> str:
    lines = [
        "Block-wise lists hold 25 values in this order (SD1.x/SD2.x UNet; a smaller UNet simply lacks some).",
        "",
        "| block | LoRA (attention layers) | LoCon / LoHa also adapt |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {attention} | {conv} |" for label, attention, conv in block_rows()]
    return "\n".join(lines)
