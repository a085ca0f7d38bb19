"""LR schedules: hand-worked values per scheduler, LambdaLR stepping, transformers' formulas, Adafactor's own schedule."""
import math

import pytest
import torch

from trainer.optim.optimizers import build_optimizer
from trainer.optim.schedulers import (
    SCHEDULER_NAMES,
    AdafactorStepSizeSchedule,
    adafactor_relative_step_size,
    build_lr_scheduler,
    lr_curve,
    lr_factor,
)
from trainer.plan import schedule
from trainer.spec import validate_values
from trainer.spec.tables import SCHEDULER_ARGS


@pytest.mark.parametrize("batches, percent, warmup", [
    (50 * 10 * 2, 10, 100),  # the seed's example: 50 images x 10 repeats x 2 epochs at batch 1, 10 % warmup
    (250, 10, 25),
    (15, 10, 1),  # sd-scripts takes kohya_ss's percent as a ratio of the steps and floors: int(0.1 × 15)
    (19, 10, 1),
    (1000, 0, 0),
])
def test_the_plan_takes_warmup_as_a_percent_of_the_steps(batches, percent, warmup):
    plan = schedule(batches_per_epoch=batches, epoch=1, lr_scheduler="cosine", lr_warmup_percent=percent)
    assert plan.warmup_steps == warmup


def factor(step, scheduler, total, warmup, **kw):
    return lr_factor(step, scheduler=scheduler, total_steps=total, warmup_steps=warmup, **kw)


def test_constant_ignores_warmup_and_constant_with_warmup_ramps():
    assert [factor(s, "constant", 100, 10) for s in (0, 5, 99)] == [1.0, 1.0, 1.0]
    assert factor(0, "constant_with_warmup", 100, 10) == 0.0
    assert factor(5, "constant_with_warmup", 100, 10) == pytest.approx(0.5)
    assert factor(10, "constant_with_warmup", 100, 10) == 1.0
    assert factor(99, "constant_with_warmup", 100, 10) == 1.0


def test_linear_by_hand():
    # warmup 10 of 100: step 3 → 3/10; after warmup (100 − s)/90
    assert factor(3, "linear", 100, 10) == pytest.approx(0.3)
    assert factor(10, "linear", 100, 10) == pytest.approx(1.0)
    assert factor(55, "linear", 100, 10) == pytest.approx(45 / 90)
    assert factor(100, "linear", 100, 10) == 0.0


def test_cosine_is_one_half_wave_whatever_the_cycles():
    # total 110, warmup 10: progress = (s − 10)/100; factor = ½(1 + cos(π·progress))
    assert factor(35, "cosine", 110, 10) == pytest.approx(0.5 + math.sqrt(2) / 4)  # progress ¼
    assert factor(60, "cosine", 110, 10) == pytest.approx(0.5)  # progress ½
    assert factor(110, "cosine", 110, 10) == pytest.approx(0.0, abs=1e-12)
    assert factor(35, "cosine", 110, 10, num_cycles=3) == factor(35, "cosine", 110, 10)


def test_cosine_with_restarts_by_hand():
    # 4 cycles over 100 steps, no warmup: restarts at 25, 50, 75; step 10 is 0.4 of a cycle: ½(1 + cos 72°)
    assert factor(0, "cosine_with_restarts", 100, 0, num_cycles=4) == 1.0
    assert factor(10, "cosine_with_restarts", 100, 0, num_cycles=4) == pytest.approx(0.5 * (1 + 0.30901699437))
    assert factor(25, "cosine_with_restarts", 100, 0, num_cycles=4) == pytest.approx(1.0)
    assert factor(50, "cosine_with_restarts", 100, 0, num_cycles=4) == pytest.approx(1.0)
    assert factor(20, "cosine_with_restarts", 100, 0, num_cycles=4) == pytest.approx(0.5 * (1 + math.cos(0.8 * math.pi)))
    assert factor(100, "cosine_with_restarts", 100, 0, num_cycles=4) == 0.0
    # with 20 warmup steps the first cycle starts at 20
    assert factor(10, "cosine_with_restarts", 100, 20, num_cycles=2) == pytest.approx(0.5)
    assert factor(60, "cosine_with_restarts", 100, 20, num_cycles=2) == pytest.approx(1.0)


