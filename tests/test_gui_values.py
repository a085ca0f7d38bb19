"""The GUI's pure parts without a browser: widget values → settings, field notes, plan and dataset text,
the plan timer's debounce, the model note, the block table, the presets row's fallback, and that the GUI
modules import without torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gui.blocks_table import block_rows
from gui.plan_panel import PlanWorker, compute_plan, dataset_markdown, plan_markdown
from gui.presets_panel import load_preset_values, save_preset_values
from gui.values import applies, coerce_value, field_error_text, split_secrets
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
    assert not applies(conv_dim, {"LoRA_type": "Standard"})
    assert applies(conv_dim, {"LoRA_type": "LoCon"})


def test_the_error_notes_travel_in_one_box_sent_only_when_they_change():
    """After each edit the page is sent the notes of the fields with problems, all in one box (as JSON the
    page's script spreads under the fields), and nothing when they did not change since the last time."""
    import html
    import json

    from gui.form import Form

    form = Form(fields={"train_batch_size": "w1", "epoch": "w2", "max_resolution": "w3"}, error_box="box")
    shown: dict[str, str] = {}

    def sent(update: dict) -> dict:
        assert list(update) == ["box"]
        text = update["box"]
        assert text.startswith('<pre class="loom-errors-data">') and text.endswith("</pre>")
        return json.loads(html.unescape(text.removeprefix('<pre class="loom-errors-data">').removesuffix("</pre>")))

    bad_batch = validate_values({**defaults(), "train_batch_size": 0})[1]
    notes = sent(form.error_updates(bad_batch, shown))
    assert list(notes) == ["train_batch_size"]
    assert notes["train_batch_size"].startswith("❌ <code>train_batch_size</code>: ") and shown == notes
    assert form.error_updates(bad_batch, shown) == {}  # the same problems again: nothing sent
    both = validate_values({**defaults(), "train_batch_size": 0, "epoch": 0, "unknown_key": 1})[1]
    assert sorted(sent(form.error_updates(both, shown))) == ["epoch", "train_batch_size"]  # form fields only
    assert sent(form.error_updates([], shown)) == {} and shown == {}  # all fine: the notes go
    assert form.error_updates([], shown) == {}
    assert sent(form.error_updates(bad_batch)) == notes  # no record of what is shown: always sent


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
    assert "| Length set by | Epoch |" in text
    assert "| Length set by | Max train steps (Epoch is not read) |" in plan_markdown({**plan, "governed_by": "max_train_steps"})
    table = dataset_markdown(str(demo_dir / "data"), "", ".txt")
    assert "| 10_shapes | training | 10 | 8 | 8 | 80 |" in table
    missing = dataset_markdown(str(demo_dir / "nowhere"), "", ".txt")
    assert missing.startswith("❌ `train_data_dir`")


def test_the_dataset_table_lists_a_dataset_configs_subsets(demo_dir, tmp_path):
    from gui.plan_panel import dataset_config_markdown

    config = tmp_path / "ds.toml"
    config.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{demo_dir / "data" / "10_shapes"}"\n'
                      'num_repeats = 3\nkeep_tokens = 1\ncaption_extension = ".txt"\n')
    table = dataset_config_markdown({"dataset_config": str(config)})
    assert f"| {demo_dir / 'data' / '10_shapes'} | training | 3 | 8 | False | 1 | False | — |" in table
    config.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = '/nowhere'\n")
    assert dataset_config_markdown({"dataset_config": str(config)}).startswith("❌ `dataset_config`")


def test_plan_refuses_bad_values_without_starting_a_subprocess():
    result = compute_plan({**defaults(), "train_batch_size": 0}, PlanWorker(["/nonexistent/python"]))
    assert result.plan is None and "train_batch_size" in result.error


