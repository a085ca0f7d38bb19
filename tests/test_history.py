"""The Runs history without a browser: summaries, overlays (one loss series per run), samples of the same
prompt and step side by side, the queue table, and deleting a run with its LoRA files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gui import history
from gui.queue_view import queue_html, removable_choices
from trainer.run_queue import QueueEntry


def fake_run(runs: Path, name: str, *, losses, prompts=("a cat", "a dog"), sample_steps=(2, 4), lora_dir: Path,
             finished: bool = True) -> Path:
    """A run folder as the trainer leaves it: job, events (steps, samples, checkpoint, finished), files."""
    run_dir = runs / name
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "job.toml").write_text(f'output_name = "{name}"\nLoRA_type = "Standard"\nnetwork_dim = 8\n'
                                      f'learning_rate = 0.001\noptimizer = "AdamW"\n')
    lora_dir.mkdir(exist_ok=True)
    lora = lora_dir / f"{name}.safetensors"
    lora.write_bytes(b"x" * 10)
    events = [{"type": "started", "time": 100.0, "plan": {"total_steps": len(losses)}}]
    for step, loss in enumerate(losses, start=1):
        events.append({"type": "step", "time": 100.0 + step, "step": step, "epoch": 1, "loss": loss,
                       "loss_avg": loss + 0.01, "lr": {"unet": 1e-3 * step, "text_encoder": 5e-4}})
        if step in sample_steps:
            images = []
            for index, prompt in enumerate(prompts):
                image = run_dir / "samples" / f"{step}_{index}.png"
                image.write_bytes(b"png")
                images.append({"path": f"samples/{image.name}", "prompt": prompt})
            events.append({"type": "sample", "time": 100.0 + step, "step": step, "epoch": 1, "images": images})
    events.append({"type": "checkpoint", "time": 190.0, "step": len(losses), "epoch": 1, "path": str(lora),
                   "kind": "final"})
    if finished:
        events.append({"type": "finished", "time": 200.0, "status": "completed", "outputs": [str(lora)]})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def test_summary_and_table(tmp_path):
    run_dir = fake_run(tmp_path / "runs", "20260101-000000-a", losses=[0.5, 0.4, 0.3, 0.2], lora_dir=tmp_path / "out")
    summary = history.summarize(run_dir)
    assert (summary.status, summary.steps, summary.duration) == ("completed", "4 / 4", "1m 40s")
    assert (summary.final_loss, summary.smoothed_loss) == (0.2, pytest.approx(0.21))
    assert (summary.lora_type, summary.rank, summary.lr, summary.optimizer) == ("Standard", "8", "0.001", "AdamW")
    assert summary.files == [str(tmp_path / "out" / "20260101-000000-a.safetensors")]
    table = history.history_html([summary])
    assert "data-status='completed'" in table and "20260101-000000-a.safetensors" in table and "0.21" in table


def test_overlay_has_one_loss_series_per_run_and_samples_side_by_side(tmp_path):
    runs = tmp_path / "runs"
    one = fake_run(runs, "r1", losses=[0.5, 0.4, 0.3, 0.2], lora_dir=tmp_path / "out")
    two = fake_run(runs, "r2", losses=[0.6, 0.5, 0.4], sample_steps=(2,), prompts=("a dog", "a bird"),
                   lora_dir=tmp_path / "out")
    views = [history.load_view(one), history.load_view(two)]
    loss = history.overlay_loss_rows(views)
    assert sorted({row["run"] for row in loss}) == ["r1", "r2"]
    assert [row["loss"] for row in loss if row["run"] == "r2"] == pytest.approx([0.61, 0.51, 0.41])
    assert {row["run"] for row in history.overlay_lr_rows(views)} == {"r1", "r1 · text_encoder", "r2",
                                                                      "r2 · text_encoder"}
    assert history.common_sample_steps(views) == [2]  # r2 sampled only at step 2; "a dog" is the shared prompt
    pairs = history.side_by_side(views)
    assert [caption for _, caption in pairs] == ["r1 — step 2 — a dog", "r2 — step 2 — a dog"]
    assert pairs[0][0] == str(one / "samples" / "2_1.png") and pairs[1][0] == str(two / "samples" / "2_0.png")


def test_delete_removes_the_run_and_its_lora_files_but_never_a_running_run(tmp_path):
    runs = tmp_path / "runs"
    done = fake_run(runs, "done", losses=[0.5], lora_dir=tmp_path / "out")
    lora = tmp_path / "out" / "done.safetensors"
    going = fake_run(runs, "going", losses=[0.5], lora_dir=tmp_path / "out", finished=False)
    (going / "events.jsonl").unlink()  # no word yet and a fresh job file: starting, so running
    with pytest.raises(ValueError, match="still running"):
        history.delete_run(going, runs)
    with pytest.raises(ValueError, match="not a run folder"):
        history.delete_run(tmp_path / "out", runs)
    deleted = history.delete_run(done, runs)
    assert str(lora) in deleted and not lora.exists() and not done.exists()
    assert going.exists()


def test_queue_table_shows_status_reason_log_tail_and_what_differs():
    entries = [
        QueueEntry("0001-a", 1, "a", "failed", "the trainer process ended without a 'finished' event", "/r/1",
                   "first in the queue", "step 3\nKilled"),
        QueueEntry("0002-b", 2, "b", "queued", "", "", "network_dim 8→16"),
    ]
    text = queue_html(entries, {"paused": True, "paused_reason": "job 0001-a failed"})
    assert "paused (job 0001-a failed)" in text
    assert "data-job='0001-a' data-status='failed'" in text and "Killed" in text and "network_dim 8→16" in text
    assert removable_choices(entries) == [("1. a — failed", "0001-a"), ("2. b — queued", "0002-b")]
