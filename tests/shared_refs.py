"""The one way a test reaches ``shared/``: the reference folder some checkouts have beside them (``../shared``).

A person who downloads LoRA Loom has no such folder, so every test that reads it

* is marked ``@pytest.mark.shared`` (``pytest -m shared`` selects exactly these), and
* asks for its files through ``shared_path(...)``, which skips the test with a reason when the folder or the
  file is not there.

``LORA_LOOM_SHARED`` decides where the folder is:

* unset or empty: ``shared`` beside the checkout, if it exists (a missing file skips);
* ``none``: nowhere, as on a fresh clone (every such test skips);
* a path: that folder, and it must hold what the tests ask for (a missing folder or file fails, so a CI pass
  that names the folder cannot go green by skipping).

``tests/test_test_paths.py`` fails when a test file reaches outside the repository any other way.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VAR = "LORA_LOOM_SHARED"
REPO_ROOT = Path(__file__).resolve().parents[1]
BESIDE_THE_CHECKOUT = REPO_ROOT.parent / "shared"

# The test now running (set by tests/conftest.py), to check that it carries the ``shared`` marker.
_current_item = None


def set_current_item(item) -> None:
    global _current_item
    _current_item = item


def shared_root() -> Path | None:
    """The shared folder the tests may read, or None when there is none (or ``LORA_LOOM_SHARED=none``)."""
    setting = os.environ.get(ENV_VAR, "").strip()
    if setting.lower() == "none":
        return None
    if setting:
        return Path(setting).expanduser().resolve()
    return BESIDE_THE_CHECKOUT if BESIDE_THE_CHECKOUT.is_dir() else None


def _named_explicitly() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "none")


def shared_path(*parts: str) -> Path:
    """``shared/<parts…>`` for the running test; skips it (with the reason) when that is not available."""
    if _current_item is None or _current_item.get_closest_marker("shared") is None:
        raise RuntimeError("shared_path() is only for tests marked @pytest.mark.shared (call it inside the test, "
                           "not at import time), so that `pytest -m shared` selects every test that reads shared/")
    root = shared_root()
    if root is None:
        why = f"{ENV_VAR}=none" if os.environ.get(ENV_VAR, "").strip() else f"no {BESIDE_THE_CHECKOUT}"
        pytest.skip(f"reads shared/{'/'.join(parts)}, and there is no shared folder ({why})")
    path = root.joinpath(*parts)
    if not path.exists():
        if _named_explicitly():
            pytest.fail(f"{ENV_VAR}={os.environ[ENV_VAR]} names the shared folder, but {path} does not exist")
        pytest.skip(f"{path} does not exist in this shared folder")
    return path
