"""Tokenizing into 75-token windows, encoding, clip skip, weights, pad-to-longest and the embedding cache.

Real CLIP tokenizer (built offline) and a tiny real CLIP text model (3 layers, so clip_skip 2 differs).
"""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.models.tokenizer import build_clip_tokenizer
from trainer.text_encoding import (
    TextEmbeddingCache,
    check_max_token_length,
    encode_captions,
    tokenize,
)

BOS, EOS = 49406, 49407
WORDS = ["cat", "dog", "red", "blue", "tree", "sky", "house", "car", "water", "city", "girl", "smile"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def sd2_tokenizer():
    return build_clip_tokenizer(pad_token="!")  # pads with id 0, like SD2.x


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77,
    )
    return CLIPTextModel(config).eval()


def long_caption(tokenizer, n_words):
    """A caption of n single-token words and its ids, read word by word from the vocabulary."""
    words = [WORDS[index % len(WORDS)] for index in range(n_words)]
    word_ids = [tokenizer.convert_tokens_to_ids(word + "</w>") for word in words]
    return " ".join(words), word_ids


# --- tokenizing and windows ------------------------------------------------------------------------

def test_max_token_length_choices():
    assert check_max_token_length(None) == 75
    assert check_max_token_length(225) == 225
    with pytest.raises(ValueError, match="max_token_length"):
        check_max_token_length(100)


def test_short_caption_at_75_is_bos_tokens_eos_and_eos_padding(tokenizer):
    ids = tokenize(tokenizer, ["a cat"], 75)
    assert ids.shape == (1, 1, 77)
    assert ids[0, 0].tolist() == [BOS, 320, 2368] + [EOS] * 74  # "a</w>" = 320, "cat</w>" = 2368


def test_caption_of_100_tokens_at_150_splits_into_two_windows(tokenizer):
    caption, word_ids = long_caption(tokenizer, 100)
    ids = tokenize(tokenizer, [caption], 150)
    assert ids.shape == (1, 2, 77)
    assert ids[0, 0].tolist() == [BOS] + word_ids[0:75] + [EOS]
    assert ids[0, 1].tolist() == [BOS] + word_ids[75:100] + [EOS] * 51  # EOS, 49 pads, window end


def test_caption_of_160_tokens_at_225_splits_into_three_windows(tokenizer):
    caption, word_ids = long_caption(tokenizer, 160)
    ids = tokenize(tokenizer, [caption], 225)
    assert ids.shape == (1, 3, 77)
    assert ids[0, 0].tolist() == [BOS] + word_ids[0:75] + [EOS]
    assert ids[0, 1].tolist() == [BOS] + word_ids[75:150] + [EOS]
    assert ids[0, 2].tolist() == [BOS] + word_ids[150:160] + [EOS] * 66


def test_caption_longer_than_225_is_cut_at_225_tokens(tokenizer):
    caption, word_ids = long_caption(tokenizer, 240)
    ids = tokenize(tokenizer, [caption], 225)
    assert ids[0, 2].tolist() == [BOS] + word_ids[150:225] + [EOS]
    assert tokenize(tokenizer, [caption], 75)[0, 0].tolist() == [BOS] + word_ids[:75] + [EOS]


def test_sd2_padding_ends_running_windows_with_eos_and_starts_empty_ones_with_eos(sd2_tokenizer):
    caption, word_ids = long_caption(sd2_tokenizer, 100)
    ids = tokenize(sd2_tokenizer, [caption], 150)
    assert ids[0, 0].tolist() == [BOS] + word_ids[0:75] + [EOS]  # runs on: end token forced to EOS
    assert ids[0, 1].tolist() == [BOS] + word_ids[75:100] + [EOS] + [0] * 50
    short = tokenize(sd2_tokenizer, ["a cat"], 150)
    assert short[0, 1].tolist() == [BOS, EOS] + [0] * 75  # empty window starts with EOS


# --- encoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("max_token_length", "length"), [(75, 77), (150, 152), (225, 227)])
def test_encoded_length_is_n_times_75_plus_2(tokenizer, text_encoder, max_token_length, length):
    with torch.no_grad():
        states = encode_captions(tokenizer, text_encoder, ["a cat", "a dog"], max_token_length=max_token_length)
    assert states.shape == (2, length, 32)


