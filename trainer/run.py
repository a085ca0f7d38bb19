"""One training run from start to ``finished``: signals, the session, the loop, and errors turned into
events a person can act on. The first SIGINT asks for a graceful stop (finish the step, save, exit); a
second one ends the process at once. SIGUSR1 asks for samples and SIGUSR2 for a LoRA file after the current
step (the page's Sample now / Save now); the handlers are in place before the ``started`` event.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from trainer.distributed import SingleProcess
from trainer.events import EventWriter
from trainer.spec.sections import Job

# What the page sends the trainer's own process (never its group: data-loader workers would die of these).
REQUEST_SIGNALS = {"sample": getattr(signal, "SIGUSR1", None), "save": getattr(signal, "SIGUSR2", None)}


class RunRequests:
    """What was asked of the running trainer from outside: stop, draw samples now, save the LoRA now.

    The signal handlers of :func:`run_training` set the flags (SIGINT, SIGUSR1, SIGUSR2, which the page sends);
    the loop answers them once the optimizer step in progress is done.
    """

    def __init__(self) -> None:
        self.stop = False
        self.sample = False
        self.save = False


def catch_early_stop() -> RunRequests:
    """Remember a stop (SIGINT) that comes before :func:`run_training` puts its own handlers in place: while
    Python imports the trainer, a stop would otherwise raise KeyboardInterrupt and end the process without a
    ``finished`` event. ``train`` installs this first thing and hands the requests on."""
    requests = RunRequests()

    def on_sigint(signum, frame):
        requests.stop = True

    signal.signal(signal.SIGINT, on_sigint)
    return requests
class ProcessLost(RuntimeError):
    """The launcher ended this process (SIGTERM): another process of the run has failed, or the launch was
    stopped."""


# A second SIGINT this soon after the first is the same Ctrl-C, forwarded by the launcher to its workers.
SAME_SIGINT_S = 2.0


def _error_setting(error: Exception) -> tuple[str, str | None]:
    """(message, setting) for the errors that setup and the loop raise on purpose."""
    from trainer.data.folders import DataError
    from trainer.models.loading import ModelLoadError
    from trainer.spec.setting import SettingError

    if isinstance(error, SettingError):  # TrainingError, OptimizerSettingError, network settings
        return str(error), error.setting
    if isinstance(error, DataError):
        return str(error), getattr(error, "setting", None) or "train_data_dir"
    if isinstance(error, ModelLoadError):
        return str(error), error.setting  # the model path, or vae / v2 when they are at fault
    return "", None


class _Ending:
    """The last events of a run, written once: by the main thread, or by the watchdog when the main thread
    is stuck waiting for a process that has gone."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing = False  # set as soon as a failure is being handled (SIGTERM is then no news)
        self.done = False


