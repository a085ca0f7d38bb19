"""Import and export of kohya_ss LoRA config files (the flat JSON its 💾 button and presets write).

Our setting names are kohya_ss's keys, so most of an import is type conversion: kohya files hold numbers as
strings ("0.0001", "1"), whole numbers as floats (64.0) and blanks as "". Old key names are renamed, kohya's
LoRA type names are mapped onto ours, and every key that cannot be mapped is reported with a reason, never
silently dropped. A value our schema rejects (out of range, unknown choice) is reported and left at our default,
so one odd value never sinks the whole import. Facts: ../shared/reference/kohya-gui-fields.md §2, §3.
"""
from __future__ import annotations

import json
import tomllib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.kohya_unmapped import Unmapped, explain_unmapped, is_neutral
from trainer.spec import SETTINGS, SETTINGS_BY_KEY, JobError, job_from_values, job_to_values, write_job_toml
from trainer.spec.checks import parse_additional_parameters
from trainer.spec.network_checks import check_network_options
from trainer.spec.rules import lycoris_algo
from trainer.spec.tables import KOHYA_LOKR, LORA_FA, LYCORIS_TYPES

# Old kohya_ss key names → today's (kohya's own `update_my_data` migration, plus renamed block fields).
RENAMED_KEYS = {"lora_network_weights": "network_weights", "conv_dims": "conv_block_dims",
                "stop_text_encoder_training_pct": "stop_text_encoder_training", "conv_alphas": "conv_block_alphas"}

LORA_TYPE_FROM_KOHYA = {  # "LoCon" is the legacy name kohya_ss migrates to LyCORIS/LoCon
    "Standard": "Standard", "LoCon": "LoCon", "Kohya LoCon": "LoCon", "LyCORIS/LoCon": "LoCon",
    "LoHa": "LoHa", "Kohya LoHa": "LoHa", "LyCORIS/LoHa": "LoHa",
    "DyLoRA": "DyLoRA", "Kohya DyLoRA": "DyLoRA", "LyCORIS/DyLoRA": "DyLoRA",
    KOHYA_LOKR: KOHYA_LOKR, LORA_FA: LORA_FA,
    **{name: name for name in LYCORIS_TYPES},
}
# SD-family types kohya_ss offers that LoRA Loom does not train (an import of one is refused as a whole):
# none left (the table stays for the reason a type that a later kohya_ss adds would be given).
REFUSED_LORA_TYPES: dict[str, str] = {}
# networks.lora with conv_dim (Kohya LoCon) and networks.dylora take block-wise dims, as ours do; kohya_ss
# allows its own "Kohya LoHa" only for SDXL, so LoHa goes out as the LyCORIS one.
LORA_TYPE_TO_KOHYA = {"Standard": "Standard", "LoCon": "Kohya LoCon", "LoHa": "LyCORIS/LoHa",
                      "DyLoRA": "Kohya DyLoRA", KOHYA_LOKR: KOHYA_LOKR, LORA_FA: LORA_FA,
                      **{name: name for name in LYCORIS_TYPES}}

REFUSED_FAMILY_CHECKBOXES = {"flux1_checkbox": "Flux.1", "sd3_checkbox": "SD3",
                             "hunyuan_image_checkbox": "HunyuanImage-2.1", "anima_checkbox": "Anima",
                             "lumina_checkbox": "Lumina"}
REFUSED_FAMILY_LORA_TYPES = {"Flux1": "Flux.1", "Flux1 OFT": "Flux.1", "Anima": "Anima", "Lumina": "Lumina",
                             "HunyuanImage-2.1": "HunyuanImage-2.1"}
# Settings where kohya_ss writes 0 (or "") for "unset" and we write a blank (None) or, for clip_skip, 1.
ZERO_MEANS_BLANK = frozenset({"seed", "max_train_epochs", "lr_scheduler_num_cycles"})
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


REJECTED = "not accepted by LoRA Loom"  # how the report of a value the schema refuses begins


class KohyaImportError(ValueError):
    """A kohya_ss config that cannot be imported at all (unreadable, not a config, unsupported model family)."""