def test_windows_are_encoded_separately_and_reassembled(tokenizer, text_encoder):
    caption, _ = long_caption(tokenizer, 100)
    ids = tokenize(tokenizer, [caption], 150)
    with torch.no_grad():
        states = encode_captions(tokenizer, text_encoder, [caption], max_token_length=150)
        window_0 = text_encoder(ids[:, 0]).last_hidden_state[0]
        window_1 = text_encoder(ids[:, 1]).last_hidden_state[0]
    expected = torch.cat([window_0[:1], window_0[1:76], window_1[1:76], window_1[76:]])
    torch.testing.assert_close(states[0], expected)
    # The first 76 states do not depend on the rest of the caption: they are window 0's states.
    with torch.no_grad():
        short = encode_captions(tokenizer, text_encoder, [caption], max_token_length=75)
    torch.testing.assert_close(states[0, :76], short[0, :76])


def test_clip_skip_1_is_the_output_and_2_is_the_penultimate_layer_through_final_norm(tokenizer, text_encoder):
    ids = tokenize(tokenizer, ["a red cat"], 75)[:, 0]
    with torch.no_grad():
        output = text_encoder(ids, output_hidden_states=True)
        penultimate = text_encoder.final_layer_norm(output.hidden_states[2])  # 3 layers: index 2 = layer 2 of 3
        skip_1 = encode_captions(tokenizer, text_encoder, ["a red cat"], clip_skip=1)
        skip_2 = encode_captions(tokenizer, text_encoder, ["a red cat"], clip_skip=2)
    torch.testing.assert_close(skip_1, output.last_hidden_state)
    torch.testing.assert_close(skip_2, penultimate)
    assert not torch.allclose(skip_1, skip_2)


@pytest.mark.parametrize("clip_skip", [0, 4])
def test_clip_skip_out_of_range_names_the_setting(tokenizer, text_encoder, clip_skip):
    with pytest.raises(ValueError, match="clip_skip"):
        encode_captions(tokenizer, text_encoder, ["a cat"], clip_skip=clip_skip)


def test_gradients_reach_the_text_encoder(tokenizer, text_encoder):
    text_encoder.zero_grad()
    encode_captions(tokenizer, text_encoder, ["a cat", "a dog"], max_token_length=150).square().mean().backward()
    grad = text_encoder.encoder.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    text_encoder.zero_grad()


# --- weighted captions -------------------------------------------------------------------------------

def test_weighted_caption_multiplies_each_tokens_state_by_its_weight(tokenizer, text_encoder):
    weighted_text = "(red:1.5) [cat] dog"
    assert tokenize(tokenizer, [weighted_text], weighted=True).tolist() == tokenize(tokenizer, ["red cat dog"]).tolist()
    with torch.no_grad():
        plain = encode_captions(tokenizer, text_encoder, ["red cat dog"])
        weighted = encode_captions(tokenizer, text_encoder, [weighted_text], weighted=True)
    factors = torch.ones(77)
    factors[1], factors[2] = 1.5, 1 / 1.1  # positions 1 and 2 hold "red" and "cat"
    torch.testing.assert_close(weighted, plain * factors[None, :, None])


def test_weights_follow_tokens_into_the_second_window(tokenizer, text_encoder):
    caption, _ = long_caption(tokenizer, 80)
    words = caption.split(" ")
    words[77] = f"({words[77]}:2)"  # token 78 → window 1, re-assembled position 78
    with torch.no_grad():
        plain = encode_captions(tokenizer, text_encoder, [caption], max_token_length=150)
        weighted = encode_captions(tokenizer, text_encoder, [" ".join(words)], max_token_length=150, weighted=True)
    torch.testing.assert_close(weighted[0, 78], 2 * plain[0, 78])
    torch.testing.assert_close(weighted[0, :78], plain[0, :78])
    torch.testing.assert_close(weighted[0, 79:], plain[0, 79:])


# --- no_token_padding = pad to the longest caption of the batch -------------------------------------

