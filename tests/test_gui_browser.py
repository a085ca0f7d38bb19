"""The real app in headless Chromium: tabs, a plan that follows the form, field errors that start nothing,
the model note (and a LoRA as base model refused at Start), user presets, kohya_ss import, a live run with
loss plot, samples and warnings, a page reload that re-attaches, and Stop that saves the LoRA.

The app runs as ``python app.py`` in a subprocess on a free port with a job built from the demo (its outputs
in a temporary folder, 50 epochs so the run is still going when the test stops it).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser_page import close_pages, field, open_page, running_app, wait_shown
from tests.process_helpers import PROJECT_ROOT, kill_runs

pytestmark = pytest.mark.browser

KOHYA_FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "kohya"  # our own kohya_ss-format configs


@pytest.fixture(scope="module")
def app_env(tmp_path_factory, demo_dir):
    from trainer.spec import read_job_toml, write_job_toml

    root = tmp_path_factory.mktemp("gui")
    values = read_job_toml(demo_dir / "job.toml")
    values.pop("spec_version", None)
    values.update(output_dir=str(root / "out"), epoch=50, output_name="browser_lora", sample_every_n_steps=10,
                  xformers=True)  # on CPU a warning the run area must show
    job = write_job_toml(values, root / "job.toml")
    with running_app(job, root) as url:
        yield {"url": url, "runs": root / "runs", "out": root / "out"}


@pytest.fixture(autouse=True)
def each_test_leaves_nothing_behind(request):
    """A failed test must not slow down the next ones: close the pages it left open (each polls the app every
    second) and kill a run it left going (it would hold the CPU and keep Start disabled)."""
    yield
    if "browser" in request.fixturenames:
        close_pages(request.getfixturevalue("browser"))
    if "app_env" in request.fixturenames:
        kill_runs(request.getfixturevalue("app_env")["runs"])


def test_page_has_the_tabs_and_a_plan(app_env, browser):
    page = open_page(browser, app_env["url"])
    for title in ("Model", "Folders", "Dataset", "Basic", "Advanced", "Blocks/Conv", "Samples"):
        expect(page.get_by_role("tab", name=title, exact=True)).to_have_count(1)  # waits while the bar lays out
    page.get_by_role("tab", name="Blocks/Conv").click()
    for title in ("Weights", "Blocks", "Conv"):
        expect(page.get_by_role("tab", name=title, exact=True)).to_have_count(1)
    page.locator("#plan-table").get_by_text("Total steps").wait_for(timeout=60_000)
    assert "2000" in page.inner_text("#plan-table")  # 8 images × 10 repeats ÷ batch 2 × 50 epochs
    memory = page.locator("#plan-table p", has_text="of RAM at the peak")  # the estimate heads the plan
    expect(memory).to_contain_text("fits")
    parts = page.locator("#plan-table details")
    expect(parts.get_by_role("cell", name="activations")).to_be_hidden()  # folded until asked
    parts.locator("summary").click()
    expect(parts.get_by_role("cell", name="activations")).to_be_visible()
    page.locator("#plan-lr-plot .mark-line path").first.wait_for(timeout=30_000)  # the LR preview
    page.get_by_role("tab", name="Basic").click()
    field(page, "epoch").fill("10")  # the plan follows the form without "Update plan"
    field(page, "epoch").press("Tab")
    total = page.locator("#plan-table tr", has_text="Total steps")
    expect(total).to_have_text(re.compile(r"Total steps\s+400\s*$"), timeout=30_000)  # 8 × 10 ÷ 2 × 10
    page.close()


def test_bad_values_show_field_errors_and_start_nothing(app_env, browser):
    page = open_page(browser, app_env["url"])
    page.get_by_role("tab", name="Basic").click()
    field(page, "train_batch_size").fill("0")
    field(page, "max_resolution").fill("abc")
    field(page, "max_resolution").press("Tab")
    batch_error = page.locator("#error-train_batch_size")
    batch_error.wait_for(state="visible", timeout=20_000)
    assert "train_batch_size" in batch_error.inner_text() and "1" in batch_error.inner_text()
    resolution_error = page.locator("#error-max_resolution")
    resolution_error.wait_for(state="visible", timeout=20_000)
    assert "max_resolution" in resolution_error.inner_text()
    page.click("#start-button")
    page.locator("#messages").get_by_text("Nothing was started").wait_for(timeout=20_000)
    assert runs_started(app_env) == 0  # (the runs folder may hold the queue's files, never a run)
    field(page, "train_batch_size").fill("2")
    field(page, "max_resolution").fill("64,64")
    field(page, "max_resolution").press("Tab")
    batch_error.wait_for(state="hidden", timeout=20_000)
    resolution_error.wait_for(state="hidden", timeout=20_000)
    page.close()


def runs_started(app_env) -> int:
    return len(list(app_env["runs"].glob("*/job.toml"))) if app_env["runs"].exists() else 0


def test_model_note_names_the_model_and_a_lora_as_base_model_starts_nothing(app_env, browser, tmp_path):
    from tests.test_gui_values import write_safetensors

    lora = write_safetensors(tmp_path / "style_lora.safetensors", ["lora_unet_x.lora_down.weight",
                                                                 "lora_unet_x.lora_up.weight", "lora_unet_x.alpha"])
    before = runs_started(app_env)
    page = open_page(browser, app_env["url"])
    note = page.locator("#model-note [data-testid=markdown]")
    expect(note).to_contain_text("Stable Diffusion 1.x (single file)", timeout=20_000)
    field(page, "pretrained_model_name_or_path").fill(str(lora))
    field(page, "pretrained_model_name_or_path").press("Tab")
    expect(note).to_contain_text("style_lora.safetensors is a LoRA file, not a base model", timeout=20_000)
    page.click("#start-button")
    page.locator("#messages").get_by_text("Nothing was started").wait_for(timeout=20_000)
    model_error = page.locator("#error-pretrained_model_name_or_path")
    model_error.wait_for(state="visible", timeout=20_000)
    assert "pretrained_model_name_or_path" in model_error.inner_text() and "LoRA" in model_error.inner_text()
    assert runs_started(app_env) == before
    page.close()


def test_a_late_answer_for_the_first_model_never_hides_the_note_for_the_new_one(app_env, browser, demo_dir,
                                                                               sd2_demo_dir):
    """A busy machine can answer the page load's requests late. Here the browser holds every request that
    still carries the job's own model until the user has typed another one; the note must end on the new one."""
    first_model = str(demo_dir / "model.safetensors")
    held, released = [], []

    def hold_first_model(route):
        if first_model in (route.request.post_data or "") and not released:
            held.append(route)
        else:
            route.continue_()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route("**/queue/join*", hold_first_model)
    page.goto(app_env["url"])
    page.wait_for_selector("#start-button", timeout=60_000)
    for _ in range(100):  # until the load's first requests are held (routes are handled while waiting)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page load sent no request with the job's model"
    model = field(page, "pretrained_model_name_or_path")
    model.fill(str(sd2_demo_dir / "model.safetensors"))
    model.press("Tab")
    page.wait_for_timeout(2000)  # time for the new model's note, were it not waiting on the held load
    released.append(True)
    for route in held:
        route.continue_()
    note = page.locator("#model-note [data-testid=markdown]")
    expect(note).to_contain_text("Stable Diffusion 2.x (single file)", timeout=20_000)
    page.wait_for_timeout(2000)  # every late answer has landed by now
    expect(note).to_contain_text("Stable Diffusion 2.x (single file)")
    page.close()


