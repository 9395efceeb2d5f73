"""Texts shared by the tokenizer tests that compare polyformers with the reference: the corpora sampled,
the sentence pairs, and the marker for an added token in a call description."""

from __future__ import annotations

import random
from pathlib import Path

CORPORA = ["english.txt", "fortunes.txt", "chinese.txt", "botchan.txt", "shakespeare.txt"]

# The three pairs every module encodes (the second one longer, then the first), and a pair with an empty second.
PAIRS = [
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("Short", "A somewhat longer second sequence with many more words in it than the first."),
    ("A first sequence that is definitely the longer one of the two here.", "tiny"),
    ("Hello", ""),
]


def added(content: str, **options) -> dict:
    """An added token (``content`` with its ``options``) as the runners read it from a call description."""
    return {"__added__": {"content": content, **options}}


def sample_lines(path: Path, count: int, seed: int) -> list[str]:
    """``count`` non-blank stripped lines of ``path`` (all of them if fewer), drawn with ``seed``."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return random.Random(seed).sample(lines, min(count, len(lines)))


def corpus_texts(assets: Path, per_corpus: int, seed: int, per_tutor: int, tutor_seed: int,
                 tutor_glob: str = "tutor.*") -> list[str]:
    """``per_corpus`` lines of each of CORPORA (seeds ``seed``, ``seed`` + 1, ...), then ``per_tutor`` lines of
    each vim tutor translation in name order (seeds from ``tutor_seed``)."""
    texts: list[str] = []
    for index, name in enumerate(CORPORA):
        texts += sample_lines(assets / "corpora" / name, per_corpus, seed=seed + index)
    for index, path in enumerate(sorted((assets / "corpora" / "tutor").glob(tutor_glob))):
        texts += sample_lines(path, per_tutor, seed=tutor_seed + index)
    return texts


def pretokenized_words(special: str) -> list[list[str]]:
    """Batches of words already split (``is_split_into_words``), one holding the tokenizer's ``special``."""
    return [
        ["Hello", "wörld", "HäLLo", "unbelievably", ",", "中文"],
        ["New", "York", "is", "big", special, "😀"],
        ["one"],
    ]