def run_training(job: Job, run_dir: Path, events: EventWriter, processes: SingleProcess | None = None,
                 requests: RunRequests | None = None) -> str:
    """Train ``job``; returns "completed", "stopped" or "failed" after emitting ``finished``. ``requests``: what
    was asked before this was called (:func:`catch_early_stop`).

    With several processes (``processes``, from :func:`trainer.distributed.start_processes`) every process
    runs this; only the main one's ``events`` write anything (the others get a writer without a file)."""
    requests = requests or RunRequests()
    ending = _Ending()
    first_sigint = [0.0]
    many = processes is not None and processes.world_size > 1

    def on_sigint(signum, frame):
        if requests.stop:
            if many and time.monotonic() - first_sigint[0] < SAME_SIGINT_S:
                return
            raise KeyboardInterrupt
        requests.stop = True
        first_sigint[0] = time.monotonic()
        events.status("stopping", note="stop requested: finishing the current step, then saving")

    def on_request(signum, frame):  # only a flag: the page has said so already, the loop answers
        setattr(requests, next(name for name, number in REQUEST_SIGNALS.items() if number == signum), True)

    def on_sigterm(signum, frame):
        if not ending.failing:
            raise ProcessLost("the launcher ended this process")

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
    for number in filter(None, REQUEST_SIGNALS.values()):
        previous[number] = signal.signal(number, on_request)
    saver = None
    tracker = None
    watchdog = None
    try:
        from trainer.loop import train
        from trainer.saving import Saver
        from trainer.session import build_session, cache_latents, start_process_noise
        from trainer.tracking import make_tracker

        if processes is None:
            processes = SingleProcess()
        if many:
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
            watchdog = _start_watchdog(processes, run_dir, events, ending)
        session = build_session(job, run_dir, events, processes)
        cache_latents(session, events)
        start_process_noise(session)
        saver = Saver(session, events)
        if job.saving.resume:
            saver.load_state(Path(job.saving.resume).expanduser())
        if processes.is_main:
            tracker = make_tracker(job, run_dir)
            events.listeners.append(tracker.on_event)
        requests.stop = processes.agree(requests.stop, False, False)[0]  # every process, or none
        if requests.stop:
            saver.save_final(saver.start_step, saver.start_epoch, stopped=True, batches_done=saver.skip_batches)
            status = "stopped"
        else:
            status = train(session, events, requests, saver)
        processes.barrier()  # every process is done before any leaves (the watchdog would call it lost)
        from trainer.memory_plan import memory_report

        with ending.lock:
            ending.done = True
            events.emit("finished", status=status, outputs=saver.outputs,
                        memory=memory_report(session.precision.device.type, session.memory_estimate))
        return status
    except KeyboardInterrupt:
        with ending.lock:
            ending.done = True
            events.emit("finished", status="stopped", outputs=saver.outputs if saver else [],
                        reason="stopped twice: ended at once without saving")
        return "stopped"
    except Exception as error:  # noqa: BLE001 - every failure must end in an event, not only a traceback
        ending.failing = True
        message, setting = _error_setting(error)
        lost = many and not message and _looks_lost(error)
        if many and processes is not None and not processes.is_main and not lost:
            _leave_message(processes, run_dir, message or f"{type(error).__name__}: {error}")
        traceback.print_exc(file=sys.stderr)
        if lost and processes is not None:
            from trainer.distributed import lost_message

            message = lost_message(processes.peers, processes.rank, run_dir, error, wait_s=3.0)
            if not processes.is_main:
                _take_over_report(processes, run_dir, message, ending)
        if not message:
            message = f"unexpected {type(error).__name__}: {error} (the full traceback is in the trainer log)"
        with ending.lock:
            if not ending.done:
                ending.done = True
                events.error(message, setting)
                events.emit("finished", status="failed", outputs=saver.outputs if saver else [])
        return "failed"
    finally:
        if watchdog is not None:
            watchdog.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if tracker is not None:
            tracker.close()
        if many and processes is not None and not ending.failing:
            processes.close()


def _looks_lost(error: Exception) -> bool:
    """Whether an error says another process has gone (the collective's connection, the launcher's SIGTERM)
    rather than what went wrong in this one."""
    text = str(error).lower()
    return isinstance(error, ProcessLost) or "gloo" in text or "nccl" in text or "connection" in text \
        or type(error).__name__ in ("DistBackendError", "DistNetworkError", "DistError")


def _leave_message(processes: SingleProcess, run_dir: Path, message: str) -> None:
    """A process other than the main one failed by itself: its message, for the main one to report."""
    from trainer.distributed import ERROR_FILE

    try:
        (run_dir / ERROR_FILE.format(rank=processes.rank)).write_text(message, encoding="utf-8")
    except OSError:
        pass  # the main process then reports the process as gone, without its message


def _take_over_report(processes: SingleProcess, run_dir: Path, message: str, ending: _Ending) -> None:
    """When the main process itself has gone, one of the others writes the run's last events in its place."""
    from trainer.distributed import claim_report, dead_peers

    if any(p.rank == 0 for p in dead_peers(processes.peers, processes.rank)) and claim_report(run_dir):
        _write_last_events(run_dir, message)
        ending.done = True


def _write_last_events(run_dir: Path, message: str) -> None:
    """``error`` and ``finished: failed`` appended to the run's events by a process that is not the main one."""
    from trainer.events import EVENTS_FILE

    path = run_dir / EVENTS_FILE
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("ab") as handle:  # a line the main process did not finish stays on its own
            handle.write(b"\n")
    with EventWriter(path) as writer:
        writer.error(message, None)
        writer.emit("finished", status="failed", outputs=[])


def _start_watchdog(processes: SingleProcess, run_dir: Path, events: EventWriter, ending: _Ending):
    """The thread that ends this process with the run's last events when another process has gone and this
    one is stuck (blocked waiting for it) instead of failing by itself."""
    from trainer.distributed import Watchdog, claim_report, lost_message

    def on_lost(gone) -> None:
        with ending.lock:
            if ending.done:
                return
            ending.done = ending.failing = True
            message = lost_message(processes.peers, processes.rank, run_dir, wait_s=0.0)
            if processes.is_main:
                events.error(message, None)
                events.emit("finished", status="failed", outputs=[])
            elif any(p.rank == 0 for p in gone) and claim_report(run_dir):
                _write_last_events(run_dir, message)
        print(f"process {processes.rank}: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    if processes.is_main:
        from trainer.distributed import write_pids

        write_pids(run_dir, processes.peers)
    return Watchdog(processes.peers, processes.rank, on_lost).start()
