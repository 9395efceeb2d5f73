"""The search's fast first run on the real all-mpnet-base-v2: its answers are float32's (cosine >= 0.995, the
same top results), int8 is used only where it keeps them, and a cached index is read without the model, in
well under a second."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

from polyformers import search
from polyformers.search import SearchIndex, speed_up

QUERY = "a vision of a dagger floating in the air"


@pytest.fixture(scope="module")
def play_lines(assets):
    # 50 passages around "Is this a dagger which I see before me", split as the demo splits the play
    # (paragraphs of up to 40 words: int8 errors grow with length, so verse lines alone would flatter it).
    text = (assets / "corpora" / "macbeth.txt").read_text("utf-8")
    lines = [t for _, t in search.split_passages(text)]
    start = next(i for i, t in enumerate(lines) if "dagger which I see before me" in t)
    return lines[start - 20: start + 30]


@pytest.fixture(scope="module")
def short_lines(assets):
    # The play's 128 shortest passages (stage directions, "How now! what news?"), in the play's order, so
    # that sorted by length they fall into the batches the search makes of them. With inputs rounded per
    # token, int8's errors average out over long passages and are largest over a few tokens.
    text = (assets / "corpora" / "macbeth.txt").read_text("utf-8")
    lines = [t for _, t in search.split_passages(text)]
    shortest = set(sorted(range(len(lines)), key=lambda i: (len(lines[i].split()), i))[:128])
    return [t for i, t in enumerate(lines) if i in shortest]


@pytest.fixture(scope="module")
def plain(assets):
    from polyformers import pipeline

    return pipeline("sentence-similarity", model=str(assets / "mpnet"), batch_size=16)


def _top(vectors, pipe, k=5):
    """Indices of the k lines closest to QUERY, the query embedded by the same pipeline."""
    q = pipe.encode([QUERY])[0]
    return list(np.argsort(-(vectors @ q), kind="stable")[:k])


def _fast(plain):
    fast = copy.copy(plain)
    fast.model = copy.deepcopy(plain.model)
    speed_up(fast)
    return fast


def _compare(name, fast, reference, lines, plain):
    """The worst cosine of ``fast``'s embeddings of ``lines`` to ``reference``, and whether the top results
    for QUERY are the same."""
    vectors = fast.encode(lines)
    cosine = float((reference * vectors).sum(1).min())
    same_top = _top(vectors, fast) == _top(reference, plain)
    print(f"{name} vs float32 over {len(lines)} passages: min cosine {cosine:.5f}, same top 5: {same_top}")
    return cosine, same_top


def test_fast_path_keeps_the_answers(plain, play_lines, short_lines):
    """The search's fast path against plain float32 over the passages around the dagger speech and the
    play's shortest ones: int8 with bfloat16 where it would move the answers (this project's CPUs, with
    polyformers' kernels built), else bfloat16 weights (0.9999 over the dagger passages)."""
    from polyformers.pt import kernels
    from polyformers.pt.mixed import ShortRowsSplit
    from polyformers.pt.quantize import Bf16Linear, has_native_bf16

    fast = _fast(plain)
    assert fast.batch_size >= search.FAST_BATCH_SIZE
    assert any(getattr(m, "skip_padding", False) for m in fast.model.modules())
    mixed = search.USE_INT8 and has_native_bf16() and kernels.ready()
    assert isinstance(fast.model, ShortRowsSplit) == mixed
    assert any(isinstance(m, Bf16Linear) for m in fast.model.modules()) == has_native_bf16()
    lines = play_lines + short_lines
    reference = plain.encode(lines)
    cosine, same_top = _compare("fast path", fast, reference, lines, plain)
    assert cosine >= 0.995 and same_top
    if not mixed:
        dagger = reference[:len(play_lines)]
        assert _compare("fast path", fast, dagger, play_lines, plain)[0] >= 0.9999


def test_int8_is_used_only_if_it_keeps_the_answers(plain, play_lines, short_lines):
    """int8 with bfloat16 where it would move the answers (:func:`polyformers.pt.mixed.int8_with_bf16`, as
    the search builds it) against plain float32: the search may use it only when the worst cosine is
    >= 0.995 and the top results are the same, which USE_INT8 must say. With polyformers' int8 kernel:
    0.9999 over these 178 passages (bfloat16 alone: 0.9949, "[Exit Hecate.]" batched with others, from the
    feed-forward input layers' outputs rounded to bfloat16); int8 in every layer would reach 0.9915."""
    from polyformers.pt import kernels
    from polyformers.pt.mixed import int8_with_bf16
    from polyformers.pt.unpad import skip_padding

    assert kernels.available(), kernels.why_not()
    lines = play_lines + short_lines
    reference = plain.encode(lines)
    mixed = copy.copy(plain)
    mixed.model = int8_with_bf16(skip_padding(copy.deepcopy(plain.model)), search.SHORT_TOKENS)
    mixed.batch_size = search.FAST_BATCH_SIZE  # as the search batches (the outlier columns are per batch)
    cosine, same_top = _compare("int8 with bfloat16", mixed, reference, lines, plain)
    assert (cosine >= 0.995 and same_top) == search.USE_INT8, (
        f"min cosine {cosine:.5f}, same top results {same_top}: update search.USE_INT8")


def test_cached_index_loads_no_model_and_answers_fast(plain, play_lines, tmp_path, assets, monkeypatch):
    play = tmp_path / "play.txt"
    play.write_text("\n\n".join(play_lines) + "\n", "utf-8")
    model = str(assets / "mpnet")
    calls = []

    def embedder():
        calls.append(1)
        fast = copy.copy(plain)
        fast.model = copy.deepcopy(plain.model)
        return fast

    first = SearchIndex(model, embedder, cache_dir=tmp_path / "cache").search(QUERY, [play])
    assert calls == [1] and "dagger which I see before me" in first[0]["text"]

    def no_model():
        raise AssertionError("a cached search loaded the model")

    def not_again(*args):
        raise AssertionError("a cached search read or hashed the unchanged file again")

    # What makes it fast: no model, and the unchanged file (same size and time) neither read nor hashed.
    monkeypatch.setattr(search, "read_text_file", not_again)
    monkeypatch.setattr(search, "_sha256_file", not_again)
    start = time.perf_counter()
    index = SearchIndex(model, no_model, cache_dir=tmp_path / "cache")
    second = index.search(QUERY, [play])
    print(f"cached search: {time.perf_counter() - start:.3f} s")
    assert second == first and index.stats["cached"] == [str(play.resolve())]
