"""Build a NetworkConfig from the job's settings (kohya_ss key names), and the block LR weights rule."""
from __future__ import annotations

from trainer.network.config import NetworkConfig
from trainer.spec.block_layout import layout_for
from trainer.spec.setting import SettingError
from trainer.spec.rules import effective_lrs
from trainer.spec.sections import Job
from trainer.spec.catalog import SETTINGS_BY_KEY
from trainer.spec.tables import NO_BLOCK_TYPES

BLOCK_SETTINGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                  "down_lr_weight", "mid_lr_weight", "up_lr_weight")


def combine_block_lr_weights(down, mid, up, zero_threshold: float | None,
                             family: str = "sd1") -> tuple[float, ...] | None:
    """The block LR weights from the parsed down/mid/up settings: 25 (IN00..IN11, MID, OUT00..OUT11), or
    for SDXL 23 (1.0 for EMB, 9 down, 3 mid, 9 up, 1.0 for END: sd-scripts wraps SDXL's 21 the same way).

    sd-scripts: a group left blank weighs 1.0 everywhere; nothing given at all → None (no block LR).
    Then the zero threshold: ``w if w > threshold else 0`` (so weights at the threshold are zeroed).
    """
    if down is None and mid is None and up is None:
        return None
    layout = layout_for(family)
    down = tuple(down) if down is not None else (1.0,) * layout.half
    mid = tuple(mid) if mid is not None else (1.0,) * layout.mid
    up = tuple(up) if up is not None else (1.0,) * layout.half
    weights = (1.0,) * len(layout.lead) + down + mid + up + (1.0,) * len(layout.tail)
    threshold = zero_threshold or 0.0
    return tuple(float(w) if w > threshold else 0.0 for w in weights)


def parse_block_settings(job: Job, family: str) -> dict:
    """The block lists of a job parsed for the model's family (SDXL's lists are shorter); a ValueError
    starts with the setting's name and says what the family needs."""
    from trainer.spec.fields import parse_block_alphas, parse_block_dims, parse_half_lr_weights, parse_mid_lr_weight

    parsers = {"block_dims": parse_block_dims, "block_alphas": parse_block_alphas,
               "conv_block_dims": parse_block_dims, "conv_block_alphas": parse_block_alphas,
               "down_lr_weight": parse_half_lr_weights, "mid_lr_weight": parse_mid_lr_weight,
               "up_lr_weight": parse_half_lr_weights}
    words = layout_for(family).words
    parsed = {}
    for name in BLOCK_SETTINGS:
        try:
            parsed[name] = parsers[name](job.get(name), family)
        except ValueError as error:
            raise SettingError(f"{name}: for {words} it {error}", name) from None
    return parsed


def network_config_from_job(job: Job, seed: int = 0, family: str = "sd1") -> NetworkConfig:
    """NetworkConfig for a job (``trainer.spec`` model) and the base model's ``family``. A part whose
    effective learning rate is 0 gets no adapters (sd-scripts would still create the text encoder's,
    untrained)."""
    unet_lr, text_encoder_lr = effective_lrs(job.optimisation)
    blocks = parse_block_settings(job, family)
    if job.network.LoRA_type in NO_BLOCK_TYPES:  # as in sd-scripts: LyCORIS, networks.lokr take no block settings
        blocks = dict.fromkeys(blocks)
    net = job.network

    def applied(key: str):
        """The setting's value where it applies to the type (kohya_ss sends it only then), else its default."""
        setting = SETTINGS_BY_KEY[key]
        shown = setting.visible_when is None or net.LoRA_type in setting.visible_when[1]
        return job.get(key) if shown else setting.default

    return NetworkConfig(
        lora_type=job.network.LoRA_type,
        dim=job.network.network_dim,
        alpha=job.network.network_alpha,
        conv_dim=job.network.conv_dim,
        conv_alpha=job.network.conv_alpha,
        unit=job.network.unit,
        train_unet=unet_lr > 0,
        train_text_encoder=text_encoder_lr > 0,
        block_dims=blocks["block_dims"],
        block_alphas=blocks["block_alphas"],
        conv_block_dims=blocks["conv_block_dims"],
        conv_block_alphas=blocks["conv_block_alphas"],
        block_lr_weights=combine_block_lr_weights(
            blocks["down_lr_weight"], blocks["mid_lr_weight"], blocks["up_lr_weight"],
            job.network.block_lr_zero_threshold, family,
        ),
        seed=seed,
        family=family,
        preset=applied("LyCORIS_preset").strip() or "full",
        factor=applied("factor"),
        decompose_both=applied("decompose_both"),
        use_tucker=applied("use_tucker") or applied("use_cp"),
        use_scalar=applied("use_scalar"),
        dora_wd=applied("dora_wd"),
        bypass_mode=applied("bypass_mode"),
        rank_dropout_scale=applied("rank_dropout_scale"),
        train_norm=applied("train_norm"),
        constrain=applied("constrain"),
        rescaled=applied("rescaled"),
        train_on_input=applied("train_on_input"),
        network_dropout=applied("network_dropout"),
        rank_dropout=applied("rank_dropout"),
        module_dropout=applied("module_dropout"),
        scale_weight_norms=applied("scale_weight_norms"),
    )