def test_polynomial_by_hand():
    # lr 1e-4, power 2, no warmup: at half way ((1e-4 − 1e-7)·¼ + 1e-7)/1e-4 = 0.25075
    assert factor(50, "polynomial", 100, 0, power=2.0, lr_init=1e-4) == pytest.approx(0.25075)
    assert factor(100, "polynomial", 100, 0, power=2.0, lr_init=1e-4) == pytest.approx(1e-3)
    assert factor(150, "polynomial", 100, 0, power=2.0, lr_init=1e-4) == pytest.approx(1e-3)
    # power 1 with warmup 20: step 60 is half of the decay: (1e-4 − 1e-7)·½ + 1e-7 over 1e-4
    assert factor(60, "polynomial", 100, 20, power=1.0, lr_init=1e-4) == pytest.approx(0.5005)
    assert factor(10, "polynomial", 100, 20, power=1.0, lr_init=1e-4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="learning_rate"):
        factor(50, "polynomial", 100, 0, lr_init=1e-8)


def test_bad_schedule_settings_name_the_setting():
    with pytest.raises(ValueError, match="lr_scheduler"):
        factor(0, "cosine_annealing", 100, 0)
    with pytest.raises(ValueError, match="lr_scheduler_num_cycles"):
        factor(0, "cosine_with_restarts", 100, 0, num_cycles=0)
    with pytest.raises(ValueError, match="lr_scheduler_power"):
        factor(0, "polynomial", 100, 0, power=0)


def tiny_optimizer(name="AdamW", args=None):
    model = torch.nn.Linear(3, 2)
    groups = [{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 5e-4}]
    return model, build_optimizer(name, groups, 1e-3, args or {})


# the schedules that need no lr_scheduler_args (the four that read them: test_named_scheduler_arguments below)
PLAIN = [s for s in SCHEDULER_NAMES if s != "adafactor" and s not in SCHEDULER_ARGS]


@pytest.mark.parametrize("scheduler", PLAIN)
def test_torch_scheduler_steps_through_lr_factor(scheduler):
    model, optimizer = tiny_optimizer()
    kw = dict(scheduler=scheduler, total_steps=30, warmup_steps=6, num_cycles=2, power=1.5)
    lr_scheduler = build_lr_scheduler(optimizer, **kw)
    for step in range(35):
        expected = lr_factor(step, **kw, lr_init=1e-3)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * expected, 5e-4 * expected])
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("scheduler", PLAIN)
def test_same_numbers_as_transformers(scheduler):
    from transformers.optimization import get_scheduler

    _, optimizer = tiny_optimizer()
    extra = {"num_cycles": 3} if scheduler == "cosine_with_restarts" else {}
    extra = {"power": 2.0} if scheduler == "polynomial" else extra
    warmup = 0 if scheduler == "constant" else 7
    reference = get_scheduler(
        scheduler, optimizer, num_warmup_steps=warmup or None, num_training_steps=40, scheduler_specific_kwargs=extra
    )
    ours = lr_curve(
        {"weight": 1e-3, "bias": 5e-4}, scheduler=scheduler, total_steps=40, warmup_steps=warmup,
        num_cycles=extra.get("num_cycles", 1), power=extra.get("power", 1.0), lr_init=1e-3,
    )
    for step in range(40):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([ours["weight"][step], ours["bias"][step]])
        reference.step()


def test_lr_curve_scales_each_group():
    curve = lr_curve({"unet": 1e-4, "text_encoder": 5e-5}, scheduler="linear", total_steps=10, warmup_steps=2)
    assert len(curve["unet"]) == 10
    assert curve["unet"][1] == pytest.approx(0.5e-4)
    assert curve["unet"][2] == pytest.approx(1e-4)
    assert curve["text_encoder"][6] == pytest.approx(5e-5 * 4 / 8)


