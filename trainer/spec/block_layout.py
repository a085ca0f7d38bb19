"""The one table of UNet blocks that block-wise lists (dims, alphas, LR weights) are written against.

SD1.x/SD2.x: 25 entries IN00–IN11, MID, OUT00–OUT11. SDXL: 23 entries EMB, IN00–IN08, MID00–MID02,
OUT00–OUT08, END (sd-scripts ``get_block_index`` for each). Block LR weights are given as the down, mid and
up parts only; SDXL's are wrapped with 1.0 for EMB and END. Pure and torch-free: the form, validation and
the network all read it from here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockLayout:
    """``lead`` down blocks ``half`` · mid blocks ``mid`` · up blocks ``half`` · ``tail``."""

    words: str
    half: int
    mid: int
    lead: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        mids = ("MID",) if self.mid == 1 else tuple(f"MID{i:02d}" for i in range(self.mid))
        return (self.lead + tuple(f"IN{i:02d}" for i in range(self.half)) + mids
                + tuple(f"OUT{i:02d}" for i in range(self.half)) + self.tail)

    @property
    def count(self) -> int:
        return len(self.lead) + 2 * self.half + self.mid + len(self.tail)

    @property
    def down(self) -> slice:
        return slice(len(self.lead), len(self.lead) + self.half)

    @property
    def middle(self) -> slice:
        return slice(self.down.stop, self.down.stop + self.mid)

    @property
    def up(self) -> slice:
        return slice(self.middle.stop, self.middle.stop + self.half)


SD_LAYOUT = BlockLayout("an SD1.x/SD2.x model", half=12, mid=1)
SDXL_LAYOUT = BlockLayout("an SDXL model", half=9, mid=3, lead=("EMB",), tail=("END",))


def layout_for(family: str | None) -> BlockLayout:
    """The table of a model family ("sd1", "sd2", "sdxl"); SD's when the family is not known."""
    return SDXL_LAYOUT if family == "sdxl" else SD_LAYOUT


def allowed_layouts(family: str | None) -> tuple[BlockLayout, ...]:
    """The layouts a list may follow: the family's, or both while the family is not known yet (the form)."""
    return (SD_LAYOUT, SDXL_LAYOUT) if family is None else (layout_for(family),)
