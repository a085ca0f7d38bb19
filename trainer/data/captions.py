"""Caption processing: dropout, tag shuffling with kept leading tags, and A1111 attention weights.

Pure functions of strings and an explicit ``random.Random``; no torch. The training loop calls
:func:`process_caption` once per sample each time the sample is drawn (so shuffles differ between
epochs), then hands the result to ``trainer.text_encoding``.

Semantics follow sd-scripts' ``BaseDataset.process_caption`` (see sd-scripts-semantics.md §2), with
three deliberate differences, each documented where it happens:

* empty tags (``"a,,b"`` or a trailing separator) are dropped when tags are re-joined, instead of
  being kept as empty strings;
* tags are re-joined with the caption's own separator (``", "`` for ``","``), not always with ``", "``;
* with ``weighted=True`` a separator inside ``( )`` or ``[ ]`` does not split, so a weighted group such
  as ``(red hair, blue eyes:1.2)`` survives shuffling whole (sd-scripts breaks it).
"""
from __future__ import annotations

import random
import re

ROUND_BRACKET_FACTOR = 1.1
SQUARE_BRACKET_FACTOR = 1 / 1.1

_ESCAPABLE = "\\()[]"

# One lexical unit of the A1111 attention syntax, tried in order:
#   an escape (\( \) \[ \] \\), an explicit weight that closes a round bracket (":1.3)"),
#   a single bracket, a run of ordinary text, or a lone ':' / '\' that is just text.
_ATTENTION_TOKEN = re.compile(
    r"""
      (?P<escape>\\[\\()\[\]])
    | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)
    | (?P<bracket>[()\[\]])
    | (?P<text>[^\\()\[\]:]+|[:\\])
    """,
    re.VERBOSE,
)


def process_caption(
    caption: str,
    *,
    shuffle: bool,
    keep_tokens: int,
    dropout_rate: float,
    dropout_every_n_epochs: int,
    epoch: int,
    rng: random.Random,
    separator: str = ",",
    weighted: bool = False,
) -> str:
    """The caption one sample trains with in this draw: dropped to ``""`` or (optionally) shuffled.

    Order, as in sd-scripts: (1) whole-caption dropout, (2) first line only, (3) shuffle of the tags
    after the first ``keep_tokens`` tags. ``keep_tokens`` counts separator-delimited *tags*, not CLIP
    tokens, and only matters when ``shuffle`` is on. ``epoch`` is 1-based; with
    ``dropout_every_n_epochs = n`` every caption of epochs n, 2n, … is dropped. ``rng`` draws one
    number for the dropout roll (only when ``dropout_rate > 0``) and then does the shuffle.
    """
    _check_caption_settings(keep_tokens, dropout_rate, dropout_every_n_epochs, epoch, separator)
    if is_caption_dropped(
        dropout_rate=dropout_rate, dropout_every_n_epochs=dropout_every_n_epochs, epoch=epoch, rng=rng
    ):
        return ""
    lines = caption.strip().splitlines()
    first_line = lines[0].strip() if lines else ""
    if not shuffle:
        return first_line
    return shuffle_tags(first_line, keep_tokens=keep_tokens, rng=rng, separator=separator, weighted=weighted)


def is_caption_dropped(*, dropout_rate: float, dropout_every_n_epochs: int, epoch: int, rng: random.Random) -> bool:
    """True when this draw trains without a caption.

    Dropped when ``rng.random() < dropout_rate`` (rolled only if the rate is positive, so a zero rate
    leaves the generator untouched) or when ``dropout_every_n_epochs > 0`` and ``epoch`` (1-based) is a
    multiple of it. The roll happens first, as in sd-scripts, so both settings consume the same numbers.
    """
    rolled = dropout_rate > 0 and rng.random() < dropout_rate
    scheduled = dropout_every_n_epochs > 0 and epoch % dropout_every_n_epochs == 0
    return rolled or scheduled


def shuffle_tags(
    caption: str, *, keep_tokens: int, rng: random.Random, separator: str = ",", weighted: bool = False
) -> str:
    """Split into tags, keep the first ``keep_tokens`` in place, ``rng.shuffle`` the rest, re-join.

    Tags are stripped and empty ones dropped; the result is joined with ``separator`` plus a space
    (``", "`` for ``","``). ``rng.shuffle`` is called once, on the list of movable tags, even when it
    holds fewer than two tags, so the generator advances the same way for every caption.
    """
    tags = split_tags(caption, separator=separator, weighted=weighted)
    kept, movable = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(movable)
    return join_tags(kept + movable, separator)


