"""The README's promises that can drift: the implemented-settings count and the two commands."""
import re
from pathlib import Path

from trainer.spec import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def test_readme_states_the_current_number_of_implemented_settings():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\*\*(\d+) of (\d+) settings are implemented\.\*\*", text)
    assert match, "the README must state how many settings are implemented"
    implemented = sum(s.implemented for s in SETTINGS)
    assert (int(match.group(1)), int(match.group(2))) == (implemented, len(SETTINGS))
    for setting in SETTINGS:
        if not setting.implemented:
            assert f"`{setting.key}`" in text, f"the README should name unimplemented {setting.key}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in readme and "bash scripts/setup.sh && .venv/bin/python app.py" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
