"""Data-parallel training on several processes through accelerate: who this process is, its share of each
epoch's batches, the gradient average, the run's requests agreed on by every process, and what to say when
a process of the run has gone.

A run under ``accelerate launch`` (or ``torchrun``) has ``WORLD_SIZE`` > 1 in its environment; only then is an
``accelerate.Accelerator`` built (it sets up the process group: gloo on CPUs, nccl on GPUs). A plain run gets
:class:`SingleProcess`, whose methods do nothing, and never imports accelerate. Each process takes whole
batches of the same ordered epoch (accelerate's ``BatchSamplerShard``: process r takes batches r, r+N, …, the
last round topped up from the start), so a global batch is ``batch × processes`` images and an epoch has
⌈batches ÷ processes⌉ batches per process, as in sd-scripts. Gradients are averaged over the processes with
``accelerator.reduce`` before each optimizer step (the LoRA lives inside the UNet and text encoder, whose
forward passes are not wrapped, so DDP's hooks would not fire; sd-scripts averages the same way).
"""
from __future__ import annotations

import datetime
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from trainer.run_status import PIDS_FILE

TIMEOUT_ENV = "LORA_LOOM_COLLECTIVE_TIMEOUT_S"  # how long a process waits for the others (sampling is main-only)
DEFAULT_TIMEOUT_S = 1800.0
ERROR_FILE = "process-{rank}-error.txt"  # a non-main process's failure, for the main one to report
REPORTED_FILE = ".failure-reported"  # made by the one process that writes a lost run's last events


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher (accelerate launch, torchrun) told this process through its environment."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    return LaunchEnv(int(env.get("WORLD_SIZE", 1) or 1), int(env.get("RANK", 0) or 0),
                     int(env.get("LOCAL_RANK", 0) or 0))


def process_seed(seed: int, rank: int) -> int:
    """The noise seed of process ``rank``: the run's seed for the main one (so it draws what one process
    would), a different one for each other process (different noise for different images)."""
    return seed if rank == 0 else (seed + 1_000_003 * rank) % 2**63


@dataclass(frozen=True)
class Peer:
    rank: int
    host: str
    pid: int


class _ShardList(list):
    drop_last = False  # what BatchSamplerShard reads from a batch sampler


class SingleProcess:
    """One process: the whole epoch, its own gradients, its own requests. Nothing to synchronise."""

    def __init__(self) -> None:
        self.world_size, self.rank, self.is_main = 1, 0, True
        self.device: torch.device | None = None  # the session chooses
        self.peers: list[Peer] = []

    def shard(self, items: list) -> list:
        return items

    def local_batches(self, batches: int) -> int:
        return batches

    def all_finite(self, loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()).all())

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        return None

    def share_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        return None

    def mean(self, value: float) -> float:
        return value

    def agree(self, stop: bool, sample: bool, save: bool) -> tuple[bool, bool, bool]:
        return stop, sample, save

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


