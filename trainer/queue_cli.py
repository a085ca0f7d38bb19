"""``python -m trainer queue add|list|run|remove|move|options`` — the same on-disk queue the app drains.

    python -m trainer queue add JOB.toml [--runs-dir runs]
    python -m trainer queue list
    python -m trainer queue run [--stop-on-failure]     drains the queue; Ctrl-C (SIGINT) stops it
    python -m trainer queue remove N                    N: the position ``list`` shows, or the job id
    python -m trainer queue move N POS
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _runs(args) -> Path:
    return Path(args.runs_dir).expanduser().resolve()


def cmd_add(args) -> int:
    from trainer.run_queue import add_job_file
    from trainer.spec import JobError

    try:
        job_id = add_job_file(_runs(args), args.job)
    except JobError as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        print(f"not queued: {args.job} has errors", file=sys.stderr)
        return EXIT_REFUSED
    print(f"queued {job_id}")
    return EXIT_OK


def cmd_list(args) -> int:
    from trainer.run_queue import list_jobs, read_options

    entries = list_jobs(_runs(args))
    options = read_options(_runs(args))
    if options["paused"]:
        print(f"queue paused ({options['paused_reason'] or 'by you'})")
    if not entries:
        print("the queue is empty")
    for entry in entries:
        line = f"{entry.position:>3}  {entry.status:<9}  {entry.job_id:<28}  {entry.diff}"
        print(line + (f"\n       {entry.detail}" if entry.detail else ""))
    return EXIT_OK


def cmd_remove(args) -> int:
    from trainer.run_queue import QueueError, remove_job

    try:
        print(f"removed {remove_job(_runs(args), args.job)}")
    except QueueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_move(args) -> int:
    from trainer.run_queue import QueueError, move_job

    try:
        order = move_job(_runs(args), args.job, args.position)
    except QueueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print("order: " + ", ".join(order))
    return EXIT_OK


def cmd_run(args) -> int:
    """Drain the queue headless, one job after another, until nothing waits and nothing runs (a paused queue
    is resumed: running it is asking it to go on)."""
    from trainer.queue_runner import TICK_S, QueueRunner
    from trainer.run_queue import list_jobs, set_options

    runs_dir = _runs(args)
    if args.stop_on_failure:
        set_options(runs_dir, stop_on_failure=True)
    set_options(runs_dir, paused=False)
    runner = QueueRunner(runs_dir)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    before = {e.job_id for e in list_jobs(runs_dir) if e.started}
    try:
        while not interrupted.is_set():
            launched = runner.tick()
            if launched is not None:
                print(f"started {launched.job_id} in {launched.run_dir}", flush=True)
            if not runner.busy():
                break
            interrupted.wait(TICK_S)
        if interrupted.is_set():
            stopped = runner.stop_current()
            print(f"stopped {stopped.name}" if stopped else "stopped", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    ours = [e for e in list_jobs(runs_dir) if e.started and e.job_id not in before]
    for entry in ours:
        print(f"{entry.job_id}: {entry.status}" + (f" — {entry.detail}" if entry.detail else ""))
    return EXIT_FAILED if any(e.status == "failed" for e in ours) else EXIT_OK


def add_queue_parser(sub) -> None:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default="runs", help="the runs folder holding the queue (default ./runs)")
    queue = sub.add_parser("queue", help="a queue of jobs run one after another (shared with the app)")
    commands = queue.add_subparsers(dest="queue_command", required=True)
    add = commands.add_parser("add", parents=[common], help="validate a job file and put it at the end of the queue")
    add.add_argument("job")
    add.set_defaults(func=cmd_add)
    commands.add_parser("list", parents=[common], help="the jobs, their status and what differs from the job before") \
        .set_defaults(func=cmd_list)
    run = commands.add_parser("run", parents=[common], help="run the waiting jobs one after another (Ctrl-C stops)")
    run.add_argument("--stop-on-failure", action="store_true", help="pause the queue when a job fails or is stopped")
    run.set_defaults(func=cmd_run)
    remove = commands.add_parser("remove", parents=[common], help="take a job out of the queue (not while it runs)")
    remove.add_argument("job", help="position (as list shows it) or job id")
    remove.set_defaults(func=cmd_remove)
    move = commands.add_parser("move", parents=[common], help="move a waiting job to another position")
    move.add_argument("job", help="position (as list shows it) or job id")
    move.add_argument("position", type=int)
    move.set_defaults(func=cmd_move)

