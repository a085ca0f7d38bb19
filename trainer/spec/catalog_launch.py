"""The "Accelerate launch" settings (kohya_ss's ``AccelerateLaunch``): how many processes and machines a run
uses and how accelerate starts them, plus TorchDynamo compilation. The page's run manager turns the process
settings into an ``accelerate launch`` command (``trainer.launch``); the trainer applies the dynamo ones.
"""
from __future__ import annotations

from .setting import Setting

DYNAMO_BACKENDS = ("no", "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs",
                   "ofi", "fx2trt", "onnxrt", "tensorrt", "ipex", "tvm")
DYNAMO_MODES = ("default", "reduce-overhead", "max-autotune")
MAX_GPU_ID = 128


def parse_gpu_ids(text: str) -> list[int]:
    """``"0,1"`` → [0, 1]; blank → [] (accelerate's choice). Whole numbers 0–128, each once, or "all"."""
    text = text.strip()
    if not text or text.lower() == "all":
        return []
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > MAX_GPU_ID:
            raise ValueError(f"{part!r} is not a GPU number (0–{MAX_GPU_ID}); write them like 0,1")
        if int(part) in ids:
            raise ValueError(f"GPU {part} is listed twice")
        ids.append(int(part))
    return ids


def parse_launch_args(text: str) -> list[str]:
    """The extra accelerate launch arguments as the shell would split them."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ValueError(f"cannot be split into arguments: {error}") from None
    if words and not words[0].startswith("-"):
        raise ValueError(f"{words[0]!r} is not an option; accelerate launch options start with --")
    return words


SECTION = "Accelerate launch"
LAUNCH = (
    Setting("num_processes", "int", 1, "Number of processes", tab="advanced", group="launch", section=SECTION,
            minimum=1, maximum=1024,
            help="Training processes in all, over all machines: one per GPU. Each takes whole batches of every "
                 "step, so a step trains batch × processes × accumulation images and an epoch has that many "
                 "fewer steps. More than 1 starts the run through accelerate launch."),
    Setting("num_machines", "int", 1, "Number of machines", tab="advanced", group="launch", section=SECTION,
            minimum=1, maximum=1024,
            help="Machines taking part. With more than 1, start the same job on each, giving each its "
                 "--machine_rank and the first one's --main_process_ip in Extra accelerate launch arguments."),
    Setting("multi_gpu", "bool", False, "Multi GPU", tab="advanced", group="launch", section=SECTION,
            help="Data-parallel training over several processes (accelerate's --multi_gpu). Implied when the "
                 "number of processes is more than 1; on a machine without GPUs the processes share the CPU."),
    Setting("gpu_ids", "str", "", "GPU IDs", tab="advanced", group="launch", section=SECTION, parser=parse_gpu_ids,
            help="Which GPUs of this machine to use, like 0,1. Blank: all of them."),
    Setting("main_process_port", "int", 0, "Main process port", tab="advanced", group="launch", section=SECTION,
            minimum=0, maximum=65535,
            help="The TCP port the processes meet on. 0: accelerate's default (29500)."),
    Setting("dynamo_backend", "choice", "no", "Dynamo backend", tab="advanced", group="launch", section=SECTION,
            choices=DYNAMO_BACKENDS,
            help="Compile the UNet with TorchDynamo (torch.compile) and this backend: inductor is the usual "
                 "choice on GPUs. The first steps are slow while it compiles. no: no compilation."),
    Setting("dynamo_mode", "choice", "default", "Dynamo mode", tab="advanced", group="launch", section=SECTION,
            choices=DYNAMO_MODES, visible_when=("dynamo_backend", DYNAMO_BACKENDS[1:]),
            help="How hard the compiler works: reduce-overhead uses CUDA graphs, max-autotune tries more kernels."),
    Setting("dynamo_use_fullgraph", "bool", False, "Dynamo use fullgraph", tab="advanced", group="launch",
            section=SECTION, visible_when=("dynamo_backend", DYNAMO_BACKENDS[1:]),
            help="Compile the UNet as one graph; fails where the model cannot be traced whole."),
    Setting("dynamo_use_dynamic", "bool", False, "Dynamo use dynamic", tab="advanced", group="launch",
            section=SECTION, visible_when=("dynamo_backend", DYNAMO_BACKENDS[1:]),
            help="Compile for changing shapes (several buckets) instead of recompiling per shape."),
    Setting("extra_accelerate_launch_args", "str", "", "Extra accelerate launch arguments", tab="advanced",
            group="launch", section=SECTION, parser=parse_launch_args,
            help="More accelerate launch options, as on its command line, e.g. --machine_rank 1 "
                 "--main_process_ip 10.0.0.1. Used only when the run starts through accelerate launch."),
)
