"""Peak resident memory while loading a single-file checkpoint: read whole then converted (the loader before
streaming) against streamed tensor by tensor into the model (``StreamedTensors``).

Each loader runs in its own ``nice -n 10`` subprocess with one thread: imports first (the baseline, measured
as that process's RSS then), then ``load_base_model(FILE)``; the figure is the peak RSS above the baseline,
against the file's size and the loaded model's size. Run:
``.venv/bin/python bench/bench_single_file_load.py FILE.safetensors`` (e.g. the SD1.5-shaped model written by
``trainer.models.loading.save_as_single_file`` from ``bench.common.build_sd15_random``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from trainer.memory_plan import measured_peak
import trainer.models.loading as loading
from trainer.models.single_file import models_from_ldm  # noqa: F401 - the converter's imports, before the baseline
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
baseline = rss()
loading.STREAMS_SAFETENSORS = sys.argv[2] == 'streamed'
started = time.perf_counter()
model = loading.load_base_model(sys.argv[1])
seconds = time.perf_counter() - started
size = sum(p.numel() * p.element_size() for part in (model.unet, model.vae, *model.text_encoders) for p in part.parameters())
peak = measured_peak('cpu')
print(json.dumps({"baseline": baseline, "peak": peak, "model": size, "seconds": seconds}))
"""


def main() -> None:
    path = Path(sys.argv[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    file_size = path.stat().st_size
    print(f"file {path.name}: {file_size / 2**30:.2f} GiB")
    print("| loader | peak RSS above imports | file + model | ratio to file + model | load time |")
    print("|---|---|---|---|---|")
    for mode in ("whole", "streamed"):
        done = subprocess.run(["nice", "-n", "10", sys.executable, "-c", CHILD, str(path), mode], env=env,
                              capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        above = figures["peak"] - figures["baseline"]
        limit = file_size + figures["model"]
        print(f"| {mode} | {above / 2**30:.2f} GiB | {limit / 2**30:.2f} GiB | {above / limit:.2f} | "
              f"{figures['seconds']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
