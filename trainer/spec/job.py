"""The job spec: a strict pydantic model generated from the settings, and its TOML file.

A job file holds ``spec_version`` plus any subset of the settings (missing keys take their defaults).
Unknown keys and bad values are errors naming the key. Secrets are never written.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from .catalog import SETTINGS, SETTINGS_BY_KEY
from .migrate import CURRENT_VERSION, migrate
from .sections import SECTION_CLASSES, Job
from .setting import GROUPS, Problem, Setting

SPEC_VERSION = CURRENT_VERSION
MAX_MESSAGE = 400  # a parser's message quoting a pasted megabyte is cut here
# Longest text a setting holds (a path, a name, a list of numbers; prompts, one a line): a pasted file is refused
# before any parser splits it.
MAX_TEXT_LENGTH = {"str": 4096, "path": 4096, "text": 100_000}


class JobError(Exception):
    """A job that cannot be used; ``problems`` names every setting at fault."""

    def __init__(self, problems: list[Problem]):
        self.problems = [p for p in problems if p.level == "error"]
        super().__init__("\n".join(str(p) for p in self.problems))


def defaults() -> dict[str, Any]:
    """Every setting at its default."""
    return {s.key: s.default for s in SETTINGS}


def _annotation(setting: Setting) -> Any:
    base: Any = {"str": str, "path": str, "text": str, "int": int, "float": float, "bool": bool}.get(setting.kind)
    if setting.kind == "choice" and not setting.custom_choices:
        base = Literal[setting.choices]  # type: ignore[valid-type]
    elif setting.kind == "choice":
        base = str  # a listed name or a module.Class, checked by the setting's parser
    return Optional[base] if setting.optional else base


def _field(setting: Setting):
    limits: dict[str, Any] = {}
    if setting.minimum is not None:
        limits["ge"] = setting.minimum
    if setting.maximum is not None:
        limits["le"] = setting.maximum
    if setting.kind in MAX_TEXT_LENGTH:
        limits["max_length"] = MAX_TEXT_LENGTH[setting.kind]
    if setting.kind == "path":
        limits["pattern"] = r"^[^\x00]*$"  # no file system takes a NUL in a path (Python raises on one)
    return (_annotation(setting), Field(default=setting.default, **limits))


def _parsed_text_validator(setting: Setting):
    def check(cls, value):
        if value is not None and setting.parser is not None:
            setting.parser(value)  # raises ValueError with a readable message
        return value

    return field_validator(setting.key)(check)


def _build_model() -> type[BaseModel]:
    fields: dict[str, Any] = {s.key: _field(s) for s in SETTINGS}
    validators = {f"_check_{s.key}": _parsed_text_validator(s) for s in SETTINGS if s.parser}
    return create_model(
        "JobModel",
        __config__=ConfigDict(extra="forbid", strict=True, frozen=True),
        __validators__=validators,
        spec_version=(int, Field(default=SPEC_VERSION)),
        **fields,
    )


# Validates field by field (types, ranges, parsed text); the typed ``Job`` is built from what it accepts.
JobModel = _build_model()


def _message_for(setting: Setting | None, error: Any) -> str:
    if setting is None:
        return "is not a setting LoRA Loom knows (check the spelling)"
    if error["type"] == "string_too_long":
        return (f"is {len(error.get('input') or ''):,} characters long; at most "
                f"{MAX_TEXT_LENGTH[setting.kind]:,} are allowed here")
    if error["type"] == "string_pattern_mismatch":
        return "holds a NUL character, which no path can hold"
    if error["type"].startswith("value_error"):
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"
    got = error.get("input")
    return f"must be {setting.describe_range()}" + (f" (got {_short(got)})" if got is not None else " (got blank)")


def _short(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it: a huge one (a pasted file) is cut, not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text):,} characters)"


def problems_from_validation(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        key = str(item["loc"][0]) if item["loc"] else None
        if key == "spec_version":
            problems.append(Problem(key, f"must be a whole number (this version writes {SPEC_VERSION})"))
            continue
        setting = SETTINGS_BY_KEY.get(key) if key else None
        if item["type"] == "extra_forbidden":
            setting = None
        problems.append(Problem(key, _message_for(setting, item)))
    # one message per key is enough (a union type reports each branch)
    seen, unique = set(), []
    for p in problems:
        if p.setting not in seen:
            seen.add(p.setting)
            unique.append(p)
    return unique


def job_from_values(values: dict[str, Any]) -> Job:
    """Build a Job from a dict of settings (missing keys → defaults). Raises JobError naming each bad key."""
    values = migrate(dict(values))
    for setting in SETTINGS:  # TOML has no null: a blank optional setting is written as ""
        if setting.optional and values.get(setting.key) == "":
            values[setting.key] = None
    extra = values.get("additional_parameters")
    if isinstance(extra, str) and extra.strip():
        from .checks import parse_additional_parameters

        overrides, problems = parse_additional_parameters(extra, SETTINGS_BY_KEY)
        if problems:
            raise JobError(problems)
        values.update(overrides)
    else:
        overrides = {}
    try:
        checked = JobModel(**values)
    except ValidationError as error:
        raise JobError([_from_overrides(p, overrides) for p in problems_from_validation(error)]) from None
    return job_of(checked.model_dump())


def job_of(flat: dict[str, Any]) -> Job:
    """The typed job for a complete, already validated dict of settings."""
    sections = {group: SECTION_CLASSES[group](**{s.key: flat[s.key] for s in SETTINGS if s.group == group})
                for group in GROUPS}
    return Job(spec_version=flat.get("spec_version", SPEC_VERSION), **sections)


def _from_overrides(problem: Problem, overrides: dict[str, Any]) -> Problem:
    """A bad value that came from Additional parameters is blamed there (the field itself holds another)."""
    if problem.setting not in overrides:
        return problem
    return Problem("additional_parameters", f"--{problem.setting} {problem.message}", problem.level)


def read_job_toml(path: str | Path) -> dict[str, Any]:
    """The raw key → value table of a job file; a file that is not valid TOML is a JobError."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise JobError([Problem(None, f"job file {path} does not exist")]) from None
    except tomllib.TOMLDecodeError as error:
        raise JobError([Problem(None, f"{path} is not valid TOML: {error}")]) from None


