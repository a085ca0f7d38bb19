"""Issue 12 acceptance: the demo's base model draws what its prompts say, and the demo's LoRA learns the
new colour under the trigger word while the rest stays; deliberately broken pipelines fail the same checks.

Every check counts, over 16 seeds, the pictures in which ``trainer.models.demo_measure`` finds the prompted
colour, shape and background (colour masks and blob geometry, no learned judge). Pictures come from the
trainer's own loader, LoRA injection and sampler (``tests/drawing_helpers.py``). One demo run (the shipped
job, without its sample and save points) serves every LoRA check.
"""
from __future__ import annotations

import pytest

from tests import drawing_helpers as drawing
from tests.trainer_helpers import run_trainer, write_job
from trainer.models import demo_measure as measure
from trainer.models.shapes import NEW_COLOUR_NAME, TRIGGER_WORD, caption

ENOUGH, AT_MOST = 12, 2  # of 16 seeds
BASE_PROMPTS = (("red", "circle", "blue"), ("yellow", "square", "black"), ("white", "triangle", "green"),
                ("blue", "circle", "yellow"))
TRIGGER_PROMPT = ("circle", "blue")  # "a zqx circle on a blue background": magenta, the colour the LoRA teaches
PLAIN_PROMPT = ("red", "square", "yellow")  # no trigger word: the LoRA must leave it as the base draws it


def text(wanted: tuple[str, str, str]) -> str:
    colour, shape, background = wanted
    return caption(shape, colour, background)


def base_failures(pictures: dict) -> list[str]:
    """What keeps the base from passing: a prompt drawn in fewer than 12 of 16 seeds, or a prompt's pictures
    matching a mismatched prompt (the next test prompt: another colour, shape and background) in more than 2.

    (Measured on the shipped base: 16, 13, 16, 16 of 16, and 0 for every mismatched prompt. Stricter still,
    the yellow square's own colour and background with another shape: 3 of 16 are read as circles, its
    rounded corners filling less than 0.845 of the box.)"""
    failures = []
    for index, wanted in enumerate(BASE_PROMPTS):
        images = pictures[wanted]
        hits = measure.count_showing(images, *wanted)
        other = BASE_PROMPTS[(index + 1) % len(BASE_PROMPTS)]
        wrong_prompt = measure.count_showing(images, *other)
        if hits < ENOUGH:
            failures.append(f"{text(wanted)!r} drawn in {hits}/16")
        if wrong_prompt > AT_MOST:
            failures.append(f"{text(wanted)!r} also matches the mismatched prompt {text(other)!r} in {wrong_prompt}/16")
    return failures


def test_the_base_model_draws_what_the_prompt_says(demo_dir, tmp_path):
    """(Sampling this epsilon model as v-prediction is no negative case here: the misread sampler still
    draws every test prompt in 16 of 16, so this measurement cannot tell it from the right one.)"""
    base = drawing.load(demo_dir / "model.safetensors")
    failures = base_failures({wanted: drawing.draw(base, text(wanted), tmp_path) for wanted in BASE_PROMPTS})
    assert failures == [], failures


@pytest.fixture(scope="module")
def demo_lora(demo_dir, tmp_path_factory):
    """The demo job as shipped, without its sample and save points, run through the CLI: (job, LoRA file)."""
    work = tmp_path_factory.mktemp("demo_run")
    job = write_job(demo_dir, work / "job.toml", output_dir=str(work / "out"), logging_dir=str(work / "logs"),
                    sample_every_n_steps=0, save_every_n_epochs=0)
    result = run_trainer("train", job, "--run-dir", work / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    return job, work / "out" / "demo_lora.safetensors"


@pytest.fixture(scope="module")
def without_lora(demo_dir, tmp_path_factory):
    """(trigger-prompt hits in magenta, plain-prompt hits) of the base model alone."""
    out = tmp_path_factory.mktemp("without_lora")
    base = drawing.load(demo_dir / "model.safetensors")
    shape, background = TRIGGER_PROMPT
    return (measure.count_showing(drawing.draw(base, caption(shape, TRIGGER_WORD, background), out),
                                  NEW_COLOUR_NAME, shape, background),
            measure.count_showing(drawing.draw(base, text(PLAIN_PROMPT), out), *PLAIN_PROMPT))


def lora_failures(with_lora: tuple[int, int], without: tuple[int, int]) -> list[str]:
    """What keeps the LoRA from passing: the trigger prompt not drawn as a magenta circle on blue in 12 of 16
    seeds with the LoRA (or drawn so in more than 2 without it), or the prompt without the trigger word drawn
    as prompted in fewer than 12 with the LoRA (the base's own bar), or in more than 2 fewer than without it."""
    failures = []
    if with_lora[0] < ENOUGH or without[0] > AT_MOST:
        failures.append(f"trigger prompt in magenta: {with_lora[0]}/16 with the LoRA, {without[0]}/16 without")
    if with_lora[1] < ENOUGH or with_lora[1] < without[1] - 2:
        failures.append(f"prompt without the trigger: {with_lora[1]}/16 with the LoRA, {without[1]}/16 without")
    return failures


@pytest.mark.parametrize("lora_scale, broken", [(1.0, False), (0.0, True)], ids=["as-trained", "lora-scale-0"])
def test_the_demo_lora_learns_the_new_colour_and_keeps_the_rest(demo_dir, demo_lora, without_lora, tmp_path,
                                                                lora_scale, broken):
    """Broken: the LoRA put in at scale 0 at sampling (a pipeline that forgets it); the same check must fail."""
    job, lora_file = demo_lora
    adapted = drawing.load(demo_dir / "model.safetensors", job, lora_file, lora_scale=lora_scale)
    shape, background = TRIGGER_PROMPT
    with_lora = (measure.count_showing(drawing.draw(adapted, caption(shape, TRIGGER_WORD, background), tmp_path),
                                       NEW_COLOUR_NAME, shape, background),
                 measure.count_showing(drawing.draw(adapted, text(PLAIN_PROMPT), tmp_path), *PLAIN_PROMPT))
    failures = lora_failures(with_lora, without_lora)
    assert (failures != []) == broken, failures
