"""Issue 16: what a hostile or careless person types, clicks or kills. One test (at least) per item of the
issue, each failing on the code before the fix: bounds and a loss that stays NaN (3), output_name (4), problems
found before the model loads (5), an early stop (6), import edge cases (7), a preset name with a line break
(8), leftover temporaries, --listen without a password and optimizer messages (9)."""
from __future__ import annotations

import dataclasses
import argparse
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.effects_runs import demo_values, run_demo
from tests.trainer_helpers import events_of, of_type, run_trainer, start_trainer, write_job
from trainer.cli import main as cli_main
from trainer.spec import job_from_values, validate_values


def _errors(values: dict, for_training: bool = True) -> dict[str, str]:
    _, problems = validate_values(values, for_training=for_training)
    return {p.setting: p.message for p in problems if p.level == "error"}


# ---- 3: upper bounds, and a loss that stays NaN ------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("max_resolution", "100000,100000"),
    ("block_dims", ",".join(["100000"] * 25)),
    ("block_alphas", ",".join(["1e300"] * 25)),
    ("conv_block_alphas", ",".join(["1e300"] * 25)),
    ("optimizer_args", "x" * 5000),
])
def test_values_beyond_memory_sense_are_refused_with_the_limit(key, value):
    errors = _errors({key: value}, for_training=False)
    assert list(errors) == [key]
    assert "at most" in errors[key]


def _nan_loss(*args, **kwargs):
    return torch.tensor(float("nan"), requires_grad=True)


@pytest.mark.parametrize("overrides, blamed", [
    ({}, "learning_rate"),
    ({"network_dim": 1, "network_alpha": 1024.0}, "network_alpha"),
    ({"block_alphas": ",".join(["1000"] * 25)}, "block_alphas"),
])
def test_a_loss_that_stays_nan_fails_the_run_naming_the_likely_setting(demo_dir, tmp_path, monkeypatch,
                                                                       overrides, blamed):
    from trainer.divergence import suspect_setting

    job = job_from_values(demo_values(demo_dir, tmp_path, **overrides))
    assert suspect_setting(job)[0] == blamed
    if overrides:
        return  # one run is enough to see the loop end it; the blame is the pure function above
    monkeypatch.setattr("trainer.loop.batch_loss", _nan_loss)
    run = run_demo(demo_dir, tmp_path, epoch=2)  # 8 batches: NaN from the first
    assert run.status == "failed"
    assert run.of("error")[-1]["setting"] == blamed
    assert "5 batches in a row" in run.of("error")[-1]["message"]
    assert not run.final_file.exists()


# ---- 4: output_name -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../tmp/x", "", "a/b", "..", ".hidden", "a\nb", "C:\\x", " x"])
def test_output_name_must_be_a_plain_file_name(name):
    assert "output_name" in _errors({"output_name": name}, for_training=False)


def test_the_saver_never_writes_outside_the_output_folder(demo_dir, tmp_path):
    job = job_from_values(demo_values(demo_dir, tmp_path))
    escaping = dataclasses.replace(job, saving=dataclasses.replace(job.saving, output_name="../escaped"))  # skipped validation
    from trainer.run import run_training
    from trainer.events import EventWriter

    with EventWriter(tmp_path / "run" / "events.jsonl") as events:
        assert run_training(escaping, tmp_path / "run", events) == "failed"
    failed = of_type(events_of(tmp_path / "run"), "error")
    assert failed[-1]["setting"] == "output_name"
    assert not list(tmp_path.glob("escaped*")) and not list((tmp_path / "out").glob("*.safetensors"))


# ---- 5: found before the model loads ------------------------------------------------------------------------

def _validate(job_path: Path, capfd) -> tuple[int, str]:
    code = cli_main(["validate", str(job_path)])
    return code, capfd.readouterr().out


@pytest.mark.parametrize("key, make", [
    ("output_dir", lambda tmp: "/proc/lora_loom_out"),
    ("train_data_dir", lambda tmp: str(Path(tmp, "empty").mkdir() or Path(tmp, "empty"))),
    ("train_data_dir", lambda tmp: str(Path(tmp, "flat").mkdir() or Path(tmp, "flat", "a.png").touch()
                                       or Path(tmp, "flat"))),
])
def test_validate_refuses_what_train_would_find_late(demo_dir, tmp_path, capfd, key, make):
    job = write_job(demo_dir, tmp_path / "job.toml", **{key: make(tmp_path)})
    code, out = _validate(job, capfd)
    assert code == 2 and f"error: {key}:" in out and "ok:" not in out
    assert cli_main(["train", str(job), "--run-dir", str(tmp_path / "run")]) == 2
    events = events_of(tmp_path / "run")
    assert not [e for e in of_type(events, "status") if e.get("phase") == "loading model"]
    assert of_type(events, "finished")[0]["status"] == "failed"
    assert of_type(events, "finished")[0]["setting"] == key


