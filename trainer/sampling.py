"""Sample images during training (sd-scripts-semantics §6).

* prompts: kohya's one-prompt-a-line syntax with ``--n --w --h --d --l --s --ss``, parsed by
  ``trainer.sample_prompts`` (torch-free, so the page can validate them live) and re-exported here;
* ``make_sample_scheduler``: every kohya sampler name → a diffusers scheduler with SD's betas;
* ``generate_samples``: a ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` for SDXL) around the
  already-loaded (possibly LoRA-injected) modules, one PNG per prompt, leaving the caller's RNG state,
  devices and train/eval modes as they were. SDXL prompts are encoded as in training
  (``trainer.text_encoding.encode_captions_sdxl``); clip_skip does not apply to SDXL.

Two conscious departures from sd-scripts: a prompt without ``--d`` gets a seed derived from the run seed
and its index (sd-scripts draws a truly random one), so the same prompt is comparable across sample
points and reruns; and DDIM keeps ``clip_sample=False`` as SD ships it (sd-scripts forces True, which
clips latents to [-1, 1]).
"""
from __future__ import annotations

import contextlib
import inspect
import time
from pathlib import Path

import numpy as np
import torch
from numpy.polynomial import Polynomial
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

from trainer.sample_prompts import SamplePrompt, parse_sample_prompts
from trainer.text_encoding import encode_captions_sdxl

__all__ = [
    "SAMPLER_NAMES", "SamplePrompt", "derived_seed", "encode_prompt", "generate_samples", "make_sample_scheduler",
    "LinearMultistepScheduler", "lms_coefficient", "parse_sample_prompts", "preserved_state", "sample_file_name", "scheduler_class_for",
]


def lms_coefficient(sigmas: list[float], order: int, t: int, j: int) -> float:
    """Linear multistep weight of the derivative at σ_{t−j}: ∫_{σ_t}^{σ_{t+1}} ℓ_j(τ) dτ.

    ℓ_j is the Lagrange basis polynomial through σ_t, σ_{t−1}, …, σ_{t−order+1} that is 1 at σ_{t−j}
    (k-diffusion's LMS sampler). Integrated exactly as a polynomial, so no scipy is needed.
    """
    nodes = [sigmas[t - k] for k in range(order)]
    basis = Polynomial([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * Polynomial([-node, 1.0]) / (nodes[j] - node)
    antiderivative = basis.integ()
    return float(antiderivative(sigmas[t + 1]) - antiderivative(sigmas[t]))


class LinearMultistepScheduler(EulerDiscreteScheduler):
    """The LMS sampler ("lms" / "k_lms"): Euler's sigmas, with up to ``order`` past derivatives combined.

    diffusers' LMSDiscreteScheduler needs scipy only for its coefficient integral; this one computes the
    integral exactly (``lms_coefficient``) so it runs on the project's dependencies.
    """

    def set_timesteps(self, *args, **kwargs) -> None:
        super().set_timesteps(*args, **kwargs)
        self._derivatives: list = []

    def step(self, model_output, timestep, sample, order: int = 4, return_dict: bool = True):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        if self.config.prediction_type == "v_prediction":
            predicted_original = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            predicted_original = sample - sigma * model_output
        self._derivatives = (getattr(self, "_derivatives", []) + [(sample - predicted_original) / sigma])[-order:]
        used_order = min(self.step_index + 1, order)
        sigmas = self.sigmas.tolist()
        weights = [lms_coefficient(sigmas, used_order, self.step_index, j) for j in range(used_order)]
        derivatives = reversed(self._derivatives)
        previous = sample + sum(weight * derivative for weight, derivative in zip(weights, derivatives))
        self._step_index += 1
        previous = previous.to(model_output.dtype)
        if not return_dict:
            return previous, predicted_original
        return EulerDiscreteSchedulerOutput(prev_sample=previous, pred_original_sample=predicted_original)


# kohya sampler name → (diffusers scheduler class, extra constructor arguments).
_SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LinearMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm_2": (KDPM2DiscreteScheduler, {}),
    "dpm_2_a": (KDPM2AncestralDiscreteScheduler, {}),
    "dpmsolver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": (DPMSolverSinglestepScheduler, {}),
}
_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2", "k_dpm_2_a": "dpm_2_a"}
SAMPLER_NAMES = tuple(_SCHEDULERS) + tuple(_ALIASES)

# SD's noise schedule, as every SD1.x/2.x scheduler_config.json ships it.
_SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}


