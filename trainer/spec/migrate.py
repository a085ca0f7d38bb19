"""Bring job values written by older versions of LoRA Loom up to the current ``spec_version``.

Each step is a small pure function from version N's dict to version N+1's. Version 1 is the first
published format, so there are no steps yet; a file from a newer LoRA Loom is refused with a clear message.
"""
from __future__ import annotations

from typing import Any, Callable

CURRENT_VERSION = 1

# version N → function turning a version-N dict into a version-(N+1) dict
STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` at CURRENT_VERSION; a missing spec_version means the current one."""
    version = values.get("spec_version", CURRENT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        return values  # the model reports the bad type with the key's name
    if version > CURRENT_VERSION:
        from .setting import Problem
        from .job import JobError

        raise JobError([Problem("spec_version", f"this job was written by a newer LoRA Loom (spec_version "
                                                f"{version}); this one reads up to {CURRENT_VERSION}")])
    while version < CURRENT_VERSION:
        if version not in STEPS:
            from .setting import Problem
            from .job import JobError

            raise JobError([Problem("spec_version", f"spec_version {version} is not a version LoRA Loom wrote")])
        values = STEPS[version](values)
        version += 1
        values["spec_version"] = version
    return values
