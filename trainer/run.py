"""One training run from start to ``finished``: signals, the session, the loop, and errors turned into
events a person can act on. The first SIGINT asks for a graceful stop (finish the step, save, exit); a
second one ends the process at once. SIGUSR1 asks for samples and SIGUSR2 for a LoRA file after the current
step (the page's Sample now / Save now); the handlers are in place before the ``started`` event.
"""
from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path

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


def run_training(job: Job, run_dir: Path, events: EventWriter) -> str:
    """Train ``job``; returns "completed", "stopped" or "failed" after emitting ``finished``."""
    requests = RunRequests()

    def on_sigint(signum, frame):
        if requests.stop:
            raise KeyboardInterrupt
        requests.stop = True
        events.status("stopping", note="stop requested: finishing the current step, then saving")

    def on_request(signum, frame):  # only a flag: the page has said so already, the loop answers
        setattr(requests, next(name for name, number in REQUEST_SIGNALS.items() if number == signum), True)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
    for number in filter(None, REQUEST_SIGNALS.values()):
        previous[number] = signal.signal(number, on_request)
    saver = None
    tracker = None
    try:
        from trainer.loop import train
        from trainer.saving import Saver
        from trainer.session import build_session, cache_latents
        from trainer.tracking import make_tracker

        session = build_session(job, run_dir, events)
        cache_latents(session, events)
        saver = Saver(session, events)
        if job.saving.resume:
            saver.load_state(Path(job.saving.resume).expanduser())
        tracker = make_tracker(job, run_dir)
        events.listeners.append(tracker.on_event)
        if requests.stop:
            saver.save_final(saver.start_step, saver.start_epoch, stopped=True, batches_done=saver.skip_batches)
            status = "stopped"
        else:
            status = train(session, events, requests, saver)
        from trainer.memory_plan import memory_report

        events.emit("finished", status=status, outputs=saver.outputs,
                    memory=memory_report(session.precision.device.type, session.memory_estimate))
        return status
    except KeyboardInterrupt:
        events.emit("finished", status="stopped", outputs=saver.outputs if saver else [],
                    reason="stopped twice: ended at once without saving")
        return "stopped"
    except Exception as error:  # noqa: BLE001 - every failure must end in an event, not only a traceback
        message, setting = _error_setting(error)
        traceback.print_exc(file=sys.stderr)
        if not message:
            message = f"unexpected {type(error).__name__}: {error} (the full traceback is in the trainer log)"
        events.error(message, setting)
        events.emit("finished", status="failed", outputs=saver.outputs if saver else [])
        return "failed"
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if tracker is not None:
            tracker.close()