# ---- 6: a stop in the first seconds ---------------------------------------------------------------------------

def test_a_stop_before_the_handlers_are_in_place_still_ends_in_finished(demo_dir, tmp_path):
    job = write_job(demo_dir, tmp_path / "job.toml", output_dir=str(tmp_path / "out"))
    process = start_trainer("train", job, "--run-dir", tmp_path / "run")
    deadline = time.monotonic() + 30
    while not (tmp_path / "run" / "events.jsonl").exists():  # the trainer is importing its modules
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    finished = of_type(events_of(tmp_path / "run"), "finished")
    assert [e["status"] for e in finished] == ["stopped"], output[-2000:]
    assert process.returncode == 0


# ---- 7: import edge cases -----------------------------------------------------------------------------------

def test_import_kohya_refuses_deep_nesting_reads_toml_and_quotes_huge_values_short(tmp_path, capfd):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert cli_main(["import-kohya", str(deep), "-o", str(tmp_path / "a.toml")]) == 2
    assert "nested too deeply" in capfd.readouterr().err

    toml_config = tmp_path / "config.toml"
    toml_config.write_text('network_dim = 16\nlearning_rate = "0.0002"\n')
    assert cli_main(["import-kohya", str(toml_config), "-o", str(tmp_path / "b.toml")]) == 0
    assert "network_dim = 16" in (tmp_path / "b.toml").read_text()

    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"network_dim": 16, "no_such_key": "x" * 1_000_000, "epoch": "y" * 1_000_000}))
    assert cli_main(["import-kohya", str(huge), "-o", str(tmp_path / "c.toml")]) == 0
    out = capfd.readouterr().out
    assert "no_such_key" in out and "epoch" in out and len(out) < 2000


def test_the_page_import_reports_a_toml_and_deep_nesting_in_words(tmp_path):
    from gui.presets_panel import import_kohya_values

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        import_kohya_values(str(deep), {})
    config = tmp_path / "config.toml"
    config.write_text("network_dim = 16\n")
    assert import_kohya_values(str(config), {}).values["network_dim"] == 16


# ---- 8: a preset name with a line break ---------------------------------------------------------------------

def test_a_line_break_in_a_preset_name_injects_nothing(tmp_path):
    from trainer.presets import load_preset, save_preset

    path = save_preset("mine\nnetwork_dim = 128\r\nepoch = 99", {"learning_rate": 0.0002}, tmp_path)
    assert load_preset(path) == {"learning_rate": 0.0002}
    assert path.parent == tmp_path


# ---- 9: leftovers, an open port, doubled prefixes -------------------------------------------------------------

def test_the_next_run_removes_temporaries_a_killed_run_left(demo_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir(parents=True)
    stale = [out / ".demo_lora-step00000002.safetensors.k3x9_a.tmp", out / "demo_lora-000001-state.tmp"]
    stale[0].write_bytes(b"half a file")
    stale[1].mkdir()
    (stale[1] / "state.pt").write_bytes(b"half")
    other = out / ".someone_else.safetensors.abc.tmp"
    other.write_bytes(b"another run's")
    run = run_demo(demo_dir, tmp_path)
    assert run.status == "completed"
    assert not any(path.exists() for path in stale) and other.exists()


def test_listening_beyond_loopback_without_a_password_warns():
    from app import exposure_warning, parse_args

    assert "WARNING" in exposure_warning(parse_args(["--listen", "0.0.0.0"]))
    assert "--share" in exposure_warning(parse_args(["--share"]))
    assert exposure_warning(parse_args(["--listen", "0.0.0.0", "--username", "u", "--password", "p"])) is None
    assert exposure_warning(parse_args([])) is None


def test_optimizer_errors_name_their_setting_once(demo_dir, tmp_path, capfd):
    job = write_job(demo_dir, tmp_path / "job.toml", optimizer_args="weight_decay", output_dir=str(tmp_path))
    code, out = _validate(job, capfd)
    assert code == 2
    line = next(line for line in out.splitlines() if "weight_decay" in line)
    assert line.count("optimizer_args") == 1, line
