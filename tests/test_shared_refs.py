"""tests/shared_refs.py: where it looks for shared/, and that a test without it skips (or, when the folder was
named explicitly, fails) with a reason."""
import pytest

from . import shared_refs
from .shared_refs import ENV_VAR, shared_path


class FakeTest:
    """Stands in for the running pytest item: marked ``shared`` or not."""

    def __init__(self, marked=True):
        self.marked = marked

    def get_closest_marker(self, name):
        return name if self.marked and name == "shared" else None


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A shared folder holding reference/table.tsv, with a marked test running."""
    (tmp_path / "shared" / "reference").mkdir(parents=True)
    (tmp_path / "shared" / "reference" / "table.tsv").write_text("key\n", encoding="utf-8")
    monkeypatch.setattr(shared_refs, "_current_item", FakeTest())
    return tmp_path / "shared"


def test_told_none_it_finds_nothing_and_the_test_skips(folder, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "none")
    monkeypatch.setattr(shared_refs, "BESIDE_THE_CHECKOUT", folder)
    with pytest.raises(pytest.skip.Exception, match=r"reads shared/reference/table.tsv, and there is no shared "
                                                    r"folder \(LORA_LOOM_SHARED=none\)"):
        shared_path("reference", "table.tsv")


def test_unset_it_uses_the_folder_beside_the_checkout(folder, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(shared_refs, "BESIDE_THE_CHECKOUT", folder)
    assert shared_path("reference", "table.tsv") == folder / "reference" / "table.tsv"
    with pytest.raises(pytest.skip.Exception, match="does not exist in this shared folder"):
        shared_path("reference", "missing.tsv")
    monkeypatch.setattr(shared_refs, "BESIDE_THE_CHECKOUT", folder.parent / "nothing-here")
    with pytest.raises(pytest.skip.Exception, match="there is no shared folder"):
        shared_path("reference", "table.tsv")


def test_a_folder_named_explicitly_must_hold_what_the_tests_read(folder, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(folder))
    assert shared_path("reference", "table.tsv") == folder / "reference" / "table.tsv"
    with pytest.raises(pytest.fail.Exception, match="names the shared folder, but .*missing.tsv does not exist"):
        shared_path("reference", "missing.tsv")
    monkeypatch.setenv(ENV_VAR, str(folder.parent / "nothing-here"))
    with pytest.raises(pytest.fail.Exception, match="nothing-here"):
        shared_path("reference", "table.tsv")


def test_only_a_shared_marked_test_may_ask(folder, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(folder))
    monkeypatch.setattr(shared_refs, "_current_item", FakeTest(marked=False))
    with pytest.raises(RuntimeError, match=r"only for tests marked @pytest.mark.shared"):
        shared_path("reference", "table.tsv")
    monkeypatch.setattr(shared_refs, "_current_item", None)  # at import time
    with pytest.raises(RuntimeError, match="not at import time"):
        shared_path("reference", "table.tsv")


def test_the_running_test_is_the_one_shared_refs_sees(request):
    assert shared_refs._current_item is request.node
