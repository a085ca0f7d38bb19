"""A loss that is not a number: skip the batch, and after several in a row end the run naming the setting
most likely at fault.

A single NaN or infinite loss (an fp16 overflow, a bad image) is skipped with a warning. When it happens
``NON_FINITE_LIMIT`` batches in a row the weights no longer recover, and going on would end "completed" with
a useless LoRA; the run fails instead. The suspect: an alpha far above its rank (the LoRA's output is
multiplied by alpha ÷ rank, so a huge alpha overflows at once), then full fp16, then the learning rate.
"""
from __future__ import annotations

from trainer.session import TrainingError
from trainer.spec.sections import Job

NON_FINITE_LIMIT = 5  # batches in a row
SUSPECT_SCALE = 4.0  # alpha ÷ rank above this is amplified enough to be suspected first


def _pairs(alphas_text: str, dims_text: str, default_dim: float):
    from trainer.spec.fields import parse_block_alphas, parse_block_dims

    try:
        alphas = parse_block_alphas(alphas_text) or ()
        dims = parse_block_dims(dims_text) or ()
    except ValueError:
        return []
    return [(alpha, dims[i] if i < len(dims) else default_dim) for i, alpha in enumerate(alphas)]


def alpha_scales(job: Job) -> dict[str, float]:
    """The largest alpha ÷ rank each alpha setting gives (blocks with rank 0 have no module)."""
    scales = {"network_alpha": job.network.network_alpha / job.network.network_dim}
    if job.network.LoRA_type != "Standard":
        scales["conv_alpha"] = job.network.conv_alpha / job.network.conv_dim
    for key, dims_key, dim in (("block_alphas", "block_dims", job.network.network_dim),
                               ("conv_block_alphas", "conv_block_dims", job.network.conv_dim)):
        ratios = [alpha / rank for alpha, rank in _pairs(job.get(key), job.get(dims_key), dim) if rank]
        if ratios:
            scales[key] = max(ratios)
    return scales


def suspect_setting(job: Job) -> tuple[str, str]:
    """(setting, why) for a loss that keeps turning NaN or infinite."""
    scales = alpha_scales(job)
    key = max(scales, key=scales.__getitem__)
    if scales[key] > SUSPECT_SCALE:
        return key, (f"{key} makes alpha ÷ rank {scales[key]:g}, which multiplies the LoRA's output and overflows; "
                     "keep alpha at or below the rank")
    if job.launch.full_fp16:
        return "full_fp16", "fp16 weights overflow or underflow; turn off full fp16"
    key = "unet_lr" if job.optimisation.unet_lr is not None and job.optimisation.unet_lr > job.optimisation.learning_rate else "learning_rate"
    return key, "the learning rate is probably too high for this optimizer; lower it"


class NonFiniteLoss:
    """Counts non-finite losses in a row; warns for each, raises TrainingError at ``limit``."""

    def __init__(self, job: Job, limit: int = NON_FINITE_LIMIT):
        self.job = job
        self.limit = limit
        self.in_a_row = 0
        self.finite_seen = False

    def finite(self) -> None:
        self.in_a_row = 0
        self.finite_seen = True

    def skipped(self, loss: float, step: int, events) -> None:
        """Report a skipped batch before optimizer step ``step + 1``; ends the run at the limit."""
        self.in_a_row += 1
        setting, why = suspect_setting(self.job)
        if self.in_a_row >= self.limit:
            raise TrainingError(f"the loss was {loss} for {self.in_a_row} batches in a row (at step {step + 1}): "
                                f"training cannot recover. {why[0].upper()}{why[1:]}", setting)
        events.warning(f"loss is {loss} at step {step + 1}; this batch is skipped ({why})", setting)

    def check_end(self) -> None:
        """A run whose every loss was skipped has trained nothing: it failed, however short it was."""
        if self.in_a_row and not self.finite_seen:
            setting, why = suspect_setting(self.job)
            raise TrainingError(f"every loss of the run was NaN or infinite: nothing was trained. "
                                f"{why[0].upper()}{why[1:]}", setting)