@dataclass
class ImportResult:
    """``values``: LoRA Loom settings (only keys of our schema, valid for ``job_from_values``)."""

    values: dict[str, Any]
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def read_kohya_config(source: str | Path | dict) -> tuple[dict[str, Any], str]:
    """(the config as a dict, a label for messages) from a path to a JSON file or an already-read dict."""
    if isinstance(source, dict):
        return dict(source), "the kohya_ss config"
    path = Path(source)
    is_toml = path.suffix.lower() == ".toml"
    kind = "TOML" if is_toml else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        config = tomllib.loads(text) if is_toml else json.loads(text)
    except FileNotFoundError:
        raise KohyaImportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KohyaImportError(f"{path}: cannot be read ({error})") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise KohyaImportError(f"{path} is not valid {kind}: {error}") from None
    except RecursionError:
        raise KohyaImportError(f"{path} is not a kohya_ss config: its {kind} is nested too deeply") from None
    if not isinstance(config, dict):
        raise KohyaImportError(f"{path} is not a kohya_ss config: expected a {kind} object of settings")
    if is_toml:
        config.pop("spec_version", None)  # a LoRA Loom job file: its keys are kohya_ss's
    return config, str(path)


def refused_family(config: dict[str, Any]) -> str | None:
    """The name of the model family of a config LoRA Loom cannot train (Flux, SD3 …), or None."""
    for key, family in REFUSED_FAMILY_CHECKBOXES.items():
        if _truthy(config.get(key)):
            return family
    return REFUSED_FAMILY_LORA_TYPES.get(str(config.get("LoRA_type", "")))


# ---------------------------------------------------------------- converting values


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


def _is_blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {short_repr(raw)}")
    try:
        return float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {short_repr(raw)}") from None


def _to_int(raw: Any) -> int:
    number = _to_float(raw)
    if not number.is_integer():
        raise ValueError(f"expected a whole number, got {short_repr(raw)}")
    return int(number)


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "1.0", "yes", "on"):
        return True
    if text in ("false", "0", "0.0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {short_repr(raw)}")


def _to_choice(setting, raw: Any):
    value: Any
    if isinstance(setting.choices[0], int):
        value = _to_int(raw)
    else:
        text = str(raw).strip()
        value = {str(c).lower(): c for c in setting.choices}.get(text.lower(), text)
    if value not in setting.choices and setting.custom_choices and setting.parser is not None:
        return setting.parser(value)  # a module.Class (kohya_ss's Optimizer list takes custom values)
    if value not in setting.choices:
        raise ValueError(f"{short_repr(raw)} is not {setting.describe_range()}")
    return value


def _lora_type(raw: Any) -> str:
    name = str(raw).strip()
    if name not in LORA_TYPE_FROM_KOHYA:
        why = REFUSED_LORA_TYPES.get(name, "not a type LoRA Loom trains")
        raise ValueError(f"{name!r} is a kohya_ss LoRA type LoRA Loom does not support ({why}; it has "
                         f"{', '.join(LORA_TYPE_TO_KOHYA)})")
    return LORA_TYPE_FROM_KOHYA[name]


def _xformers(raw: Any) -> bool:
    """kohya_ss: a bool (old files) or "xformers" / "sdpa" / "none". Ours is on/off; off is PyTorch SDPA."""
    if isinstance(raw, str) and raw.strip().lower() in ("xformers", "sdpa", "none"):
        return raw.strip().lower() == "xformers"
    return _to_bool(raw)


def _additional_parameters(raw: Any) -> str:
    """kohya_ss hands these to sd-scripts untouched; we take every sd-scripts argument that maps to one of our
    settings (``trainer.spec.extra_args``) and refuse the line, naming each argument, when one does not."""
    text = "" if raw is None else str(raw)
    _, problems = parse_additional_parameters(text, SETTINGS_BY_KEY)
    if not problems:
        return text
    raise ValueError("; ".join(p.message for p in problems))


