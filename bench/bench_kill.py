"""The long kill loop of issue 16: many kill -9 at seeded random points of a run that saves at every step,
each followed by a resume, then a run to the end compared with an uninterrupted one.

    python bench/bench_kill.py [--kills 40] [--seed 1] [--work DIR]

It runs ``tests/kill_harness.py`` (which CI runs with 3 kills) and prints how many kills landed, what they
left behind and whether every file loaded; the report is written to ``bench/results/kill.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.kill_harness import run_harness

    work = args.work or Path(tempfile.mkdtemp(prefix="lora-loom-kill-"))
    report = run_harness(work.resolve(), args.kills, args.seed)
    killed = sum(k["outcome"] == "killed" for k in report["kills"])
    summary = {"kills_asked": args.kills, "kills_landed": killed, "temporaries_left_by_kills": report["temporaries_seen"],
               "temporaries_after_final": len(report["temporaries_after_final"]), "problems": len(report["problems"]),
               "final_vs_uninterrupted_max_difference": report.get("max_difference")}
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "kill.json").write_text(json.dumps({"summary": summary, **report}, indent=1), encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0 if not report["problems"] and (report.get("max_difference") or 0) <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
