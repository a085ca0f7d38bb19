"""Helpers for driving the real page in Chromium as a person does: start the app, open every tab, inner tab
and fold, change a field and change it back, save the form as a job file through the page's own button,
and measure the page. Used by ``tests/test_gui_page_browser.py``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from tests.process_helpers import kill_runs, start_app, stop_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDE, PHONE = (1400, 1000), (390, 844)
TABS = ("Model", "Folders", "Dataset", "Basic", "Advanced", "Blocks/Conv", "Samples")
INNER_TABS = ("Weights", "Blocks", "Conv")


@contextmanager
def chromium():
    """A headless Chromium: the system's (never one a tool downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def close_pages(browser) -> None:
    """Close every page left open: each one polls the app, and would slow down the next test."""
    for context in list(browser.contexts):
        context.close()


@contextmanager
def running_app(job: Path, root: Path):
    """``python app.py --job JOB`` on a free port, its runs under ROOT/runs and the user presets under
    ROOT/user_presets; yields its URL. Kills any trainer it left behind."""
    runs = root / "runs"
    process, url = start_app(job, root, runs, "--user-presets", str(root / "user_presets"))
    try:
        yield url
    finally:
        kill_runs(runs)
        stop_app(process)


def open_page(browser, url: str, size=WIDE):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.set_default_timeout(90_000)  # a loaded 2-core machine can take long to answer a click
    page.goto(url)
    page.wait_for_selector("#start-button", timeout=60_000)
    return page


def field(page, key: str):
    """The input (or text area) of setting ``key``."""
    return page.locator(f"#setting-{key} input, #setting-{key} textarea").first


def wait_shown(page, selector: str, timeout: int) -> None:
    """Wait for ``selector``; on timeout fail with what the page's run area says (for a diagnosis from CI)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(selector).first.wait_for(timeout=timeout)
    except PlaywrightTimeout:
        texts = {part: page.inner_text(part)[-1500:] for part in ("#run-progress", "#messages", "#run-outputs")
                 if page.locator(part).count()}
        raise AssertionError(f"{selector} did not appear within {timeout / 1000:.0f} s; the page said {texts}") from None


TAB_IDS = {"Model": "tab-model", "Folders": "tab-folders", "Dataset": "tab-dataset", "Basic": "tab-basic",
           "Advanced": "tab-advanced", "Blocks/Conv": "tab-blocks-conv", "Samples": "tab-samples",
           "Weights": "tab-weights", "Blocks": "tab-blocks", "Conv": "tab-conv"}


def open_tab(page, title: str):
    """Click a tab by its title, through Gradio's "More tabs" menu when the bar is too narrow to show it;
    returns its panel once it is on screen."""
    tab = page.get_by_role("tab", name=title, exact=True).filter(visible=True)
    if tab.count():
        tab.first.click()
    else:
        page.locator(".overflow-menu button[aria-label='More tabs']").filter(visible=True).first.click()
        page.locator(".overflow-dropdown button", has_text=title).filter(visible=True).first.click()
    panel = page.locator(f"#{TAB_IDS[title]}")
    panel.wait_for(state="visible", timeout=30_000)
    return panel


def open_folds(page) -> int:
    """Open every closed fold of the settings now on screen (clicking its heading, as a person does);
    returns how many. The run column's log fold is left alone."""
    heads = page.locator("#settings-tabs .loom-fold-head[aria-expanded=false]").filter(visible=True)
    count = heads.count()
    for _ in range(count):
        heads.first.click()
    return count


def each_tab(page):
    """Open every tab and inner tab in turn, yielding (name, panel locator) with the tab on screen."""
    for title in TABS:
        panel = open_tab(page, title)
        if title != "Blocks/Conv":
            yield title, panel
            continue
        for inner in INNER_TABS:
            yield f"Blocks/Conv › {inner}", open_tab(page, inner)


def open_everything(page) -> None:
    """Every tab, inner tab and fold opened, as a curious person would before pressing Start."""
    for _, _ in each_tab(page):
        open_folds(page)


FIRST_ENABLED_FIELD = """panel => {
    const field = [...panel.querySelectorAll('.loom-field')].find(f => f.offsetParent !== null
        && f.querySelector('input[type=text]:not([disabled]):not([role]), textarea:not([disabled])'));
    return field ? field.id : null;
}"""


def change_and_restore_one_field_per_tab(page) -> list[str]:
    """In every tab with settings, change its first enabled text field (numbers are text fields too) and
    change it back; returns the keys."""
    touched = []
    for _, panel in each_tab(page):
        field_id = panel.evaluate(FIRST_ENABLED_FIELD)
        if field_id:
            touched.append(_change_and_restore(page, page.locator(f"#{field_id}")))
    return touched


def _change_and_restore(page, field) -> str:
    key = field.get_attribute("id").removeprefix("setting-")
    checkbox = field.locator("input[type=checkbox]")
    if checkbox.count():
        checkbox.click()
        checkbox.click()
        return key
    box = field.locator("input, textarea").first
    if box.get_attribute("role") == "combobox":  # a Dropdown: pick another choice, then the first again
        original = box.input_value()
        box.click()
        page.get_by_role("option").filter(has_not_text=original).first.click()
        box.click()
        page.get_by_role("option", name=original, exact=True).click()
        return key
    original = box.input_value()
    box.fill(original + "1")
    box.press("Tab")
    box.fill(original)
    box.press("Tab")
    return key


def saved_job_text(page) -> str:
    """Press "Save job file" and download the file the page offers: the form read back as a job. (The page
    says the time of each save; a second save in the same second would look like the first, so wait.)"""
    report = page.locator("#preset-report")
    before = report.inner_text()
    if "Saved the form" in before:
        page.wait_for_timeout(1100)
    page.click("#export-job-button")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (report.inner_text() == before or "Saved the form" not in report.inner_text()):
        assert "❌" not in report.inner_text(), report.inner_text()
        page.wait_for_timeout(200)
    href = page.locator("#job-file a[href]").first.get_attribute("href")
    return page.request.get(href).text()


def button_states(page) -> dict[str, bool]:
    """{button: enabled} for the run buttons."""
    return {name: page.locator(f"#{name}-button").is_enabled()
            for name in ("start", "stop", "sample-now", "save-now")}


def wait_buttons(page, expected: dict[str, bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if button_states(page) == expected:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"buttons {button_states(page)}, expected {expected}; the page said "
                         f"{page.inner_text('#run-progress')!r} {page.inner_text('#messages')!r}")


def page_geometry(page) -> dict:
    """The page's height and width as the browser lays it out, and whether Start is on screen and clickable
    where the page is scrolled to now (nothing is scrolled for it)."""
    return page.evaluate("""() => {
        const root = document.documentElement, start = document.querySelector('#start-button');
        const box = start.getBoundingClientRect();
        const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
        return {height: root.scrollHeight, scroll_width: root.scrollWidth, width: root.clientWidth,
                start_on_screen: box.top >= 0 && box.bottom <= window.innerHeight && box.left >= 0
                                 && box.right <= root.clientWidth,
                start_clickable: !!hit && start.contains(hit)};
    }""")
