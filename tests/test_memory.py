"""The memory estimate: against the measured peak of a real run on the demo, its parts moving with the
settings that change them, the verdict and the remedies, and how the page shows it."""
from __future__ import annotations

import dataclasses
import json

import pytest
import tomli_w

from tests.effects_runs import demo_values
from tests.trainer_helpers import events_of, of_type, run_trainer
from trainer.data.dataset_plan import data_options_from_job, plan_dataset
from trainer.data.folders import scan_dataset
from trainer.spec import job_from_values

GiB = 2**30


def _job(demo_dir, work, **overrides):
    return job_from_values(demo_values(demo_dir, work, **overrides))


def _estimate(job, **kwargs):
    from trainer.memory_plan import memory_plan

    data = plan_dataset(scan_dataset(job.data.train_data_dir, None, job.data.caption_extension),
                        data_options_from_job(job))
    return memory_plan(job, data, device_type="cpu", baseline=kwargs.pop("baseline", 0), **kwargs)


def _part(memory: dict, name: str) -> int:
    return next((p["bytes"] for p in memory["parts"] if p["name"] == name), 0)


def test_estimate_is_within_20_percent_of_the_measured_peak_on_the_demo(demo_dir, tmp_path):
    """The trainer (its own process) writes the estimate in ``started`` and its peak RSS in ``finished``;
    the plan made by ``python -m trainer plan`` in another process agrees with both."""
    values = demo_values(demo_dir, tmp_path, epoch=1)
    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps(values), encoding="utf-8")
    result = run_trainer("train", job, "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = events_of(tmp_path / "run")
    finished = of_type(events, "finished")[0]["memory"]
    estimate = of_type(events, "started")[0]["plan"]["memory"]
    measured = finished["measured_peak_bytes"]
    assert finished["estimated_peak_bytes"] == estimate["peak_bytes"]
    assert abs(estimate["peak_bytes"] - measured) <= 0.2 * measured, (estimate, measured)
    planned = run_trainer("plan", job)
    assert planned.returncode == 0, planned.stderr[-2000:]
    from_plan = json.loads(planned.stdout)["memory"]
    assert abs(from_plan["peak_bytes"] - measured) <= 0.2 * measured, (from_plan, measured)
    assert from_plan["parts"][0]["name"] == "Python, torch and libraries"


def test_parts_follow_the_settings(demo_dir, tmp_path):
    plain = _estimate(_job(demo_dir, tmp_path, train_batch_size=2))
    assert plain["device"] == "cpu" and plain["verdict"] in ("fits", "tight", "will not fit")

    def activations(**overrides) -> int:
        memory = _estimate(_job(demo_dir, tmp_path, **overrides))
        return memory["phases"]["training"]

    one, two = activations(train_batch_size=1), activations(train_batch_size=2)
    checkpointed = activations(train_batch_size=2, gradient_checkpointing=True)
    assert two > one and checkpointed < two
    eight_bit = _estimate(_job(demo_dir, tmp_path, optimizer="AdamW8bit"))
    adamw = _estimate(_job(demo_dir, tmp_path, optimizer="AdamW"))
    assert eight_bit["phases"]["training"] < adamw["phases"]["training"]
    cached = _estimate(_job(demo_dir, tmp_path, text_encoder_lr=0.0))
    trained = _estimate(_job(demo_dir, tmp_path, text_encoder_lr=5e-4))
    assert cached["phases"]["training"] < trained["phases"]["training"]


def test_the_loading_phase_counts_the_file_only_when_the_loader_reads_it_whole(demo_dir, tmp_path):
    from trainer.models.loading import STREAMS_SAFETENSORS

    memory = _estimate(_job(demo_dir, tmp_path))
    names = {p["name"] for p in memory["parts"]} if memory["phase"] == "loading" else set()
    assert ("checkpoint file read whole" in names) == (not STREAMS_SAFETENSORS and memory["phase"] == "loading")
    weights = sum(p.stat().st_size for p in (demo_dir / "model").rglob("*.safetensors"))
    assert memory["phases"]["loading"] >= 0.9 * weights  # the loaded weights are the folder's tensors


def _facts_and_traces():
    """An SD1.5-sized model in figures (no model built): the pure arithmetic of trainer.memory."""
    from trainer.memory import ModelFacts

    facts = ModelFacts(params={"unet": 860_000_000, "vae": 84_000_000, "text_encoder": 123_000_000},
                       file_dtype_bytes={"unet": 3_440_000_000, "vae": 336_000_000, "text_encoder": 492_000_000},
                       lora={"unet": 3_000_000, "text_encoder": 600_000}, lora_adafactor={"unet": 100_000},
                       autocast_castable=850_000_000, file_bytes=0, streams_file=True)

    def traces(shape):
        per_sample = (2 if shape.gradient_checkpointing else 8) * 2**30 * (shape.resolution[0] / 512) ** 2
        return {"unet_saved": per_sample * shape.batch_size, "unet_largest": 2**27 * shape.batch_size,
                "unet_part": 2**28 * shape.batch_size if shape.gradient_checkpointing else 0,
                "text_saved": 2**26 * shape.batch_size if shape.train_text_encoder else 0,
                "text_cache_per_caption": 77 * 768 * 4, "vae_encode": 2**29, "sample_unet": 0, "vae_decode": 0}

    return facts, traces


def test_will_not_fit_names_the_settings_that_would_help():
    from trainer.memory import RunShape, estimate, suggestions, verdict

    facts, traces = _facts_and_traces()
    shape = RunShape(batch_size=4, resolution=(512, 512), gradient_checkpointing=False, train_text_encoder=True,
                     optimizer="Prodigy", mixed_precision="no", full_fp16=False, cache_latents=True,
                     image_count=20, caption_count=20, tokens=77, sample_resolution=None)
    full = estimate(shape, facts, traces, "cuda", 0)
    assert full["phase"] == "training" and full["device"] == "cuda"
    free = full["peak_bytes"] // 3
    assert verdict(full["peak_bytes"], free) == "will not fit"
    found = suggestions(shape, facts, traces, "cuda", 0, free)
    named = {s["setting"] for s in found}
    assert named >= {"gradient_checkpointing", "train_batch_size"}
    assert not named & {"optimizer", "text_encoder_lr"}  # 3M LoRA parameters: under 1 % of the peak, not named
    assert all(s["peak_bytes"] < 0.99 * full["peak_bytes"] for s in found)
    big_lora = dataclasses.replace(facts, lora={"unet": 2_000_000_000, "text_encoder": 600_000})
    assert "optimizer" in {s["setting"] for s in suggestions(shape, big_lora, traces, "cuda", 0, free)}
    assert found[-1]["words"] == "all of these together" and found[-1]["fits"]
    assert verdict(full["peak_bytes"], full["peak_bytes"] * 2) == "fits"
    assert verdict(full["peak_bytes"], int(full["peak_bytes"] * 1.05)) == "tight"
    lean = RunShape(batch_size=1, resolution=(512, 512), gradient_checkpointing=True, train_text_encoder=False,
                    optimizer="AdamW8bit", mixed_precision="bf16", full_fp16=False, cache_latents=True,
                    image_count=20, caption_count=20, tokens=77, sample_resolution=None)
    assert suggestions(lean, facts, traces, "cuda", 0, 1) == []  # nothing left that would help
    on_cpu = estimate(shape, facts, traces, "cpu", 500 * 2**20)
    assert on_cpu["parts"][0] == {"name": "Python, torch and libraries", "bytes": 500 * 2**20}


def test_the_plan_panel_shows_the_estimate_and_the_remedies():
    from gui.plan_panel import memory_markdown, plan_markdown
    from gui.run_view import memory_line

    memory = {"device": "cpu", "peak_bytes": 5 * GiB, "phase": "training", "free_bytes": 4 * GiB,
              "verdict": "will not fit", "parts": [{"name": "weights", "bytes": 4 * GiB},
                                                   {"name": "activations", "bytes": GiB}],
              "suggestions": [{"setting": "gradient_checkpointing", "value": True, "peak_bytes": 3 * GiB,
                               "words": "turn on gradient checkpointing", "fits": True}]}
    text = memory_markdown(memory)
    assert "5.00 GiB" in text and "will not fit" in text and "`gradient_checkpointing`" in text
    assert "| activations | 1.00 GiB |" in text and "— fits" in text
    assert text in plan_markdown({"memory": memory})
    assert memory_markdown(None) == "" and "Memory" not in plan_markdown({})
    line = memory_line({"device": "cpu", "measured_peak_bytes": 2 * GiB, "estimated_peak_bytes": 2.2 * GiB})
    assert line == "Peak RAM: 2.00 GiB measured, 2.20 GiB estimated before the start."


@pytest.mark.parametrize("optimizer,expected", [("AdamW", 8.0), ("AdamW8bit", 2.1), ("Lion", 4.0), ("Prodigy", 16.0)])
def test_optimizer_state_per_parameter(optimizer, expected):
    from trainer.memory import optimizer_state_bytes

    assert optimizer_state_bytes(optimizer, 1000, 10, 4) == pytest.approx(1000 * expected)
    assert optimizer_state_bytes("Adafactor", 1000, 10, 4) == 40


def test_measured_peak_is_the_trainers_own_not_its_parents(tmp_path):
    """A trainer started by a large process (the page, or a test suite) reports its own peak: ``ru_maxrss``
    kept the parent's high-water mark across exec, and CI's full suite saw 1.17 GB for a 0.6 GB run."""
    import subprocess
    import sys

    ballast = bytearray(400 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    child = subprocess.run([sys.executable, "-c", "from trainer.memory_plan import measured_peak; "
                            "print(measured_peak('cpu'))"], capture_output=True, text=True, check=True)
    del ballast
    assert 0 < int(child.stdout) < 300 * 2**20, child.stdout


def test_the_trace_counts_attention_as_the_fused_kernel_keeps_it(demo_dir):
    """The meta trace saves what a real CPU forward saves (SDPA's fused kernel: no tokens × tokens matrix).
    At 64×64 latents the demo's attention at 32×32 holds 1024 tokens: torch's unfused meta formula would
    count its matrices and overstate the activations by more than half."""
    import torch
    from diffusers import UNet2DConditionModel

    from trainer.memory_trace import _saving, trace_saved, unet_inputs

    unet = UNet2DConditionModel.from_pretrained(demo_dir / "model" / "unet").requires_grad_(False)
    with torch.device("meta"):
        skeleton = UNet2DConditionModel.from_config(unet.config).requires_grad_(False)
    args, kwargs = unet_inputs(unet, 1, 64, 64)
    real_args = [torch.zeros(a.shape, dtype=a.dtype) for a in args]
    real_args[0].requires_grad_(True)  # no LoRA here: the latents' gradient makes autograd save the graph
    pack, saved = _saving({id(p) for p in unet.parameters()})
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(*real_args)
    real = sum(size for _, size in saved.values())

    def meta_saved(fused: bool) -> int:  # trace_saved is what the estimate uses; the plain hook is torch's way
        meta_args = list(args)
        meta_args[0] = meta_args[0].clone().requires_grad_(True)
        if fused:
            return trace_saved(skeleton, lambda: skeleton(*meta_args)).saved_bytes
        pack, saved = _saving({id(p) for p in skeleton.parameters()})
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            skeleton(*meta_args)
        return sum(size for _, size in saved.values())

    fused, unfused = meta_saved(fused=True), meta_saved(fused=False)
    assert abs(fused - real) <= 0.05 * real, (fused, real)
    assert unfused > 1.5 * real, (unfused, real)
