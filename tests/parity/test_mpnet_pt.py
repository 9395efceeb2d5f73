"""MPNet (PyTorch) against the reference's 4.37 release on perturbed random weights, both directions."""

import pytest
import torch

import polyformers
from polyformers.pt.models.mpnet import relative_position_bucket
from tests.parity.harness import (
    Call, Case, encoder_case_args, masked_lm_cases, run_parity, sequence_classification_cases, token_labels,
)

TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64,
)
B, S = 3, 9
PAD = 1  # MPNet's padding id, fixed by the reference


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY["vocab_size"], (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :4] = 0  # left padding: position ids must skip it
    ids[mask == 0] = PAD
    return g, ids, mask


def _cases():
    g, ids, mask = _inputs()
    base, every, head_mask, mlm_labels, embeds, positions = encoder_case_args(
        TINY, g, ids, mask, TINY["hidden_size"])
    square_mask = torch.tril(torch.ones(S, S, dtype=torch.long))[None].repeat(B, 1, 1)
    seq = lambda n: torch.randint(0, n, (B,), generator=g)  # noqa: E731
    long_ids = torch.randint(3, TINY["vocab_size"], (2, 150), generator=g)
    long_mask = torch.ones(2, 150, dtype=torch.long)
    long_mask[1, 130:] = 0
    long_ids[long_mask == 0] = PAD
    choice_ids, choice_mask = torch.stack([ids[:2], ids[1:]]), torch.stack([mask[:2], mask[1:]])
    return [
        Case("model", "MPNetModel", "mpnet", TINY, [
            Call(base), Call(every), Call(dict(every, head_mask=head_mask)), Call(dict(base, head_mask=head_mask[1])),
            Call(dict(inputs_embeds=embeds, attention_mask=mask, output_attentions=True)),
            Call(dict(base, position_ids=positions)), Call(dict(input_ids=ids, attention_mask=square_mask)),
            Call(dict(every, return_dict=False)), Call(dict(input_ids=ids)),
        ]),
        # Offsets past the exact buckets, up to and beyond max_distance (128); a bias table larger than the
        # 32 buckets used.
        Case("model_long", "MPNetModel", "mpnet",
             dict(TINY, max_position_embeddings=160, relative_attention_num_buckets=40), [
            Call(dict(input_ids=long_ids, attention_mask=long_mask)),
            Call(dict(input_ids=long_ids, attention_mask=long_mask, output_attentions=True)),
        ]),
        *masked_lm_cases("MPNetForMaskedLM", "mpnet", TINY, [
            Call(dict(every, labels=mlm_labels)), Call(dict(base, labels=mlm_labels, return_dict=False)),
            Call(dict(inputs_embeds=embeds, head_mask=head_mask)),
        ], base, mlm_labels),
        *sequence_classification_cases(
            "MPNetForSequenceClassification", "mpnet", TINY, g,
            [Call(dict(every, labels=seq(3))), Call(dict(base, labels=seq(3), return_dict=False))], base),
        Case("token_cls", "MPNetForTokenClassification", "mpnet", dict(TINY, num_labels=5), [
            Call(dict(every, labels=token_labels(g, mask))),
            Call(dict(inputs_embeds=embeds, head_mask=head_mask[0])),
        ]),
        Case("qa", "MPNetForQuestionAnswering", "mpnet", TINY, [
            Call(dict(every, start_positions=seq(S), end_positions=torch.tensor([S - 1, 40, 2]))),
            Call(dict(base, start_positions=seq(S), end_positions=seq(S), return_dict=False)),
        ]),
        Case("multiple_choice", "MPNetForMultipleChoice", "mpnet", TINY, [
            Call(dict(input_ids=choice_ids, attention_mask=choice_mask, labels=torch.tensor([0, 1]),
                      output_hidden_states=True, output_attentions=True)),
            Call(dict(inputs_embeds=torch.stack([embeds[:2], embeds[1:]]), attention_mask=choice_mask,
                      head_mask=head_mask, return_dict=False)),
        ]),
    ]


def test_mpnet_heads_match_reference(tmp_path, legacy_python):
    run_parity(_cases(), tmp_path, legacy_python)


def test_fast_attention_path_matches_explicit_one():
    # Without attention weights the fused kernel runs; with them, the explicit softmax: same function.
    g, ids, mask = _inputs(1)
    model = polyformers.MPNetModel(polyformers.MPNetConfig(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        fast = model(ids, mask).last_hidden_state
        slow = model(ids, mask, output_attentions=True).last_hidden_state
    assert (fast - slow).abs().max() < 1e-5


def test_bucketing():
    offsets = torch.arange(-200, 201)
    buckets = relative_position_bucket(offsets)
    # keys before the query (negative offsets) take the lower half, keys after it the upper half
    assert buckets[offsets == 0].item() == 0 and buckets[offsets == 1].item() == 17 and buckets[offsets == -1].item() == 1
    assert buckets.min() == 0 and buckets.max() == 31
    assert buckets[offsets <= -128].unique().tolist() == [15] and buckets[offsets >= 128].unique().tolist() == [31]
    # exact below 8 in each direction, monotone beyond
    assert buckets[(offsets < 0) & (offsets > -8)].tolist() == list(range(7, 0, -1))
    assert torch.all(buckets[offsets >= 0].diff() >= 0) and torch.all(buckets[offsets <= 0].diff() <= 0)


def test_bias_table_smaller_than_the_buckets_is_refused():
    model = polyformers.MPNetModel(polyformers.MPNetConfig(**TINY, relative_attention_num_buckets=16))
    with pytest.raises(ValueError, match="relative_attention_num_buckets must be at least 32.*got 16"):
        model(torch.tensor([[0, 5, 2]]))


def test_too_many_positions_are_refused():
    model = polyformers.MPNetModel(polyformers.MPNetConfig(**TINY))
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(torch.full((1, 63), 5))
    model(torch.cat([torch.full((1, 62), 5), torch.full((1, 10), PAD)], dim=1))  # padding takes no position
