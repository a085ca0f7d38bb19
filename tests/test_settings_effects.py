"""Every implemented setting changes what the trainer does (issue 5): each test runs the real trainer (in-process,
on a small copy of the demo) or the real loop functions, and checks the setting's effect on the plan, the
events, the files or the loss. Pure parts are tested in their own files; these tests show the wiring."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch

from tests.effects_runs import (STEPS_PER_EPOCH, demo_values, max_difference, module_names, read_lora, run_demo,
                                run_in_session, small_dataset)
from trainer.events import EventWriter
from trainer.network import block_index
from trainer.spec import check_job, job_from_values, job_to_values, toml_text, write_job_toml

ONE_STEP = dict(train_batch_size=8)  # 8 images, 1 repeat: one step
EIGHT_STEPS = dict(train_batch_size=1)  # one image a step: the cheapest steps


@pytest.fixture(scope="module")
def baseline(demo_dir, tmp_path_factory):
    """The shortened demo at its settings: 4 steps, seed 42, fp32, AdamW, cosine."""
    run = run_demo(demo_dir, tmp_path_factory.mktemp("baseline"))
    assert run.status == "completed"
    return run


def _finite(run) -> bool:
    return bool(run.steps) and all(math.isfinite(loss) for loss in run.losses)


# --- seed, steps, epochs ----------------------------------------------------------------------


def test_same_seed_same_loss_curve_other_seed_another(baseline, demo_dir, tmp_path):
    again = run_demo(demo_dir, tmp_path / "again")
    assert again.losses == baseline.losses and len(again.losses) == STEPS_PER_EPOCH
    assert max_difference(read_lora(again.final_file)[0], read_lora(baseline.final_file)[0]) == 0
    other = run_demo(demo_dir, tmp_path / "other", seed=7)
    assert other.plan["seed"] == 7 and baseline.plan["seed"] == 42
    assert all(a != b for a, b in zip(other.losses, baseline.losses))


def test_batch_accumulation_and_max_train_epochs_shape_the_plan_and_the_steps(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, epoch=5, max_train_epochs=2, gradient_accumulation_steps=2)
    plan = run.plan
    # 8 samples ÷ batch 2 = 4 batches; ⌈4 ÷ 2⌉ = 2 optimizer steps an epoch; min(5, 2) = 2 epochs.
    assert (plan["batches_per_epoch"], plan["steps_per_epoch"], plan["epochs"], plan["total_steps"]) == (4, 2, 2, 4)
    assert [(e["step"], e["epoch"]) for e in run.steps] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    _, metadata = read_lora(run.final_file)
    assert (metadata["ss_gradient_accumulation_steps"], metadata["ss_total_batch_size"]) == ("2", "4")
    assert metadata["ss_num_epochs"] == "2" and metadata["ss_steps"] == "4"


def test_train_batch_size_sets_the_batches(baseline):
    assert baseline.plan["dataset"]["batch_size"] == 2 and baseline.plan["batches_per_epoch"] == 8 // 2
    _, metadata = read_lora(baseline.final_file)
    assert metadata["ss_batch_size_per_device"] == "2"


# --- saving -----------------------------------------------------------------------------------


def test_epoch_files_output_name_and_save_precision(demo_dir, tmp_path):
    data = small_dataset(demo_dir, tmp_path / "data4", images=4)  # 2 steps an epoch
    run = run_demo(demo_dir, tmp_path, train_data_dir=str(data), epoch=3, save_every_n_epochs=1,
                   output_name="shapes_lora", save_precision="bf16")
    assert run.output_files() == ["shapes_lora-000001.safetensors", "shapes_lora-000002.safetensors",
                                  "shapes_lora.safetensors"]
    saved = [(e["kind"], e["step"], e["epoch"]) for e in run.of("checkpoint")]
    assert saved == [("epoch", 2, 1), ("epoch", 4, 2), ("final", 6, 3)]
    for name in run.output_files():
        tensors, metadata = read_lora(run.output_dir / name)
        assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
        assert metadata["ss_output_name"] == "shapes_lora"
    assert read_lora(run.output_dir / "shapes_lora-000001.safetensors")[1]["ss_epoch"] == "1"


def test_step_files_and_pruning_of_old_ones(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, save_every_n_steps=2, save_last_n_steps=3, save_precision="float",
                   **EIGHT_STEPS)
    assert run.plan["save_steps"] == [2, 4, 6]
    assert [(e["kind"], e["step"]) for e in run.of("checkpoint")] == [("step", 2), ("step", 4), ("step", 6),
                                                                       ("final", 8)]
    # After step 6 only files within the last 3 steps are kept: step 4 stays, step 2 is deleted.
    assert run.output_files() == ["demo_lora-step00000004.safetensors", "demo_lora-step00000006.safetensors",
                                  "demo_lora.safetensors"]
    tensors, metadata = read_lora(run.output_dir / "demo_lora-step00000004.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32} and metadata["ss_steps"] == "4"


# --- logging, secrets, threads ---------------------------------------------------------------


def test_tensorboard_logs_in_logging_dir_and_the_wandb_key_is_never_written(demo_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    secret = "wandb-key-5f1e9c-never-written"
    log = io.StringIO()
    run = run_demo(demo_dir, tmp_path, echo=log, logging_dir=str(tmp_path / "tb"), log_with="tensorboard",
                   wandb_api_key=secret)
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(event_files) == 1 and event_files[0].parent.name == run.run_dir.name
    scalars = EventAccumulator(str(event_files[0].parent)).Reload()
    assert [s.step for s in scalars.Scalars("loss/current")] == [1, 2, 3, 4]
    assert [s.value for s in scalars.Scalars("loss/current")] == pytest.approx(run.losses, rel=1e-6)

    values = demo_values(demo_dir, tmp_path, wandb_api_key=secret)
    assert job_from_values(values).logging.wandb_api_key == secret
    written = [write_job_toml(values, tmp_path / "job.toml").read_text(), toml_text(job_to_values(job_from_values(values))),
               log.getvalue(), (run.run_dir / "events.jsonl").read_text(), *map(str, read_lora(run.final_file)[1].values())]
    assert log.getvalue() and all(secret not in text for text in written)
    assert all(secret.encode() not in f.read_bytes() for f in [*event_files, run.final_file])


def test_wandb_is_refused_before_the_run_while_it_is_not_installed(demo_dir, tmp_path):
    import importlib.util

    problems = check_job(job_from_values(demo_values(demo_dir, tmp_path, log_with="wandb")), for_training=False)
    installed = importlib.util.find_spec("wandb") is not None
    assert any(p.setting == "log_with" for p in problems) != installed


def test_num_cpu_threads_per_process_sets_torch_threads_inside_the_run(demo_dir, tmp_path):
    from trainer.session import build_session

    seen = []
    job = job_from_values(demo_values(demo_dir, tmp_path, num_cpu_threads_per_process=2))
    assert torch.get_num_threads() == 1
    try:
        with EventWriter(tmp_path / "events.jsonl") as events:
            events.listeners.append(lambda e: seen.append(torch.get_num_threads()) if e["type"] == "started" else None)
            build_session(job, tmp_path, events)
    finally:
        torch.set_num_threads(1)
    assert seen == [2]


# --- requests from the page while training (Sample now, Save now) ----------------------------------


def test_save_now_writes_a_step_file_that_save_last_n_steps_keeps(demo_dir, tmp_path):
    run = run_in_session(demo_dir, tmp_path, epoch=3, save_every_n_steps=2, save_last_n_steps=2,
                         ask_at={3: "save", 4: "save"})
    assert run.status == "completed"
    saved = {e["step"]: e.get("requested", False) for e in run.of("checkpoint") if e["kind"] == "step"}
    assert saved == {2: False, 3: True, 4: True, 6: False, 8: False, 10: False}  # at 4: one file, asked for
    left = sorted(p.name for p in run.output_dir.glob("*-step*.safetensors"))
    # save_last_n_steps=2 prunes 2 at step 6, 6 at step 10, and would prune 4 at step 8: it was asked for
    assert left == [f"{run.output_name}-step{s:08d}.safetensors" for s in (3, 4, 8, 10)]
    tensors, metadata = read_lora(run.output_dir / left[0])
    assert metadata["ss_steps"] == "3" and tensors


def test_sample_now_draws_the_prompts_or_says_there_are_none(demo_dir, tmp_path):
    drawn = run_in_session(demo_dir, tmp_path / "a", ask_at={2: "sample", 3: "sample"}, sample_every_n_steps=2,
                           sample_prompts="shapes, red circle --w 64 --h 64 --s 2 --d 1")
    samples = drawn.of("sample")  # at 2 the plan samples anyway: one set, marked as asked for
    assert [(e["step"], e.get("requested")) for e in samples] == [(2, True), (3, True), (4, None)]
    assert (drawn.run_dir / samples[0]["images"][0]["path"]).is_file()  # a relative path is the run folder's
    none = run_in_session(demo_dir, tmp_path / "b", ask_at={2: "sample"}, sample_prompts="")
    assert not none.of("sample") and none.status == "completed"
    assert any("no sample prompts" in m for m in none.warnings_for("sample_prompts"))


# --- precision, attention, memory -------------------------------------------------------------


def test_bf16_mixed_precision_trains_on_cpu_and_optimizer_args_reach_the_optimizer(baseline, demo_dir, tmp_path):
    run = run_in_session(demo_dir, tmp_path, mixed_precision="bf16", optimizer_args="weight_decay=0.02 betas=(0.8,0.95)")
    assert run.status == "completed" and _finite(run)
    groups = run.session.optimizer.param_groups
    assert {(g["weight_decay"], tuple(g["betas"])) for g in groups} == {(0.02, (0.8, 0.95))}
    assert run.session.precision.autocast_dtype == torch.bfloat16
    slow_here = not torch.ops.mkldnn._is_mkldnn_bf16_supported()  # a CPU without bf16 instructions is warned about
    assert ["no bf16 instructions" in m for m in run.warnings_for("mixed_precision")] == ([True] if slow_here else [])
    assert run.losses != baseline.losses  # bf16 math really ran
    assert run.losses == pytest.approx(baseline.losses, rel=0.05)


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(baseline, demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, mixed_precision="fp16")
    assert run.status == "completed"
    assert any("fp16" in m for m in run.warnings_for("mixed_precision"))
    assert run.losses == baseline.losses


def test_full_fp16_on_cpu_warns_naming_it_and_trains_fp32(baseline, demo_dir, tmp_path):
    run = run_in_session(demo_dir, tmp_path, mixed_precision="fp16", full_fp16=True)
    assert run.status == "completed"
    assert ["GPU" in m for m in run.warnings_for("full_fp16")] == [True]
    assert run.warnings_for("mixed_precision")  # the fp16 fallback's own warning as well
    precision = run.session.precision
    assert (precision.adapter_dtype, precision.weight_dtype, precision.autocast_dtype) == (torch.float32,) * 2 + (None,)
    assert {p.dtype for p in run.session.network.trainable_parameters()} == {torch.float32}
    assert run.losses == baseline.losses
    metadata = read_lora(run.final_file)[1]  # the file says what ran; the job it keeps says what was asked
    assert (metadata["ss_mixed_precision"], metadata["ss_full_fp16"]) == ("no", "False")
    assert json.loads(metadata["lora_loom.job"])["mixed_precision"] == "fp16"


def test_full_fp16_needs_fp16_mixed_precision(demo_dir, tmp_path):
    for mode, refused in (("no", True), ("bf16", True), ("fp16", False)):
        job = job_from_values(demo_values(demo_dir, tmp_path, mixed_precision=mode, full_fp16=True))
        errors = [p for p in check_job(job, for_training=False) if p.level == "error"]
        assert any(p.setting == "full_fp16" for p in errors) == refused


def test_gradient_checkpointing_and_sliced_attention_change_memory_not_results(baseline, demo_dir, tmp_path):
    run = run_in_session(demo_dir, tmp_path, gradient_checkpointing=True, mem_eff_attn=True, xformers=False)
    unet = run.session.base.unet
    assert unet.is_gradient_checkpointing
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert not run.warnings_for("xformers")
    assert run.losses == pytest.approx(baseline.losses, rel=1e-4)


def test_xformers_on_cpu_is_a_warning_not_a_failure(baseline, demo_dir, tmp_path):
    assert not baseline.warnings_for("xformers")  # the demo asks for PyTorch's attention
    run = run_demo(demo_dir, tmp_path, xformers=True)
    assert run.status == "completed"
    assert any("GPU" in message for message in run.warnings_for("xformers"))
    assert run.losses == pytest.approx(baseline.losses, rel=1e-4)  # the same attention ran


def test_without_cached_latents_the_vae_encodes_each_batch(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, cache_latents=False, cache_latents_to_disk=False, **ONE_STEP)
    assert run.status == "completed" and _finite(run)
    assert "caching latents" not in [e["phase"] for e in run.of("status")]
    assert not list((tmp_path / "data").rglob("*.npz"))


def test_cache_latents_to_disk_writes_npz_beside_the_images(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, cache_latents_to_disk=True, **ONE_STEP)
    assert run.status == "completed" and "caching latents" in [e["phase"] for e in run.of("status")]
    assert len(list((tmp_path / "data" / "1_shapes").glob("*_0064x0064_sd.npz"))) == 8


def test_data_loader_workers_give_the_same_training(baseline, demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, max_data_loader_n_workers=1, persistent_data_loader_workers=True)
    assert run.losses == baseline.losses


# --- learning rates --------------------------------------------------------------------------


def test_text_encoder_lr_zero_trains_only_the_unet_with_learning_rate_as_fallback(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, learning_rate=2e-3, unet_lr=None, text_encoder_lr=0.0,
                   lr_scheduler="constant")
    assert all(e["lr"] == {"unet": 2e-3} for e in run.steps)
    names = module_names(read_lora(run.final_file)[0])
    assert names and all(n.startswith("lora_unet_") for n in names)


def test_unet_lr_zero_trains_only_the_text_encoder_with_learning_rate_as_fallback(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, learning_rate=3e-4, unet_lr=0.0, text_encoder_lr=None,
                   lr_scheduler="constant")
    assert all(e["lr"] == {"text_encoder": 3e-4} for e in run.steps)
    names = module_names(read_lora(run.final_file)[0])
    assert names and all(n.startswith("lora_te_") for n in names)


# Unet LR at step 5 of 8 with 2 warmup steps (0-based i = 4, progress p = (4 − 2) / (8 − 2) = 1/3), by hand.
SCHEDULES = [
    ("constant", {}, 1e-3),  # ignores warmup
    ("constant_with_warmup", {}, 1e-3),
    ("cosine", {}, 1e-3 * 0.5 * (1 + math.cos(math.pi / 3))),
    ("cosine_with_restarts", {"lr_scheduler_num_cycles": 2}, 1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 3))),
    ("linear", {}, 1e-3 * 2 / 3),
    ("polynomial", {"lr_scheduler_power": 2.0}, (1e-3 - 1e-7) * (2 / 3) ** 2 + 1e-7),
]


@pytest.mark.parametrize("scheduler, extra, lr_at_step_5", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_live_lr_follows_the_planned_curve(demo_dir, tmp_path, scheduler, extra, lr_at_step_5):
    run = run_demo(demo_dir, tmp_path, lr_scheduler=scheduler, lr_warmup=25, **EIGHT_STEPS, **extra)
    plan = run.plan
    assert plan["total_steps"] == 8 and plan["warmup_steps"] == (0 if scheduler == "constant" else 2)
    for group in ("unet", "text_encoder"):
        curve = dict((int(step), lr) for step, lr in plan["lr_curve"][group])
        assert [e["lr"][group] for e in run.steps] == pytest.approx([curve[s] for s in range(1, 9)], rel=1e-9)
    live = [e["lr"]["unet"] for e in run.steps]
    assert live[4] == pytest.approx(lr_at_step_5, rel=1e-9)
    if scheduler != "constant":
        assert live[0] == 0.0 and live[1] == pytest.approx(5e-4) and live[2] == pytest.approx(1e-3)  # warmup
    if scheduler == "cosine_with_restarts":
        assert live[5] == pytest.approx(1e-3)  # the second cycle restarts at step 6


def test_plan_previews_one_lr_curve_per_block_group_and_the_live_lr_matches(demo_dir, tmp_path):
    """With block LR weights the plan reads the model's layout (meta device, no weights) and previews the
    groups the run will have, block by block; the live LRs are those curves."""
    run = run_demo(demo_dir, tmp_path, lr_scheduler="cosine", lr_warmup=25, **EIGHT_STEPS,
                   down_lr_weight="sine", mid_lr_weight="0.5", up_lr_weight="cosine+0.2", block_lr_zero_threshold=0.1)
    curves = run.plan["lr_curve"]
    live_groups = set(run.steps[0]["lr"])
    assert set(curves) == live_groups and "unet" not in curves and "unet_MID" in curves
    assert len(live_groups) > 3
    for group in live_groups:
        curve = dict((int(step), lr) for step, lr in curves[group])
        assert [e["lr"][group] for e in run.steps] == pytest.approx([curve[s] for s in range(1, 9)], rel=1e-9)
    mid = dict((int(step), lr) for step, lr in curves["unet_MID"])
    assert mid[3] == pytest.approx(0.5e-3)  # after warmup, at weight 0.5


def test_text_encoder_stops_changing_at_the_configured_percent(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, stop_text_encoder_training=50, save_every_n_steps=1,
                   save_precision="float", lr_warmup=0, **EIGHT_STEPS)
    assert run.plan["text_encoder_stop_step"] == 4  # ⌊8 × 50 %⌋
    files = [run.output_dir / f"demo_lora-step{k:08d}.safetensors" for k in range(1, 8)] + [run.final_file]
    weights = [read_lora(path)[0] for path in files]

    def part(tensors, prefix):
        return {k: v for k, v in tensors.items() if k.startswith(prefix)}

    te = [part(w, "lora_te_") for w in weights]
    unet = [part(w, "lora_unet_") for w in weights]
    assert all(max_difference(te[k], te[k + 1]) > 0 for k in range(3))  # steps 1→2→3→4 change it
    assert all(max_difference(te[3], te[k]) == 0 for k in range(4, 8))  # frozen after step 4
    assert all(max_difference(unet[k], unet[k + 1]) > 0 for k in range(7))
    assert [e["lr"]["text_encoder"] > 0 for e in run.steps] == [True] * 4 + [False] * 4
    curve = dict((int(s), lr) for s, lr in run.plan["lr_curve"]["text_encoder"])
    assert [e["lr"]["text_encoder"] for e in run.steps] == pytest.approx([curve[s] for s in range(1, 9)])


def test_max_grad_norm_clips_the_update(demo_dir, tmp_path):
    """SGD with Nesterov momentum 0.9: the first update is lr·(1 + 0.9)·g, and the LoRA up weights start at 0,
    so after one step ‖up‖ = ‖Δ‖ ≤ 1.9 · max lr · max_grad_norm and ≥ 1.9 · min lr · max_grad_norm."""
    common = dict(optimizer="SGDNesterov", lr_scheduler="constant", save_precision="float", **ONE_STEP)

    def up_norm(run) -> float:
        tensors = read_lora(run.final_file)[0]
        return math.sqrt(sum(float(t.double().pow(2).sum()) for k, t in tensors.items() if "lora_up" in k))

    clipped = up_norm(run_demo(demo_dir, tmp_path / "clipped", max_grad_norm=1e-6, **common))
    free = up_norm(run_demo(demo_dir, tmp_path / "free", max_grad_norm=0.0, **common))
    assert 1.9 * 5e-4 * 1e-6 * (1 - 1e-4) <= clipped <= 1.9 * 1e-3 * 1e-6 * (1 + 1e-4)
    assert free > 100 * clipped


# --- optimizers ------------------------------------------------------------------------------


OPTIMIZERS = ["AdamW", "AdamW8bit", "Adafactor", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan",
              "DAdaptLion", "DAdaptSGD", "Lion", "SGDNesterov", "Prodigy", "PagedAdamW8bit", "Lion8bit",
              "SGDNesterov8bit"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_trains_a_few_steps(demo_dir, tmp_path, optimizer):
    from trainer.optim.optimizers import SELF_ADAPTING

    lrs = dict(learning_rate=1.0, unet_lr=1.0, text_encoder_lr=1.0) if optimizer in SELF_ADAPTING else {}
    data = small_dataset(demo_dir, tmp_path / "data4", images=4)  # 2 steps
    run = run_in_session(demo_dir, tmp_path, train_data_dir=str(data), optimizer=optimizer, save_precision="float",
                         network_dim=16, **lrs)
    assert run.status == "completed" and len(run.steps) == 2 and _finite(run), run.of("error")
    tensors = read_lora(run.final_file)[0]
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_up" in k)  # the LoRA moved off zero
    assert all(torch.isfinite(t).all() for t in tensors.values())
    if optimizer in ("AdamW8bit", "PagedAdamW8bit"):
        dtypes = {v.dtype for state in run.session.optimizer.state.values() for v in state.values()
                  if torch.is_tensor(v) and v.numel() > 1}
        assert torch.uint8 in dtypes


# --- network ---------------------------------------------------------------------------------


def test_network_dim_alpha_then_network_weights_with_dim_from_weights(demo_dir, tmp_path):
    first = run_demo(demo_dir, tmp_path / "first", network_dim=4, network_alpha=2.0, save_precision="float")
    tensors, metadata = read_lora(first.final_file)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")} == {4}
    assert {float(t) for k, t in tensors.items() if k.endswith(".alpha")} == {2.0}
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    before = first.final_file.read_bytes()

    second = run_demo(demo_dir, tmp_path / "second", network_weights=str(first.final_file), dim_from_weights=True,
                      network_dim=8, network_alpha=8.0, save_precision="float")
    assert second.status == "completed", second.of("error")
    continued, metadata = read_lora(second.final_file)
    assert continued.keys() == tensors.keys()
    assert {t.shape[0] for k, t in continued.items() if k.endswith("lora_down.weight")} == {4}
    assert {float(t) for k, t in continued.items() if k.endswith(".alpha")} == {2.0}
    assert metadata["ss_network_dim"] == "4"
    assert second.losses[0] != first.losses[0]  # started from the trained LoRA, not from zero
    assert first.final_file.read_bytes() == before


def test_network_weights_file_is_never_overwritten_by_the_run(demo_dir, tmp_path):
    first = run_demo(demo_dir, tmp_path / "first", network_dim=4, network_alpha=4.0)
    before = first.final_file.read_bytes()
    values = dict(network_weights=str(first.final_file), dim_from_weights=True, output_dir=str(first.output_dir))
    problems = check_job(job_from_values(demo_values(demo_dir, tmp_path / "second", **values)), for_training=False)
    refused = [p for p in problems if p.level == "error"]
    assert [p.setting for p in refused] == ["output_name"] and str(first.final_file) in refused[0].message
    run = run_demo(demo_dir, tmp_path / "second", **values)  # the trainer refuses it too, before any step
    assert run.status == "failed" and not run.steps
    assert [e["setting"] for e in run.of("error")] == ["output_name"]
    assert first.final_file.read_bytes() == before
    other = run_demo(demo_dir, tmp_path / "third", output_name="continued", **values)
    assert other.status == "completed" and other.final_file.exists()
    assert first.final_file.read_bytes() == before


@pytest.mark.parametrize("weights, save_state, refused", [
    ("out/demo_lora.safetensors", False, True),
    ("out/demo_lora-000002.safetensors", False, True),  # an epoch file
    ("out/demo_lora-step00000010.safetensors", False, True),  # a step file (or one pruned later)
    ("out/demo_lora-step00000010-state/network.safetensors", True, True),  # a state folder is replaced whole
    ("out/demo_lora-step00000010-state/network.safetensors", False, False),  # … only when states are saved
    ("out/demo_lora_v1.safetensors", False, False),
    ("out/other.safetensors", False, False),
    ("elsewhere/demo_lora.safetensors", False, False),
])
def test_every_name_a_run_writes_is_checked_against_network_weights(tmp_path, weights, save_state, refused):
    from trainer.spec.checks import output_overwriting_network_weights

    from trainer.spec import job_from_values

    job = job_from_values(dict(network_weights=str(tmp_path / weights), output_dir=str(tmp_path / "sub" / ".." / "out"),
                               output_name="demo_lora", save_state=save_state))
    assert (output_overwriting_network_weights(job) is not None) == refused


def test_additional_parameters_override_settings_in_a_real_run(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, network_dim=8, additional_parameters="--network_dim 4 --output_name extra")
    assert run.final_file.name == "extra.safetensors" and run.final_file.exists()
    tensors = read_lora(run.final_file)[0]
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_down.weight")} == {4}


def test_locon_adapts_3x3_convs_with_conv_dim_and_conv_alpha(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, LoRA_type="LoCon", conv_dim=2, conv_alpha=0.5, save_precision="float",
                   **ONE_STEP)
    tensors = read_lora(run.final_file)[0]
    convs = {k.split(".")[0] for k, t in tensors.items() if k.endswith("lora_down.weight") and t.shape[-1] == 3}
    assert convs and {tensors[f"{m}.lora_down.weight"].shape[0] for m in convs} == {2}
    assert {float(tensors[f"{m}.alpha"]) for m in convs} == {0.5}
    others = module_names(tensors) - convs
    assert {tensors[f"{m}.lora_down.weight"].shape[0] for m in others} == {8}


def test_loha_writes_lycoris_keys(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, LoRA_type="LoHa", network_dim=4, network_alpha=4.0, **ONE_STEP)
    tensors, metadata = read_lora(run.final_file)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert suffixes == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    assert _finite(run)


def test_dylora_trains_every_rank_slice_over_a_run_and_loads_as_plain_lora(demo_dir, tmp_path):
    """Each step trains one drawn rank group per module; over 16 seeded steps every group of every module
    has left its zero start, so lower ranks were trained too. The file is a plain LoRA for any loader."""
    run = run_demo(demo_dir, tmp_path, LoRA_type="DyLoRA", network_dim=4, network_alpha=4.0, unit=2, conv_dim=2,
                   epoch=4, save_precision="float")
    assert run.status == "completed" and len(run.steps) == 16
    tensors, _ = read_lora(run.final_file)
    for key, up in tensors.items():
        if key.endswith("lora_up.weight"):
            per_rank = up.abs().transpose(0, 1).reshape(up.shape[1], -1).sum(dim=1)
            assert bool((per_rank[:2] > 0).all()) and bool((per_rank[2:] > 0).all()), key
    assert {k.split(".", 1)[1] for k in tensors} == {"lora_down.weight", "lora_up.weight", "alpha"}


@pytest.mark.parametrize("unit", [2, 4])
def test_dylora_unit_sets_the_rank_groups_one_step_trains(demo_dir, tmp_path, unit):
    """One step draws one rank group per module: only that group's columns of lora_up leave zero."""
    run = run_demo(demo_dir, tmp_path, LoRA_type="DyLoRA", network_dim=4, conv_dim=unit, unit=unit,
                   save_precision="float", **ONE_STEP)
    tensors, metadata = read_lora(run.final_file)
    assert metadata["ss_network_module"] == "networks.dylora"
    groups_seen = set()
    for key, up in tensors.items():
        if key.endswith("lora_up.weight"):
            per_rank = up.abs().transpose(0, 1).reshape(up.shape[1], -1).sum(dim=1)
            moved = tuple(int(c) for c in per_rank.nonzero().flatten())
            assert moved in {tuple(range(g, g + unit)) for g in range(0, 4, unit)}, (key, moved)
            groups_seen.add(moved)
    assert len(groups_seen) == 4 // unit