class ManyProcesses(SingleProcess):
    """One of several processes, through an accelerate ``Accelerator`` (built here, so only for WORLD_SIZE > 1)."""

    def __init__(self, timeout_s: float | None = None):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        seconds = timeout_s if timeout_s is not None else float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        kwargs = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=seconds))
        # Mixed precision stays the trainer's own (trainer.precision: CPU fallback, full_fp16's scaler).
        self.accelerator = Accelerator(cpu=not _has_gpu(), mixed_precision="no", kwargs_handlers=[kwargs])
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.peers = [Peer(*p) for p in self.gather((self.rank, socket.gethostname(), os.getpid()))]

    def shard(self, items: list) -> list:
        from accelerate.data_loader import BatchSamplerShard

        return list(BatchSamplerShard(_ShardList(items), self.world_size, self.rank, split_batches=False,
                                      even_batches=True))

    def local_batches(self, batches: int) -> int:
        return -(-batches // self.world_size)

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values.to(self.device), reduction="sum").cpu()

    def all_finite(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
        return bool(self._sum(bad)[0] == 0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Every process's gradients replaced by their mean over the processes (one flat all-reduce)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def share_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Every process starts from the main one's LoRA weights (one flat broadcast)."""
        from accelerate.utils import broadcast

        tensors = [p.data for p in params]
        if not tensors:
            return
        flat = broadcast(torch.cat([t.reshape(-1).float() for t in tensors]).to(self.device), from_process=0)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def mean(self, value: float) -> float:
        """``value`` (a step's loss) averaged over the processes."""
        return float(self._sum(torch.tensor([value], dtype=torch.float64))[0]) / self.world_size

    def agree(self, stop: bool, sample: bool, save: bool) -> tuple[bool, bool, bool]:
        """(stop, sample, save) as asked of any process: what every process then does at this step."""
        total = self._sum(torch.tensor([float(stop), float(sample), float(save)]))
        return bool(total[0]), bool(total[1]), bool(total[2])

    def gather(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


TRACE_ENV = "LORA_LOOM_BATCH_TRACE"  # a folder: each process writes the images of every batch it trains on


def batch_tracer(rank: int) -> Callable[[int, int, list[str]], None] | None:
    """A diagnostic: with LORA_LOOM_BATCH_TRACE set, each process appends ``{rank, pid, epoch, index, images}``
    per batch to ``batches-<rank>.jsonl`` there (which process trained on which images)."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return None
    path = Path(folder) / f"batches-{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(epoch: int, index: int, images: list[str]) -> None:
        import json

        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"rank": rank, "pid": os.getpid(), "epoch": epoch, "index": index,
                                     "images": images}) + "\n")

    return record


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def start_processes(env: LaunchEnv | None = None) -> SingleProcess:
    """:class:`ManyProcesses` under a launcher with more than one process, else :class:`SingleProcess`."""
    env = env or launch_env()
    return ManyProcesses() if env.world_size > 1 else SingleProcess()


# ---------------------------------------------------------------- when a process is gone


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def dead_peers(peers: list[Peer], me: int) -> list[Peer]:
    """The other processes of this machine that are no longer running."""
    host = socket.gethostname()
    return [p for p in peers if p.rank != me and p.host == host and not pid_alive(p.pid)]


def lost_message(peers: list[Peer], me: int, run_dir: Path, error: BaseException | None = None,
                 wait_s: float = 3.0) -> str:
    """What went wrong with the other processes, naming them: a failure one of them wrote down, one that
    is no longer running, or (neither to be seen from here) the lost connection."""
    total = len(peers) or 1
    deadline = time.monotonic() + wait_s
    while True:
        told = [(p, (run_dir / ERROR_FILE.format(rank=p.rank))) for p in peers if p.rank != me]
        failed = [(p, f.read_text(encoding="utf-8").strip()) for p, f in told if f.is_file()]
        dead = dead_peers(peers, me)
        if failed or dead or time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # a process that has just failed takes a moment to write or to exit
    parts = [f"process {p.rank} of {total} (pid {p.pid} on {p.host}) failed: {text}" for p, text in failed]
    named = {p.rank for p, _ in failed}
    parts += [f"process {p.rank} of {total} (pid {p.pid}) ended unexpectedly (killed, or out of memory)"
              for p in dead if p.rank not in named]
    if not parts:
        detail = f" ({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''})" if error else ""
        return f"lost the connection to the other processes of this {total}-process run{detail}"
    return "; ".join(parts) + "; the run cannot go on without it"


def write_pids(run_dir: Path, peers: list[Peer]) -> None:
    """This machine's trainer pids in rank order, main first (read by the page's run manager)."""
    host = socket.gethostname()
    (run_dir / PIDS_FILE).write_text(" ".join(str(p.pid) for p in peers if p.host == host), encoding="utf-8")


def claim_report(run_dir: Path) -> bool:
    """True for the one process that gets to write a lost run's last events."""
    try:
        os.close(os.open(run_dir / REPORTED_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Watchdog:
    """A thread that notices another process of this machine has gone while this one may be blocked (in a
    collective that waits for it, or in the launcher's shutdown): it calls ``on_lost(peers)`` once, from
    the thread, after ``grace_s`` in which the main thread had the chance to report the failure itself."""

    def __init__(self, peers: list[Peer], me: int, on_lost: Callable[[list[Peer]], None],
                 interval_s: float = 1.0, grace_s: float = 10.0):
        self.peers, self.me, self.on_lost = peers, me, on_lost
        self.interval_s, self.grace_s = interval_s, grace_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lora-loom-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            gone = dead_peers(self.peers, self.me)
            if gone:
                if not self._stop.wait(self.grace_s):
                    self.on_lost(gone)
                return
