"""The bad-input matrix (issue 16): for every setting of the schema, the values a person gets wrong.

Numbers, choices and switches get theirs from their declaration (wrong type, below the minimum, above the
maximum, huge, negative, non-finite); text and path settings from ``TEXT_BAD_VALUES`` (empty, a path outside,
an unwritable folder, wrong-length lists, a damaged dataset …). For each case, on the demo job:

- the page (``validate_values``, which the Start button and the notes under the fields use) names the setting;
- ``python -m trainer validate`` prints an error naming it and exits 2;
- ``python -m trainer train`` exits 2 with an error event naming it and ``finished: failed``, before any model
  is loaded (no "loading model" status).

A setting added to the schema without bad values here fails ``test_every_setting_has_bad_values``.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import tomli_w

from trainer.cli import main as cli_main
from trainer.events import read_events
from trainer.spec import SETTINGS, validate_values

HUGE = 10**12
# Text settings whose every value is acceptable (besides a wrong type and a pasted megabyte, tested for all).
ANY_TEXT = {
    "wandb_api_key": "any text can be a key; it is checked by W&B when a run logs",
    "wandb_run_name": "a W&B run's display name; W&B takes any text",
    **{key: "free text stored in the LoRA file's metadata (never a path)" for key in (
        "training_comment", "metadata_title", "metadata_author", "metadata_description", "metadata_license",
        "metadata_tags")},
}


def _list(value: str, count: int = 25) -> str:
    return ",".join([value] * count)


# name → callable(paths) → bad values. ``paths`` holds prepared files and folders (see the fixture).
TEXT_BAD_VALUES = {
    "pretrained_model_name_or_path": lambda p: ["", "/nonexistent/model.safetensors", p.text_file, p.empty_dir,
                                                p.lora_file],
    "vae": lambda p: ["/nonexistent/vae.safetensors", p.text_file, p.lora_file],
    "output_name": lambda p: ["", "../../../tmp/x", "a/b", "..", ".hidden", "a\nb", " x"],
    "train_data_dir": lambda p: ["", "/nonexistent/data", p.text_file, p.empty_dir, p.flat_dir, p.damaged_dir,
                                 p.zero_repeat_dir],
    "reg_data_dir": lambda p: ["/nonexistent/reg", p.text_file, p.empty_dir, p.flat_dir],
    "dataset_config": lambda p: ["/nonexistent/dataset.toml", p.empty_dir, p.text_file, p.prefixed_dataset_config],
    "output_dir": lambda p: ["", "/proc/lora_loom_out", p.text_file, str(Path(p.text_file) / "sub")],
    "logging_dir": lambda p: ["/proc/lora_loom_logs", p.text_file],
    "network_weights": lambda p: ["/nonexistent/lora.safetensors", p.empty_dir, p.text_file, p.model_file,
                                  p.junk_safetensors],
    "resume": lambda p: ["/nonexistent/state", p.empty_dir, p.text_file],
    "caption_extension": lambda p: ["../x", "a/b", ".t\nxt", "x" * 40],
    "max_resolution": lambda p: ["", "abc", "100000,100000", "32,32", "512,512,512", "-512,512", "512.5,512"],
    "optimizer_args": lambda p: ["weight_decay", "x=1+", "foo=1", "lr=1", "betas=(0.9"],
    "additional_parameters": lambda p: ["--nope 1", "--network_dim abc", "stray", "--network_dim 0"],
    "sample_prompts": lambda p: ["a cat --w abc", "a cat --q 1", "a cat --w"],
    "LyCORIS_preset": lambda p: ["no-such-preset", "/nonexistent/preset.toml"],
    "lr_scheduler_type": lambda p: ["NoSuchScheduler", "torch.optim.lr_scheduler.Nope"],
    "lr_scheduler_args": lambda p: ["T_max", "=1"],
    "log_tracker_name": lambda p: ["../x", "a/b", "a\nb"],
    "log_tracker_config": lambda p: ["/nonexistent/tracker.toml", p.empty_dir],
    "gpu_ids": lambda p: ["a,b", "-1", "0,0"],
    "extra_accelerate_launch_args": lambda p: ["'unbalanced"],
    "down_lr_weight": lambda p: ["1,2", "wave", _list("2", 12), _list("nan", 12)],
    "mid_lr_weight": lambda p: ["1,2", "2", "-1"],
    "up_lr_weight": lambda p: ["1,2", "wave", _list("2", 12), _list("-1", 12)],
    "block_dims": lambda p: ["1,2,3", _list("a"), _list("100000"), _list("-1"), _list("1.5")],
    "block_alphas": lambda p: ["1,2", _list("1e300"), _list("nan"), _list("inf"), _list("-1")],
    "conv_block_dims": lambda p: ["1,2,3", _list("100000"), _list("-1")],
    "conv_block_alphas": lambda p: ["1,2", _list("1e300"), _list("nan")],
}
WRONG_TYPE = {"str": 12, "path": 12, "text": 12, "bool": "yes", "int": "12", "float": "0.1"}


def generated_bad_values(setting) -> list:
    """The wrong values a setting's declaration implies (its type and range)."""
    values = [WRONG_TYPE.get(setting.kind, 3.5)]
    if setting.kind == "bool":
        values.append(1)
    if setting.kind == "choice":
        values.append("not one of them" if isinstance(setting.choices[0], str) else 100)
    if setting.kind in ("int", "float"):
        if setting.kind == "int":
            values.append(1.5)
        if setting.minimum is not None:
            values.append(setting.minimum - (1 if setting.kind == "int" else 0.5))
            if setting.minimum > -1:
                values.append(-1 if setting.kind == "int" else -1.0)
        if setting.maximum is not None:
            values.append(setting.maximum + 1)
            values.append(HUGE if setting.kind == "int" else 1e300)
        if setting.kind == "float":
            values += [math.nan, math.inf]
    if setting.kind in ("str", "path", "text"):
        values.append("x" * 200_001)  # a pasted file
    return [int(v) if setting.kind == "int" and isinstance(v, float) and v.is_integer() else v for v in values]


