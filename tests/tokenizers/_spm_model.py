"""A Pegasus-like SentencePiece model trained on the real corpora, since no Pegasus spiece.model is at hand.

Like Pegasus's own model: Unigram, NFKC-based normalisation (``nmt_nfkc``, stored as a precompiled
charsmap), pad 0, eos 1, unk 2 and no bos, so that the Pegasus offset scheme shadows exactly pad and eos.
One thread makes the training deterministic (about a second on the two corpora).
"""

from __future__ import annotations

import io
from pathlib import Path

CORPORA = ("botchan.txt", "english.txt")


def train_pegasus_like_model(corpora: Path, vocab_size: int = 4000) -> bytes:
    """The serialized model, trained on botchan.txt and english.txt from ``corpora``."""
    import sentencepiece

    lines = []
    for name in CORPORA:
        lines += [line for line in (corpora / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=100000,
        minloglevel=2,
    )
    return model.getvalue()
