"""Captions → CLIP token ids → the hidden states the UNet cross-attends to (SD1.x / SD2.x / SDXL).

Long captions (sd-scripts-semantics.md §2). CLIP has 77 positions: BOS, 75 tokens, EOS. With
``max_token_length`` N = 150 or 225 the caption's first N tokens are cut into n = N/75 windows of 75,
each wrapped as ``[BOS] + 75 ids + [end]`` and encoded as its own 77-token sequence. The n outputs are
re-assembled into one sequence of n·75 + 2 states: the BOS state of the first window, the 75 inner
states of every window in order, and the last state of the last window.

``clip_skip`` k: the output of the k-th layer from the end, passed through CLIP's final layer norm
(k = 1 is the normal output; k = 2 is the penultimate layer, "NovelAI style").

``weighted`` captions use A1111 attention syntax (``trainer.data.captions.parse_weighted_caption``);
each token's state is multiplied by its weight after encoding, as sd-scripts does today (no
re-normalisation of the mean, which older sd-scripts and A1111 apply).

``pad_to_longest`` is our meaning of kohya's ``no_token_padding`` (a no-op in sd-scripts now): a batch
is padded only to its longest caption, so the UNet sees longest + 2 states (BOS, tokens, EOS) instead of
max_token_length + 2, most of which would be padding. Only as many 75-token windows are encoded as the
longest caption needs. CLIP's attention is causal, so the states that remain are exactly the ones the
fully padded encoding gives at the same positions; what changes is that the UNet no longer attends to
the padding states.

SDXL (sd-scripts ``strategy_sdxl``, semantics §8) has two encoders. Each tokenizes the same ids into its
own windows (the second pads with "!"); the states are each encoder's *penultimate* layer without the
final layer norm, concatenated along the channels, then re-assembled and weighted like SD's. The pooled
vector is the second encoder's ``text_embeds`` (its projection of the first EOS state of the last layer,
after the final layer norm) of the first window. ``clip_skip`` does not apply.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

from trainer.data.captions import parse_weighted_caption

TOKENS_PER_WINDOW = 75
MAX_TOKEN_LENGTH_CHOICES = (75, 150, 225)


def check_max_token_length(max_token_length: int | None) -> int:
    """The validated ``max_token_length`` (None means 75, as in sd-scripts)."""
    value = TOKENS_PER_WINDOW if max_token_length is None else max_token_length
    if value not in MAX_TOKEN_LENGTH_CHOICES:
        raise ValueError(f"max_token_length must be one of {MAX_TOKEN_LENGTH_CHOICES}, got {max_token_length!r}")
    return value


def caption_token_ids(
    tokenizer, captions: list[str], max_token_length: int, *, weighted: bool = False
) -> tuple[list[list[int]], list[list[float]]]:
    """Each caption's token ids without BOS/EOS, cut to ``max_token_length``, and one weight per id.

    Unweighted: the caption is tokenized as it is and every weight is 1.0. Weighted: the caption is
    parsed into attention segments, each segment tokenized on its own, its weight repeated per token.
    """
    if not weighted:
        ids = _ids_without_specials(tokenizer, captions, max_token_length)
        return ids, [[1.0] * len(row) for row in ids]
    all_ids: list[list[int]] = []
    all_weights: list[list[float]] = []
    for caption in captions:
        segments = parse_weighted_caption(caption)
        segment_ids = _ids_without_specials(tokenizer, [text for text, _ in segments], max_token_length)
        caption_ids = [token for row in segment_ids for token in row][:max_token_length]
        weights = [weight for row, (_, weight) in zip(segment_ids, segments) for _ in row][:max_token_length]
        all_ids.append(caption_ids)
        all_weights.append(weights)
    return all_ids, all_weights


def _ids_without_specials(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, no BOS/EOS, at most ``max_length`` of them."""
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [list(row) for row in encoded["input_ids"]]


def window_layout(content_lengths: list[int], max_token_length: int, pad_to_longest: bool) -> tuple[int, int]:
    """``(n_windows, tokens_per_window)`` for a batch.

    Fully padded: N/75 windows of 75. ``pad_to_longest``: as many windows as the longest caption
    needs; a single window holds just the longest caption's tokens (width longest + 2).
    """
    if not pad_to_longest:
        return max_token_length // TOKENS_PER_WINDOW, TOKENS_PER_WINDOW
    longest = max(content_lengths, default=0)
    n_windows = max(1, math.ceil(longest / TOKENS_PER_WINDOW))
    return n_windows, (longest if n_windows == 1 else TOKENS_PER_WINDOW)


