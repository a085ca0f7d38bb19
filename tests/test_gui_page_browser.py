"""Issue 9 in a real Chromium: the page keeps every value however a person clicks through it, fits on a
screen, and enables a button only when it can act.

For the demo job (its seed left blank: issue 16 item 2), every built-in preset loaded in turn, and a kohya_ss
config with blanks imported through the page: open every tab, inner tab and fold, save the form as a job
file through the page's own button and compare it with the job that was loaded, byte for byte; the same
after changing one field per tab and changing it back; then Start, whose job.toml must be that job too, and
the buttons follow the run as it trains and ends by Stop, by a crash (kill -9) and by itself. Geometry is
measured in the browser at 1400×1000 and 390×844, with a screenshot of every tab at both sizes under the
test's temporary folder.
"""
from __future__ import annotations

import difflib
import json
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from trainer.events import find_event
from tests.browser_page import (
    PHONE,
    WIDE,
    button_states,
    change_and_restore_one_field_per_tab,
    close_pages,
    each_tab,
    kill_runs,
    open_everything,
    open_folds,
    open_page,
    open_tab,
    page_geometry,
    running_app,
    saved_job_text,
    wait_buttons,
)

pytestmark = pytest.mark.browser

KOHYA_BLANKS = Path(__file__).parent / "fixtures" / "kohya" / "blanks_sd15.json"
IDLE = {"start": True, "stop": False, "sample-now": False, "save-now": False}
TRAINING = {"start": False, "stop": True, "sample-now": True, "save-now": True}
MAX_TAB_HEIGHT = 2000


def job_text(values: dict) -> str:
    """The job file for ``values`` exactly as the page and Start write it."""
    from trainer.spec import job_from_values, job_to_values, toml_text

    return toml_text(job_to_values(job_from_values(values)))


def assert_same_job(got: str, expected: str, what: str) -> None:
    diff = "\n".join(difflib.unified_diff(expected.splitlines(), got.splitlines(), "loaded", what, lineterm=""))
    assert got == expected, f"{what} differs from the job that was loaded:\n{diff}"


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_dir):
    from trainer.spec import read_job_toml, write_job_toml

    root = tmp_path_factory.mktemp("page")
    values = read_job_toml(demo_dir / "job.toml")
    values.pop("spec_version")
    values.pop("seed")  # issue 16 item 2: a job without a seed, opened with app.py --job
    values["output_dir"] = str(root / "out")
    job = write_job_toml(values, root / "job.toml")
    with running_app(job, root) as url:
        yield {"url": url, "root": root, "runs": root / "runs", "values": values}


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    yield
    if "browser" in request.fixturenames:
        close_pages(request.getfixturevalue("browser"))
    if "app" in request.fixturenames:
        kill_runs(request.getfixturevalue("app")["runs"])


def reads_back_unchanged(page, expected: str, what: str, change_fields: bool = True) -> None:
    """Open everything and read the form back; then (``change_fields``) change one field per tab, change it
    back, read again. (Each change is checked and planned by the app: about ten seconds a tab on a 2-core
    machine, so the demo job does that; the presets and the import, which only load values, are read back
    after opening everything.)"""
    open_everything(page)
    assert_same_job(saved_job_text(page), expected, f"{what}: job saved after opening every tab and fold")
    if not change_fields:
        return
    touched = change_and_restore_one_field_per_tab(page)
    assert len(touched) >= 7, touched
    assert_same_job(saved_job_text(page), expected, f"{what}: job saved after changing back {touched}")


def start_run(page, runs: Path, expected: str) -> Path:
    """Press Start; the run's job.toml must be the loaded job. Returns the run folder."""
    before = set(runs.glob("*/job.toml")) if runs.exists() else set()
    page.click("#start-button")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set(runs.glob("*/job.toml")) - before if runs.exists() else set()
        if new:
            job = new.pop()
            assert_same_job(job.read_text(encoding="utf-8"), expected, "the job Start wrote")
            return job.parent
        page.wait_for_timeout(200)
    raise AssertionError(f"Start started nothing; the page said {page.inner_text('#messages')!r}")


def wait_for_first_step(run: Path, timeout: float = 180) -> None:
    """Until the trainer has written its first step event (read from the run folder, not the page)."""
    events = run / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.exists() and '"type": "step"' in events.read_text(encoding="utf-8"):
            return
        time.sleep(0.05)
    raise AssertionError(f"no training step within {timeout} s: {(run / 'trainer.log').read_text()[-2000:]}")


def test_demo_job_reads_back_unchanged_then_trains_and_stop_ends_it(app, browser):
    page = open_page(browser, app["url"])
    wait_buttons(page, IDLE)  # Stop, Sample now and Save now are off with no run
    expected = job_text(app["values"])
    assert "seed" not in expected
    reads_back_unchanged(page, expected, "demo")
    start_run(page, app["runs"], expected)
    wait_buttons(page, TRAINING, timeout=120)
    page.locator("#loss-plot .mark-line path").first.wait_for(timeout=30_000)
    page.click("#stop-button")
    expect(page.locator("#sample-now-button")).to_be_disabled(timeout=10_000)  # a run being stopped takes no asks
    page.locator("#run-progress").get_by_text("Stopped by you").wait_for(timeout=60_000)
    wait_buttons(page, IDLE)


