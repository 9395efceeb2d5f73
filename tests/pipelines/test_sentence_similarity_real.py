"""The real all-mpnet-base-v2: embeddings equal a direct sentence-transformers-style computation with the
reference library (mean pooling over the attention mask, unit length, 384-token limit)."""

from __future__ import annotations

import numpy as np
import pytest

from polyformers import pipeline

TEXTS = [
    "To be, or not to be, that is the question.",
    "Is this a dagger which I see before me?",
    "The weather forecast says it will rain tomorrow.",
    "word " * 600,  # past the 384-token limit: truncated, as sentence-transformers does
]


@pytest.fixture(scope="module")
def ours(assets):
    return pipeline("sentence-similarity", model=str(assets / "mpnet"), batch_size=3)


@pytest.fixture(scope="module")
def reference_embeddings(assets):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(assets / "mpnet")
    model = transformers.MPNetModel.from_pretrained(assets / "mpnet").eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=384, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_settings_come_from_the_sentence_transformers_files(ours):
    assert (ours.pooling, ours.normalize, ours.max_seq_length, ours.dimension) == ("mean", True, 384, 768)


def test_embeddings_equal_the_reference_computation(ours, reference_embeddings):
    got = ours.encode(TEXTS)
    assert got.shape == (len(TEXTS), 768) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_embeddings, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_similarity_scores_are_cosines_and_meaningful(ours, reference_embeddings):
    scores = ours(TEXTS[0], TEXTS[1:3])
    np.testing.assert_allclose(scores, reference_embeddings[1:3] @ reference_embeddings[0], atol=1e-5)
    paraphrase, unrelated = ours("A man is eating food.", ["A man is eating a piece of bread.", "The stock market fell."])
    assert paraphrase > 0.5 > unrelated
    assert ours({"source_sentence": TEXTS[0], "sentences": [TEXTS[0]]})[0] == pytest.approx(1.0, abs=1e-5)