def test_pad_to_longest_pads_only_to_the_longest_caption(tokenizer, text_encoder):
    captions = ["a cat", "a red dog sitting"]  # 2 and 4 tokens
    ids = tokenize(tokenizer, captions, 75, pad_to_longest=True)
    assert ids.tolist() == [[[BOS, 320, 2368, EOS, EOS, EOS]], [[BOS, 320, 736, 1929, 4919, EOS]]]
    with torch.no_grad():
        full = encode_captions(tokenizer, text_encoder, captions)
        short = encode_captions(tokenizer, text_encoder, captions, pad_to_longest=True)
    assert full.shape == (2, 77, 32) and short.shape == (2, 6, 32)  # the UNet attends to 6 states, not 77
    torch.testing.assert_close(short, full[:, :6])  # CLIP is causal: the kept states are unchanged


def test_pad_to_longest_uses_only_the_windows_the_batch_needs(tokenizer, text_encoder):
    caption, _ = long_caption(tokenizer, 100)
    assert tokenize(tokenizer, [caption, "a cat"], 225, pad_to_longest=True).shape == (2, 2, 77)
    with torch.no_grad():
        full = encode_captions(tokenizer, text_encoder, [caption, "a cat"], max_token_length=225)
        short = encode_captions(tokenizer, text_encoder, [caption, "a cat"], max_token_length=225, pad_to_longest=True)
    assert short.shape == (2, 102, 32)
    torch.testing.assert_close(short, full[:, :102])


def test_pad_to_longest_with_only_empty_captions_keeps_bos_and_eos(tokenizer, text_encoder):
    assert tokenize(tokenizer, ["", ""], 150, pad_to_longest=True).tolist() == [[[BOS, EOS]], [[BOS, EOS]]]


# --- the embedding cache -------------------------------------------------------------------------------

class RowCounter:
    """Counts the sequences the real text encoder is run on (a forward hook, not a mock)."""

    def __init__(self, text_encoder):
        self.rows = 0
        self.handle = text_encoder.register_forward_hook(self.count)

    def count(self, module, args, output):
        self.rows += args[0].shape[0]


def test_cache_runs_the_text_encoder_once_per_distinct_caption(tokenizer, text_encoder):
    cache = TextEmbeddingCache(tokenizer, text_encoder)
    counter = RowCounter(text_encoder)
    try:
        first = cache.encode_captions(["a cat", "a dog", "a cat"])
        assert counter.rows == 2 and cache.encoded_count == 2
        second = cache.encode_captions(["a dog", "a tree"])
        assert counter.rows == 3 and len(cache) == 3
        cache.encode_captions(["a cat"], clip_skip=2)  # other settings → another entry
        assert counter.rows == 4
    finally:
        counter.handle.remove()
    with torch.no_grad():
        direct = encode_captions(tokenizer, text_encoder, ["a cat", "a dog", "a cat", "a tree"])
    torch.testing.assert_close(first, direct[:3])
    torch.testing.assert_close(second, direct[[1, 3]])
    assert not first.requires_grad


@pytest.mark.parametrize("n_words", [20, 75, 100, 150])
@pytest.mark.parametrize("pad_to_longest", [False, True])
def test_cache_matches_direct_encoding(tokenizer, sd2_tokenizer, text_encoder, n_words, pad_to_longest):
    # 75 and 150 put the longest caption's EOS exactly on a window boundary.
    caption, _ = long_caption(tokenizer, n_words)
    captions = ["(a:1.3) cat", caption, ""]
    settings = {"max_token_length": 225, "clip_skip": 2, "weighted": True, "pad_to_longest": pad_to_longest}
    for tok in (tokenizer, sd2_tokenizer):
        cache = TextEmbeddingCache(tok, text_encoder)
        cache.encode_captions(captions[1:], **{**settings, "pad_to_longest": False})  # filled by another batch
        cached = cache.encode_captions(captions, **settings)
        with torch.no_grad():
            direct = encode_captions(tok, text_encoder, captions, **settings)
        assert cached.shape == direct.shape == (3, n_words + 2 if pad_to_longest else 227, 32)
        torch.testing.assert_close(cached, direct)


def test_cache_bound_evicts_the_least_recently_used(tokenizer, text_encoder):
    cache = TextEmbeddingCache(tokenizer, text_encoder, max_entries=2)
    cache.encode_captions(["a", "b"])
    cache.encode_captions(["a"])  # "a" is now the most recent
    cache.encode_captions(["c"])  # evicts "b"
    assert [key[0] for key in cache.entries] == ["a", "c"]
    with pytest.raises(ValueError, match="max_entries"):
        TextEmbeddingCache(tokenizer, text_encoder, max_entries=0)
