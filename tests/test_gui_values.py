"""The GUI's pure parts without a browser: widget values → settings, field notes, plan and dataset text,
the block table, the presets row's fallback, and that the GUI modules import without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gui.blocks_table import block_rows
from gui.plan_panel import compute_plan, dataset_markdown, plan_markdown
from gui.presets_panel import load_preset_values, save_preset_values
from gui.values import coerce_value, field_error_text, is_visible, split_secrets
from trainer.spec import SETTINGS_BY_KEY, Problem, defaults, validate_values

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_widget_values_become_the_settings_types():
    s = SETTINGS_BY_KEY
    assert coerce_value(s["train_batch_size"], 2.0) == 2 and type(coerce_value(s["train_batch_size"], 2.0)) is int
    assert coerce_value(s["train_batch_size"], 1.5) == 1.5  # left for validation to refuse, not rounded
    assert type(coerce_value(s["network_alpha"], 8)) is float
    assert coerce_value(s["seed"], None) is None and coerce_value(s["seed"], "") is None
    assert coerce_value(s["max_token_length"], "150") == 150
    assert coerce_value(s["caption_extension"], None) == ""
    assert coerce_value(s["flip_aug"], None) is False


def test_a_number_box_value_that_is_not_whole_is_named_by_validation():
    values = {**defaults(), "train_batch_size": coerce_value(SETTINGS_BY_KEY["train_batch_size"], 1.5)}
    _, problems = validate_values(values, for_training=False)
    assert [p.setting for p in problems if p.level == "error"] == ["train_batch_size"]


def test_field_note_names_the_setting_and_visibility_follows_its_controller():
    note = field_error_text("train_batch_size", [Problem("train_batch_size", "must be ≥ 1 (got 0)")])
    assert note == "❌ `train_batch_size`: must be ≥ 1 (got 0)"
    conv_dim = SETTINGS_BY_KEY["conv_dim"]
    assert not is_visible(conv_dim, {"LoRA_type": "Standard"})
    assert is_visible(conv_dim, {"LoRA_type": "LoCon"})


def test_secrets_go_to_the_environment_not_the_job():
    public, secrets = split_secrets({"wandb_api_key": "k3y", "epoch": 2})
    assert public == {"epoch": 2} and secrets == {"WANDB_API_KEY": "k3y"}


def test_block_table_follows_the_kohya_formula():
    rows = {label: (attention, conv) for label, attention, conv in block_rows()}
    assert len(rows) == 25
    assert rows["IN01"] == ("down_blocks.0.attentions.0", "down_blocks.0.resnets.0")
    assert rows["IN03"] == ("—", "down_blocks.0.downsamplers.0")  # 1 + 3·0 + 2
    assert rows["IN11"] == ("—", "down_blocks.3.resnets.1")  # 1 + 3·3 + 1, no attention in the last block
    assert rows["OUT02"] == ("—", "up_blocks.0.resnets.2, up_blocks.0.upsamplers.0")
    assert rows["OUT11"][0] == "up_blocks.3.attentions.2"  # 3·3 + 2


def test_plan_markdown_and_dataset_table_on_the_demo(demo_dir):
    plan = {"dataset": {"train_images": 8, "train_samples": 80}, "steps_per_epoch": 40, "epochs": 5,
            "total_steps": 200, "warmup_steps": 20, "text_encoder_stop_step": 100, "save_epochs": [1, 2],
            "save_steps": [], "sample_steps": list(range(25, 201, 25))}
    text = plan_markdown(plan)
    assert "| **Total steps** | **200** |" in text and "| Warmup steps | 20 |" in text
    assert "after step 100" in text and "| Images × repeats per epoch | 80 |" in text
    table = dataset_markdown(str(demo_dir / "data"), "", ".txt")
    assert "| 10_shapes | training | 10 | 8 | 8 | 80 |" in table
    missing = dataset_markdown(str(demo_dir / "nowhere"), "", ".txt")
    assert missing.startswith("❌ `train_data_dir`")


def test_plan_refuses_bad_values_without_starting_a_subprocess():
    result = compute_plan({**defaults(), "train_batch_size": 0}, trainer_command=["/nonexistent/python"])
    assert result.plan is None and "train_batch_size" in result.error


def test_user_preset_round_trip(tmp_path):
    values = {**defaults(), "network_dim": 32, "optimizer": "AdamW"}
    path = save_preset_values("my style", values, tmp_path)
    assert path.parent == tmp_path
    text = path.read_text()
    assert "network_dim" in text and "learning_rate" not in text  # a preset stores only what differs
    loaded, report = load_preset_values(str(path), {**defaults(), "output_dir": "/keep/me"})
    assert report == "Loaded preset **my style**."
    assert loaded["network_dim"] == 32 and loaded["optimizer"] == "AdamW" and loaded["output_dir"] == "/keep/me"


def test_gui_modules_do_not_import_torch():
    code = "import sys, gui.page, gui.handlers, app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={"GRADIO_ANALYTICS_ENABLED": "False", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_kohya_import_reports_every_key_it_did_not_take(tmp_path):
    from gui.presets_panel import import_kohya_values

    config = tmp_path / "kohya.json"
    config.write_text('{"LoRA_type": "Standard", "network_dim": 64.0, "learning_rate": "0.0003", '
                      '"mystery_knob": 7, "train_data_dir": ""}')
    applied = import_kohya_values(str(config), {**defaults(), "train_data_dir": "/my/data"})
    assert applied.values["network_dim"] == 64 and applied.values["learning_rate"] == 0.0003
    assert applied.values["train_data_dir"] == "/my/data"  # a blank path in the file does not wipe ours
    assert "| `mystery_knob` | `7` |" in applied.report
    flux = tmp_path / "flux.json"
    flux.write_text('{"LoRA_type": "Flux1", "flux1_checkbox": true, "network_dim": 16}')
    with pytest.raises(ValueError, match="flux.json was not imported.*Flux"):
        import_kohya_values(str(flux), defaults())


def test_app_flags_default_to_local_and_private(capsys):
    import app

    args = app.parse_args([])
    assert (args.listen, args.port, args.share, args.job) == ("127.0.0.1", 7860, False, "")
    with pytest.raises(SystemExit):
        app.parse_args(["--username", "me"])  # a login needs both halves
    assert "--username and --password go together" in capsys.readouterr().err