def test_dylora_unit_that_does_not_divide_conv_dim_is_refused_naming_the_setting(demo_dir, tmp_path):
    values = dict(LoRA_type="DyLoRA", network_dim=4, unit=2, conv_dim=1, **ONE_STEP)
    problems = check_job(job_from_values(demo_values(demo_dir, tmp_path, **values)))
    assert [p.setting for p in problems if p.level == "error"] == ["conv_dim"]
    run = run_demo(demo_dir, tmp_path, **values)  # a job that skipped validation fails naming it as well
    errors = run.of("error")
    assert run.status == "failed" and [e["setting"] for e in errors] == ["conv_dim"]
    assert "unexpected" not in errors[0]["message"]
    fixed = check_job(job_from_values(demo_values(demo_dir, tmp_path, **{**values, "conv_dim": 2})))
    assert not [p for p in fixed if p.level == "error"]


def test_dylora_rank_taken_from_weights_that_is_not_whole_units_fails_naming_dim_from_weights(demo_dir, tmp_path):
    first = run_demo(demo_dir, tmp_path / "first", network_dim=4, network_alpha=4.0, **ONE_STEP)
    run = run_demo(demo_dir, tmp_path / "second", LoRA_type="DyLoRA", network_dim=3, conv_dim=3, unit=3,
                   network_weights=str(first.final_file), dim_from_weights=True, **ONE_STEP)
    errors = run.of("error")
    assert run.status == "failed" and [e["setting"] for e in errors] == ["dim_from_weights"]
    assert "rank 4" in errors[0]["message"] and "unexpected" not in errors[0]["message"]