def test_every_builtin_preset_reads_back_unchanged_then_one_trains_and_a_crash_ends_it(app, browser):
    from trainer import presets

    page = open_page(browser, app["url"])
    builtin = [p for p in presets.list_presets(None)]
    builtin.sort(key=lambda p: p.name == "Fast test run")  # the one that trains fast on the demo goes last
    current = dict(app["values"])
    open_everything(page)  # every tab and fold drawn first: each preset then loads into fields on screen
    for preset in builtin:
        page.click("#preset-choice input")
        page.get_by_role("option", name=preset.name, exact=True).click()
        page.get_by_role("button", name="Load preset").click()
        page.locator("#preset-report").get_by_text(f"Loaded preset {preset.name}").wait_for(timeout=20_000)
        current = presets.apply_preset(current, presets.read_preset(preset.path).values)
        assert_same_job(saved_job_text(page), job_text(current), f"preset {preset.name}: job saved after loading it")
    run = start_run(page, app["runs"], job_text(current))
    wait_for_first_step(run)
    kill_runs(run.parent)  # a crash: SIGKILL, no last words, while it trains
    page.locator("#run-progress").get_by_text("died").wait_for(timeout=30_000)
    wait_buttons(page, IDLE)


def test_kohya_config_with_blanks_reads_back_unchanged_then_trains_to_its_end(app, browser, demo_dir, tmp_path):
    from gui.presets_panel import import_kohya_values

    config = json.loads(KOHYA_BLANKS.read_text(encoding="utf-8"))
    config.update(pretrained_model_name_or_path=str(demo_dir / "model.safetensors"),
                  train_data_dir=str(demo_dir / "data"), output_dir=str(app["root"] / "out"),
                  max_train_steps="6")  # with max_train_epochs blank, the step count governs (sd-scripts)
    path = tmp_path / KOHYA_BLANKS.name
    path.write_text(json.dumps(config), encoding="utf-8")
    imported = import_kohya_values(str(path), app["values"]).values
    assert [imported[k] for k in ("seed", "max_train_epochs", "lr_scheduler_num_cycles")] == [None] * 3
    expected = job_text(imported)
    assert not re.search(r"^(seed|max_train_epochs|lr_scheduler_num_cycles) =", expected, re.M)

    page = open_page(browser, app["url"])
    page.locator("#kohya-import input[type=file]").set_input_files(str(path))
    page.locator("#preset-report").get_by_text(f"settings from {path.name}").wait_for(timeout=30_000)
    reads_back_unchanged(page, expected, "kohya_ss config with blanks", change_fields=False)
    run = start_run(page, app["runs"], expected)
    expect(page.locator("#stop-button")).to_be_enabled(timeout=20_000)
    page.locator("#run-progress").get_by_text("Completed").wait_for(timeout=240_000)
    wait_buttons(page, IDLE)
    started = find_event(run / "events.jsonl", "started")
    assert started is not None and started["plan"]["total_steps"] == 6
    assert 'max_train_steps = 6' in expected


def test_each_tab_fits_two_screens_and_the_phone_page_keeps_start_in_reach(app, browser, tmp_path):
    shots = tmp_path / "screenshots"
    heights = {}
    page = open_page(browser, app["url"], WIDE)
    for name, _ in each_tab(page):
        page.wait_for_timeout(300)
        heights[name] = page_geometry(page)["height"]
        page.screenshot(path=str(shots / f"{WIDE[0]}x{WIDE[1]}-{_slug(name)}.png"), full_page=True)
        open_folds(page)
        heights[f"{name} (folds open)"] = page_geometry(page)["height"]
    print(f"\ntab heights at {WIDE[0]}×{WIDE[1]}: {heights}\nscreenshots: {shots}")
    assert max(h for name, h in heights.items() if "folds open" not in name) <= MAX_TAB_HEIGHT, heights
    # Not asserted yet (known gap): at the foot of the Advanced tab the run column has scrolled away; its CSS
    # ``position: sticky`` does not hold inside Gradio's containers.
    page.close()

    page = open_page(browser, app["url"], PHONE)
    for name, _ in each_tab(page):
        page.wait_for_timeout(300)
        geometry = page_geometry(page)
        page.screenshot(path=str(shots / f"{PHONE[0]}x{PHONE[1]}-{_slug(name)}.png"), full_page=True)
        assert geometry["scroll_width"] <= geometry["width"] == PHONE[0], (name, geometry)
        assert geometry["start_on_screen"] and geometry["start_clickable"], (name, geometry)
    assert len(list(shots.glob("*.png"))) == 2 * 9


def test_help_tips_folds_and_settings_that_do_not_apply(app, browser):
    page = open_page(browser, app["url"])
    open_tab(page, "Advanced")
    workers = page.locator("#setting-max_data_loader_n_workers")
    expect(workers).to_have_count(1)  # in the page while its fold is closed: Ctrl-F finds it and opens it
    assert workers.evaluate("e => e.closest('[hidden=until-found]') !== null")
    page.locator("#fold-advanced-performance .loom-fold-head").click()
    expect(workers).to_be_visible()

    open_tab(page, "Basic")
    tip = page.locator("#setting-epoch .info-text")
    expect(tip).to_be_hidden()
    page.locator("#setting-epoch input").hover()
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("How many passes over the dataset")

    conv = page.locator("#setting-conv_dim")
    expect(conv.locator("input")).to_be_disabled()
    expect(conv).to_contain_text("Convolution rank (LoCon) — not with LoRA type Standard")
    page.click("#setting-LoRA_type input")
    page.get_by_role("option", name="LoCon", exact=True).click()
    expect(conv.locator("input")).to_be_enabled(timeout=60_000)
    expect(conv).not_to_contain_text("not with")
    expect(page.locator("#setting-unit")).to_contain_text("only with LoRA type DyLoRA")
    assert button_states(page) == IDLE


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
