"""Processes the tests start and must never leave behind: the app on a free port, and trainers under a runs
folder. Used by the browser tests, the queue tests and the run-manager tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def start_app(job: Path, root: Path, runs: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python app.py --job JOB --runs-dir RUNS [EXTRA]`` on a free port, its output appended to
    ROOT/app.log, in a session of its own; returns the process and its URL once it answers."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with (root / "app.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port), "--job", str(job),
             "--runs-dir", str(runs), *extra],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process)
    except BaseException:
        stop_app(process)
        raise
    return process, url


def stop_app(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the app's process group, and wait for it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except OSError:
        pass
    process.wait(timeout=timeout)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"app.py did not answer on {url} within {timeout}s")


def kill_runs(runs: Path) -> None:
    """SIGKILL every trainer under ``runs`` that has not finished (a crash, as far as the page can tell)."""
    from trainer.events import find_event
    from trainer.run_status import read_pid

    for run in [p.parent for p in Path(runs).glob("*/pid")] if Path(runs).exists() else []:
        pid = read_pid(run)
        if not pid or find_event(run / "events.jsonl", "finished") is not None:
            continue  # (never killpg(0): that is this very process group)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