def test_adafactor_relative_step_curve_and_schedule():
    assert adafactor_relative_step_size(0) == 1e-2
    assert adafactor_relative_step_size(2, warmup_init=True) == pytest.approx(3e-6)
    assert adafactor_relative_step_size(40_000 - 1) == pytest.approx(1 / 200)
    curve = lr_curve({"unet": 1e-4}, scheduler="adafactor", total_steps=5, warmup_steps=0, relative_step=True, warmup_init=True)
    assert curve["unet"] == pytest.approx([1e-6, 2e-6, 3e-6, 4e-6, 5e-6])

    model, optimizer = tiny_optimizer("Adafactor", {"warmup_init": True, "scale_parameter": False})
    lr_scheduler = build_lr_scheduler(optimizer, scheduler="cosine", total_steps=10, warmup_steps=0)
    assert isinstance(lr_scheduler, AdafactorStepSizeSchedule)
    for _ in range(3):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    assert lr_scheduler.get_last_lr() == pytest.approx([3e-6, 3e-6])  # Adafactor's own step 3 size


def test_adafactor_scheduler_needs_adafactor():
    _, optimizer = tiny_optimizer()
    with pytest.raises(ValueError, match="needs the Adafactor optimizer"):
        build_lr_scheduler(optimizer, scheduler="adafactor", total_steps=10, warmup_steps=0)


def warned_settings(**values):
    _, problems = validate_values(values, for_training=False)
    return {p.setting for p in problems if p.level == "warning"}


def test_settings_the_chosen_scheduler_does_not_read_are_warned_about():
    schedule_settings = {"lr_warmup", "lr_scheduler_num_cycles", "lr_scheduler_power"}
    set_all = dict(lr_warmup=10.0, lr_scheduler_num_cycles=3, lr_scheduler_power=2.0)
    assert warned_settings(lr_scheduler="constant", **set_all) & schedule_settings == {
        "lr_scheduler_num_cycles", "lr_scheduler_power"}  # warmup: disabled in the page, 0 in the plan
    assert warned_settings(lr_scheduler="cosine", **set_all) & schedule_settings == {
        "lr_scheduler_num_cycles", "lr_scheduler_power"}  # the README's example: cycles for cosine
    assert warned_settings(lr_scheduler="linear", **set_all) & schedule_settings == {
        "lr_scheduler_num_cycles", "lr_scheduler_power"}
    assert warned_settings(lr_scheduler="cosine_with_restarts", **set_all) & schedule_settings == {"lr_scheduler_power"}
    assert warned_settings(lr_scheduler="polynomial", **set_all) & schedule_settings == {"lr_scheduler_num_cycles"}
    assert not warned_settings(lr_scheduler="cosine") & schedule_settings  # blanks and defaults: nothing to say


def test_scheduler_state_resumes_where_it_stopped():
    kw = dict(scheduler="cosine_with_restarts", total_steps=20, warmup_steps=4, num_cycles=2)
    model, optimizer = tiny_optimizer()
    lr_scheduler = build_lr_scheduler(optimizer, **kw)
    for _ in range(7):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        lr_scheduler.step()
    saved = lr_scheduler.state_dict()
    _, resumed_optimizer = tiny_optimizer()
    resumed = build_lr_scheduler(resumed_optimizer, **kw)
    resumed.load_state_dict(saved)
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr() == pytest.approx([1e-3 * lr_factor(8, **kw), 5e-4 * lr_factor(8, **kw)])