def window_token_ids(
    content_ids: list[int], *, n_windows: int, tokens_per_window: int, bos: int, eos: int, pad: int
) -> list[list[int]]:
    """Cut one caption's ids into ``n_windows`` windows of ``[BOS] + tokens_per_window ids + [end]``.

    The padded sequence is ``content + [EOS] + [PAD]…`` filling n·w slots (just ``content`` when it fills
    them exactly); window j holds slots j·w … j·w + w − 1. Its end token is EOS when the content fills
    every slot, else PAD (sd-scripts takes the last id of the padded sequence). When PAD ≠ EOS (SD2):
    a window whose content runs on past it ends with EOS, and a window that starts with PAD starts
    with EOS instead.
    """
    slots = n_windows * tokens_per_window
    content = content_ids[:slots]
    padded = content + ([eos] + [pad] * (slots - len(content) - 1) if len(content) < slots else [])
    end = eos if len(content) == slots else pad
    windows = []
    for start in range(0, slots, tokens_per_window) if tokens_per_window else [0]:
        window = [bos] + padded[start : start + tokens_per_window] + [end]
        if window[-2] not in (eos, pad):
            window[-1] = eos
        if window[1] == pad:
            window[1] = eos
        windows.append(window)
    return windows


def tokenize(
    tokenizer, captions: list[str], max_token_length: int = 75, pad_to_longest: bool = False, *, weighted: bool = False
) -> torch.Tensor:
    """Token ids of shape ``(B, n_windows, width)``: (B, N/75, 77), or less with ``pad_to_longest``.

    ``weighted=True`` strips the attention syntax first (the ids the weighted encoding uses).
    """
    max_token_length = check_max_token_length(max_token_length)
    ids, _ = caption_token_ids(tokenizer, captions, max_token_length, weighted=weighted)
    return _window_tensor(tokenizer, ids, max_token_length, pad_to_longest)


def _window_tensor(tokenizer, ids: list[list[int]], max_token_length: int, pad_to_longest: bool) -> torch.Tensor:
    n_windows, per_window = window_layout([len(row) for row in ids], max_token_length, pad_to_longest)
    specials = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    rows = [window_token_ids(row, n_windows=n_windows, tokens_per_window=per_window, **specials) for row in ids]
    return torch.tensor(rows, dtype=torch.long)


def encode_captions(
    tokenizer,
    text_encoder,
    captions: list[str],
    *,
    max_token_length: int = 75,
    clip_skip: int = 1,
    weighted: bool = False,
    pad_to_longest: bool = False,
) -> torch.Tensor:
    """Hidden states ``(B, n·75 + 2, C)`` for the UNet (``(B, longest + 2, C)`` with ``pad_to_longest``).

    Runs the text encoder with autograd on, so gradients reach it (and its LoRA) when it is trained;
    wrap the call in ``torch.no_grad()`` or use :class:`TextEmbeddingCache` when it is not.
    """
    max_token_length = check_max_token_length(max_token_length)
    ids, weights = caption_token_ids(tokenizer, captions, max_token_length, weighted=weighted)
    windows = _window_tensor(tokenizer, ids, max_token_length, pad_to_longest)
    states = encode_windows(text_encoder, windows, clip_skip=clip_skip)
    return _weight_and_cut(states, weights, weighted=weighted, pad_to_longest=pad_to_longest)


