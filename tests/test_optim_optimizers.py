"""Optimizers by name: every one steps a real toy model; 8-bit state; Adafactor's relative step; optimizer_args."""
import math

import pytest
import torch

from trainer.optim.optimizers import (
    ONE_LR_ONLY,
    SELF_ADAPTING,
    OPTIMIZER_NAMES,
    OptimizerArgsError,
    OptimizerSettingError,
    build_optimizer,
    canonical_optimizer_name,
    optimizer_arg_names,
    optimizer_warnings,
    parse_optimizer_args,
    uses_own_step_size,
)

pytestmark = pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")


def toy_problem(seed=0, width=4):
    """A seeded linear model and a fixed regression batch."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(width, width)
    with torch.no_grad():
        model.weight.copy_(torch.randn(width, width, generator=generator))
        model.bias.zero_()
    inputs = torch.randn(8, width, generator=generator)
    targets = torch.randn(8, width, generator=generator)
    return model, inputs, targets


def train_steps(model, optimizer, inputs, targets, steps):
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_the_seed_optimizers_are_all_offered():
    for name in ("AdamW", "AdamW8bit", "Adafactor", "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan",
                 "DAdaptLion", "DAdaptSGD", "Lion", "SGDNesterov", "Prodigy"):
        assert name in OPTIMIZER_NAMES
    assert canonical_optimizer_name("adamw8BIT") == "AdamW8bit"


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_optimizer_steps_a_toy_model(name):
    model, inputs, targets = toy_problem()
    before = model.weight.detach().clone()
    lr = 1.0 if name in SELF_ADAPTING else 1e-2
    bias_lr = lr if name in ONE_LR_ONLY else lr / 2
    groups = [{"params": [model.weight], "lr": lr}, {"params": [model.bias], "lr": bias_lr}]
    optimizer = build_optimizer(name, groups, lr, {})
    losses = train_steps(model, optimizer, inputs, targets, steps=5)
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(model.weight, before)
    assert torch.isfinite(model.weight).all()


def test_adamw_lowers_the_loss_and_keeps_group_lrs():
    model, inputs, targets = toy_problem()
    optimizer = build_optimizer("AdamW", [{"params": [model.weight], "lr": 0.05}, {"params": [model.bias], "lr": 0.01}], 0.05, {})
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.01]
    assert optimizer.param_groups[0]["weight_decay"] == 0.01  # torch's default, as in sd-scripts
    losses = train_steps(model, optimizer, inputs, targets, steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_adamw8bit_keeps_uint8_state_for_large_tensors():
    model, inputs, targets = toy_problem(width=64)  # weight has 64 × 64 = 4096 elements
    optimizer = build_optimizer("AdamW8bit", [{"params": list(model.parameters())}], 1e-3, {})
    train_steps(model, optimizer, inputs, targets, steps=2)
    weight_state = optimizer.state[model.weight]
    assert weight_state["state1"].dtype == torch.uint8
    assert weight_state["state2"].dtype == torch.uint8
    assert optimizer.state[model.bias]["state1"].dtype == torch.float32  # 64 elements: below the 8-bit threshold


def test_sgd_nesterov_presets_and_override():
    model, _, _ = toy_problem()
    group = build_optimizer("SGDNesterov", [{"params": list(model.parameters())}], 1e-2, {}).param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9
    group = build_optimizer("SGDNesterov", [{"params": list(model.parameters())}], 1e-2, {"momentum": 0.5}).param_groups[0]
    assert group["momentum"] == 0.5


def adafactor_run(lr, args):
    model, inputs, targets = toy_problem(seed=3)
    groups = [{"params": [model.weight], "lr": lr}, {"params": [model.bias], "lr": lr}]
    optimizer = build_optimizer("Adafactor", groups, lr, args)
    train_steps(model, optimizer, inputs, targets, steps=3)
    return model.weight.detach().clone(), groups


def test_adafactor_relative_step_ignores_the_learning_rate():
    small, groups = adafactor_run(1e-4, {})
    huge, _ = adafactor_run(10.0, {})
    assert torch.equal(small, huge)
    assert groups[0]["lr"] == 1e-4  # the caller's groups are left alone
    assert uses_own_step_size("Adafactor", {}) and uses_own_step_size("adafactor", {"relative_step": False, "warmup_init": True})
    # with relative_step off the learning rate matters again
    fixed_small, _ = adafactor_run(1e-4, {"relative_step": False, "scale_parameter": False})
    fixed_huge, _ = adafactor_run(1e-1, {"relative_step": False, "scale_parameter": False})
    assert not torch.equal(fixed_small, fixed_huge)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("weight_decay=0.01 betas=(0.9,0.99) decouple=True", {"weight_decay": 0.01, "betas": (0.9, 0.99), "decouple": True}),
        ("betas=(0.9, 0.99), weight_decay = 0.1", {"betas": (0.9, 0.99), "weight_decay": 0.1}),
        ("betas=[0.9,0.99] d0=1e-6", {"betas": (0.9, 0.99), "d0": 1e-6}),
        ("decouple=true use_bias_correction=FALSE growth_rate=inf", {"decouple": True, "use_bias_correction": False, "growth_rate": math.inf}),
        ("mode=fast name='a b'", {"mode": "fast", "name": "a b"}),
        ("momentum=-0.5", {"momentum": -0.5}),
    ],
)
def test_parse_optimizer_args(text, expected):
    assert parse_optimizer_args(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("weight_decay", "'weight_decay' is not key=value"),
        ("weight_decay=", "'weight_decay=' is not key=value"),
        ("betas=(0.9,0.99", "missing ')'"),
        ("x=1+", "'x=1+' has a value that is not a Python literal"),
        ("2x=1", "is not an argument name"),
        ("a=1 a=2", "'a' is given twice"),
    ],
)
def test_bad_optimizer_args_name_the_pair(text, fragment):
    with pytest.raises(OptimizerArgsError) as caught:
        parse_optimizer_args(text)
    assert fragment in str(caught.value)
    assert not str(caught.value).startswith("optimizer_args")  # the Problem names the setting, once
    assert caught.value.setting == "optimizer_args"


def test_unknown_or_mistyped_argument_is_refused():
    model, _, _ = toy_problem()
    groups = [{"params": list(model.parameters())}]
    with pytest.raises(OptimizerArgsError, match="'foo' is not an argument of AdamW; it takes: .*weight_decay"):
        build_optimizer("AdamW", groups, 1e-3, {"foo": 1})
    with pytest.raises(OptimizerArgsError, match="betas=0.9 for AdamW should be a tuple of 2 numbers"):
        build_optimizer("AdamW", groups, 1e-3, {"betas": 0.9})
    with pytest.raises(OptimizerArgsError, match="decouple='yes' for Prodigy should be True or False"):
        build_optimizer("Prodigy", groups, 1.0, {"decouple": "yes"})
    with pytest.raises(OptimizerArgsError, match="learning_rate"):
        build_optimizer("AdamW", groups, 1e-3, {"lr": 1.0})
    with pytest.raises(OptimizerArgsError, match="AdamW refused"):
        build_optimizer("AdamW", groups, 1e-3, {"betas": (2.0, 0.999)})
    with pytest.raises(OptimizerSettingError, match="^'Adam9' is not one of") as caught:
        build_optimizer("Adam9", groups, 1e-3, {})
    assert caught.value.setting == "optimizer"


@pytest.mark.parametrize("name", ONE_LR_ONLY)
def test_one_lr_optimizers_train_every_group_at_the_first_groups_lr_as_sd_scripts_warns(name):
    # sd-scripts warns "only the first one will take effect" and trains; the optimizers themselves raise at the
    # first step on different group lrs, so every group gets the first's (the text encoder's, first there too)
    model, inputs, targets = toy_problem()
    groups = [{"params": [model.weight], "lr": 0.5, "name": "text_encoder"}, {"params": [model.bias], "lr": 1.0, "name": "unet"}]
    optimizer = build_optimizer(name, groups, 1.0, {})
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
    assert [g["lr"] for g in groups] == [0.5, 1.0]  # the caller's groups are untouched
    bias_before = model.bias.detach().clone()
    train_steps(model, optimizer, inputs, targets, steps=2)
    assert not torch.equal(model.bias, bias_before)
    (warning,) = optimizer_warnings(name, {}, {"text_encoder": 0.5, "unet": 1.0})[-1:]
    assert warning[0] == "text_encoder_lr" and "only the first (text_encoder 0.5) takes effect" in warning[1]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_groups_with_lr_zero_are_left_out_and_stay_frozen(name):
    # DAdaptAdaGrad, DAdaptAdan and DAdaptLion would move lr-0 params if the group were kept
    model, inputs, targets = toy_problem()
    groups = [{"params": [model.weight], "lr": 1.0, "name": "unet"}, {"params": [model.bias], "lr": 0.0, "name": "te"}]
    optimizer = build_optimizer(name, groups, 1.0, {})
    assert [group["name"] for group in optimizer.param_groups] == ["unet"]
    bias_before = model.bias.detach().clone()
    train_steps(model, optimizer, inputs, targets, steps=2)
    assert torch.equal(model.bias, bias_before)
    with pytest.raises(OptimizerSettingError, match="every learning rate is 0"):
        build_optimizer(name, [{"params": [model.bias], "lr": 0.0}], 0.0, {})


def test_arg_names_and_warnings():
    assert "decouple" in optimizer_arg_names("Prodigy")
    assert "lr" not in optimizer_arg_names("Prodigy")
    settings = [setting for setting, _ in optimizer_warnings("Prodigy", {}, {"unet": 1e-4, "text_encoder": 5e-5})]
    assert settings == ["learning_rate", "text_encoder_lr"]
    assert optimizer_warnings("Prodigy", {}, {"unet": 1.0, "text_encoder": 1.0}) == []
    assert [s for s, _ in optimizer_warnings("Adafactor", {}, {"unet": 1e-4})] == ["learning_rate"]
    assert optimizer_warnings("Adafactor", {"relative_step": False}, {"unet": 1e-4}) == []
    assert optimizer_warnings("AdamW", {}, {"unet": 1e-4, "text_encoder": 5e-5}) == []


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU:UserWarning")
@pytest.mark.parametrize("name, module, class_name", [
    ("PagedAdamW32bit", "bitsandbytes.optim", "PagedAdamW32bit"),
    ("PagedLion8bit", "bitsandbytes.optim", "PagedLion8bit"),
    ("bitsandbytes.optim.AdEMAMix8bit", "bitsandbytes.optim", "AdEMAMix8bit"),
    ("bitsandbytes.optim.PagedAdEMAMix8bit", "bitsandbytes.optim", "PagedAdEMAMix8bit"),
    ("DAdaptAdanIP", "dadaptation.experimental", "DAdaptAdanIP"),
    ("DAdaptAdamPreprint", "dadaptation.experimental", "DAdaptAdamPreprint"),
])
def test_kohya_ss_optimizers_build_sd_scripts_classes_and_take_their_arguments(name, module, class_name):
    """The names kohya_ss's list offers (two of them as module paths) build the class sd-scripts' get_optimizer
    builds; their own arguments are checked as for every optimizer; a kohya_ss config naming one imports."""
    import importlib

    from trainer.kohya import import_kohya_config

    model, _, _ = toy_problem()
    optimizer = build_optimizer(name, [{"params": list(model.parameters()), "lr": 1.0}], 1.0, {"weight_decay": 0.01})
    assert type(optimizer) is getattr(importlib.import_module(module), class_name)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(OptimizerArgsError):
        build_optimizer(name, [{"params": list(model.parameters()), "lr": 1.0}], 1.0, {"no_such_arg": 1})
    assert import_kohya_config({"optimizer": name}).values["optimizer"] == name


def test_any_module_class_optimizer_is_built_and_its_arguments_checked(tmp_path):
    """sd-scripts' "any optimizer class": a dotted module.Class is imported and built with the extra arguments,
    which are checked against its signature; a missing module, a class that is not an optimizer and a name that
    is neither listed nor dotted are refused naming the setting, in validate and in the job model."""
    from trainer.kohya import import_kohya_config
    from trainer.preflight import deep_checks
    from trainer.spec import JobError, job_from_values

    model, inputs, targets = toy_problem()
    optimizer = build_optimizer("torch.optim.RAdam", [{"params": list(model.parameters()), "lr": 1e-2}], 1e-2,
                                {"weight_decay": 0.1})
    assert type(optimizer) is torch.optim.RAdam and optimizer.param_groups[0]["weight_decay"] == 0.1
    losses = train_steps(model, optimizer, inputs, targets, steps=5)
    assert losses[-1] < losses[0]
    job = job_from_values({"optimizer": "torch.optim.RAdam", "optimizer_args": "weight_decay=0.1"})
    assert not deep_checks(job)
    bad_arg = deep_checks(job_from_values({"optimizer": "torch.optim.RAdam", "optimizer_args": "momentum=0.9"}))
    assert [p.setting for p in bad_arg] == ["optimizer_args"] and "momentum" in bad_arg[0].message
    missing = deep_checks(job_from_values({"optimizer": "no_such_package.Opt"}))
    assert [p.setting for p in missing] == ["optimizer"] and "cannot import 'no_such_package'" in missing[0].message
    not_optimizer = deep_checks(job_from_values({"optimizer": "collections.OrderedDict"}))
    assert [p.setting for p in not_optimizer] == ["optimizer"] and "not a torch optimizer" in not_optimizer[0].message
    with pytest.raises(JobError) as error:
        job_from_values({"optimizer": "not a class"})
    assert "optimizer" in str(error.value) and "module.Class" in str(error.value)
    # kohya_ss's list allows custom values: an import keeps them (validation then says what is missing)
    assert import_kohya_config({"optimizer": "pytorch_optimizer.CAME"}).values["optimizer"] == "pytorch_optimizer.CAME"