class Paths:
    """Files and folders a careless person points settings at."""

    def __init__(self, root: Path, demo_dir: Path):
        self.text_file = str(root / "notes.txt")
        Path(self.text_file).write_text("not a model")
        self.empty_dir = str(root / "empty")
        Path(self.empty_dir).mkdir()
        flat = root / "flat"  # images, but not in N_name sub-folders
        flat.mkdir()
        (flat / "a.png").write_bytes((demo_dir / "data" / "10_shapes" / "shape_00.png").read_bytes())
        self.flat_dir = str(flat)
        damaged = root / "damaged" / "10_shapes"  # a truncated image, a zero-byte one, text posing as a PNG
        damaged.mkdir(parents=True)
        (damaged / "a.png").write_bytes((demo_dir / "data" / "10_shapes" / "shape_00.png").read_bytes()[:60])
        (damaged / "b.png").write_bytes(b"")
        (damaged / "c.png").write_text("hello")
        self.damaged_dir = str(root / "damaged")
        zero = root / "zero" / "0_shapes"
        zero.mkdir(parents=True)
        (zero / "a.png").write_bytes((demo_dir / "data" / "10_shapes" / "shape_00.png").read_bytes())
        self.zero_repeat_dir = str(root / "zero")
        self.prefixed_dataset_config = str(root / "prefixed.toml")  # an sd-scripts option LoRA Loom lacks
        Path(self.prefixed_dataset_config).write_text(
            f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{demo_dir / "data" / "10_shapes"}"\n'
            'caption_prefix = "photo of"\n')
        self.model_file = str(demo_dir / "model.safetensors")
        self.junk_safetensors = str(root / "junk.safetensors")
        Path(self.junk_safetensors).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
        from safetensors.torch import save_file
        import torch

        self.lora_file = str(root / "lora.safetensors")
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1), "lora_unet_x.lora_up.weight": torch.zeros(1, 1)},
                  self.lora_file)


def bad_values(setting, paths) -> list:
    """Every wrong value of a setting: the generated ones, then the table's."""
    table = TEXT_BAD_VALUES.get(setting.key)
    return generated_bad_values(setting) + (table(paths) if table else [])


@pytest.fixture(scope="module")
def paths(demo_dir, tmp_path_factory) -> Paths:
    return Paths(tmp_path_factory.mktemp("bad_inputs"), Path(demo_dir))


@pytest.fixture(scope="module")
def base_values(demo_dir, tmp_path_factory) -> dict:
    values = tomllib.loads((Path(demo_dir) / "job.toml").read_text(encoding="utf-8"))
    work = tmp_path_factory.mktemp("bad_inputs_out")
    values.update(output_dir=str(work / "out"), logging_dir=str(work / "logs"))
    return values


def test_every_setting_has_bad_values():
    """A new text setting needs its wrong values in TEXT_BAD_VALUES (or a reason in ANY_TEXT); numbers,
    choices and switches get theirs from their declaration, so they need a type and a range."""
    for setting in SETTINGS:
        if setting.kind in ("str", "path", "text"):
            assert setting.key in TEXT_BAD_VALUES or setting.key in ANY_TEXT, \
                f"{setting.key}: add the values a person gets wrong to TEXT_BAD_VALUES"
        if setting.kind in ("int", "float"):
            assert setting.minimum is not None, f"{setting.key}: declare its minimum"
    assert set(TEXT_BAD_VALUES) | set(ANY_TEXT) <= {s.key for s in SETTINGS}, "a table entry names no setting"


def test_the_base_job_is_valid(base_values, capfd, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps(base_values))
    assert cli_main(["validate", str(job)]) == 0, capfd.readouterr().out


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.key for s in SETTINGS])
def test_bad_values_are_refused_naming_their_setting_everywhere(setting, base_values, paths, tmp_path, capfd):
    key = setting.key
    for index, value in enumerate(bad_values(setting, paths)):
        values = {**base_values, key: value}
        values.pop("spec_version", None)
        case = f"{key} = {repr(value)[:60]}"

        _, problems = validate_values(values, for_training=True)  # the page: Start, and the notes under fields
        assert key in {p.setting for p in problems if p.level == "error"}, (case, problems)

        job = tmp_path / f"job{index}.toml"
        job.write_text(tomli_w.dumps({"spec_version": 1, **values}), encoding="utf-8")
        capfd.readouterr()
        assert cli_main(["validate", str(job)]) == 2, case
        out = capfd.readouterr().out
        assert f"error: {key}: " in out and "ok:" not in out and len(out) < 5000, (case, out[:2000])

        run_dir = tmp_path / f"run{index}"
        assert cli_main(["train", str(job), "--run-dir", str(run_dir)]) == 2, case
        events, _ = read_events(run_dir / "events.jsonl")
        assert key in {e.get("setting") for e in events if e["type"] == "error"}, case
        assert [e["status"] for e in events if e["type"] == "finished"] == ["failed"], case
        assert not any(e["type"] == "started" or e.get("phase") == "loading model" for e in events), case
    capfd.readouterr()


def test_matrix_size(paths):
    """The numbers the issue asks for (settings × bad values); printed with -s."""
    counts = {s.key: len(bad_values(s, paths)) for s in SETTINGS}
    print(f"bad-input matrix: {len(counts)} settings × {sum(counts.values())} bad values in all")
    assert len(counts) == len(SETTINGS) and min(counts.values()) >= 1