def encode_captions_sdxl(
    tokenizers,
    text_encoders,
    captions: list[str],
    *,
    max_token_length: int = 75,
    weighted: bool = False,
    pad_to_longest: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's ``(states (B, n·75 + 2, C1 + C2), pooled (B, P))`` for two tokenizers and encoders.

    Gradients flow as in :func:`encode_captions`.
    """
    max_token_length = check_max_token_length(max_token_length)
    ids, weights = caption_token_ids(tokenizers[0], captions, max_token_length, weighted=weighted)
    windows = [_window_tensor(tokenizer, ids, max_token_length, pad_to_longest) for tokenizer in tokenizers]
    window_states, pooled = encode_sdxl_window_states(text_encoders, windows)
    states = reassemble_windows(window_states)
    return _weight_and_cut(states, weights, weighted=weighted, pad_to_longest=pad_to_longest), pooled


def encode_sdxl_window_states(text_encoders, windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window through both SDXL encoders: ``(B, n, W)`` ids per encoder → ``(B, n, W, C1 + C2)``
    penultimate states (no final layer norm) and the second encoder's pooled ``(B, P)`` of window 0."""
    first, second = text_encoders
    batch, n_windows, width = windows[0].shape
    flat = [ids.reshape(batch * n_windows, width).to(_device_of(encoder))
            for ids, encoder in zip(windows, text_encoders)]
    states_1 = first(flat[0], output_hidden_states=True).hidden_states[-2]
    output_2 = second(flat[1], output_hidden_states=True)
    states = torch.cat([states_1, output_2.hidden_states[-2].to(states_1.dtype)], dim=-1)
    pooled = output_2.text_embeds.reshape(batch, n_windows, -1)[:, 0]
    return states.reshape(batch, n_windows, width, states.shape[-1]), pooled


def _weight_and_cut(
    states: torch.Tensor, weights: list[list[float]], *, weighted: bool, pad_to_longest: bool
) -> torch.Tensor:
    """Apply token weights (when ``weighted``), then cut to the longest caption + 2 (when ``pad_to_longest``)."""
    if weighted:
        states = apply_token_weights(states, weights)
    return states[:, : max(len(row) for row in weights) + 2] if pad_to_longest else states


def encode_windows(text_encoder, window_ids: torch.Tensor, *, clip_skip: int = 1) -> torch.Tensor:
    """Encode ``(B, n, W)`` window ids into re-assembled ``(B, n·(W−2) + 2, C)`` states."""
    return reassemble_windows(encode_window_states(text_encoder, window_ids, clip_skip=clip_skip))


def encode_window_states(text_encoder, window_ids: torch.Tensor, *, clip_skip: int = 1) -> torch.Tensor:
    """Each window encoded as its own sequence: ``(B, n, W)`` ids → ``(B, n, W, C)`` states."""
    batch, n_windows, width = window_ids.shape
    flat_ids = window_ids.reshape(batch * n_windows, width).to(_device_of(text_encoder))
    flat_states = _hidden_states(text_encoder, flat_ids, clip_skip)
    return flat_states.reshape(batch, n_windows, width, flat_states.shape[-1])


def reassemble_windows(window_states: torch.Tensor) -> torch.Tensor:
    """``(B, n, W, C)`` → ``(B, n·(W−2) + 2, C)`` (sd-scripts ``encode_tokens``).

    BOS state of window 0, states 1 … W−2 of every window in order, the last state of the last
    window. With one window this is that window's states unchanged.
    """
    batch, n_windows, width, channels = window_states.shape
    inner = window_states[:, :, 1 : width - 1].reshape(batch, n_windows * (width - 2), channels)
    return torch.cat([window_states[:, 0, :1], inner, window_states[:, -1, width - 1 :]], dim=1)


def _hidden_states(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """The k-th-from-last layer's states through the final layer norm (k = ``clip_skip``)."""
    layer_count = _unwrap(text_encoder).config.num_hidden_layers
    if not 1 <= clip_skip <= layer_count:
        raise ValueError(f"clip_skip must be between 1 and {layer_count} (the text encoder's layers), got {clip_skip}")
    if clip_skip == 1:
        return text_encoder(input_ids).last_hidden_state
    output = text_encoder(input_ids, output_hidden_states=True)
    return _final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])


