"""Reading and writing one adapter's weights under kohya / LyCORIS key names.

Keys are ``<kohya name>.<suffix>``:

* LoRA (also LoCon, DyLoRA, LoRA-FA): ``lora_down.weight`` (rank, in[, kh, kw]), ``lora_up.weight``
  (out, rank[, 1, 1]) and ``alpha``;
* LoHa (LyCORIS): ``hada_w1_a`` (out, rank), ``hada_w1_b`` (rank, in·kh·kw), ``hada_w2_a``,
  ``hada_w2_b`` and ``alpha``, with ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha / rank.

``alpha`` is a 0-dim tensor. peft names the same tensors lora_A / lora_B (and hada_* for LoHa)
under an adapter name; the mapping lives here and nowhere else.
"""
from __future__ import annotations

import torch

from trainer.network.dylora import DyLoraAdapter
from trainer.network.lora_fa import LoraFaAdapter
from trainer.network.lycoris_adapters import is_lycoris_module, load_lycoris_tensors, lycoris_state_dict

PEFT_ADAPTER_NAME = "default"
LOHA_SUFFIXES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def adapter_kind(layer: torch.nn.Module) -> str:
    """"lycoris", "dylora", "lora_fa", "loha" or "lora" for an injected layer."""
    if is_lycoris_module(layer):
        return "lycoris"
    if isinstance(layer, DyLoraAdapter):
        return "dylora"
    if isinstance(layer, LoraFaAdapter):
        return "lora_fa"
    if hasattr(layer, "hada_w1_a"):
        return "loha"
    if hasattr(layer, "lora_A"):
        return "lora"
    raise TypeError(f"{type(layer).__name__} is not an adapter layer this project writes")


def weight_tensors(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weight tensors by kohya suffix (live parameters, except DyLoRA's concatenation)."""
    kind = adapter_kind(layer)
    if kind == "dylora":
        return {"lora_down.weight": layer.full_down(), "lora_up.weight": layer.full_up()}
    if kind == "lora_fa":  # the frozen down matrix is saved too: the up matrix means nothing without it
        return {"lora_down.weight": layer.lora_down, "lora_up.weight": layer.lora_up}
    if kind == "loha":
        return {suffix: getattr(layer, suffix)[PEFT_ADAPTER_NAME] for suffix in LOHA_SUFFIXES}
    return {
        "lora_down.weight": layer.lora_A[PEFT_ADAPTER_NAME].weight,
        "lora_up.weight": layer.lora_B[PEFT_ADAPTER_NAME].weight,
    }


def get_alpha(layer: torch.nn.Module) -> float:
    kind = adapter_kind(layer)
    if kind in ("dylora", "lora_fa"):
        return layer.alpha
    if kind == "loha":
        return float(layer.alpha[PEFT_ADAPTER_NAME])
    return float(layer.lora_alpha[PEFT_ADAPTER_NAME])


def set_alpha(layer: torch.nn.Module, alpha: float) -> None:
    """Set alpha and recompute the scale alpha / rank (sd-scripts forgets the latter on load: its FIXME)."""
    kind = adapter_kind(layer)
    if kind in ("dylora", "lora_fa"):
        layer.alpha = float(alpha)
        return
    rank = layer.r[PEFT_ADAPTER_NAME]
    if kind == "loha":
        layer.alpha[PEFT_ADAPTER_NAME] = float(alpha)
    else:
        layer.lora_alpha[PEFT_ADAPTER_NAME] = float(alpha)
    layer.scaling[PEFT_ADAPTER_NAME] = float(alpha) / rank


def export_adapter(layer: torch.nn.Module, name: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``{name.suffix: tensor}`` for one adapter, detached copies on the CPU, cast to ``dtype`` if given.

    Without ``dtype`` weights keep their training dtype and alpha is float32 (as sd-scripts' buffer).
    """
    if adapter_kind(layer) == "lycoris":  # LyCORIS's own keys (alpha included where the algorithm has one)
        tensors = {f"{name}.{suffix}": t.detach().to("cpu", copy=True) for suffix, t in lycoris_state_dict(layer).items()}
    else:
        tensors = {f"{name}.{suffix}": t.detach().to("cpu", copy=True) for suffix, t in weight_tensors(layer).items()}
        tensors[f"{name}.alpha"] = torch.tensor(get_alpha(layer), dtype=torch.float32)
    if dtype is not None:
        tensors = {key: value.to(dtype) for key, value in tensors.items()}
    return {key: value.contiguous() for key, value in tensors.items()}


def expected_shapes(layer: torch.nn.Module, name: str) -> dict[str, tuple[int, ...]]:
    """The key → shape a file must hold for this adapter (alpha is 0-dim)."""
    if adapter_kind(layer) == "lycoris":
        return {f"{name}.{suffix}": tuple(t.shape) for suffix, t in lycoris_state_dict(layer).items()}
    shapes = {f"{name}.{suffix}": tuple(t.shape) for suffix, t in weight_tensors(layer).items()}
    shapes[f"{name}.alpha"] = ()
    return shapes


def import_adapter(layer: torch.nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy this adapter's tensors from a kohya state dict (keys and shapes already checked)."""
    if adapter_kind(layer) == "lycoris":
        prefix = f"{name}."
        load_lycoris_tensors(layer, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return
    with torch.no_grad():
        if adapter_kind(layer) == "dylora":
            layer.load_full(tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"])
        else:
            for suffix, param in weight_tensors(layer).items():
                param.copy_(tensors[f"{name}.{suffix}"])
    set_alpha(layer, float(tensors[f"{name}.alpha"]))