# sd-scripts' get_scheduler_fix for the four schedules that read lr_scheduler_args, with the library functions it
# calls: (our lr_scheduler_args, num_cycles, the reference scheduler on an optimizer, total steps, warmup)
def _references(optimizer, total, warmup):
    from diffusers.optimization import get_piecewise_constant_schedule
    from transformers.optimization import (
        get_cosine_with_min_lr_schedule_with_warmup, get_inverse_sqrt_schedule, get_wsd_schedule,
    )

    decay = int(0.3 * total)
    return {  # each made only when asked: a LambdaLR sets the optimizer's rates when it is made
        "piecewise_constant": ("step_rules='1:10,0.5:25,0.1'", 1,
                               lambda: get_piecewise_constant_schedule(optimizer, step_rules="1:10,0.5:25,0.1")),
        "cosine_with_min_lr": ("min_lr_rate=0.2", 3, lambda: get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=3 / 2, min_lr_rate=0.2)),
        "inverse_sqrt": ("timescale=12", 1, lambda: get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup,
                                                                               timescale=12)),
        "warmup_stable_decay": ("num_decay_steps=0.3 min_lr_ratio=0.1 decay_type='linear'", 1,
                                lambda: get_wsd_schedule(optimizer, num_warmup_steps=warmup,
                                                         num_stable_steps=total - warmup - decay, num_decay_steps=decay,
                                                         num_cycles=1 / 2, min_lr_ratio=0.1, decay_type="linear")),
    }


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("scheduler", sorted(SCHEDULER_ARGS))
def test_named_scheduler_arguments_give_the_libraries_numbers(scheduler):
    from trainer.optim.schedulers import named_scheduler_options

    total, warmup = 40, 6
    _, optimizer = tiny_optimizer()
    args, cycles, make = _references(optimizer, total, warmup)[scheduler]
    reference = make()
    options = named_scheduler_options(scheduler, args)
    warmup_used = 0 if scheduler == "piecewise_constant" else warmup
    ours = lr_curve({"weight": 1e-3, "bias": 5e-4}, scheduler=scheduler, total_steps=total, warmup_steps=warmup_used,
                    num_cycles=cycles, lr_init=1e-3, options=options)
    _, again = tiny_optimizer()
    built = build_lr_scheduler(again, scheduler=scheduler, total_steps=total, warmup_steps=warmup_used,
                               num_cycles=cycles, options=options)
    for step in range(total):
        expected = [g["lr"] for g in optimizer.param_groups]
        assert [ours["weight"][step], ours["bias"][step]] == pytest.approx(expected), step
        assert [g["lr"] for g in again.param_groups] == pytest.approx(expected), step
        reference.step()
        built.step()
    assert len(set(ours["weight"])) > 2  # the schedule moves


def test_min_lr_is_divided_by_the_learning_rate():
    curve = lr_curve({"unet": 1e-3}, scheduler="cosine_with_min_lr", total_steps=10, warmup_steps=0, lr_init=1e-3,
                     options={"min_lr": 1e-4})["unet"]
    assert curve[0] == pytest.approx(1e-3) and min(curve) > 1e-4 - 1e-12


@pytest.mark.parametrize("scheduler, args, words", [
    ("piecewise_constant", "", "needs step_rules"),
    ("piecewise_constant", "step_rules='1:x,0.1'", "must look like"),
    ("cosine_with_min_lr", "", "needs one of min_lr_rate"),
    ("cosine_with_min_lr", "min_lr_rate=0.1 min_lr=1e-6", "needs one of min_lr_rate"),
    ("inverse_sqrt", "timescale=0", "timescale must be"),
    ("warmup_stable_decay", "decay_type='square'", "decay_type must be"),
    ("warmup_stable_decay", "T_max=3", "does not take T_max"),
])
def test_bad_named_scheduler_arguments_name_lr_scheduler_args(scheduler, args, words):
    _, problems = validate_values({"lr_scheduler": scheduler, "lr_scheduler_args": args})
    found = [p for p in problems if p.setting == "lr_scheduler_args" and p.level == "error"]
    assert found and words in found[0].message, problems


def test_the_plan_preview_follows_the_named_scheduler_arguments():
    from trainer.plan import lr_preview
    from trainer.spec import job_from_values

    job = job_from_values({"lr_scheduler": "piecewise_constant", "lr_scheduler_args": "step_rules='1:5,0.25'",
                           "unet_lr": 1e-3, "text_encoder_lr": 0.0, "learning_rate": 1e-3})
    plan = schedule(batches_per_epoch=10, epoch=1, lr_scheduler="piecewise_constant", lr_warmup_percent=0)
    curve = lr_preview(job, plan)["unet"]
    values = {round(v, 9) for _, v in curve} if isinstance(curve[0], (list, tuple)) else {round(v, 9) for v in curve}
    assert values == {1e-3, 2.5e-4}
    assert not [p for p in validate_values({"lr_scheduler": "piecewise_constant",
                                            "lr_scheduler_args": "step_rules='1:5,0.25'"})[1]
                if p.setting == "lr_scheduler_args"]  # read, so no "ignored" warning
