"""Issue 5: a run stopped (or checkpointed) at step k and resumed from its saved state ends with the same LoRA
weights as an uninterrupted run with the same seed (CPU, fp32), and its step counter and learning rate go on
from k. The runs: 2 epochs × 4 steps, cosine with 25 % warmup, the text encoder stopping after step 4."""
from __future__ import annotations

import json
import math

import pytest

from tests.effects_runs import max_difference, read_lora, run_demo, run_in_session

RESUMABLE = dict(epoch=2, save_state=True, save_every_n_steps=3, save_every_n_epochs=1, lr_warmup=25, lr_scheduler="cosine",
                 stop_text_encoder_training=50, mixed_precision="no", save_precision="float")
TOTAL_STEPS = 8


@pytest.fixture(scope="module")
def reference(demo_dir, tmp_path_factory):
    """The uninterrupted run; it also leaves training states after steps 3 and 6 (save_every_n_steps=3), at the end
    of epoch 1 (step 4) and the final one (step 8)."""
    run = run_demo(demo_dir, tmp_path_factory.mktemp("reference"), **RESUMABLE)
    assert run.status == "completed"
    assert [e["step"] for e in run.steps] == list(range(1, TOTAL_STEPS + 1))
    return run


def _by_step(run) -> dict[int, dict]:
    return {e["step"]: e for e in run.steps}


def _assert_continues(resumed, reference, k: int) -> None:
    """Steps k+1 … total, with the reference's learning rates and losses, and the same final weights."""
    assert resumed.status == "completed", resumed.of("error")
    assert [e["step"] for e in resumed.steps] == list(range(k + 1, TOTAL_STEPS + 1))
    expected = _by_step(reference)
    for event in resumed.steps:
        assert event["lr"] == pytest.approx(expected[event["step"]]["lr"], rel=1e-9, abs=0)
        assert event["epoch"] == expected[event["step"]]["epoch"]
        assert event["loss"] == pytest.approx(expected[event["step"]]["loss"], rel=1e-5)
    resumed_weights, metadata = read_lora(resumed.final_file)
    reference_weights, _ = read_lora(reference.final_file)
    assert max_difference(resumed_weights, reference_weights) <= 1e-6
    assert metadata["ss_steps"] == str(TOTAL_STEPS)


def test_reference_saves_states_where_the_plan_says(reference):
    states = [e for e in reference.of("checkpoint") if e["kind"] == "state"]
    assert [e["step"] for e in states] == [3, 4, 6, TOTAL_STEPS]
    info = json.loads((reference.output_dir / "demo_lora-step00000003-state" / "train_state.json").read_text())
    assert (info["step"], info["epoch"], info["batches_done_in_epoch"]) == (3, 1, 3)
    assert info["train_text_encoder"] is True
    info6 = json.loads((reference.output_dir / "demo_lora-step00000006-state" / "train_state.json").read_text())
    assert (info6["step"], info6["epoch"], info6["batches_done_in_epoch"], info6["train_text_encoder"]) == (6, 2, 2, False)
    lrs = [e["lr"]["unet"] for e in reference.steps]
    assert lrs[0] == 0.0 and len(set(lrs)) > 4  # the LR really moves, so "continues from k" means something


@pytest.mark.parametrize("k", [3, 6])
def test_resume_from_a_step_state_matches_the_uninterrupted_run(reference, demo_dir, tmp_path, k):
    state = reference.output_dir / f"demo_lora-step{k:08d}-state"
    resumed = run_demo(demo_dir, tmp_path, **{**RESUMABLE, "save_state": False, "resume": str(state)})
    _assert_continues(resumed, reference, k)
    notes = [e.get("note", "") for e in resumed.of("status")]
    assert any(f"at step {k}" in note for note in notes)


def test_resume_from_an_epoch_end_state_matches_the_uninterrupted_run(reference, demo_dir, tmp_path):
    """Issue 16, item 1: the state saved at the end of epoch 1 goes on with epoch 2 (it used to repeat epoch 1:
    steps 5–12 of an 8-step plan, the LR schedule run past its end)."""
    state = reference.output_dir / "demo_lora-000001-state"
    info = json.loads((state / "train_state.json").read_text())
    assert (info["step"], info["epoch"], info["batches_done_in_epoch"]) == (4, 1, 4)
    resumed = run_demo(demo_dir, tmp_path, **{**RESUMABLE, "save_state": False, "resume": str(state)})
    _assert_continues(resumed, reference, 4)
    assert [e["epoch"] for e in resumed.steps] == [2] * 4


def test_resume_from_the_final_state_trains_nothing_more(reference, demo_dir, tmp_path):
    resumed = run_demo(demo_dir, tmp_path, **{**RESUMABLE, "save_state": False,
                                              "resume": str(reference.output_dir / "demo_lora-state")})
    _assert_continues(resumed, reference, TOTAL_STEPS)


def test_stopped_run_resumes_to_the_same_weights(reference, demo_dir, tmp_path):
    k = 4  # the end of epoch 1, which is also where the text encoder stops
    stopped = run_in_session(demo_dir, tmp_path / "stopped", stop_after=k, **RESUMABLE)
    assert stopped.status == "stopped"
    assert [e["step"] for e in stopped.steps] == list(range(1, k + 1))
    state = stopped.output_dir / "demo_lora-state"
    assert (state / "train_state.json").is_file()
    assert json.loads((state / "train_state.json").read_text())["step"] == k
    final = [e for e in stopped.of("checkpoint") if e["kind"] == "final"]
    assert [e["step"] for e in final] == [k]

    resumed = run_demo(demo_dir, tmp_path / "resumed", **{**RESUMABLE, "save_state": False, "resume": str(state)})
    _assert_continues(resumed, reference, k)
    assert all(e["lr"]["text_encoder"] == 0.0 for e in resumed.steps)
    assert resumed.plan["total_steps"] == TOTAL_STEPS and math.isfinite(resumed.steps[-1]["loss"])


def test_resume_from_a_folder_without_state_fails_naming_resume(demo_dir, tmp_path):
    not_a_state = tmp_path / "empty"
    not_a_state.mkdir()
    run = run_demo(demo_dir, tmp_path, resume=str(not_a_state))
    assert run.status == "failed"
    errors = run.of("error")
    assert [e["setting"] for e in errors] == ["resume"] and "train_state.json" in errors[0]["message"]
    assert not run.steps
