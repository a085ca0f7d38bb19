"""The command line that starts a training run: the trainer itself for one process, ``accelerate launch``
around it for several (kohya_ss's "Accelerate launch" settings), as the page's run manager runs it.

One process (the default) starts exactly as before: ``python -m trainer train JOB --run-dir DIR``. With
``num_processes`` > 1, ``num_machines`` > 1 or ``multi_gpu``, accelerate launch starts the processes (through
torch's elastic launcher) with ``--multi_gpu``: its data-parallel mode, which on a machine without GPUs runs
the processes on the CPU with the gloo backend (``--cpu`` would silently run one). Mixed precision and dynamo
are the trainer's own (read from the job), so the launcher is told ``no`` for both.
"""
from __future__ import annotations

from pathlib import Path

from trainer.spec.catalog_launch import parse_launch_args
from trainer.spec.sections import Job

ACCELERATE_LAUNCH = ("-m", "accelerate.commands.launch")  # `accelerate launch`, with the trainer's Python


def uses_launcher(job: Job) -> bool:
    launch = job.launch
    return launch.num_processes > 1 or launch.num_machines > 1 or launch.multi_gpu


def accelerate_flags(job: Job) -> list[str]:
    """accelerate launch's options for this job (before the trainer's module and arguments)."""
    launch = job.launch
    flags = ["--num_processes", str(launch.num_processes), "--num_machines", str(launch.num_machines),
             "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    if launch.gpu_ids.strip():
        flags += ["--gpu_ids", ",".join(part.strip() for part in launch.gpu_ids.split(","))]
    if launch.main_process_port:
        flags += ["--main_process_port", str(launch.main_process_port)]
    flags += ["--num_cpu_threads_per_process", str(launch.num_cpu_threads_per_process)]
    return flags + parse_launch_args(launch.extra_accelerate_launch_args)


def train_command(job: Job, trainer_command: list[str], job_path: str | Path, run_dir: str | Path) -> list[str]:
    """``trainer_command`` is how to run the trainer (``[python, "-m", "trainer"]``, or a script in tests)."""
    tail = ["train", str(job_path), "--run-dir", str(run_dir)]
    if not uses_launcher(job):
        return [*trainer_command, *tail]
    python, *program = trainer_command
    return [python, *ACCELERATE_LAUNCH, *accelerate_flags(job), *program, *tail]
