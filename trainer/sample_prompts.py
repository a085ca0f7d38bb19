"""Sample prompt lines with kohya's options, parsed without torch (the page validates them live).

One prompt per line; blank lines and lines starting with ``#`` are skipped. Options follow the prompt,
each introduced by `` --``: ``--n`` negative prompt, ``--w``/``--h`` size, ``--d`` seed, ``--l`` CFG
scale, ``--s`` steps, ``--ss`` sampler for that prompt.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_STEPS = 30
DEFAULT_SIZE = 512
DEFAULT_SCALE = 7.5
_OPTION = re.compile(r"^(ss|n|w|h|d|l|s)\s+(.*)$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    seed: int | None = None
    scale: float = DEFAULT_SCALE
    steps: int = DEFAULT_STEPS
    sampler: str | None = None
    index: int = 0


def _size(value: str) -> int:
    """Sizes are floored to a multiple of 8, at least 64."""
    return max(64, int(value) // 8 * 8)


def parse_sample_prompt_line(line: str, index: int = 0, line_number: int = 1) -> SamplePrompt:
    parts = line.split(" --")
    fields: dict = {"prompt": parts[0].strip(), "index": index}
    for part in parts[1:]:
        match = _OPTION.match(part.strip())
        if not match:
            raise ValueError(f"line {line_number}: unknown option --{part.strip().split(' ')[0]} "
                             f"(known: --n --w --h --d --l --s --ss)")
        name, value = match.group(1).lower(), match.group(2).strip()
        try:
            if name == "n":
                fields["negative_prompt"] = value
            elif name == "w":
                fields["width"] = _size(value)
            elif name == "h":
                fields["height"] = _size(value)
            elif name == "d":
                fields["seed"] = int(value)
            elif name == "l":
                fields["scale"] = float(value)
            elif name == "s":
                fields["steps"] = min(1000, max(1, int(value)))
            elif name == "ss":
                fields["sampler"] = value
        except ValueError:
            raise ValueError(f"line {line_number}: --{name} needs a number, got {value!r}") from None
    return SamplePrompt(**fields)


def parse_sample_prompts(text: str) -> list[SamplePrompt]:
    """Every prompt of the text, numbered from 0 in order; raises ValueError naming the bad line."""
    prompts: list[SamplePrompt] = []
    for line_number, line in enumerate((text or "").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        prompts.append(parse_sample_prompt_line(stripped, len(prompts), line_number))
    return prompts
