"""LoRA Loom: the browser app. ``python app.py`` opens the built-in demo on http://127.0.0.1:7860.

    python app.py [--listen ADDR] [--port N] [--username U --password P] [--share]
                  [--runs-dir DIR] [--demo-dir DIR] [--job FILE] [--user-presets DIR]

Without --job the demo (a tiny model and dataset) is built once into --demo-dir and the page opens on its
job, so pressing Start trains something at once. Sharing through a public Gradio link is off unless --share.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

PROJECT_ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="LoRA Loom: train LoRA adapters in your browser")
    parser.add_argument("--listen", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 for every interface; set --username/--password then)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--username", default="", help="login name (needs --password too)")
    parser.add_argument("--password", default="", help="login password (needs --username too)")
    parser.add_argument("--share", action="store_true", help="also publish through a public gradio.live link")
    parser.add_argument("--runs-dir", default="runs", help="folder for run records (default ./runs)")
    parser.add_argument("--demo-dir", default="demo", help="where the built-in demo lives (default ./demo)")
    parser.add_argument("--job", default="", help="job file (TOML) to open instead of the demo")
    parser.add_argument("--user-presets", default="", help="folder for your presets (default: user_presets beside the runs folder)")
    args = parser.parse_args(argv)
    if bool(args.username) != bool(args.password):
        parser.error("--username and --password go together")
    return args


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warning(args: argparse.Namespace) -> str | None:
    """A warning when the page can be reached from other machines without a password: whoever reaches it can
    start runs and write files wherever this user can."""
    open_to = [what for what, on in ((f"--listen {args.listen}", args.listen not in LOOPBACK),
                                     ("--share", args.share)) if on]
    if not open_to or args.username:
        return None
    return (f"WARNING: {' and '.join(open_to)} without --username/--password: anyone who can reach this port can "
            "train, read run folders and write files as you. Set --username and --password.")


def ensure_demo(demo_dir: Path) -> Path:
    """``demo_dir/job.toml``, building the demo in a subprocess (the GUI process never imports torch)."""
    job = demo_dir / "job.toml"
    if not job.is_file():
        print(f"Building the demo in {demo_dir} (once; a few seconds)…", flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")))))
        done = subprocess.run([sys.executable, "-m", "trainer", "demo", str(demo_dir)], env=env)
        if done.returncode != 0 or not job.is_file():
            raise SystemExit(f"Could not build the demo in {demo_dir} (exit code {done.returncode}); "
                             f"start with --job FILE instead.")
    return job


def job_values(job_path: Path) -> dict:
    """The job file's settings (spec_version left out); a bad file stops the app with a message naming it."""
    from trainer.spec import JobError, read_job_toml

    try:
        values = read_job_toml(job_path)
    except JobError as error:
        raise SystemExit(f"Cannot open {job_path}:\n{error}") from None
    values.pop("spec_version", None)
    return values


def drive_queue(runs_dir: Path) -> None:
    """Run the queue in a thread; on SIGTERM stop the queued run in progress (it saves and says ``stopped``)
    before the app exits, so a restarted app reports it as stopped and carries on with the next job."""
    import signal

    from trainer.queue_runner import QueueRunner

    runner = QueueRunner(runs_dir)
    runner.start_thread()

    def on_term(signum, frame) -> None:
        stopped = runner.shutdown()
        print(f"SIGTERM: stopped queued run {stopped.name}" if stopped else "SIGTERM: exiting", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warning = exposure_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    runs_dir = Path(args.runs_dir).expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    job_path = Path(args.job).expanduser().resolve() if args.job else ensure_demo(Path(args.demo_dir).resolve())
    user_presets = Path(args.user_presets).expanduser().resolve() if args.user_presets else runs_dir.parent / "user_presets"

    from gui.page import AppConfig, build_app
    from gui.page_style import CSS, HEAD

    config = AppConfig(runs_dir=runs_dir, user_presets_dir=user_presets, job_values=job_values(job_path))
    app = build_app(config)
    app.queue(default_concurrency_limit=4)
    drive_queue(runs_dir)
    app.launch(
        server_name=args.listen,
        server_port=args.port,
        share=args.share,
        auth=(args.username, args.password) if args.username else None,
        allowed_paths=[str(runs_dir)],
        css=CSS,
        head=HEAD,
        show_error=True,
        quiet=False,
    )


if __name__ == "__main__":
    main()