def test_the_plan_worker_answers_each_request_and_comes_back_after_it_dies(demo_dir, tmp_path):
    """The real ``python -m trainer plan-server``: plans for two job files from one process (the second's
    numbers follow its file), a refused job answered with its setting and the worker still serving, and a
    killed worker replaced at the next request."""
    from trainer.spec import read_job_toml, write_job_toml

    values = read_job_toml(demo_dir / "job.toml")
    values.pop("spec_version")
    worker = PlanWorker()
    try:
        first = worker.plan(write_job_toml(values, tmp_path / "a.toml"))
        second = worker.plan(write_job_toml({**values, "epoch": 2 * values["epoch"]}, tmp_path / "b.toml"))
        assert first.error == "" and second.error == ""
        assert second.plan["total_steps"] == 2 * first.plan["total_steps"] > 0
        process = worker._process
        missing = worker.plan(write_job_toml({**values, "train_data_dir": str(tmp_path / "nowhere")},
                                             tmp_path / "c.toml"))
        assert missing.plan is None and "train_data_dir" in missing.error
        assert worker._process is process  # the same worker answered all three
        process.kill()
        process.wait()
        again = worker.plan(tmp_path / "a.toml")
        assert worker._process is not process
        assert {k: v for k, v in again.plan.items() if k != "memory"} == {k: v for k, v in first.plan.items()
                                                                         if k != "memory"}
    finally:
        worker.close()


def test_the_pages_plan_carries_the_memory_estimate_and_flags_a_run_that_will_not_fit(demo_dir, tmp_path):
    """Through the real plan worker, as the page asks: the demo's estimate (what ``trainer plan`` says in a
    fresh process, give or take the free memory and a few MiB of the process), a run far larger than the
    machine flagged first in the panel with the settings that would help, and a model that cannot be read
    still planned, with a word instead of an estimate."""
    from trainer.spec import read_job_toml, write_job_toml

    values = read_job_toml(demo_dir / "job.toml")
    values.pop("spec_version")
    job = write_job_toml(values, tmp_path / "demo.toml")
    fresh = subprocess.run([sys.executable, "-m", "trainer", "plan", str(job)], cwd=PROJECT_ROOT, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    expected = json.loads(fresh.stdout)["memory"]
    worker = PlanWorker()
    try:
        demo_plan = worker.plan(job).plan
        demo = demo_plan["memory"]
        assert demo["verdict"] == "fits" and demo["parts"] and demo["free_bytes"] > 0
        assert abs(demo["peak_bytes"] - expected["peak_bytes"]) < 0.05 * expected["peak_bytes"]
        text = plan_markdown(worker.plan(job).plan)
        assert text.startswith("**Memory: ") and "of RAM at the peak" in text and "fits" in text.split("\n")[0]
        huge = {**values, "train_batch_size": 64, "max_resolution": "2048,2048", "max_bucket_reso": 2048,
                "bucket_no_upscale": False,
                "gradient_checkpointing": False}
        plan = worker.plan(write_job_toml(huge, tmp_path / "huge.toml")).plan
        memory = plan["memory"]
        assert memory["verdict"] == "will not fit" and memory["peak_bytes"] > memory["free_bytes"]
        assert any(s["setting"] == "gradient_checkpointing" for s in memory["suggestions"])
        first_line, *rest = plan_markdown(plan).split("\n")
        assert "❌ will not fit" in first_line and "To make it fit, try:" in rest
        unreadable = worker.plan(write_job_toml({**values, "pretrained_model_name_or_path": str(tmp_path / "none")},
                                                tmp_path / "none.toml")).plan
        assert unreadable["memory"] is None and unreadable["total_steps"] == demo_plan["total_steps"] > 0
        assert plan_markdown(unreadable).startswith("**Memory:** no estimate")
    finally:
        worker.close()


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


def write_safetensors(path: Path, names: list[str], metadata: dict | None = None) -> Path:
    """A valid .safetensors file holding one fp32 zero per name (enough for inspect_model's header reading)."""
    import json
    import struct

    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, name in enumerate(names)}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(names))
    return path


SD2_NAMES = ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.ln_final.weight"]


def test_model_note_names_the_family_of_the_demo_single_file(demo_dir):
    from gui.model_note import model_note

    note = model_note(str(demo_dir / "model.safetensors"))
    assert note == "✅ Model: Stable Diffusion 1.x (single file)."
    assert "diffusers folder" in model_note(str(demo_dir / "model"))
    assert "is on, but the weights say Stable Diffusion 1.x" in model_note(str(demo_dir / "model.safetensors"), v2=True)