def test_a_saved_user_preset_brings_a_changed_value_back(app_env, browser):
    page = open_page(browser, app_env["url"])
    page.get_by_role("tab", name="Basic").click()
    dim = field(page, "network_dim")
    dim.fill("12")
    dim.press("Tab")
    page.fill("#preset-name input, #preset-name textarea", "browser style")
    page.get_by_role("button", name="Save as preset").click()
    page.locator("#preset-report").get_by_text("Saved preset browser style").wait_for(timeout=20_000)
    dim.fill("40")
    dim.press("Tab")
    page.get_by_role("button", name="Load preset").click()
    page.locator("#preset-report").get_by_text("Loaded preset browser style").wait_for(timeout=20_000)
    page.wait_for_function("document.querySelector('#setting-network_dim input').value === '12'", timeout=20_000)
    page.close()


def test_kohya_import_fills_the_form_reports_unmapped_keys_and_refuses_flux(app_env, browser):
    page = open_page(browser, app_env["url"])
    page.get_by_role("tab", name="Basic").click()
    upload = page.locator("#kohya-import input[type=file]")
    upload.set_input_files(str(KOHYA_FIXTURES / "loha-sd15.json"))
    report = page.locator("#preset-report")
    report.get_by_text("Imported 84 settings from loha-sd15.json").wait_for(timeout=30_000)
    # its LyCORIS options and regularizers are settings now: imported, not reported as lost
    assert "use_cp" not in report.inner_text() and "imported as 'LoHa'" in report.inner_text()
    page.wait_for_function("document.querySelector('#setting-network_dim input').value === '32'", timeout=20_000)
    assert field(page, "LoRA_type").input_value() == "LoHa"

    page.locator("#kohya-import button[aria-label='Clear']").click()
    upload.set_input_files(str(KOHYA_FIXTURES / "flux1-dev.json"))
    refusal = report.get_by_text("was not imported")
    refusal.wait_for(timeout=30_000)
    assert "Flux" in refusal.inner_text()
    assert field(page, "network_dim").input_value() == "32"  # the form is left as it was
    page.close()