def scheduler_class_for(name: str):
    """The diffusers scheduler class and extra arguments for a kohya sampler name (``k_`` names are aliases)."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _SCHEDULERS:
        raise ValueError(f"sample_sampler: unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return _SCHEDULERS[key]


def make_sample_scheduler(name: str, v_prediction: bool = False):
    """A fresh diffusers scheduler for sampler ``name`` with SD's betas (0.00085 → 0.012, scaled linear)."""
    scheduler_class, extra = scheduler_class_for(name)
    accepted = inspect.signature(scheduler_class.__init__).parameters
    config = {key: value for key, value in _SD_SCHEDULE.items() if key in accepted}
    config["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
    return scheduler_class(**config, **extra)


def derived_seed(run_seed: int, prompt_index: int) -> int:
    """A 32-bit seed for prompt ``prompt_index`` of a run, from numpy's SeedSequence (stable across runs)."""
    return int(np.random.SeedSequence([run_seed & 0xFFFFFFFF, prompt_index]).generate_state(1)[0])


def sample_file_name(output_name: str, step: int, epoch: int | None, index: int, seed: int | None, when: float) -> str:
    """sd-scripts' name: ``[{name}_]{e{epoch:06d}|{step:06d}}_{index:02d}_{YYYYmmddHHMMSS}[_{seed}].png``."""
    prefix = f"{output_name}_" if output_name else ""
    point = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(when))
    suffix = f"_{seed}" if seed is not None else ""
    return f"{prefix}{point}_{index:02d}_{stamp}{suffix}.png"


