"""Caption processing: dropout, shuffle with kept tags, A1111 attention parsing (hand-worked cases)."""
import random
from collections import Counter

import pytest

from trainer.data.captions import (
    is_caption_dropped,
    join_tags,
    parse_weighted_caption,
    process_caption,
    split_tags,
)

CAPTION = "1girl, solo, red hair, blue eyes, smile, outdoors"
TAGS = ["1girl", "solo", "red hair", "blue eyes", "smile", "outdoors"]


def run(caption=CAPTION, *, shuffle=False, keep_tokens=0, rate=0.0, every=0, epoch=1, seed=0, **extra):
    return process_caption(
        caption, shuffle=shuffle, keep_tokens=keep_tokens, dropout_rate=rate,
        dropout_every_n_epochs=every, epoch=epoch, rng=random.Random(seed), **extra,
    )


# --- dropout ---------------------------------------------------------------------------------------

def test_dropout_every_n_epochs_drops_every_caption_on_multiples_of_n():
    dropped_epochs = [epoch for epoch in range(1, 8) if run(every=3, epoch=epoch) == ""]
    assert dropped_epochs == [3, 6]  # 1-based epochs: 3 and 6
    assert all(run(every=0, epoch=epoch) == CAPTION for epoch in range(1, 5))


def test_zero_dropout_rate_leaves_the_generator_untouched():
    rng = random.Random(5)
    before = rng.getstate()
    assert not is_caption_dropped(dropout_rate=0.0, dropout_every_n_epochs=0, epoch=1, rng=rng)
    assert rng.getstate() == before


def test_dropout_rate_uses_the_first_roll_of_the_generator():
    for seed in range(20):
        first_roll = random.Random(seed).random()
        assert (run(rate=0.3, seed=seed) == "") == (first_roll < 0.3)
    assert run(rate=1.0) == ""


def test_dropout_rate_drops_about_that_fraction():
    rng = random.Random(7)
    dropped = sum(
        process_caption(CAPTION, shuffle=False, keep_tokens=0, dropout_rate=0.25,
                        dropout_every_n_epochs=0, epoch=1, rng=rng) == ""
        for _ in range(4000)
    )
    assert 0.22 < dropped / 4000 < 0.28


# --- shuffle and keep_tokens ------------------------------------------------------------------------

def test_without_shuffle_the_caption_is_kept_and_keep_tokens_does_nothing():
    assert run(keep_tokens=3, seed=1) == CAPTION
    assert run("  a cat , sitting \nsecond line ignored", keep_tokens=1) == "a cat , sitting"


def test_shuffle_keeps_first_k_tags_and_the_multiset_of_tags():
    orders = set()
    for seed in range(30):
        tags = run(shuffle=True, keep_tokens=2, seed=seed).split(", ")
        assert tags[:2] == ["1girl", "solo"]
        assert Counter(tags) == Counter(TAGS)
        orders.add(tuple(tags))
    assert len(orders) > 5  # it really reorders


def test_shuffle_for_a_fixed_seed_is_one_rng_shuffle_of_the_movable_tags():
    movable = ["red hair", "blue eyes", "smile", "outdoors"]
    random.Random(3).shuffle(movable)
    assert run(shuffle=True, keep_tokens=2, seed=3) == ", ".join(["1girl", "solo"] + movable)


def test_dropout_roll_comes_before_the_shuffle():
    rng = random.Random(11)
    roll = rng.random()
    assert roll >= 0.05  # seed 11 keeps its caption at rate 0.05 ...
    expected = ["a", "b", "c", "d"]
    rng.shuffle(expected)  # ... and the shuffle uses the generator after that one roll
    assert run("a, b, c, d", shuffle=True, rate=0.05, seed=11) == ", ".join(expected)


def test_keep_tokens_larger_than_the_tag_count_fixes_everything():
    assert run("b, a", shuffle=True, keep_tokens=5, seed=2) == "b, a"


def test_empty_tags_are_dropped_and_tags_rejoined_with_comma_space():
    result = run("cat,,dog ,  , tree,", shuffle=True, keep_tokens=3, seed=0)
    assert result == "cat, dog, tree"


def test_other_separator_is_rejoined_with_itself():
    tags = run("x; y; z", shuffle=True, separator=";", seed=4).split("; ")
    assert sorted(tags) == ["x", "y", "z"]


def test_weighted_groups_survive_shuffling_whole():
    caption = "cat, (red hair, blue eyes:1.2), [dim, light], sky"
    whole_tags = ["cat", "(red hair, blue eyes:1.2)", "[dim, light]", "sky"]
    for seed in range(10):
        shuffled = run(caption, shuffle=True, seed=seed, weighted=True)
        assert Counter(split_tags(shuffled, weighted=True)) == Counter(whole_tags)
    # Without weighted parsing the group is torn apart, as in sd-scripts.
    torn = {run(caption, shuffle=True, seed=seed) for seed in range(10)}
    assert any("(red hair, blue eyes:1.2)" not in text for text in torn)
    assert split_tags(caption, weighted=True) == ["cat", "(red hair, blue eyes:1.2)", "[dim, light]", "sky"]
    assert split_tags(r"\(a, b\), c", weighted=True) == [r"\(a", r"b\)", "c"]  # escaped brackets do not group


def test_join_tags():
    assert join_tags(["a", "b"], ",") == "a, b"
    assert join_tags(["a", "b"], " ") == "a b"


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"keep_tokens": -1}, "keep_tokens"),
        ({"rate": 1.5}, "caption_dropout_rate"),
        ({"every": -2}, "caption_dropout_every_n_epochs"),
        ({"epoch": 0}, "epoch"),
    ],
)
def test_bad_settings_name_the_setting(settings, name):
    with pytest.raises(ValueError, match=name):
        run(**settings)


# --- weighted captions (A1111 attention syntax) -----------------------------------------------------

def segments(text):
    return [(part, round(weight, 6)) for part, weight in parse_weighted_caption(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("[x]", [("x", round(1 / 1.1, 6))]),
        ("(a:1.3) b", [("a", 1.3), (" b", 1.0)]),
        ("((a))", [("a", 1.21)]),  # 1.1 × 1.1
        ("((a:1.5))", [("a", 1.65)]),  # 1.5 × 1.1
        ("(a [b] c:2)", [("a ", 2.0), ("b", round(2 / 1.1, 6)), (" c", 2.0)]),
        ("(x:0.5)(y:0.5) z", [("xy", 0.5), (" z", 1.0)]),  # equal neighbours merge
        (r"\(x\) \[y\]", [("(x) [y]", 1.0)]),  # escapes are literal
        ("a\\\\b", [("a\\b", 1.0)]),  # escaped backslash
        ("a)b]c", [("a)b]c", 1.0)]),  # closers with no partner are text
        ("(open", [("open", 1.1)]),  # closed at the end
        ("[(a", [("a", 1.0)]),  # 1.1 / 1.1
        ("(a:b)", [("a:b", 1.1)]),  # ':' without a number is text
        ("a:1.2) b", [("a:1.2) b", 1.0)]),  # weight with no open bracket is text
        ("(bad:-0.5)", [("bad", -0.5)]),
        ("", [("", 1.0)]),
        ("(red hair, blue eyes:1.2), cat", [("red hair, blue eyes", 1.2), (", cat", 1.0)]),
    ],
)
def test_parse_weighted_caption_hand_worked(text, expected):
    assert segments(text) == expected
