"""GPT-J (PyTorch) against the installed reference release (its spec page documents the Cache API),
in-process, on perturbed random weights, both directions; then decoding, padding and dtype checks."""

import pytest
import torch

import polyformers
from tests.parity.harness import (
    Call, Case, HALF_TOLERANCE, assert_checkpointing_keeps_gradients, assert_reference_reads_half_save, call_args,
    causal_lm_calls, causal_lm_in_half, decoder_head_inputs, decoder_inputs, in_process_parity, left_padded_batch,
    sequence_classification_cases,
)

# rotary_dim 4 of head size 8: half of each head rotates, half passes through.
TINY = dict(
    vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=None,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, activation_function="gelu_new",
)
B, S = 3, 9


def _cases():
    g, ids, mask = decoder_inputs(0, TINY["vocab_size"], B, S)
    base, every = call_args(ids, mask)
    positions = torch.randint(0, TINY["n_positions"], (B, S), generator=g)
    embeds = torch.randn(B, S, TINY["n_embd"], generator=g)
    types = torch.randint(0, 2, (B, S), generator=g)
    lm_labels = torch.where(mask.bool(), ids, -100)
    padded, seq, step = decoder_head_inputs(g, ids, TINY["vocab_size"])
    return [
        Case("model", "GPTJModel", "gptj", TINY, [
            Call(every), Call(dict(base, position_ids=positions)), Call(dict(inputs_embeds=embeds)),
            Call(dict(base, token_type_ids=types)), Call(dict(base, return_dict=False, use_cache=False)),
            Call(dict(input_ids=ids, use_cache=False, output_hidden_states=True)),
        ]),
        Case("model_no_pass_through", "GPTJModel", "gptj", dict(TINY, rotary_dim=8, n_inner=40,
                                                                 activation_function="gelu"), [Call(every)]),
        Case("causal_lm", "GPTJForCausalLM", "gptj", TINY, causal_lm_calls(base, every, ids, step, lm_labels)),
        Case("causal_lm_tied", "GPTJForCausalLM", "gptj", dict(TINY, tie_word_embeddings=True),
             [Call(dict(base, labels=ids))]),
        *sequence_classification_cases(
            "GPTJForSequenceClassification", "gptj", TINY, g,
            [Call(dict(input_ids=padded, attention_mask=mask, labels=seq(3), output_hidden_states=True))],
            dict(input_ids=padded)),
        Case("seq_no_pad_single_row", "GPTJForSequenceClassification", "gptj",
             dict(TINY, num_labels=2, pad_token_id=None), [Call(dict(input_ids=ids[:1], labels=seq(2)[:1]))]),
        Case("qa", "GPTJForQuestionAnswering", "gptj", TINY, [
            Call(dict(every, start_positions=seq(S), end_positions=torch.tensor([S - 1, 40, 2]))),
            Call(dict(base, return_dict=False)),
        ]),
    ]


parity = in_process_parity("gptj", _cases)


def test_gptj_classes_match_reference(parity):
    models, _ = parity
    assert set(models) == {case.name for case in _cases()}


def _left_padded_batch():
    return left_padded_batch(TINY["vocab_size"], position_ids=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading_runs_and_stays_close_to_float32(parity, dtype, tmp_path):
    batch = _left_padded_batch()
    full, half, real = causal_lm_in_half(parity, polyformers.GPTJForCausalLM, dtype, batch)
    with torch.no_grad():
        expected = full(**batch, output_attentions=True)
        fused = half(**batch)  # attention through the fused kernel
        explicit = half(**batch, output_attentions=True)  # scores computed in float32, as the reference does
    tolerance = expected.logits.abs().max() * HALF_TOLERANCE[dtype]
    for out in (fused, explicit):
        assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
        assert (out.logits[real].float() - expected.logits[real]).abs().max() <= tolerance
    for ours, ref in zip(explicit.attentions, expected.attentions):  # rows of real (not padding) queries
        rows = real[:, None, :, None].expand_as(ref)
        assert ours.dtype == dtype and (ours.float() - ref)[rows].abs().max() <= 0.02
    # A half-precision save keeps its dtype and loads in the reference.
    assert_reference_reads_half_save(half, tmp_path, batch, fused.logits, tolerance)


def test_half_precision_scores_do_not_overflow():
    """Query-key products beyond float16's range stay finite: scores are accumulated in float32."""
    config = polyformers.GPTJConfig(**dict(TINY, n_layer=1))
    model = polyformers.GPTJModel(config).eval()
    with torch.no_grad():
        model.h[0].attn.q_proj.weight.fill_(3.0)
        model.h[0].attn.k_proj.weight.fill_(3.0)
    model.half()
    ids = torch.arange(3, 11)[None]
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
        fused = model(input_ids=ids)
    assert torch.isfinite(out.attentions[0]).all() and torch.isfinite(fused.last_hidden_state).all()


def test_rotary_dim_none_rotates_whole_heads():
    torch.manual_seed(0)
    whole = polyformers.GPTJModel(polyformers.GPTJConfig(**dict(TINY, rotary_dim=8))).eval()
    none = polyformers.GPTJModel(polyformers.GPTJConfig(**dict(TINY, rotary_dim=None))).eval()
    none.load_state_dict(whole.state_dict())
    ids = torch.arange(3, 12)[None]
    with torch.no_grad():
        assert torch.equal(none(input_ids=ids).last_hidden_state, whole(input_ids=ids).last_hidden_state)
    with pytest.raises(ValueError, match="rotary_dim must be even and at most the head size 8, got 12"):
        polyformers.GPTJModel(polyformers.GPTJConfig(**dict(TINY, rotary_dim=12)))


def test_sequence_classification_without_pad_token_refuses_batches():
    model = polyformers.GPTJForSequenceClassification(polyformers.GPTJConfig(**dict(TINY, pad_token_id=None)))
    with pytest.raises(ValueError, match="pad_token_id is None.*batch of 3"):
        model(input_ids=torch.ones(3, 4, dtype=torch.long))


def test_gradient_checkpointing_gives_the_same_gradients(parity):
    models, _ = parity
    ids = decoder_inputs(4, TINY["vocab_size"], B, S)[1]
    query = lambda model: model.transformer.h[0].attn.q_proj.weight  # noqa: E731
    assert_checkpointing_keeps_gradients(models["causal_lm"], ids, query)
