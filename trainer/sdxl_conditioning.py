"""SDXL's micro-conditioning: the image sizes the UNet is told about besides the text (Podell et al. 2023, §2.2).

SDXL's UNet adds to its time embedding an embedding of the pooled text vector and six numbers per
sample, ``time_ids = [original_h, original_w, crop_top, crop_left, target_h, target_w]``: the source
image's size, the top-left corner of the window cut from the resized image, and the size trained at
(the bucket). diffusers takes them as ``added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}``.

The crop corner is the window our data pipeline actually cut (``Batch.crop_top_lefts``, mirrored with
the image when flipped). That is sd-scripts' centre-crop corner whenever random_crop is off; with
random_crop on, sd-scripts still reports the centre crop (semantics §11.10) while we report the real
window, which is what the conditioning means.
"""
from __future__ import annotations

import torch


def sdxl_time_ids(original_sizes, crop_top_lefts, bucket) -> torch.Tensor:
    """``(B, 6)`` float time ids from per-sample ``original_sizes`` (w, h), ``crop_top_lefts`` (left, top)
    and the batch's ``bucket`` (w, h)."""
    target_w, target_h = bucket
    rows = [[height, width, top, left, target_h, target_w]
            for (width, height), (left, top) in zip(original_sizes, crop_top_lefts)]
    return torch.tensor(rows, dtype=torch.float32)


def sdxl_added_conditions(pooled: torch.Tensor, batch, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The UNet's ``added_cond_kwargs`` for one batch (``batch`` as ``trainer.data.batches.Batch``)."""
    time_ids = sdxl_time_ids(batch.original_sizes, batch.crop_top_lefts, batch.bucket)
    return {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(pooled.device, dtype)}
