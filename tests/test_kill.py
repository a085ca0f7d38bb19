"""Issue 16's kill test: kill -9 at seeded random points of a run that saves at every step (the harness,
``tests/kill_harness.py``, forks the runs from one process so that each starts at once). After every kill,
every LoRA file and state folder left loads; the next run removes the temporaries and resumes from the newest
state; the last one ends with the uninterrupted run's LoRA. ``bench/bench_kill.py`` runs a longer loop."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.trainer_helpers import ROOT, trainer_env

KILLS = 3
SEED = 16


def test_kills_leave_only_loadable_files_and_resume_to_the_same_lora(demo_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.kill_harness", str(tmp_path), "--kills", str(KILLS),
                           "--seed", str(SEED), "--demo", str(demo_dir)],
                          cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["problems"] == [], report
    assert report["reference_exit"] == 0 and report["final_exit"] == 0, report
    assert [k["outcome"] for k in report["kills"]] == ["killed"] * KILLS, report
    assert report["kills"][0]["resumed_from"] is None and report["kills"][1]["resumed_from"], report
    assert report["temporaries_after_final"] == [], report
    assert report["max_difference"] <= 1e-6, report
