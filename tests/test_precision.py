"""Number formats of a run (``trainer.precision``): the pure decision from mixed_precision, full_fp16 and the
device, the loss scaler that accepts fp16 gradients, and full_fp16's GPU decision driven through the real
session and loop on this CPU (no GPU is needed: CPU PyTorch computes in fp16 too, only slowly)."""
from __future__ import annotations

import math

import pytest
import torch

from tests.effects_runs import demo_values, read_lora, run_in_session
from trainer.precision import choose_precision, grad_scaler
from trainer.spec import check_job, job_from_values

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (mixed_precision, full_fp16, device, bf16 supported) → (weights, LoRA weights, autocast, scaler, warned settings)
DECISIONS = [
    (("no", False, "cpu", True), (F32, F32, None, False, [])),
    (("no", False, "cuda", True), (F32, F32, None, False, [])),
    (("bf16", False, "cpu", True), (BF16, F32, BF16, False, [])),  # frozen weights in bf16 on CPU too
    (("bf16", False, "cuda", True), (BF16, F32, BF16, False, [])),
    (("bf16", False, "cuda", False), (F16, F32, F16, True, ["mixed_precision"])),  # old GPU: fp16 instead
    (("fp16", False, "cuda", True), (F16, F32, F16, True, [])),  # fp32 master LoRA weights
    (("fp16", True, "cuda", True), (F16, F16, F16, True, [])),  # full_fp16: no fp32 copy anywhere
    (("fp16", False, "cpu", True), (F32, F32, None, False, ["mixed_precision"])),
    (("fp16", True, "cpu", True), (F32, F32, None, False, ["mixed_precision", "full_fp16"])),
]


@pytest.mark.parametrize("given, expected", DECISIONS, ids=["-".join(map(str, d[0])) for d in DECISIONS])
def test_choose_precision(given, expected):
    choice = choose_precision(*given)
    weights, adapters, autocast, scaler, warned = expected
    assert (choice.weight_dtype, choice.adapter_dtype, choice.autocast_dtype, choice.use_grad_scaler) == \
           (weights, adapters, autocast, scaler)
    assert [setting for setting, _ in choice.warnings] == warned
    assert all(message for _, message in choice.warnings)


@pytest.mark.parametrize("mode", ["no", "bf16"])
def test_full_fp16_without_fp16_is_refused(mode):
    with pytest.raises(ValueError, match="full_fp16"):
        choose_precision(mode, True, "cuda")


def _fp16_layer_and_loss():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2).half()
    loss = layer(torch.randn(3, 4, dtype=F16)).float().pow(2).mean()
    return layer, loss, torch.optim.SGD(layer.parameters(), lr=0.1)


def test_grad_scaler_unscales_fp16_gradients_as_sd_scripts_patch_does():
    layer, loss, optimizer = _fp16_layer_and_loss()
    loss.backward()
    plain_grads = [p.grad.clone() for p in layer.parameters()]
    layer, loss, optimizer = _fp16_layer_and_loss()
    plain = torch.amp.GradScaler("cpu")
    plain.scale(loss).backward()
    with pytest.raises(ValueError, match="FP16 gradients"):  # why the scaler needs the patch at all
        plain.unscale_(optimizer)

    layer, loss, optimizer = _fp16_layer_and_loss()
    scaler = grad_scaler("cpu", F16)
    scaler.scale(loss).backward()
    before = [p.detach().clone() for p in layer.parameters()]
    scaler.unscale_(optimizer)
    for param, grad in zip(layer.parameters(), plain_grads):
        assert param.grad.dtype == F16 and torch.allclose(param.grad, grad, rtol=1e-2, atol=1e-4)
    scaler.step(optimizer)
    scaler.update()
    assert all(p.dtype == F16 for p in layer.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(layer.parameters(), before))

    layer.weight.grad = torch.full_like(layer.weight, float("inf"))  # an overflow: the step is skipped
    layer.bias.grad = torch.zeros_like(layer.bias)
    kept = [p.detach().clone() for p in layer.parameters()]
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, k) for p, k in zip(layer.parameters(), kept)) and scaler.get_scale() == scale / 2


def test_fp32_lora_weights_keep_the_plain_scaler():
    scaler = grad_scaler("cpu", F32)
    assert "_unscale_grads_" not in vars(scaler)


def _gpu_decision_on_cpu(monkeypatch):
    """Impose the precision a GPU gets on this CPU (CPU PyTorch computes in fp16 too, only slowly)."""
    import trainer.session

    monkeypatch.setattr(trainer.session, "choose_for_machine",
                        lambda mode, full, full_bf16, device_type: choose_precision(mode, full, "cuda", True, full_bf16))


