"""Training curves for TensorBoard (default) or Weights & Biases, fed from the event stream.

The wandb key is read from the environment (WANDB_API_KEY, which the page sets for the trainer process);
it is never written to the job, the metadata or the logs.
"""
from __future__ import annotations

from pathlib import Path
from trainer.spec.sections import Job


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

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
    def __init__(self, project: str, run_name: str, config: dict):
        import wandb  # checked to be installed before the run starts

        self.run = wandb.init(project=project, name=run_name, config=config)

    def on_event(self, event: dict) -> None:
        if event.get("type") != "step":
            return
        scalars = {"loss/current": event.get("loss"), "loss/average": event.get("loss_avg")}
        scalars.update({f"lr/{k}": v for k, v in (event.get("lr") or {}).items()})
        self.run.log({k: v for k, v in scalars.items() if v is not None}, step=event["step"])

    def close(self) -> None:
        self.run.finish()


def make_tracker(job: Job, run_dir: Path):
    """The tracker the job asks for; TensorBoard logs go to logging_dir, or run_dir/logs when it is blank."""
    if job.logging.log_with == "wandb":
        from trainer.spec import job_to_values, SETTINGS_BY_KEY

        config = {k: v for k, v in job_to_values(job).items()
                  if k in SETTINGS_BY_KEY and not SETTINGS_BY_KEY[k].secret}
        return WandbTracker("lora-loom", job.saving.output_name, config)
    log_dir = Path(job.logging.logging_dir).expanduser() if job.logging.logging_dir else Path(run_dir) / "logs"
    return TensorBoardTracker(log_dir / Path(run_dir).name)