def encode_prompt(text_encoder, tokenizer, text: str, clip_skip: int, device: torch.device) -> torch.Tensor:
    """CLIP hidden states for ``text`` (padded to 77 tokens) as SD conditions on them.

    kohya's ``clip_skip``: 1 = the last layer's output, 2 = the penultimate layer's, each through the
    final layer norm. (diffusers' own clip_skip path reaches for ``text_encoder.text_model``, which
    transformers 5's CLIPTextModel no longer has.)
    """
    tokens = tokenizer(
        text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    output = text_encoder(tokens.input_ids.to(device), output_hidden_states=clip_skip > 1)
    if clip_skip <= 1:
        return output.last_hidden_state
    final_layer_norm = getattr(text_encoder, "final_layer_norm", None) or text_encoder.text_model.final_layer_norm
    return final_layer_norm(output.hidden_states[-clip_skip])


@contextlib.contextmanager
def preserved_state(modules: list[torch.nn.Module], device: torch.device):
    """Inside: ``modules`` on ``device`` in eval mode. After: devices, train/eval flags and torch RNG restored."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    modes = [(module, module.training) for network in modules for module in network.modules()]
    devices = [(network, _device_of(network)) for network in modules]
    try:
        for network in modules:
            network.to(device)
            network.eval()
        yield
    finally:
        for network, original_device in devices:
            network.to(original_device)
        for module, was_training in modes:
            module.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _device_of(network: torch.nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _is_sdxl(base_model) -> bool:
    return getattr(base_model, "family", None) == "sdxl"


def _pipeline(base_model, scheduler) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A pipeline that shares (does not copy) the loaded modules, LoRA layers included."""
    if _is_sdxl(base_model):
        pipeline = StableDiffusionXLPipeline(
            vae=base_model.vae, text_encoder=base_model.text_encoder, text_encoder_2=base_model.text_encoder_2,
            tokenizer=base_model.tokenizer, tokenizer_2=base_model.tokenizer_2, unet=base_model.unet,
            scheduler=scheduler, add_watermarker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    pipeline = StableDiffusionPipeline(
        vae=base_model.vae,
        text_encoder=base_model.text_encoder,
        tokenizer=base_model.tokenizer,
        unet=base_model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _render(base_model, prompt: SamplePrompt, sampler: str, seed: int, device, dtype, clip_skip: int):
    scheduler = make_sample_scheduler(prompt.sampler or sampler, base_model.v_prediction)
    pipeline = _pipeline(base_model, scheduler)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        result = pipeline(
            **_prompt_embeddings(base_model, prompt, clip_skip, device),
            height=prompt.height,
            width=prompt.width,
            num_inference_steps=prompt.steps,
            guidance_scale=prompt.scale,
            generator=generator,
            output_type="latent",
        )
    return _decode(pipeline, result.images)


def _decode(pipeline, latents: torch.Tensor):
    """Latents → one PIL image, decoded in the VAE's own dtype outside autocast (SDXL's VAE is kept in fp32
    because fp16 overflows; under autocast its convolutions would run in fp16 anyway)."""
    vae = pipeline.vae
    with torch.no_grad():
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(pixels.float(), output_type="pil")[0]


def _prompt_embeddings(base_model, prompt: SamplePrompt, clip_skip: int, device) -> dict[str, torch.Tensor]:
    """The pipeline's embedding arguments for a prompt and its negative prompt."""
    if _is_sdxl(base_model):
        tokenizers = [base_model.tokenizer, base_model.tokenizer_2]
        encoders = [base_model.text_encoder, base_model.text_encoder_2]
        states, pooled = encode_captions_sdxl(tokenizers, encoders, [prompt.prompt])
        negative, negative_pooled = encode_captions_sdxl(tokenizers, encoders, [prompt.negative_prompt])
        return {"prompt_embeds": states, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": negative,
                "negative_pooled_prompt_embeds": negative_pooled}
    encoder, tokenizer = base_model.text_encoder, base_model.tokenizer
    return {"prompt_embeds": encode_prompt(encoder, tokenizer, prompt.prompt, clip_skip, device),
            "negative_prompt_embeds": encode_prompt(encoder, tokenizer, prompt.negative_prompt, clip_skip, device)}


def generate_samples(
    base_model,
    prompts: list[SamplePrompt] | str,
    out_dir: str | Path,
    *,
    step: int,
    epoch: int | None = None,
    sampler: str = "euler_a",
    output_name: str = "",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_skip: int = 1,
    run_seed: int = 0,
) -> list[dict]:
    """Render every prompt to ``out_dir`` and return ``[{path, prompt, negative_prompt, seed, sampler}]``.

    ``base_model`` is a ``trainer.models.loading.BaseModel`` (its unet/text encoder may carry LoRA
    layers). ``prompts`` is a parsed list or the raw prompt text. ``epoch`` set = an epoch-end sample
    (file named ``e{epoch:06d}``), else named by ``step``. ``sampler`` applies where a prompt has no ``--ss``.
    """
    if isinstance(prompts, str):
        prompts = parse_sample_prompts(prompts)
    for prompt in prompts:
        scheduler_class_for(prompt.sampler or sampler)  # fail on a bad name before rendering anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    networks = [base_model.unet, base_model.text_encoder, base_model.vae]
    if _is_sdxl(base_model):
        networks.append(base_model.text_encoder_2)
    records = []
    with preserved_state(networks, device):
        for index, prompt in enumerate(prompts):
            seed = prompt.seed if prompt.seed is not None else derived_seed(run_seed, index)
            image = _render(base_model, prompt, sampler, seed, device, dtype, clip_skip)
            name = sample_file_name(output_name, step, epoch, index, prompt.seed, time.time())
            image.save(out_dir / name)
            records.append({
                "path": str(out_dir / name),
                "prompt": prompt.prompt,
                "negative_prompt": prompt.negative_prompt,
                "seed": seed,
                "sampler": prompt.sampler or sampler,
            })
    return records