def split_tags(caption: str, *, separator: str = ",", weighted: bool = False) -> list[str]:
    """The caption's tags: split on ``separator``, stripped, empty ones dropped.

    With ``weighted=True`` a separator inside round or square brackets (outside escapes) does not
    split, so ``"(a, b:1.2), c"`` gives ``["(a, b:1.2)", "c"]``.
    """
    pieces = _split_outside_brackets(caption, separator) if weighted else caption.split(separator)
    return [piece.strip() for piece in pieces if piece.strip()]


def join_tags(tags: list[str], separator: str = ",") -> str:
    """Join tags with the separator and one space (``", "``); a blank separator joins with one space."""
    mark = separator.strip()
    return (mark + " " if mark else " ").join(tags)


def _split_outside_brackets(caption: str, separator: str) -> list[str]:
    """Split on ``separator`` only where no ``(`` or ``[`` is open; backslash escapes are skipped."""
    pieces, depth, start, index = [], 0, 0, 0
    while index < len(caption):
        char = caption[index]
        if char == "\\" and index + 1 < len(caption) and caption[index + 1] in _ESCAPABLE:
            index += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]" and depth > 0:
            depth -= 1
        elif depth == 0 and caption.startswith(separator, index):
            pieces.append(caption[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    pieces.append(caption[start:])
    return pieces


def parse_weighted_caption(text: str) -> list[tuple[str, float]]:
    """Parse Automatic1111's attention syntax into ``(text, weight)`` segments.

    Rules (A1111 ``parse_prompt_attention``, also sd-scripts' ``_re_attention``):
    ``(x)`` multiplies x's weight by 1.1; ``[x]`` divides it by 1.1; ``(x:1.3)`` multiplies by 1.3
    instead of 1.1; nested brackets multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal
    characters; a closing bracket with no open partner is literal text; brackets still open at the
    end close there. Round and square brackets are tracked separately. Adjacent segments of equal
    weight are merged; an empty caption gives ``[("", 1.0)]``. A ``:`` not followed by a number and
    ``)`` is ordinary text (``(a:b)`` is ``"a:b"`` at 1.1).
    """
    segments: list[list] = []  # [text, weight], mutable while brackets close over them
    open_round: list[int] = []
    open_square: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        bracket, weight = match.group("bracket"), match.group("weight")
        if match.group("escape"):
            segments.append([match.group("escape")[1], 1.0])
        elif weight is not None and open_round:
            _scale_from(segments, open_round.pop(), float(weight))
        elif bracket == "(":
            open_round.append(len(segments))
        elif bracket == "[":
            open_square.append(len(segments))
        elif bracket == ")" and open_round:
            _scale_from(segments, open_round.pop(), ROUND_BRACKET_FACTOR)
        elif bracket == "]" and open_square:
            _scale_from(segments, open_square.pop(), SQUARE_BRACKET_FACTOR)
        else:
            segments.append([match.group(0), 1.0])
    for start in reversed(open_round):
        _scale_from(segments, start, ROUND_BRACKET_FACTOR)
    for start in reversed(open_square):
        _scale_from(segments, start, SQUARE_BRACKET_FACTOR)
    return _merge_equal_weights(segments)


def _scale_from(segments: list[list], start: int, factor: float) -> None:
    """Multiply the weight of every segment from ``start`` to the end by ``factor`` (in place)."""
    for segment in segments[start:]:
        segment[1] *= factor


def _merge_equal_weights(segments: list[list]) -> list[tuple[str, float]]:
    """Join neighbours with the same weight; drop empty text; never return an empty list."""
    merged: list[tuple[str, float]] = []
    for text, weight in segments:
        if not text:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def _check_caption_settings(
    keep_tokens: int, dropout_rate: float, dropout_every_n_epochs: int, epoch: int, separator: str
) -> None:
    """Raise ValueError naming the setting when a caption setting is out of range."""
    if keep_tokens < 0:
        raise ValueError(f"keep_tokens must be 0 or more, got {keep_tokens}")
    if not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"caption_dropout_rate must be between 0 and 1, got {dropout_rate}")
    if dropout_every_n_epochs < 0:
        raise ValueError(f"caption_dropout_every_n_epochs must be 0 (off) or more, got {dropout_every_n_epochs}")
    if epoch < 1:
        raise ValueError(f"epoch is counted from 1, got {epoch}")
    if not separator:
        raise ValueError("caption_separator must not be empty")