def test_start_shows_loss_samples_and_warnings_reload_reattaches_and_stop_saves(app_env, browser):
    from trainer.events import read_events

    page = open_page(browser, app_env["url"])
    page.click("#start-button")
    wait_shown(page, "#loss-plot .mark-line path", timeout=90_000)
    wait_shown(page, "#sample-gallery img", timeout=90_000)
    assert "step 10 — a zqx circle on a blue background" in page.inner_text("#sample-gallery")  # the demo's trigger prompt
    assert "of 2000" in page.inner_text("#run-progress")
    page.close()

    page = open_page(browser, app_env["url"])  # a reload finds the run still going
    page.locator("#run-progress").get_by_text("Running").wait_for(timeout=30_000)
    page.locator("#loss-plot .mark-line path").first.wait_for(timeout=30_000)
    page.click("#sample-now-button")  # between the plan's samples (every 10 steps): drawn after this step
    page.locator("#messages").get_by_text("Asked for samples").wait_for(timeout=20_000)
    wait_shown(page, "#sample-gallery >> text=(Sample now)", timeout=60_000)
    page.click("#save-now-button")
    wait_shown(page, "#run-outputs >> text=(Save now, step", timeout=60_000)
    page.click("#stop-button")
    page.locator("#run-progress").get_by_text("Stopped by you").wait_for(timeout=60_000)
    page.locator("#messages").get_by_text("Stopping:").wait_for(state="detached", timeout=10_000)
    page.locator("#run-outputs").get_by_text(".safetensors").first.wait_for(timeout=20_000)
    shown = [line for line in page.inner_text("#run-outputs").splitlines() if ".safetensors" in line]
    lora = Path(shown[0].split(" — ")[0].strip())
    assert lora.parent == app_env["out"] and lora.is_file()
    events, _ = read_events(next(app_env["runs"].glob("*/events.jsonl")), 0)
    warnings = [e["message"] for e in events if e["type"] == "warning"]  # on CPU: xformers needs a GPU
    assert all(message in page.inner_text("#messages") for message in warnings)
    page.screenshot(path=str(app_env["out"].parent / "run-area.png"), full_page=True)  # for a person to look at
    page.close()

    page = open_page(browser, app_env["url"])  # later: the Runs list opens the finished run again
    page.click("#runs-choice input")
    page.get_by_role("option", name="stopped").first.click()
    page.click("#open-run-button")
    page.locator("#run-progress").get_by_text("Stopped by you").wait_for(timeout=30_000)
    page.locator("#sample-gallery img").first.wait_for(timeout=30_000)
    page.locator("#loss-plot .mark-line path").first.wait_for(timeout=30_000)
    assert str(lora) in page.inner_text("#run-outputs")
    page.close()


@pytest.mark.parametrize("family, name", [("sd2", "Stable Diffusion 2.x"), ("sdxl", "Stable Diffusion XL")])
def test_train_an_sd2_or_sdxl_single_file_from_the_page(family, name, app_env, browser, sd2_demo_dir, sdxl_demo_dir):
    """Issue 6 through the page: the note names the family of the file, one epoch trains, the LoRA is saved."""
    from safetensors import safe_open

    demo = sd2_demo_dir if family == "sd2" else sdxl_demo_dir
    page = open_page(browser, app_env["url"])
    model = field(page, "pretrained_model_name_or_path")
    model.fill(str(demo / "model.safetensors"))
    model.press("Tab")
    expect(page.locator("#model-note [data-testid=markdown]")).to_contain_text(f"{name} (single file)", timeout=20_000)
    if family == "sd2":
        page.locator("#setting-v2 input").check()  # what the note suggests for an SD2.x file
    field(page, "output_name").fill(f"page_{family}")
    field(page, "output_name").press("Tab")
    page.get_by_role("tab", name="Basic").click()
    for key, value in (("epoch", "1"), ("train_batch_size", "8")):
        field(page, key).fill(value)
        field(page, key).press("Tab")
    page.click("#start-button")
    wait_shown(page, "#run-progress >> text=Completed", timeout=180_000)
    page.locator("#run-outputs").get_by_text(f"page_{family}.safetensors").first.wait_for(timeout=20_000)
    with safe_open(str(app_env["out"] / f"page_{family}.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    prefixes = {key.split("_", 2)[1] for key in keys}
    assert prefixes == ({"unet", "te1", "te2"} if family == "sdxl" else {"unet", "te"})
    assert metadata["ss_base_model_version"] == ("sd_v2_v" if family == "sd2" else "sdxl_base_v1-0")
    page.close()
