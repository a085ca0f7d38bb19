"""The queue and the Runs history in headless Chromium: three tiny demo jobs queued from the page run in order,
the run area follows each one live, all end completed with their LoRA files listed; two of them compared
give one loss series per run and their samples of the same prompt and step side by side."""
from __future__ import annotations

import time

import pytest

from tests.browser_page import field, open_page, wait_shown
from tests.process_helpers import kill_runs, start_app, stop_app
from tests.queue_helpers import tiny_values
from trainer import run_queue
from trainer.spec import write_job_toml

pytestmark = pytest.mark.browser
NAMES = ("qa", "qb", "qc")


@pytest.fixture()
def queue_app(tmp_path, demo_dir):
    job = write_job_toml(tiny_values(demo_dir, tmp_path, "form"), tmp_path / "job.toml")
    runs = (tmp_path / "runs").resolve()
    process, url = start_app(job, tmp_path, runs)
    try:
        yield {"url": url, "runs": runs, "out": tmp_path / "out"}
    finally:
        stop_app(process)
        kill_runs(runs)


def test_three_queued_jobs_run_in_order_live_and_two_compare(queue_app, browser):
    page = open_page(browser, queue_app["url"])
    seen_live: set[str] = set()  # the jobs the run area showed while they trained
    for name in NAMES:  # the first job starts while the others are added: the run area is watched meanwhile
        field(page, "output_name").fill(name)
        page.click("#add-queue-button")
        deadline = time.monotonic() + 60
        while not page.locator(f"#queue-note >> text=-{name}").count():  # "Queued 000N-name."
            assert time.monotonic() < deadline, page.inner_text("#queue-note")
            _watch_run_area(page, seen_live)
            time.sleep(0.3)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the run area follows each job while it trains
        shown = _watch_run_area(page, seen_live)
        done = page.locator("#queue-table tr[data-status='completed']").count()
        if done == len(NAMES) and seen_live == set(NAMES):
            break
        time.sleep(0.3)
    assert seen_live == set(NAMES), (seen_live, shown, page.inner_text("#queue-table"))
    for name in NAMES:
        wait_shown(page, f"#queue-table tr[data-job$='-{name}'][data-status='completed']", timeout=10_000)
    entries = run_queue.list_jobs(queue_app["runs"])
    assert [e.name for e in entries] == list(NAMES)
    started = [run_queue.job_state(queue_app["runs"], e.job_id)["started"] for e in entries]
    assert started == sorted(started)  # in queue order
    page.get_by_role("tab", name="Runs", exact=True).click()
    for name in NAMES:
        row = page.locator(f"#history-table tr[data-run$='-{name}']")
        row.wait_for(timeout=30_000)
        assert row.get_attribute("data-status") == "completed"
        assert f"{name}.safetensors" in row.inner_text()
        assert (queue_app["out"] / f"{name}.safetensors").is_file()
    for name in NAMES[:2]:
        page.locator("#history-pick label").filter(has_text=f"-{name}").click()
    page.click("#history-compare")
    page.locator("#history-note >> text=2 runs overlaid").wait_for(timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#compare-loss-plot .mark-line path').length === 2",
                           timeout=30_000)  # one loss series per run
    wait_shown(page, "#compare-gallery img", timeout=30_000)
    captions = [line for line in page.inner_text("#compare-gallery").splitlines() if " — step " in line]
    assert len(captions) == 2
    assert len({caption.split(" — ", 1)[1] for caption in captions}) == 1  # the same step and prompt
    assert "-qa — " in captions[0] and "-qb — " in captions[1]


def _watch_run_area(page, seen_live: set[str]) -> list[str]:
    """Adds to ``seen_live`` the queued job that the run area shows as running now; returns what it shows."""
    shown = page.evaluate("[document.querySelector('#runs-choice input')?.value || '', "
                          "document.querySelector('#run-progress [data-state]')?.dataset.state || '']")
    if shown[1] == "running":
        seen_live.update(name for name in NAMES if f"-{name}" in shown[0])
    return shown
