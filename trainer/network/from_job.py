"""Build a NetworkConfig from the job's settings (kohya_ss key names), and the block LR weights rule."""
from __future__ import annotations

from trainer.network.config import NetworkConfig

HALF_BLOCKS = 12


def combine_block_lr_weights(down, mid, up, zero_threshold: float | None) -> tuple[float, ...] | None:
    """The 25 block LR weights IN00..IN11, MID, OUT00..OUT11 from the parsed down/mid/up settings.

    sd-scripts: a group left blank weighs 1.0 everywhere; nothing given at all → None (no block LR).
    Then the zero threshold: ``w if w > threshold else 0`` (so weights at the threshold are zeroed).
    """
    if down is None and mid is None and up is None:
        return None
    down = tuple(down) if down is not None else (1.0,) * HALF_BLOCKS
    mid = tuple(mid) if mid is not None else (1.0,)
    up = tuple(up) if up is not None else (1.0,) * HALF_BLOCKS
    threshold = zero_threshold or 0.0
    return tuple(float(w) if w > threshold else 0.0 for w in down + mid + up)


def network_config_from_job(job, seed: int = 0) -> NetworkConfig:
    """NetworkConfig for a job (``trainer.spec`` model). A part whose effective learning rate is 0 gets no
    adapters (sd-scripts would still create the text encoder's, untrained)."""
    from trainer.spec import effective_lrs
    from trainer.spec.fields import (
        parse_block_alphas,
        parse_block_dims,
        parse_half_lr_weights,
        parse_mid_lr_weight,
    )

    unet_lr, text_encoder_lr = effective_lrs(job)
    return NetworkConfig(
        lora_type=job.LoRA_type,
        dim=job.network_dim,
        alpha=job.network_alpha,
        conv_dim=job.conv_dim,
        conv_alpha=job.conv_alpha,
        unit=job.unit,
        train_unet=unet_lr > 0,
        train_text_encoder=text_encoder_lr > 0,
        block_dims=parse_block_dims(job.block_dims),
        block_alphas=parse_block_alphas(job.block_alphas),
        conv_block_dims=parse_block_dims(job.conv_block_dims),
        conv_block_alphas=parse_block_alphas(job.conv_block_alphas),
        block_lr_weights=combine_block_lr_weights(
            parse_half_lr_weights(job.down_lr_weight),
            parse_mid_lr_weight(job.mid_lr_weight),
            parse_half_lr_weights(job.up_lr_weight),
            job.block_lr_zero_threshold,
        ),
        seed=seed,
    )