def test_model_note_refuses_a_lora_a_vae_and_a_corrupt_file_with_a_reason(tmp_path):
    from gui.model_note import model_note

    lora = write_safetensors(tmp_path / "style.safetensors", ["lora_unet_x.lora_down.weight", "lora_unet_x.alpha"])
    assert model_note(str(lora)).startswith("❌ style.safetensors is a LoRA file, not a base model.")
    vae = write_safetensors(tmp_path / "vae.safetensors", ["encoder.conv_in.weight", "decoder.conv_out.weight"])
    assert "is a VAE file, not a base model" in model_note(str(vae))
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\0\0\0\0\0\0\0{not json")
    assert model_note(str(corrupt)).startswith(f"❌ {corrupt} is not a valid .safetensors file")
    assert model_note(str(tmp_path / "missing.safetensors")) == f"❌ {tmp_path / 'missing.safetensors'} does not exist"
    assert model_note("  ").startswith("Choose the base model")
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"")
    assert "a pickled checkpoint (.ckpt); its family is checked when training starts" in model_note(str(pickled))


def test_model_note_suggests_v2_and_v_parameterization_without_setting_them(tmp_path):
    from gui.model_note import model_note

    sd2 = write_safetensors(tmp_path / "sd2-768.safetensors", SD2_NAMES)
    note = model_note(str(sd2))
    assert note.startswith("✅ Model: Stable Diffusion 2.x (single file), v-prediction suggested")
    assert "`v2`) is off" in note and "consider turning on **v-parameterization**" in note
    settled = model_note(str(sd2), v2=True, v_parameterization=True)
    assert "💡" not in settled and "⚠️" not in settled
    declared = write_safetensors(tmp_path / "sd2v.safetensors", SD2_NAMES, {"modelspec.prediction_type": "v"})
    assert "declares v-prediction" in model_note(str(declared), v2=True)


def test_plan_follows_edits_once_they_pause_and_only_once(monkeypatch):
    """The plan timer makes the plan from the latest edit after PLAN_SETTLE_S, once per change, and leaves
    the panel alone while the page watches a run that is going. It ticks only while an edit waits for its
    plan: it turns itself off when nothing waits, and after planning unless a newer edit came meanwhile."""
    from types import SimpleNamespace

    from gui import handlers
    from gui.handlers import Handlers, SessionState

    fake_trainer = [sys.executable, "-c", "import json, sys\nfor _ in sys.stdin: print(json.dumps({'code': 0, "
                    "'plan': {'total_steps': 7, 'lr_curve': {}}}), flush=True)"]
    area = SimpleNamespace(state="state", plan_md="plan_md", plan_plot="plan_plot", dataset_md="dataset_md",
                           plan_timer="plan_timer")
    ui = Handlers(form=None, area=area, manager=None, config=SimpleNamespace(trainer_command=fake_trainer))
    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])
    session = SessionState(planned=defaults())
    tick = lambda: ui.plan_when_settled({"state": session})  # noqa: E731

    def timer_off(reply: dict) -> bool:
        return reply["plan_timer"].active is False

    idle = tick()
    assert list(idle) == ["plan_timer"] and timer_off(idle)  # nothing edited yet: the timer sleeps
    session.edited, session.edited_at = {**defaults(), "epoch": 3}, clock[0]
    clock[0] += 0.5
    assert list(tick()) == ["plan_md"]  # still typing: skipped, the timer keeps ticking
    clock[0] += 1.0
    made = tick()
    assert "| **Total steps** | **7** |" in made["plan_md"] and timer_off(made)
    assert "dataset_md" not in made  # the folders did not change: no rescan
    again = tick()
    assert "plan_md" not in again and timer_off(again)  # the same values are not planned twice
    session.edited, session.edited_at = {**defaults(), "train_data_dir": "/nowhere"}, clock[0] - 5
    assert tick()["dataset_md"].startswith("❌ `train_data_dir`")
    session.edited, session.edited_at = {**defaults(), "epoch": 4}, clock[0] - 5
    session.view.plan = {"total_steps": 99}  # a run in progress owns the panel
    assert list(tick()) == ["plan_md"]


