"""From the job's kohya_ss-named settings to a NetworkConfig, and the block LR weight rule."""
import math

import pytest

from trainer.network.from_job import combine_block_lr_weights, network_config_from_job
from trainer.spec import job_from_values


def test_block_lr_weights_fill_blank_groups_and_apply_the_threshold():
    assert combine_block_lr_weights(None, None, None, 0.5) is None
    down = tuple(i / 11 for i in range(12))
    weights = combine_block_lr_weights(down, None, (0.2,) * 12, zero_threshold=2 / 11)
    assert len(weights) == 25
    # w > threshold kept, w ≤ threshold zeroed: 0/11, 1/11 and 2/11 (equal) become 0.
    assert weights[:3] == (0.0, 0.0, 0.0) and weights[3] == pytest.approx(3 / 11)
    assert weights[12] == 1.0  # blank mid → 1.0
    assert weights[13:] == (0.2,) * 12


def test_config_from_a_job():
    job = job_from_values({
        "LoRA_type": "LoCon", "network_dim": 16, "network_alpha": 8, "conv_dim": 4, "conv_alpha": 2,
        "block_dims": ",".join(["4"] * 24 + ["0"]), "down_lr_weight": "sine", "block_lr_zero_threshold": 0.1,
        "text_encoder_lr": 0,
    })
    config = network_config_from_job(job, seed=5)
    settings = (config.lora_type, config.dim, config.alpha, config.conv_dim, config.conv_alpha)
    assert settings == ("LoCon", 16, 8.0, 4, 2.0)
    assert config.block_dims == (4,) * 24 + (0,) and config.block_alphas is None
    assert config.train_text_encoder is False and config.seed == 5
    # sine over 12 blocks: sin(π/2 · i/11); IN00 = 0 and IN01 = sin(π/22) ≈ 0.142 > 0.1 stays.
    assert config.block_lr_weights[0] == 0.0
    assert config.block_lr_weights[1] == pytest.approx(math.sin(math.pi / 22))
    assert config.block_lr_weights[11] == pytest.approx(1.0) and config.block_lr_weights[12:] == (1.0,) * 13


def test_defaults_give_the_plain_network():
    config = network_config_from_job(job_from_values({}))
    assert (config.lora_type, config.dim, config.alpha) == ("Standard", 8, 1.0)
    assert config.block_dims is None and config.block_lr_weights is None and config.train_text_encoder