def convert_value(key: str, raw: Any) -> Any:
    """One kohya_ss value converted to the type of our setting ``key``; ValueError says what is wrong."""
    setting = SETTINGS_BY_KEY[key]
    if key == "LoRA_type":
        return _lora_type(raw)
    if key == "xformers":
        return _xformers(raw)
    if key == "additional_parameters":
        return _additional_parameters(raw)
    if key == "save_model_as":
        return "safetensors"  # the only format we write (a note says so when the file asked for another)
    if key == "log_with" and _is_blank(raw):
        return setting.default  # kohya_ss's "" means its default logger
    if setting.kind in ("int", "float", "choice") and _is_blank(raw):
        return None if setting.optional else setting.default
    if setting.kind == "int":
        value = _to_int(raw)
        if key in ZERO_MEANS_BLANK and value == 0:
            return None
        return 1 if key == "clip_skip" and value == 0 else value
    if setting.kind == "float":
        return _to_float(raw)
    if setting.kind == "bool":
        return _to_bool(raw)
    if setting.kind == "choice":
        return _to_choice(setting, raw)
    if isinstance(raw, (dict, list)):
        raise ValueError(f"expected text, got {short_repr(raw)}")
    return "" if raw is None else str(raw)


# ---------------------------------------------------------------- the import


def import_kohya_config(source: str | Path | dict) -> ImportResult:
    """Map a kohya_ss config (path to its JSON, or the dict) onto LoRA Loom settings.

    Raises KohyaImportError for an unreadable file or a model family we cannot train (Flux, SD3 …).
    """
    config, label = read_kohya_config(source)
    family = refused_family(config)
    if family:
        raise KohyaImportError(f"{label}: this is a {family} config; the {family} model family is not "
                               f"supported; LoRA Loom trains SD1.x, SD2.x and SDXL")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # our key → the file's key it came from
    unmapped: list[Unmapped] = []
    for key, raw in config.items():
        target = RENAMED_KEYS.get(key, key)
        if target not in SETTINGS_BY_KEY:
            unmapped.append(explain_unmapped(key, raw))
        elif target != key and target in config:
            unmapped.append(Unmapped(key, raw, f"old name of {target}, which this file also holds; "
                                               f"that value is used", is_neutral(key, raw)))
        else:
            try:
                values[target], origin[target] = _convert_implemented(target, raw), key
            except ValueError as error:
                unmapped.append(_rejected(key, raw, target, str(error)))
    notes = _apply_legacy_flags(config, values, origin, unmapped)
    unmapped += _drop_rejected_values(config, values, origin)
    refuse_lost_network_values(label, unmapped, values)
    notes += _advice(config, values)
    for key in [k for k in ("unet_lr", "text_encoder_lr") if k in values and values[k] is None]:
        values[key] = explicit_blank_rates(values)[key]
        notes.append(f"blank {key} means 'use the learning rate': imported as {values[key]:g}")
    return ImportResult(values, unmapped, notes)


def refuse_lost_network_values(label: str, unmapped: list[Unmapped], values: dict[str, Any]) -> None:
    """The network (its type, ranks, LyCORIS options, regularizers) is what the file is about: a value of it
    that cannot be honoured refuses the whole import (KohyaImportError, nothing written), never a default."""
    lost = [u for u in unmapped if u.reason.startswith(REJECTED) and RENAMED_KEYS.get(u.key, u.key) in SETTINGS_BY_KEY
            and SETTINGS_BY_KEY[RENAMED_KEYS.get(u.key, u.key)].group == "network"]
    problems = [f"{u.key} = {u.value!r}: {u.reason.split('; left at the default')[0]}" for u in lost]
    problems += [f"{p.setting}: {p.message}" for p in check_network_options(job_from_values(values))
                 if p.level == "error"]
    if problems:
        raise KohyaImportError(f"{label}: cannot be trained as it asks, so nothing was imported: "
                               + "; ".join(problems))


