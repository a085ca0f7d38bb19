"""The CLIP tokenizer, built offline from the BPE table that open_clip ships.

Stable Diffusion's text encoders use OpenAI's CLIP byte-level BPE (49,408 tokens). sd-scripts fetches it
from the Hugging Face hub; we rebuild the identical vocabulary from ``bpe_simple_vocab_16e6.txt.gz``
(installed with open-clip-torch) so no network is ever needed:

* merges = lines 1 … 48,894 of the file (line 0 is a header);
* vocab  = the 256 byte-to-unicode characters, the same characters with ``</w>``, one entry per merge
  (the pair joined), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

SD1.x pads with ``<|endoftext|>``; SD2.x and SDXL's second tokenizer pad with ``"!"`` (id 0).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# 49408 tokens - 256 bytes - 256 bytes with </w> - 2 special tokens.
MERGE_COUNT = CLIP_VOCAB_SIZE - 256 - 256 - 2


class TokenizerBuildError(RuntimeError):
    """The offline CLIP vocabulary could not be built (open-clip-torch's BPE file is missing)."""


def byte_to_unicode_table() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte → printable unicode character map (Radford et al. 2019).

    Printable Latin-1 bytes map to themselves and come first; the other 68 bytes follow in byte order,
    mapped to code points 256, 257, … so no byte becomes whitespace or a control character. The
    insertion order matters: it is the order of the first 256 vocabulary entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {byte: chr(byte) for byte in printable}
    remapped = [byte for byte in range(256) if byte not in table]
    for offset, byte in enumerate(remapped):
        table[byte] = chr(256 + offset)
    return table


def find_bpe_file() -> Path:
    """Locate open_clip's BPE file without importing open_clip (which needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerBuildError(
            "open-clip-torch is not installed; it provides the CLIP vocabulary file. "
            "Install it with: pip install --no-deps open-clip-torch"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise TokenizerBuildError(f"{BPE_FILE_NAME} not found in the open_clip package ({spec.origin}).")


def read_merges(bpe_file: Path) -> list[tuple[str, str]]:
    """The first MERGE_COUNT merge pairs of the BPE file, skipping its header line."""
    with gzip.open(bpe_file, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merge_lines = lines[1 : MERGE_COUNT + 1]
    merges = []
    for line in merge_lines:
        first, second = line.split()
        merges.append((first, second))
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's token → id map: bytes, bytes + ``</w>``, merged pairs, then the two special tokens."""
    byte_chars = list(byte_to_unicode_table().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def build_clip_tokenizer(pad_token: str = EOS_TOKEN, model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` identical to OpenAI's CLIP ViT-L/14 tokenizer, built with no network access.

    ``pad_token="!"`` gives the SD2.x / SDXL-second-encoder variant (pads with id 0).
    """
    merges = read_merges(find_bpe_file())
    return CLIPTokenizer(
        vocab=build_vocab(merges),
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer: CLIPTokenizer, folder: str | Path) -> Path:
    """Save the tokenizer in the diffusers ``tokenizer/`` layout so ``from_pretrained`` loads it offline.

    Besides ``tokenizer.json`` (what transformers 5 writes) it writes ``vocab.json`` and ``merges.txt``,
    the files older transformers releases and other tools look for.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    merges = read_merges(find_bpe_file())
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    return folder