def test_dylora_block_ranks_must_be_whole_units_too(demo_dir, tmp_path):
    three_in_mid = ",".join(["4"] * 12 + ["3"] + ["4"] * 12)
    for key in ("block_dims", "conv_block_dims"):
        values = demo_values(demo_dir, tmp_path, LoRA_type="DyLoRA", network_dim=4, conv_dim=4, unit=2,
                             **{key: three_in_mid})
        errors = [p for p in check_job(job_from_values(values), for_training=False) if p.level == "error"]
        assert [p.setting for p in errors] == [key] and "3 is not" in errors[0].message


def test_block_dims_alphas_and_lr_weights_in_a_real_run(demo_dir, tmp_path):
    blocks = [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)]

    def per_block(default, **special):
        return ",".join(str(special.get(label, default)) for label in blocks)

    run = run_demo(demo_dir, tmp_path, LoRA_type="LoCon", save_precision="float", lr_scheduler="constant", **ONE_STEP,
                   block_dims=per_block(4, MID=6), block_alphas=per_block(2, MID=3),
                   conv_block_dims=per_block(2, OUT00=3), conv_block_alphas=per_block(1, OUT00=0.5),
                   down_lr_weight="1,1,1,1,0.8,1,1,1,1,1,1,1", mid_lr_weight="0.5",
                   up_lr_weight="1,1,1,1,0.05,1,1,1,1,1,1,1", block_lr_zero_threshold=0.1)
    tensors = read_lora(run.final_file)[0]
    ranks = {m: tensors[f"{m}.lora_down.weight"] for m in module_names(tensors) if m.startswith("lora_unet_")}
    linear_rank = {block_index(m): t.shape[0] for m, t in ranks.items() if t.shape[-1] == 1 or t.dim() == 2}
    conv_rank = {block_index(m): t.shape[0] for m, t in ranks.items() if t.dim() == 4 and t.shape[-1] == 3}
    assert linear_rank[12] == 6 and {r for b, r in linear_rank.items() if b != 12} == {4}
    assert conv_rank[13] == 3 and {r for b, r in conv_rank.items() if b != 13} == {2}
    mid_module = next(m for m in ranks if block_index(m) == 12 and ranks[m].dim() == 2)
    assert float(tensors[f"{mid_module}.alpha"]) == 3.0
    assert 13 + 4 not in {block_index(m) for m in ranks}  # OUT04's weight 0.05 is under the 0.1 threshold
    lrs = run.steps[0]["lr"]
    # the demo UNet has one resnet a level: IN01 (level 0), IN04 (level 1, with attention), IN07 (level 2)
    assert lrs["unet_MID"] == pytest.approx(0.5e-3) and lrs["unet_IN04"] == pytest.approx(0.8e-3)
    assert lrs["unet_IN01"] == pytest.approx(1e-3)
    assert "unet_OUT04" not in lrs and lrs["text_encoder"] == pytest.approx(5e-4)