def explicit_blank_rates(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a blank (None) unet_lr / text_encoder_lr replaced by the learning rate, which is what a
    blank means. A job file cannot hold a blank (TOML has no null): written blank, it would read back as the
    setting's default instead."""
    rate = values.get("learning_rate", SETTINGS_BY_KEY["learning_rate"].default)
    blanks: dict[str, Any] = {k: rate for k in ("unet_lr", "text_encoder_lr") if k in values and values[k] is None}
    return {**values, **blanks}


def _convert_implemented(key: str, raw: Any) -> Any:
    """convert_value, refusing a non-default value of a setting the trainer cannot honour yet (a job holding
    one would be refused at training time)."""
    value = convert_value(key, raw)
    setting = SETTINGS_BY_KEY[key]
    if not setting.implemented and value != setting.default:
        raise ValueError(f"{value!r} is not implemented yet in LoRA Loom (it would be ignored)")
    return value


def _rejected(file_key: str, raw: Any, key: str, problem: str) -> Unmapped:
    default = SETTINGS_BY_KEY[key].default
    name = key if key == file_key else f"{key}, kohya_ss's {file_key}"
    return Unmapped(file_key, raw, f"{REJECTED}, {name}: {problem}; left at the default "
                                   f"({default!r})")


def _apply_legacy_flags(config, values, origin, unmapped) -> list[str]:
    """use_8bit_adam and use_wandb decide the optimizer / logger when the file has no newer key for them."""
    notes = []
    legacy = {"use_8bit_adam": ("optimizer", "AdamW8bit", "AdamW"), "use_wandb": ("log_with", "wandb", None)}
    for flag, (key, when_on, when_off) in legacy.items():
        if flag not in config or key in config:
            continue
        chosen = when_on if _truthy(config[flag]) else when_off
        if chosen is not None:
            unmapped[:] = [u for u in unmapped if u.key != flag]
            values[key], origin[key] = chosen, flag
            notes.append(f"the old flag {flag}={config[flag]!r} was imported as {key} = {chosen!r}")
    return notes


def _drop_rejected_values(config, values, origin) -> list[Unmapped]:
    """Remove (and report) every value the job model refuses, until the rest forms a valid job."""
    rejected: list[Unmapped] = []
    for _ in range(len(values) + 1):
        try:
            job_from_values(values)
            return rejected
        except JobError as error:
            problems = error.problems
        messages: dict[str, list[str]] = {}
        for problem in problems:
            # a bad value inside additional_parameters is reported under the setting it names
            key, text = problem.setting or "", problem.message
            if key not in values:
                key, text = "additional_parameters", f"--{problem.setting} {problem.message}"
            if key not in values:
                raise KohyaImportError(f"cannot import: {problem}")
            messages.setdefault(key, []).append(text)
        for key, texts in messages.items():
            values.pop(key)
            file_key = origin[key]
            rejected.append(_rejected(file_key, config[file_key], key, "; ".join(texts)))
    raise KohyaImportError("cannot import: the settings never formed a valid job")


def _advice(config: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Notes a person should read: where the import changes meaning or needs their attention."""
    notes = []
    if _truthy(config.get("sdxl")):
        notes.append("this is an SDXL config: choose an SDXL checkpoint; block-wise lists for SDXL take 23 "
                     "values (9 down, 3 mid, 9 up for LR weights)")
    kohya_type, our_type = config.get("LoRA_type"), values.get("LoRA_type")
    if our_type and kohya_type != our_type:
        notes.append(f"LoRA type {kohya_type!r} was imported as {our_type!r}")
    if our_type == KOHYA_LOKR and not _truthy(config.get("sdxl")):
        notes.append("kohya_ss trains Kohya LoKr (sd-scripts' networks.lokr) on SDXL only and refuses this "
                     "non-SDXL config; LoRA Loom trains it on SD1.x/SD2.x too, on the layers networks.lokr picks")
    if isinstance(config.get("xformers"), str) and config["xformers"].strip().lower() in ("sdpa", "none"):
        notes.append(f"xformers {config['xformers']!r} was imported as off (PyTorch attention)")
    model = values.get("pretrained_model_name_or_path", "")
    if model and HUB_ID.match(model) and not Path(model).exists():
        notes.append(f"the model {model!r} looks like a Hugging Face id; LoRA Loom downloads nothing, so "
                     f"point Pretrained model to a local checkpoint file or diffusers folder")
    if values.get("lr_scheduler") == "cosine_with_restarts" and values.get("lr_scheduler_num_cycles") is None:
        notes.append(f"kohya_ss used the epoch count ({values.get('epoch', 1)}) as the number of restarts when "
                     f"'LR number of cycles' is blank; LoRA Loom's blank means 1 restart, set it to match")
    if str(config.get("save_model_as", "safetensors")).strip().lower() not in ("safetensors", ""):
        notes.append(f"save_model_as {config['save_model_as']!r} was imported as safetensors: LoRA Loom does not "
                     "write pickle files (.ckpt/.pt can run code when loaded); every LoRA loader reads .safetensors")
    stop = values.get("stop_text_encoder_training")
    if stop:
        notes.append(f"stop_text_encoder_training = {stop:g}%: kohya_ss's LoRA tab ignores it (\"not yet supported\" "
                     f"there), LoRA Loom applies it: the text encoder stops learning after {stop:g}% of the steps. "
                     "Set it to 0 to train as kohya_ss did")
    if values.get("wandb_api_key"):
        notes.append("the file holds a WANDB API key: it is used for this run but never written to job files")
    return notes


def import_kohya_to_toml(source: str | Path, destination: str | Path) -> ImportResult:
    """``python -m trainer import-kohya CONFIG.json -o JOB.toml``: import, then write the job file."""
    result = import_kohya_config(source)
    write_job_toml(result.values, destination)
    return result


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a report line, not a copy of a 50 MB value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text):,} characters)"


def report_lines(result: ImportResult) -> list[str]:
    """The import report for people: what was not imported (neutral keys in one line at the end), notes."""
    lines = [f"not imported: {u.key} = {short_repr(u.value)}: {u.reason}" for u in result.unmapped if not u.neutral]
    neutral = [u.key for u in result.unmapped if u.neutral]
    if neutral:
        lines.append(f"not imported, kohya_ss's off/default values (nothing lost): {', '.join(neutral)}")
    return lines + [f"note: {note}" for note in result.notes]


# ---------------------------------------------------------------- the export


def export_kohya_config(values: dict[str, Any]) -> dict[str, Any]:
    """A kohya_ss LoRA config dict (save it as JSON) for LoRA Loom settings; missing keys take our defaults.

    Blanks become kohya's explicit equivalents (seed → 0 "random", max_train_epochs → 0 "no cap", cycles and
    power → 1, the UNet / text-encoder rates → the learning rate), secrets are left blank; max_train_steps 0
    makes kohya_ss compute the length from the epochs as we do.
    """
    job = job_to_values(job_from_values(values))
    blank_as = {"seed": 0, "max_train_epochs": 0, "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0,
                "block_lr_zero_threshold": "", "unet_lr": job["learning_rate"],
                "text_encoder_lr": job["learning_rate"]}
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        value = job[setting.key]
        if setting.secret:
            value = ""
        elif value is None:
            value = blank_as.get(setting.key, "")
        config[setting.key] = value
    config["LoRA_type"] = LORA_TYPE_TO_KOHYA[job["LoRA_type"]]
    if job["LoRA_type"] == "LoCon" and lycoris_algo("LoCon", job):  # kohya_ss sends LyCORIS options only then
        config["LoRA_type"] = "LyCORIS/LoCon"
    config["xformers"] = "xformers" if job["xformers"] else "sdpa"
    config["sdxl"] = _is_sdxl_model(job["pretrained_model_name_or_path"])  # kohya_ss picks its SDXL trainer by it
    return dict(sorted(config.items()))


def _is_sdxl_model(path: str) -> bool:
    """Whether the base model is SDXL, read from its file header or folder configs (False when unknown)."""
    from trainer.models.detect import ModelFileError, inspect_model

    if not path:
        return False
    try:
        return inspect_model(path).family == "sdxl"
    except ModelFileError:
        return False
