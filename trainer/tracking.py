"""Training curves for TensorBoard (default) or Weights & Biases, fed from the event stream.

The wandb key is read from the environment (WANDB_API_KEY, which the page sets for the trainer process);
it is never written to the job, the metadata or the logs.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

from trainer.spec.sections import Job
from trainer.spec.setting import SettingError


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config: dict | None = None, **init_kwargs):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), **init_kwargs)
        if config is not None:  # log_config: the run's settings, as accelerate's store_init_configuration
            self.writer.add_text("config", json.dumps(config, sort_keys=True, default=str))

    def on_event(self, event: dict) -> None:
        if event.get("type") != "step":
            return
        step = event["step"]
        if event.get("loss") is not None:
            self.writer.add_scalar("loss/current", event["loss"], step)
        if event.get("loss_avg") is not None:
            self.writer.add_scalar("loss/average", event["loss_avg"], step)
        for group, lr in (event.get("lr") or {}).items():
            self.writer.add_scalar(f"lr/{group}", lr, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, **init_kwargs):
        import wandb  # checked to be installed before the run starts

        self.run = wandb.init(**init_kwargs)

    def on_event(self, event: dict) -> None:
        if event.get("type") != "step":
            return
        scalars = {"loss/current": event.get("loss"), "loss/average": event.get("loss_avg")}
        scalars.update({f"lr/{k}": v for k, v in (event.get("lr") or {}).items()})
        self.run.log({k: v for k, v in scalars.items() if v is not None}, step=event["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Several trackers fed the same events (log_with = "all")."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def on_event(self, event: dict) -> None:
        for tracker in self.trackers:
            tracker.on_event(event)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def tracker_names(job: Job) -> list[str]:
    return ["tensorboard", "wandb"] if job.logging.log_with == "all" else [job.logging.log_with]


def read_tracker_config(path: str) -> dict[str, dict]:
    """log_tracker_config: a TOML file of one table of init arguments per tracker (``[wandb]`` entity, tags …;
    ``[tensorboard]`` SummaryWriter arguments), as sd-scripts passes it to accelerate's ``init_trackers``."""
    if not path:
        return {}
    try:
        table = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise SettingError(f"cannot read {path}: {error}", "log_tracker_config") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingError(f"{path} is not valid TOML: {error}", "log_tracker_config") from None
    unknown = [key for key, value in table.items() if key not in ("tensorboard", "wandb") or not isinstance(value, dict)]
    if unknown:
        raise SettingError(f"{path}: expected [tensorboard] and/or [wandb] tables of arguments, found "
                           f"{', '.join(unknown)}", "log_tracker_config")
    return table


def logged_config(job: Job) -> dict | None:
    """The settings sent to the tracker with log_config (secrets left out); None without it."""
    if not job.logging.log_config:
        return None
    from trainer.spec import job_to_values, SETTINGS_BY_KEY

    return {k: v for k, v in job_to_values(job).items() if k in SETTINGS_BY_KEY and not SETTINGS_BY_KEY[k].secret}


def wandb_init_kwargs(job: Job) -> dict:
    """wandb.init's arguments: project = log_tracker_name (default "lora-loom"), name = wandb_run_name (default:
    the output name, as kohya_ss), config with log_config, then the [wandb] table of log_tracker_config."""
    kwargs: dict = {"project": job.logging.log_tracker_name or "lora-loom",
                    "name": job.logging.wandb_run_name or job.saving.output_name}
    config = logged_config(job)
    if config is not None:
        kwargs["config"] = config
    return {**kwargs, **read_tracker_config(job.logging.log_tracker_config).get("wandb", {})}


def tensorboard_dir(job: Job, run_dir: Path) -> Path:
    """logging_dir (or run_dir/logs) / the run's folder name [/ log_tracker_name, accelerate's project folder]."""
    log_dir = Path(job.logging.logging_dir).expanduser() if job.logging.logging_dir else Path(run_dir) / "logs"
    folder = log_dir / Path(run_dir).name
    return folder / job.logging.log_tracker_name if job.logging.log_tracker_name else folder


def make_tracker(job: Job, run_dir: Path):
    """The tracker(s) the job asks for (log_with tensorboard, wandb or all)."""
    trackers: list = []
    for name in tracker_names(job):
        if name == "wandb":
            trackers.append(WandbTracker(**wandb_init_kwargs(job)))
        else:
            extra = read_tracker_config(job.logging.log_tracker_config).get("tensorboard", {})
            trackers.append(TensorBoardTracker(tensorboard_dir(job, run_dir), logged_config(job), **extra))
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)