def test_a_plan_overtaken_by_a_newer_one_is_dropped(tmp_path):
    """A newer request waits while the worker makes the slow plan for the older values; that plan must not
    replace the panel made for the newer ones."""
    import threading
    from types import SimpleNamespace

    from gui.handlers import Handlers, SessionState

    fake = tmp_path / "fake_trainer.py"  # a plan worker: 3 s for epoch 3, at once for any other value
    fake.write_text("import json, sys, time, tomllib\n"
                    "for line in sys.stdin:\n"
                    "    epoch = tomllib.load(open(json.loads(line)['job'], 'rb')).get('epoch', 1)\n"
                    "    time.sleep(3 if epoch == 3 else 0)\n"
                    "    print(json.dumps({'code': 0, 'plan': {'total_steps': epoch * 100, 'lr_curve': {}}}), flush=True)\n")
    area = SimpleNamespace(state="state", plan_md="plan_md", plan_plot="plan_plot", dataset_md="dataset_md")
    ui = Handlers(form=None, area=area, manager=None, config=SimpleNamespace(trainer_command=[sys.executable, str(fake)]))
    session = SessionState()
    answers = {}
    slow = threading.Thread(target=lambda: answers.update(old=ui._plan_for(session, {**defaults(), "epoch": 3})))
    slow.start()
    while session.planned is None:  # the slow plan has been asked for
        pass
    answers["new"] = ui._plan_for(session, {**defaults(), "epoch": 4})
    slow.join()
    assert "| **Total steps** | **400** |" in answers["new"]["plan_md"]
    assert list(answers["old"]) == ["plan_md"]  # skipped: the panel keeps the plan for epoch 4
    assert session.planned["epoch"] == 4


def _table_paths(rows) -> dict[str, set[str]]:
    """Block label → module prefixes named by a page table ("—" and notes dropped)."""
    return {label: {p.strip() for cell in (attention, conv) for p in cell.split(",") if p.strip().count(".") >= 1
                    and not p.strip().startswith("—")} for label, attention, conv in rows}


def _model_paths(described: dict[str, list[str]]) -> dict[str, set[str]]:
    """Block label → the prefixes (``down_blocks.1.attentions.0``) of the modules the trainer adapts there."""
    def prefix(path: str) -> str:
        parts = path.split(".")
        return ".".join(parts[:2] if parts[0] == "mid_block" and parts[1] in ("attentions", "resnets") and False
                        else parts[:4] if parts[0] in ("down_blocks", "up_blocks") else parts[:3])
    return {label: {prefix(p) for p in paths} for label, paths in described.items()}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_page_block_tables_match_the_trainers_block_map(family, sdxl_demo_dir):
    """The page's tables are written torch-free; the trainer's own map of a real UNet must agree with them.

    SD1: the tiny SD1 layout (SD1.5's block types, attention in the upper levels); the demo's base UNet puts
    its attention in the lower levels instead (cheaper on a CPU), so its OUT00 holds an attention the page's
    SD1.5 table does not list."""
    from diffusers import UNet2DConditionModel

    from gui.blocks_table import sdxl_block_rows
    from trainer.models.tiny import tiny_unet_config
    from trainer.network.blocks import describe_blocks

    if family == "sd1":
        unet = UNet2DConditionModel(**tiny_unet_config("sd1"))
    else:
        unet = UNet2DConditionModel.from_pretrained(sdxl_demo_dir / "model" / "unet", local_files_only=True)
    described = _model_paths(describe_blocks(unet))
    table = _table_paths(block_rows() if family == "sd1" else sdxl_block_rows())
    assert list(table) == list(described)
    for label, modules in described.items():
        assert modules <= table[label], (label, modules - table[label])
    assert any(table[label] and not described[label] for label in table) or family == "sdxl"  # tiny SD1 lacks some


def _sample_values(setting) -> list:
    """Values the job model accepts for ``setting``: its default, blank when optional, its limits and choices,
    and the awkward floats (1e-05 and an int-valued float) a text box must give back as they were."""
    values = [setting.default] + ([None] if setting.optional else [])
    if setting.kind in ("int", "float"):
        cast = int if setting.kind == "int" else float
        values += [cast(x) for x in (setting.minimum, setting.maximum) if x is not None]
        values += [cast(7), cast(2**40)] if setting.kind == "int" else [1e-05, 8.0, 0.3, 5e-7]
    if setting.kind == "choice":
        values += list(setting.choices)
    if setting.kind == "bool":
        values += [True, False]
    if setting.kind in ("str", "path", "text"):
        values += ["", " spaced  ", "line one\nline two"]
    return values