def apply_token_weights(states: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """Multiply the state of token i (position i + 1, after BOS) by its weight; other positions × 1.

    ``weights[b]`` lists caption b's token weights (it may be shorter than the sequence). Not in place,
    so it is safe inside autograd.
    """
    batch, length = states.shape[:2]
    factors = torch.ones(batch, length, dtype=states.dtype, device=states.device)
    for row, row_weights in enumerate(weights):
        row_weights = row_weights[: length - 2]
        factors[row, 1 : 1 + len(row_weights)] = torch.tensor(row_weights, dtype=states.dtype)
    return states * factors.unsqueeze(-1)


def _unwrap(model):
    """The bare model inside DDP / accelerate wrappers (they hold it in ``.module``)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def _final_layer_norm(text_encoder):
    """CLIP's final layer norm (``final_layer_norm`` in transformers 5, ``text_model.…`` before)."""
    model = _unwrap(text_encoder)
    return getattr(model, "text_model", model).final_layer_norm


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


class TextEmbeddingCache:
    """Encode each distinct (caption, settings) once, for text encoders that are not being trained.

    Entries are keyed by the processed caption and the settings that change its states
    (``max_token_length``, ``clip_skip``, ``weighted``). Each holds the caption's per-window states
    (fully padded, before re-assembly), its token weights and, for SDXL (``tokenizer_2`` and
    ``text_encoder_2`` given), its pooled vector; a batch is re-assembled from them, so
    ``pad_to_longest`` batches come out exactly as :func:`encode_captions` makes them (CLIP attends
    causally, so a window's first states do not depend on the padding after them). Missing captions
    of a call are encoded together in one batch under ``no_grad``. Shuffled captions make many
    distinct strings: ``max_entries`` bounds the cache (least recently used out first); ``None`` means
    no bound.
    """

    def __init__(self, tokenizer, text_encoder, *, max_entries: int | None = None, tokenizer_2=None,
                 text_encoder_2=None):
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 or None, got {max_entries}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizer_2 = tokenizer_2
        self.text_encoder_2 = text_encoder_2
        self.max_entries = max_entries
        # key → (window states (n, 77, C), token weights, pooled (P,) for SDXL else None)
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, list[float], torch.Tensor | None]] = OrderedDict()
        self.encoded_count = 0  # captions actually run through the text encoder

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def encode_captions(
        self,
        captions: list[str],
        *,
        max_token_length: int = 75,
        clip_skip: int = 1,
        weighted: bool = False,
        pad_to_longest: bool = False,
    ) -> torch.Tensor:
        """Same result as :func:`encode_captions` with the same settings, without gradients."""
        return self.encode(captions, max_token_length=max_token_length, clip_skip=clip_skip, weighted=weighted,
                           pad_to_longest=pad_to_longest)[0]

    def encode(
        self,
        captions: list[str],
        *,
        max_token_length: int = 75,
        clip_skip: int = 1,
        weighted: bool = False,
        pad_to_longest: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(states, pooled)``: as :func:`encode_captions_sdxl` for SDXL; SD's states and None otherwise."""
        max_token_length = check_max_token_length(max_token_length)
        keys = [(caption, max_token_length, clip_skip, weighted) for caption in captions]
        found = {key: self.entries[key] for key in keys if key in self.entries}
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing:
            found.update(self._encode_missing(missing, max_token_length, clip_skip, weighted))
        for key in keys:
            self._remember(key, found[key])
        weights = [found[key][1] for key in keys]
        n_windows, per_window = window_layout([len(row) for row in weights], max_token_length, pad_to_longest)
        window_states = torch.stack([found[key][0][:n_windows, : per_window + 2] for key in keys])
        states = _weight_and_cut(reassemble_windows(window_states), weights, weighted=weighted,
                                 pad_to_longest=pad_to_longest)
        pooled = torch.stack([found[key][2] for key in keys]) if self.sdxl else None
        return states, pooled

    def _encode_missing(self, keys: list[tuple], max_token_length: int, clip_skip: int, weighted: bool) -> dict:
        captions = [key[0] for key in keys]
        ids, weights = caption_token_ids(self.tokenizer, captions, max_token_length, weighted=weighted)
        tokenizers = [self.tokenizer, self.tokenizer_2] if self.sdxl else [self.tokenizer]
        windows = [_window_tensor(tokenizer, ids, max_token_length, pad_to_longest=False) for tokenizer in tokenizers]
        with torch.no_grad():
            if self.sdxl:
                window_states, pooled = encode_sdxl_window_states([self.text_encoder, self.text_encoder_2], windows)
            else:
                window_states, pooled = encode_window_states(self.text_encoder, windows[0], clip_skip=clip_skip), None
        self.encoded_count += len(keys)
        return {key: (states.clone(), row_weights, None if pooled is None else pooled[index].clone())
                for index, (key, states, row_weights) in enumerate(zip(keys, window_states, weights))}

    def _remember(self, key: tuple, entry: tuple) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        if self.max_entries is not None and len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
