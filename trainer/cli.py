"""``python -m trainer`` — train, validate, plan, import-kohya, demo, queue (see trainer/queue_cli.py).

Exit codes: 0 success (a run that was stopped by the user also counts), 1 the run failed, 2 the job or the
command line was refused before anything ran.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _print_problems(problems, stream=None) -> None:
    for problem in problems:
        print(str(problem), file=stream or sys.stdout)  # looked up now: stdout may be redirected


def _load(path: str):
    """(job or None, problems) for a job file: field errors, then the checks before training (the page's
    Start button makes the same, through ``trainer.spec.validate_values``)."""
    from trainer.spec import JobError, check_job, load_job

    try:
        job = load_job(path)
    except JobError as error:
        return None, error.problems
    return job, check_job(job, for_training=True)


def cmd_validate(args) -> int:
    job, problems = _load(args.job)
    _print_problems(problems)
    errors = [p for p in problems if p.level == "error"]
    if not errors:
        print(f"ok: {args.job} is a valid job" + (f" ({len(problems)} warning(s))" if problems else ""))
    return EXIT_REFUSED if errors else EXIT_OK


def plan_for(job_path: str, with_memory: bool, baseline: int | None = None) -> tuple[int, dict | None, str]:
    """(exit code, plan or None, error text) for a job file: what ``plan`` prints, as data (``baseline``: see
    :func:`trainer.plan.make_plan`)."""
    from trainer.data.folders import DataError
    from trainer.plan import make_plan
    from trainer.spec import JobError, check_paths, load_job

    try:
        job = load_job(job_path)
    except JobError as error:
        return EXIT_REFUSED, None, "\n".join(str(p) for p in error.problems)
    path_problems = [p for p in check_paths(job) if p.setting in ("train_data_dir", "reg_data_dir")]
    if path_problems:
        return EXIT_REFUSED, None, "\n".join(str(p) for p in path_problems)
    try:
        return EXIT_OK, make_plan(job, with_memory=with_memory, baseline=baseline), ""
    except DataError as error:
        return EXIT_REFUSED, None, f"error: {error.setting or 'train_data_dir'}: {error}"


def cmd_plan(args) -> int:
    code, plan, error = plan_for(args.job, with_memory=not args.no_memory)
    if plan is None:
        print(error, file=sys.stderr)
        return code
    json.dump(plan, sys.stdout, indent=2 if args.pretty else None)
    print()
    return EXIT_OK


def cmd_plan_server(args) -> int:
    """Plans on request, for the page: one JSON line in (``{"job": PATH, "memory": true}``), one JSON line out
    (``{"code": 0, "plan": {...}}`` or ``{"code": 2, "error": "..."}``), until stdin ends. The imports are paid
    once, so a plan takes a fraction of a second instead of a new process's seconds.

    The memory estimate counts the trainer's own footprint before the model (its imports) from this process,
    measured once before the first request's model work, as ``trainer plan`` measures it in a fresh process;
    what later requests leave behind here does not leak into the next estimate."""
    import traceback

    import trainer.plan  # noqa: F401  (imported before the first request, not during it)
    from trainer.memory_plan import trainer_baseline

    baseline = trainer_baseline()

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else printed goes to stderr, not into a reply
    for line in sys.stdin:
        try:
            request = json.loads(line)
            code, plan, error = plan_for(str(request["job"]), with_memory=bool(request.get("memory")),
                                           baseline=baseline)
        except Exception as failure:  # noqa: BLE001 - a bad request or a bug answers this request only
            code, plan = EXIT_FAILED, None
            error = f"the plan failed: {type(failure).__name__}: {failure}"
            traceback.print_exc(file=sys.stderr)
        reply = {"code": code, "plan": plan} if plan is not None else {"code": code, "error": error}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return EXIT_OK


def default_run_dir(job_path: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(job_path).resolve().parent / "runs" / f"{stamp}-{Path(job_path).stem}"


def cmd_train(args) -> int:
    import signal

    from trainer.run import catch_early_stop

    previous = signal.getsignal(signal.SIGINT)
    requests = catch_early_stop()  # first: a stop while the rest is imported is kept, not lost
    try:
        from trainer.distributed import launch_env

        launch = launch_env()  # under accelerate launch / torchrun: only the main process writes events and files
        code = _train(args, launch, requests)
    finally:
        signal.signal(signal.SIGINT, previous)
    if launch.world_size > 1:
        # Everything is written and closed. The launcher ends when every process has: skip the interpreter's
        # teardown of torch, diffusers and transformers (seconds on a busy machine), so Stop ends promptly.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(args, launch, requests) -> int:
    from trainer.events import EVENTS_FILE, EventWriter
    from trainer.spec import job_to_values, toml_text

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(args.job)
    run_dir.mkdir(parents=True, exist_ok=True)
    with EventWriter(run_dir / EVENTS_FILE if launch.is_main else None, echo=sys.stdout if launch.is_main else None) as events:
        job, problems = _load(args.job)
        for problem in problems:
            events.emit(problem.level, message=problem.message, setting=problem.setting)
        if job is None or any(p.level == "error" for p in problems):
            first = next((p for p in problems if p.level == "error"), None)
            events.emit("finished", status="failed", outputs=[], reason="invalid job",
                        setting=first.setting if first else None)
            return EXIT_REFUSED
        if launch.is_main:
            (run_dir / "job.toml").write_text(toml_text(job_to_values(job)), encoding="utf-8")
        if requests.stop and launch.world_size == 1:  # several processes agree on it in run_training
            events.emit("finished", status="stopped", outputs=[], reason="stopped before training started")
            return EXIT_OK
        from trainer.run import run_training

        processes = None
        if launch.world_size > 1:
            from trainer.distributed import start_processes

            try:
                processes = start_processes(launch)
            except Exception as error:  # noqa: BLE001 - no process group: the run cannot start
                events.error(f"could not start process {launch.rank} of {launch.world_size}: "
                             f"{type(error).__name__}: {error}", "num_processes")
                events.emit("finished", status="failed", outputs=[])
                return EXIT_FAILED
        status = run_training(job, run_dir, events, processes, requests)
    return EXIT_OK if status in ("completed", "stopped") else EXIT_FAILED


def cmd_import_kohya(args) -> int:
    from trainer.kohya import KohyaImportError, import_kohya_to_toml, report_lines

    try:
        result = import_kohya_to_toml(args.config, args.output)
    except KohyaImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"wrote {args.output} ({len(result.values)} settings)")
    for line in report_lines(result):
        print(line)
    return EXIT_OK


def cmd_demo(args) -> int:
    from trainer.models.demo import build_demo

    try:
        out = build_demo(Path(args.dir), family=args.family)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"demo ready in {out} (job: {Path(args.dir) / 'job.toml'})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="LoRA Loom trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a LoRA from a job file")
    train.add_argument("job")
    train.add_argument("--run-dir", help="folder for events.jsonl, the log and samples (default: runs/ beside the job)")
    train.set_defaults(func=cmd_train)
    validate = sub.add_parser("validate", help="check a job file; one line per problem")
    validate.add_argument("job")
    validate.set_defaults(func=cmd_validate)
    plan = sub.add_parser("plan", help="print the steps arithmetic and the memory estimate as JSON")
    plan.add_argument("job")
    plan.add_argument("--pretty", action="store_true")
    plan.add_argument("--no-memory", action="store_true",
                      help="leave out the memory estimate (it builds the model on the meta device: diffusers)")
    plan.set_defaults(func=cmd_plan)
    server = sub.add_parser("plan-server", help="answer plan requests read from stdin, one JSON line each (the page "
                                                "keeps one running)")
    server.set_defaults(func=cmd_plan_server)
    imp = sub.add_parser("import-kohya", help="convert a kohya_ss config JSON into a job file")
    imp.add_argument("config")
    imp.add_argument("-o", "--output", required=True)
    imp.set_defaults(func=cmd_import_kohya)
    demo = sub.add_parser("demo", help="build the built-in demo (tiny model, dataset, job.toml) into DIR")
    demo.add_argument("dir")
    demo.add_argument("--family", default="sd1", choices=("sd1", "sd2", "sdxl"),
                      help="model family of the tiny demo model (default sd1)")
    demo.set_defaults(func=cmd_demo)
    from trainer.queue_cli import add_queue_parser

    add_queue_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
