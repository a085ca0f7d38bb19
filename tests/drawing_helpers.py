"""Draw pictures from the demo's base model, with or without a LoRA file, through the trainer's own code.

The base is read from the demo's single file by ``trainer.models.loading.load_base_model``; a LoRA is put in
by ``trainer.network.apply_network`` with the demo job's network settings and its file's weights loaded
as the trainer loads ``network_weights``; pictures come from ``trainer.sampling.generate_samples`` (the
sampler the live previews use), one prompt line per seed, 64 px. ``lora_scale=0`` (every ``lora_up``
multiplied by 0) and ``v_prediction=True`` (the epsilon model read as v-prediction) are the deliberately
broken variants the negative tests use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SEEDS = tuple(range(16))
STEPS = 12
GUIDANCE = 6.0


def load(model_file: Path, job_file: Path | None = None, lora_file: Path | None = None, lora_scale: float = 1.0,
         v_prediction: bool = False):
    """The trainer's ``BaseModel`` for ``model_file``, with ``lora_file`` applied at ``lora_scale`` if given."""
    from trainer.models.loading import load_base_model

    base = load_base_model(str(model_file), device=torch.device("cpu"), dtype=torch.float32,
                           v_prediction=True if v_prediction else None)
    if lora_file is not None:
        from trainer.network.adapters import apply_network
        from trainer.network.from_job import network_config_from_job
        from trainer.network.lora_file import read_lora_file
        from trainer.spec.job import load_job

        assert job_file is not None, "a LoRA needs the job that trained it (its network settings)"
        network = apply_network(base.unet, base.text_encoders, network_config_from_job(load_job(job_file), 0, base.family))
        tensors = read_lora_file(lora_file)[0]
        network.load_kohya_state_dict({name: tensor * lora_scale if name.endswith("lora_up.weight") else tensor
                                       for name, tensor in tensors.items()})
    return base


def draw(base, prompt: str, out_dir: Path, seeds=SEEDS, steps: int = STEPS) -> list[np.ndarray]:
    """One 64×64 RGB uint8 array per seed for ``prompt``, drawn by the trainer's sampler (Euler a)."""
    from trainer.sampling import generate_samples

    text = "\n".join(f"{prompt} --w 64 --h 64 --s {steps} --l {GUIDANCE} --d {seed}" for seed in seeds)
    records = generate_samples(base, text, out_dir, step=0, sampler="euler_a")
    return [np.asarray(Image.open(record["path"]).convert("RGB")) for record in records]