def test_every_setting_reads_back_from_its_widget_exactly():
    """The form's one promise (issue 9): coerce(display(v)) is v, same type, for every setting and value, blanks
    included; a number is shown as text that converts back to exactly it."""
    from gui.values import display_value
    from trainer.spec import SETTINGS

    for setting in SETTINGS:
        for value in _sample_values(setting):
            back = coerce_value(setting, display_value(setting, value))
            assert back == value and type(back) is type(value), (setting.key, value, back)
    assert display_value(SETTINGS_BY_KEY["seed"], None) == ""
    assert display_value(SETTINGS_BY_KEY["learning_rate"], 1e-05) == "1e-05"
    assert coerce_value(SETTINGS_BY_KEY["network_dim"], " 8.0 ") == 8  # typed another way, still whole
    assert coerce_value(SETTINGS_BY_KEY["network_dim"], "8.5") == "8.5"  # left for validation to name


def test_presets_and_the_demo_read_back_from_the_widgets_exactly(demo_dir, tmp_path):
    from gui.values import coerce_values, display_value
    from trainer import presets
    from trainer.spec import read_job_toml

    jobs = [read_job_toml(demo_dir / "job.toml")]
    jobs += [presets.apply_preset(defaults(), presets.read_preset(i.path).values)
             for i in presets.list_presets(tmp_path / "no-user-presets")]
    for job in jobs:
        job.pop("spec_version", None)
        shown = {key: display_value(SETTINGS_BY_KEY[key], value) for key, value in job.items()}
        assert coerce_values(shown) == job


def test_settings_that_do_not_apply_say_why_from_the_schema():
    from gui.values import field_label

    s = SETTINGS_BY_KEY
    assert field_label(s["unit"], {"LoRA_type": "Standard"}) == "DyLoRA unit — only with LoRA type DyLoRA"
    assert field_label(s["unit"], {"LoRA_type": "DyLoRA"}) == "DyLoRA unit"
    assert field_label(s["lr_warmup"], {"lr_scheduler": "constant"}).endswith(
        "— not with LR Scheduler adafactor, constant or piecewise_constant")
    assert applies(s["lr_warmup"], {"lr_scheduler": "cosine"})
    assert not applies(s["lr_scheduler_num_cycles"], {"lr_scheduler": "cosine"})
    assert not applies(s["conv_block_dims"], {"LoRA_type": "Standard"})
    assert applies(s["conv_block_dims"], {"LoRA_type": "LoHa"})


def test_the_form_is_laid_out_in_rows_of_two_to_four_fields():
    from gui.form_layout import ROW_SLOTS, bands, pack_rows, slots
    from gui.values import sections_of, settings_of_tab
    from trainer.spec import TABS

    for tab in TABS:
        rows = [row for _, settings in sections_of(settings_of_tab(tab)) for row in pack_rows(settings)]
        assert all(sum(slots(s) for s in row) <= ROW_SLOTS for row in rows)
    basic = [row for _, settings in sections_of(settings_of_tab("basic")) for row in pack_rows(settings)]
    fields = sum(len(row) for row in basic)
    assert len(basic) <= -(-fields // 2) and max(len(row) for row in basic) == 4  # two or more to a row
    s = SETTINGS_BY_KEY  # small neighbouring sections share a row
    small = [("Loss", [s["prior_loss_weight"]]), ("Captions", [s["shuffle_caption"]]), ("Noise", [s["noise_offset"]])]
    assert [[section for section, _ in band] for band in bands(small)] == [["Loss", "Captions"], ["Noise"]]  # a fold is its own band


def test_the_job_file_the_page_saves_is_what_start_writes(tmp_path, demo_dir):
    from gui.presets_panel import export_job_file
    from trainer.spec import read_job_toml, write_job_toml

    values = read_job_toml(demo_dir / "job.toml")
    values.pop("spec_version")
    values.pop("seed")
    saved = export_job_file(values)
    assert saved.name == "demo_lora.toml" and "seed" not in saved.read_text()
    assert saved.read_text() == write_job_toml(values, tmp_path / "job.toml").read_text()
    with pytest.raises(ValueError, match="train_batch_size"):
        export_job_file({**values, "train_batch_size": 0})