# --- data: resolution, buckets, augmentation ------------------------------------------------------


def _buckets(demo_dir, work, **values) -> list[list[int]]:
    from trainer.plan import make_plan

    return [b["resolution"] for b in make_plan(job_from_values(demo_values(demo_dir, work, **values)))["dataset"]["buckets"]]


def test_resolution_and_bucket_settings_reach_the_plan(demo_dir, tmp_path):
    """The demo images are 64×64."""
    from trainer.data.folders import DataError

    upscale = dict(bucket_no_upscale=False)
    assert _buckets(demo_dir, tmp_path) == [[64, 64]]
    assert _buckets(demo_dir, tmp_path, max_resolution="128,128", **upscale) == [[128, 128]]
    assert _buckets(demo_dir, tmp_path, max_resolution="128,128", bucket_no_upscale=True) == [[64, 64]]
    # A square image in a 128×64 area: its bucket is square; without buckets it is cropped to 128×64.
    assert _buckets(demo_dir, tmp_path, max_resolution="128,64", **upscale) == [[64, 64]]
    assert _buckets(demo_dir, tmp_path, max_resolution="128,64", enable_bucket=False, **upscale) == [[128, 64]]
    assert _buckets(demo_dir, tmp_path, max_resolution="96,96", bucket_reso_steps=32, **upscale) == [[96, 96]]
    assert _buckets(demo_dir, tmp_path, max_resolution="96,96", bucket_reso_steps=64, **upscale) == [[64, 64]]
    with pytest.raises(DataError, match="max_bucket_reso") as refused:
        _buckets(demo_dir, tmp_path, max_resolution="128,128", max_bucket_reso=96, bucket_reso_steps=32, **upscale)
    assert refused.value.setting == "max_bucket_reso"
    from trainer.plan import make_plan

    small = make_plan(job_from_values(demo_values(demo_dir, tmp_path, max_resolution="128,128", min_bucket_reso=128,
                                                  max_bucket_reso=256)))
    assert any("min_bucket_reso" in w for w in small["dataset"]["warnings"])


