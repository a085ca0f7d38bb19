"""The GPU benchmark has never had a GPU here; its ``--smoke`` mode runs the same code on this CPU with tiny
UNets of both families and both layouts, so that a lent GPU's minutes are not lost to a broken script."""
from __future__ import annotations

import os
import subprocess
import sys

from gui.runs import PROJECT_ROOT


def test_the_gpu_benchmark_runs_its_cases_on_tiny_models():
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "bench" / "gpu_bench.py"), "--smoke"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [(r[0].strip(), r[5].strip()) for r in rows] == [("sd1", "default"), ("sd1", "channels-last"),
                                                            ("sdxl", "default"), ("sdxl", "channels-last")]
    assert all(len(r) == 11 and float(r[6]) > 0 for r in rows)  # it/s measured for each case