def load_job(path: str | Path) -> Job:
    """Read and validate a job file."""
    return job_from_values(read_job_toml(path))


def job_to_values(job: Job) -> dict[str, Any]:
    """The job as one flat dict (kohya_ss's key names), as the job file holds it."""
    return {"spec_version": job.spec_version, **{s.key: job.get(s.key) for s in SETTINGS}}


def toml_text(values: dict[str, Any]) -> str:
    """TOML for a job: spec_version first, then settings in schema order; secrets left out.

    A blank (None) is left out when blank is the default, and written as "" when it is not (so a blank
    unet_lr, meaning "use learning_rate", survives the round trip)."""
    table: dict[str, Any] = {"spec_version": SPEC_VERSION}
    for setting in SETTINGS:
        if setting.key not in values or setting.secret:
            continue
        value = values[setting.key]
        if value is None:
            if setting.default is None:
                continue
            value = ""
        table[setting.key] = value
    return tomli_w.dumps(table)


def write_job_toml(values: dict[str, Any], path: str | Path) -> Path:
    """Validate ``values`` and write them as a job file (atomically). Raises JobError if they are invalid."""
    job = job_from_values(values)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(toml_text(job_to_values(job)), encoding="utf-8")
    tmp.replace(path)
    return path


def sparse_values(values: dict[str, Any]) -> dict[str, Any]:
    """Only the settings that differ from their defaults (what a preset stores); secrets dropped."""
    return {
        s.key: values[s.key]
        for s in SETTINGS
        if s.key in values and values[s.key] != s.default and not s.secret
    }
