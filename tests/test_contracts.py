"""Contracts declared once in code: the typed job generated from the catalog, and the event stream."""
import json
import re
from pathlib import Path

import pytest

from trainer.events import EVENT_TYPES, EventWriter, find_event, read_events
from trainer.spec import SETTINGS, defaults, job_from_values, job_to_values
from trainer.spec import codegen, sections
from trainer.spec.setting import GROUPS

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_the_typed_job_is_generated_from_the_catalog_as_it_is_now():
    # A setting added, renamed or retyped in the catalog without `python -m trainer.spec.codegen` fails here;
    # after regenerating, the type checker (mypy, run by scripts/test.sh) finds every place that reads it.
    assert codegen.TARGET.read_text(encoding="utf-8") == codegen.source(), \
        "trainer/spec/sections.py is stale: run `python -m trainer.spec.codegen`"


def test_every_setting_sits_in_exactly_one_section_under_its_own_name():
    job = job_from_values({"network_dim": 16, "seed": 3, "sample_prompts": "a cat"})
    seen = []
    for group in GROUPS:
        section = getattr(job, group)
        assert isinstance(section, sections.SECTION_CLASSES[group])
        seen += list(section.__dataclass_fields__)
    assert sorted(seen) == sorted(s.key for s in SETTINGS)
    assert (job.network.network_dim, job.optimisation.seed, job.sampling.sample_prompts) == (16, 3, "a cat")
    assert job_to_values(job) == {"spec_version": 1, **defaults(), "network_dim": 16, "seed": 3,
                                  "sample_prompts": "a cat"}


def test_the_typed_job_is_frozen():
    job = job_from_values({})
    with pytest.raises(AttributeError):
        job.network.network_dim = 4  # type: ignore[misc]


def test_the_event_page_names_every_event_type_and_field():
    text = (PROJECT_ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    for type_, spec in EVENT_TYPES.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{type_}` |")), None)
        assert row is not None, f"docs/events.md has no row for {type_}"
        for field in spec.required + spec.optional:
            assert f"`{field}`" in row, f"docs/events.md: {type_} does not name {field}"


def test_the_writer_refuses_events_the_contract_does_not_declare(tmp_path):
    with EventWriter(tmp_path / "events.jsonl") as events:
        events.emit("step", step=1, epoch=1, loss=0.1, lr={"unet": 1e-4}, loss_avg=0.1)
        for bad in (lambda: events.emit("stepped", step=1),
                    lambda: events.emit("step", step=1, epoch=1, loss=0.1),  # no lr
                    lambda: events.emit("finished", status="done", outputs=[]),
                    lambda: events.emit("warning", message="x", setting=None, hint="y")):
            with pytest.raises(ValueError):
                bad()
    assert [e["type"] for e in read_events(tmp_path / "events.jsonl")[0]] == ["step"]


def test_find_event_reads_complete_lines_only(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [{"type": "started", "plan": {}}, {"type": "finished", "status": "stopped", "outputs": []},
             {"type": "finished", "status": "completed", "outputs": ["a"]}]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"type": "finished", "sta', encoding="utf-8")
    assert find_event(path, "finished")["status"] == "stopped"
    assert find_event(path, "finished", last=True)["status"] == "completed"
    assert find_event(path, "started", head_bytes=40) is not None
    assert find_event(path, "finished", head_bytes=10) is None
    assert find_event(tmp_path / "absent.jsonl", "started") is None


def test_the_page_reads_events_only_through_the_trainer_module():
    for module in (PROJECT_ROOT / "gui").glob("*.py"):
        source = module.read_text(encoding="utf-8")
        assert not re.search(r"""b['"]\\?["']?(finished|started|step)""", source), f"{module.name} scans raw bytes"
        assert "json.loads" not in source or module.name == "plan_panel.py", f"{module.name} parses JSON itself"


def test_every_job_parameter_is_typed_so_the_type_checker_sees_its_keys():
    import ast

    untyped = []
    for root in ("trainer", "gui"):
        for module in sorted((PROJECT_ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for arg in node.args.args + node.args.kwonlyargs:
                        if arg.arg == "job" and (arg.annotation is None or "Job" not in ast.unparse(arg.annotation)):
                            untyped.append(f"{module.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name}")
    assert not untyped, "annotate these `job` parameters as Job (mypy skips what it cannot type): " + ", ".join(untyped)