def _first_batches(demo_dir, work, **values):
    from trainer.session import build_data

    values = dict(cache_latents=False, **values)
    with EventWriter(work / "events.jsonl") as events:
        data = build_data(job_from_values(demo_values(demo_dir, work, **values)), 42, events)
    return list(data.epoch(1))


def test_augmentation_settings_reach_the_batches(demo_dir, tmp_path):
    plain = _first_batches(demo_dir, tmp_path)
    assert not any(f for b in plain for f in b.flipped)
    flipped = _first_batches(demo_dir, tmp_path, flip_aug=True)
    assert any(f for b in flipped for f in b.flipped) and not all(f for b in flipped for f in b.flipped)
    coloured = _first_batches(demo_dir, tmp_path, color_aug=True)
    assert [b.captions for b in coloured] == [b.captions for b in plain]
    assert any(not torch.equal(c.pixels, p.pixels) for c, p in zip(coloured, plain))
    crop = dict(max_resolution="128,64", enable_bucket=False, bucket_no_upscale=False)
    centred = {c for b in _first_batches(demo_dir, tmp_path, **crop) for c in b.crop_top_lefts}
    random_crops = {c for b in _first_batches(demo_dir, tmp_path, random_crop=True, **crop) for c in b.crop_top_lefts}
    assert centred == {(0, 32)} and len(random_crops) > 1


