"""What a training step keeps alive, measured by running the model on torch's ``meta`` device.

A forward pass on meta tensors computes only shapes, so it costs a fraction of a second even for SDXL, and
``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd keeps for the backward pass: the
activations of the step, with the real model's structure (attention, LoRA, gradient checkpointing) instead
of a rule of thumb. Frozen parameters are not counted here (they are the model's weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

CONTEXT_TOKENS = 77  # one CLIP chunk; longer captions (max_token_length) are more chunks
CHECKPOINTED_PARTS = ("resnets", "attentions")  # what diffusers wraps in torch.utils.checkpoint


@dataclass(frozen=True)
class Trace:
    saved_bytes: int  # tensors autograd holds from the forward until the backward
    largest_bytes: int  # the largest single tensor among them (the backward's transient gradients scale with it)
    largest_part_bytes: int  # what the largest checkpointed part saves when run without checkpointing


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _saving(parameters: set[int]):
    """(pack hook, table {id: bytes}): each saved tensor once, parameters left out."""
    saved: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in parameters and id(tensor) not in parameters:
            saved[id(base)] = (base, max(_tensor_bytes(base), saved.get(id(base), (None, 0))[1]))
        return tensor

    return pack, saved


def _part_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules gradient checkpointing recomputes one at a time (each resnet and transformer)."""
    parts = []
    for name, module in model.named_modules():
        pieces = name.split(".")
        if len(pieces) >= 2 and pieces[-2] in CHECKPOINTED_PARTS and pieces[-1].isdigit():
            parts.append(module)
    return parts


class _FusedAttention(torch.autograd.Function):
    """Attention as the fused kernels keep it for the backward (PyTorch's flash and memory-efficient SDPA on
    CPU and GPU, xformers): queries, keys, values, the output and one log-sum-exp per row; never the
    tokens × tokens matrix. On meta tensors, only the shapes are made."""

    @staticmethod
    def forward(ctx, query, key, value, mask):
        output = query.new_empty((*query.shape[:-1], value.shape[-1]))
        row_stats = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, row_stats, *([] if mask is None else [mask]))
        return output

    @staticmethod
    def backward(ctx, grad_output):  # never reached: traces run the forward only
        raise NotImplementedError("a memory trace has no backward pass")


class _FusedAttentionMode(TorchFunctionMode):
    """Inside a trace, ``scaled_dot_product_attention`` saves what the fused kernel of a real run saves.

    On the meta device torch computes it by the unfused formula, which saves the whole attention matrix
    (batch × heads × tokens²): 512 MiB per self-attention layer of SD1.5 at 512 px, which a run never holds."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            query, key, value = args[:3]
            return _FusedAttention.apply(query, key, value, kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return func(*args, **kwargs)


def trace_saved(model: torch.nn.Module, run, checkpointing: bool = False) -> Trace:
    """Run ``run()`` (a forward of ``model`` on meta inputs) and measure what autograd saves (attention as
    the fused kernels save it: :class:`_FusedAttentionMode`)."""
    parameters = {id(p) for p in model.parameters()}
    pack, saved = _saving(parameters)
    part_sizes: list[int] = []
    handles = []
    if not checkpointing:
        def before(module, args):
            module._loom_mark = sum(v[1] for v in saved.values())

        def after(module, args, output):
            part_sizes.append(sum(v[1] for v in saved.values()) - getattr(module, "_loom_mark", 0))

        for module in _part_modules(model):
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _FusedAttentionMode():
            run()
    finally:
        for handle in handles:
            handle.remove()
    sizes = [size for _, size in saved.values()]
    return Trace(sum(sizes), max(sizes, default=0), max(part_sizes, default=0))


def unet_inputs(unet, batch: int, latent_height: int, latent_width: int, tokens: int = CONTEXT_TOKENS,
                dtype: torch.dtype = torch.float32) -> tuple[tuple, dict]:
    """Meta inputs of one UNet call: noisy latents, timesteps, text states (and SDXL's size conditions)."""
    config = unet.config
    meta = dict(device="meta", dtype=dtype)
    args = (torch.zeros(batch, config.in_channels, latent_height, latent_width, **meta),
            torch.zeros(batch, dtype=torch.long, device="meta"),
            torch.zeros(batch, tokens, config.cross_attention_dim, **meta))
    kwargs: dict = {}
    if config.addition_embed_type == "text_time":
        times = 6 * config.addition_time_embed_dim
        pooled = config.projection_class_embeddings_input_dim - times
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, **meta),
                                       "time_ids": torch.zeros(batch, 6, **meta)}
    return args, kwargs


def trace_unet(unet, batch: int, latent_height: int, latent_width: int, tokens: int = CONTEXT_TOKENS,
               checkpointing: bool = False) -> Trace:
    """What one training forward of ``unet`` (on meta, LoRA applied, frozen base) saves for the backward."""
    args, kwargs = unet_inputs(unet, batch, latent_height, latent_width, tokens)
    was_training = unet.training
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    try:
        return trace_saved(unet, lambda: unet(*args, **kwargs), checkpointing)
    finally:
        if checkpointing:
            unet.disable_gradient_checkpointing()
        unet.train(was_training)


def trace_text_encoder(encoder, batch: int, tokens: int = CONTEXT_TOKENS) -> Trace:
    """What a text encoder's forward (its LoRA trained) saves, for ``batch`` captions of ``tokens`` tokens."""
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    return trace_saved(encoder, lambda: encoder(ids, output_hidden_states=True))


def largest_outputs(model: torch.nn.Module, run, count: int = 3) -> int:
    """The bytes of the ``count`` largest outputs of leaf modules during ``run()`` (no autograd): a no-grad
    pass holds roughly its largest input and output and one more at a time."""
    sizes: list[int] = []

    def record(module, args, output):
        if isinstance(output, torch.Tensor):
            sizes.append(_tensor_bytes(output))

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return sum(sorted(sizes)[-count:])