def test_full_fp16_gpu_decision_through_the_real_session_and_loop(demo_dir, tmp_path, monkeypatch):
    """fp16 + full_fp16 as a GPU gets it: fp16 base weights, fp16 LoRA weights, gradients and optimizer state,
    fp16 autocast and the patched loss scaler. It trains and saves; on a GPU only the device differs (not
    exercised here: the development machine has no GPU)."""
    _gpu_decision_on_cpu(monkeypatch)
    run = run_in_session(demo_dir, tmp_path, mixed_precision="fp16", full_fp16=True, optimizer="SGDNesterov",
                         save_precision="float", lr_scheduler="constant")
    assert run.status == "completed", run.of("error")
    session = run.session
    assert (session.precision.weight_dtype, session.precision.adapter_dtype) == (F16, F16)
    params = session.network.trainable_parameters()
    assert params and {p.dtype for p in params} == {F16}
    state = [v for p in params for v in session.optimizer.state[p].values() if torch.is_tensor(v)]
    assert state and {v.dtype for v in state} == {F16}  # momentum in fp16: no fp32 copy anywhere
    assert len(run.losses) == 4 and all(math.isfinite(loss) for loss in run.losses)
    assert not run.warnings_for("full_fp16") and not run.warnings_for("learning_rate")
    tensors, metadata = read_lora(run.final_file)
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_up" in k)  # the fp16 LoRA moved off zero
    assert (metadata["ss_mixed_precision"], metadata["ss_full_fp16"]) == ("fp16", "True")


def test_full_fp16_with_torch_adamw_goes_nan_which_validation_warns_about(demo_dir, tmp_path, monkeypatch):
    """Why validation warns for AdamW with full_fp16: Adam's second moment and its eps (1e-8) underflow in
    fp16, and the zero-initialised LoRA up weights give the down weights a zero first gradient: 0 / 0."""
    values = dict(mixed_precision="fp16", full_fp16=True, optimizer="AdamW")
    problems = check_job(job_from_values(demo_values(demo_dir, tmp_path, **values)), for_training=False)
    assert [(p.setting, p.level) for p in problems if p.setting == "full_fp16"] == [("full_fp16", "warning")]
    _gpu_decision_on_cpu(monkeypatch)
    run = run_in_session(demo_dir, tmp_path, **values)
    assert any("nan" in message for message in run.warnings_for("full_fp16"))  # the likely setting is blamed


@pytest.mark.parametrize("mode,expected", [(("cpu", F32), torch.channels_last), (("cpu", BF16), torch.contiguous_format),
                                           (("cuda", F32), torch.contiguous_format)])
def test_unet_memory_format(mode, expected):
    from trainer.precision import unet_memory_format

    assert unet_memory_format(*mode) == expected


def test_the_fp32_cpu_unet_is_laid_out_channels_last_and_trains_as_before(demo_dir, tmp_path, monkeypatch):
    """An fp32 run on this CPU holds its UNet channels-last (faster: bench/bench_step_parts.py); the layout
    changes no result: the same job with the default layout gives the same losses and the same LoRA file."""
    import trainer.session

    def conv_formats(session) -> set[bool]:  # the frozen 3×3 convolutions (1×1 ones look alike both ways)
        return {m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
                for m in session.base.unet.modules() if isinstance(m, torch.nn.Conv2d)
                and m.kernel_size != (1, 1) and not m.weight.requires_grad}

    settings = dict(mixed_precision="no", lr_scheduler="constant", seed=3)
    laid_out = run_in_session(demo_dir, tmp_path / "nhwc", **settings)
    assert laid_out.status == "completed" and conv_formats(laid_out.session) == {True}
    monkeypatch.setattr(trainer.session, "unet_memory_format", lambda *args: torch.contiguous_format)
    plain = run_in_session(demo_dir, tmp_path / "nchw", **settings)
    assert plain.status == "completed" and conv_formats(plain.session) == {False}
    assert laid_out.losses == pytest.approx(plain.losses, rel=1e-4)
    ours, theirs = read_lora(laid_out.final_file)[0], read_lora(plain.final_file)[0]
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[key], rtol=1e-3, atol=1e-5, msg=key)


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about_before_start(demo_dir, tmp_path):
    """bf16 still runs on such a CPU (emulated) but is several times slower than fp32: the rule warns, and the
    plan says it on this machine when oneDNN finds no bf16 instructions here (and says nothing otherwise)."""
    from trainer.plan import make_plan

    slow = choose_precision("bf16", False, "cpu", bf16_fast=False)
    assert slow.weight_dtype == BF16 and [s for s, _ in slow.warnings] == ["mixed_precision"]
    assert "fp32" in slow.warnings[0][1] and not choose_precision("bf16", False, "cpu", bf16_fast=True).warnings
    assert not choose_precision("no", False, "cpu", bf16_fast=False).warnings
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    plan = make_plan(job_from_values(demo_values(demo_dir, tmp_path, mixed_precision="bf16")))
    warned = [w for w in plan["warnings"] if w["setting"] == "mixed_precision"]
    assert bool(warned) == (not native and not torch.cuda.is_available())
    fp32_plan = make_plan(job_from_values(demo_values(demo_dir, tmp_path, mixed_precision="no")))
    assert not [w for w in fp32_plan["warnings"] if w["setting"] == "mixed_precision"]