# --- captions and text ------------------------------------------------------------------------


def _processed(values: dict, captions: list[str], epoch: int = 1, step: int = 0) -> list[str]:
    from trainer.loop import processed_captions

    session = SimpleNamespace(job=job_from_values(values), seed=42)
    return processed_captions(session, SimpleNamespace(captions=captions), epoch, step)


def test_caption_settings_reach_the_loop():
    caption = "shapes, red circle, blue background, small, bright, centred"
    steps = range(20)
    assert {tuple(_processed({}, [caption], step=s)) for s in steps} == {(caption,)}
    shuffled = [_processed({"shuffle_caption": True, "keep_tokens": 1}, [caption], step=s)[0] for s in steps]
    assert len(set(shuffled)) > 1 and all(s.startswith("shapes, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    kept_two = [_processed({"shuffle_caption": True, "keep_tokens": 2}, [caption], step=s)[0] for s in steps]
    assert all(s.startswith("shapes, red circle, ") for s in kept_two)
    assert _processed({"caption_dropout_rate": 1.0}, [caption, caption]) == ["", ""]
    every_two = {"caption_dropout_every_n_epochs": 2}
    assert _processed(every_two, [caption], epoch=1) == [caption] and _processed(every_two, [caption], epoch=2) == [""]
    weighted = "(red circle, blue:1.2), shapes, small"
    groups = [_processed({"shuffle_caption": True, "weighted_captions": True}, [weighted], step=s)[0] for s in steps]
    assert all("(red circle, blue:1.2)" in g for g in groups)


def test_caption_extension_picks_the_caption_files(demo_dir, tmp_path):
    from trainer.session import build_data

    with EventWriter(tmp_path / "events.jsonl") as events:
        with_txt = build_data(job_from_values(demo_values(demo_dir, tmp_path, caption_extension=".txt")), 1, events)
        with_other = build_data(job_from_values(demo_values(demo_dir, tmp_path, caption_extension=".caption")), 1,
                                events)
    assert all(i.caption.startswith("a zqx ") and i.caption.endswith(" background") for i in with_txt.plan.images)
    assert all(i.caption != j.caption for i, j in zip(with_txt.plan.images, with_other.plan.images))


@pytest.fixture(scope="module")
def tiny_base(demo_dir):
    from trainer.models.loading import load_base_model

    base = load_base_model(str(demo_dir / "model"), device=torch.device("cpu"), dtype=torch.float32)
    return base


def _states(base, captions, **values):
    from trainer.session import Session

    session = SimpleNamespace(job=job_from_values(values), text_cache=None, base=base)
    with torch.no_grad():
        return Session.text_states(session, captions)


def test_text_settings_reach_the_conditioning(tiny_base):
    captions = ["shapes, red circle", "shapes, blue square, green background"]
    plain = _states(tiny_base, captions)
    assert plain.shape[1] == 77
    assert not torch.allclose(_states(tiny_base, captions, clip_skip=2), plain)
    assert _states(tiny_base, captions, max_token_length=150).shape[1] == 152
    assert _states(tiny_base, captions, no_token_padding=True).shape[1] < 77
    one = _states(tiny_base, ["(red:1.0) circle"], weighted_captions=True)
    assert torch.allclose(one, _states(tiny_base, ["red circle"]), atol=1e-5)
    assert not torch.allclose(_states(tiny_base, ["(red:1.0) circle"]), one, atol=1e-5)
    assert not torch.allclose(_states(tiny_base, ["(red:1.5) circle"], weighted_captions=True), one, atol=1e-5)


def test_text_settings_are_accepted_by_a_real_run(baseline, demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, clip_skip=2, max_token_length=150, no_token_padding=True,
                   weighted_captions=True, shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.2)
    assert run.status == "completed" and _finite(run)
    _, metadata = read_lora(run.final_file)
    assert (metadata["ss_clip_skip"], metadata["ss_max_token_length"], metadata["ss_keep_tokens"]) == ("2", "150", "1")
    assert run.losses[0] != baseline.losses[0]


# --- noise and loss ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loss_session(demo_dir, tmp_path_factory):
    """One real session (model, LoRA, cached latents) and its first batch, to compare losses under settings."""
    from trainer.session import build_session, cache_latents

    work = tmp_path_factory.mktemp("loss_session")
    job = job_from_values(demo_values(demo_dir, work))
    with EventWriter(work / "events.jsonl") as events:
        session = build_session(job, work, events)
        cache_latents(session, events)
    torch.set_num_threads(1)
    return session, next(iter(session.data.epoch(1)))


def _loss(loss_session, **values) -> float:
    from trainer.loop import batch_loss

    session, batch = loss_session
    job = job_from_values({**job_to_values(session.job), **values})
    variant = dataclasses.replace(session, job=job, noise_generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return batch_loss(variant, batch, 1, 0).item()


def test_noise_and_loss_settings_change_the_loss_with_the_same_seed(loss_session):
    off = _loss(loss_session)
    assert _loss(loss_session) == off  # same seed, same batch: same loss
    changed = {
        "min_snr_gamma": _loss(loss_session, min_snr_gamma=0.05),
        "noise_offset": _loss(loss_session, noise_offset=0.1),
        "adaptive_noise_scale": _loss(loss_session, noise_offset=0.1, adaptive_noise_scale=0.05),
        "multires": _loss(loss_session, noise_offset_type="Multires", multires_noise_iterations=6,
                          multires_noise_discount=0.3),
        "multires_discount": _loss(loss_session, noise_offset_type="Multires", multires_noise_iterations=6,
                                   multires_noise_discount=0.8),
    }
    assert all(value != off and math.isfinite(value) for value in changed.values()), changed
    # Min-SNR weights min(SNR, γ) / SNR are ≤ 1, so the loss can only drop.
    assert changed["min_snr_gamma"] < off
    assert changed["adaptive_noise_scale"] != changed["noise_offset"]
    assert changed["multires_discount"] != changed["multires"]
    # Settings of the other noise type are ignored.
    assert _loss(loss_session, multires_noise_iterations=6) == off
    assert _loss(loss_session, noise_offset_type="Multires", multires_noise_iterations=6, multires_noise_discount=0.3,
                 noise_offset=0.1) == changed["multires"]


def test_prior_loss_weight_weights_the_regularization_images(demo_dir, tmp_path):
    reg = small_dataset(demo_dir, tmp_path / "reg", images=4, name="shapes")
    common = dict(reg_data_dir=str(reg), **ONE_STEP)
    full = run_demo(demo_dir, tmp_path / "full", prior_loss_weight=1.0, **common)
    light = run_demo(demo_dir, tmp_path / "light", prior_loss_weight=0.25, **common)
    dataset = full.plan["dataset"]
    assert (dataset["reg_images"], dataset["reg_samples"], full.plan["total_steps"]) == (4, 8, 2)
    assert _finite(full) and _finite(light)
    assert all(a != b for a, b in zip(full.losses, light.losses))
    assert read_lora(full.final_file)[1]["ss_num_reg_images"] == "8"


# --- samples ----------------------------------------------------------------------------------


def test_sample_points_and_sampler(demo_dir, tmp_path):
    from PIL import Image
    import numpy as np

    by_epoch = run_demo(demo_dir, tmp_path / "epochs", sample_every_n_epochs=1, sample_every_n_steps=3,
                        sample_sampler="euler_a")
    by_step = run_demo(demo_dir, tmp_path / "steps", sample_every_n_steps=2, sample_sampler="ddim")
    assert [(e["step"], e["epoch"]) for e in by_epoch.of("sample")] == [(4, 1)]  # epochs replace steps
    assert [(e["step"], e["epoch"]) for e in by_step.of("sample")] == [(2, None), (4, None)]
    from trainer.sample_prompts import parse_sample_prompts

    expected = [p.prompt for p in parse_sample_prompts(demo_values(demo_dir, tmp_path)["sample_prompts"])]
    assert len(expected) == 2 and [i["prompt"] for i in by_epoch.of("sample")[0]["images"]] == expected
    epoch_images = [i["path"] for i in by_epoch.of("sample")[0]["images"]]
    step_images = [i["path"] for i in by_step.of("sample")[1]["images"]]
    assert all("demo_lora_e000001_" in p for p in epoch_images) and all("demo_lora_000004_" in p for p in step_images)
    # Same weights at step 4, same prompts and seeds: only the sampler differs, and so do the images.
    assert max_difference(read_lora(by_epoch.final_file)[0], read_lora(by_step.final_file)[0]) == 0
    for first, second in zip(epoch_images, step_images):
        a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (first, second))
        assert np.abs(a - b).max() > 0


def test_a_missing_model_fails_naming_the_setting(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, pretrained_model_name_or_path=str(tmp_path / "no_such_model"))
    assert run.status == "failed"
    assert [e["setting"] for e in run.of("error")] == ["pretrained_model_name_or_path"]
