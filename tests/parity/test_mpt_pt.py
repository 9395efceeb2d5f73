"""MPT (PyTorch) against the installed reference release, in-process, on perturbed random weights, both
directions; then the settings the 4.37 reference ignores, decoding and dtypes."""

import pytest
import torch

import polyformers
from tests.parity.harness import (
    Call, Case, HALF_TOLERANCE, assert_checkpointing_keeps_gradients, assert_reference_reads_half_save, call_args,
    causal_lm_calls, causal_lm_in_half, decoder_head_inputs, decoder_inputs, in_process_parity, left_padded_batch,
    sequence_classification_cases, token_labels,
)

TINY = dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=99, pad_token_id=0)
B, S = 3, 9


def _cases():
    g, ids, mask = decoder_inputs(0, TINY["vocab_size"], B, S)
    base, every = call_args(ids, mask)
    embeds = torch.randn(B, S, TINY["d_model"], generator=g)
    padded, seq, step = decoder_head_inputs(g, ids, TINY["vocab_size"])
    return [
        Case("model", "MptModel", "mpt", TINY, [
            Call(every), Call(dict(inputs_embeds=embeds)), Call(dict(base, return_dict=False)),
            Call(dict(input_ids=ids, use_cache=True, output_hidden_states=True)),
        ]),
        # 6 heads: not a power of two, so the interleaved slope order matters. (No clip_qkv: the installed
        # release clips where 4.37 ignores it; tests/parity/test_mpt_config_audit.py pins 4.37's.)
        Case("model_six_heads_scale", "MptModel", "mpt",
             dict(TINY, d_model=48, n_heads=6, attn_config=dict(softmax_scale=0.3)),
             [Call(every)]),
        Case("causal_lm", "MptForCausalLM", "mpt", TINY,
             causal_lm_calls(base, every, ids, step, torch.where(mask.bool(), ids, -100), use_cache=True)),
        Case("causal_lm_untied", "MptForCausalLM", "mpt", dict(TINY, tie_word_embeddings=False),
             [Call(dict(base, labels=ids))]),
        *sequence_classification_cases(
            "MptForSequenceClassification", "mpt", TINY, g,
            [Call(dict(input_ids=padded, attention_mask=mask, labels=seq(3), output_hidden_states=True))],
            dict(input_ids=padded)),
        Case("token_cls", "MptForTokenClassification", "mpt", dict(TINY, num_labels=5),
             [Call(dict(every, labels=token_labels(g, mask)))]),
        Case("qa", "MptForQuestionAnswering", "mpt", TINY, [
            Call(dict(every, start_positions=seq(S), end_positions=torch.tensor([S - 1, 40, 2]))),
        ]),
    ]


parity = in_process_parity("mpt", _cases)


def test_mpt_classes_match_reference(parity):
    models, _ = parity
    assert set(models) == {case.name for case in _cases()}


def _left_padded_batch():
    return left_padded_batch(TINY["vocab_size"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading_runs_and_stays_close_to_float32(parity, dtype, tmp_path):
    batch = _left_padded_batch()
    full, half, real = causal_lm_in_half(parity, polyformers.MptForCausalLM, dtype, batch)
    with torch.no_grad():
        expected = full(**batch).logits
        outputs = [half(**batch), half(**batch, output_attentions=True, output_hidden_states=True)]
    tolerance = expected.abs().max() * HALF_TOLERANCE[dtype]
    for out in outputs:
        # Padding rows attend to nothing; they must stay finite, or NaNs would reach real tokens.
        assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
        assert (out.logits[real].float() - expected[real]).abs().max() <= tolerance
    assert all(torch.isfinite(h).all() for h in outputs[1].hidden_states)
    assert_reference_reads_half_save(half, tmp_path, batch, outputs[0].logits, tolerance)


@pytest.mark.parametrize("option, value", [("alibi", False), ("prefix_lm", True), ("qk_ln", True),
                                           ("attn_uses_sequence_id", True)])
def test_attention_options_the_reference_ignores_are_ignored(option, value, caplog):
    """As in the reference 4.37 release, these settings change nothing (one warning names each)."""
    torch.manual_seed(0)
    plain = polyformers.MptForCausalLM(polyformers.MptConfig(**TINY)).eval()
    with caplog.at_level("WARNING", logger="polyformers.pt.models.mpt"):
        model = polyformers.MptForCausalLM(polyformers.MptConfig(**dict(TINY, attn_config={option: value}))).eval()
    assert [r.getMessage().split(" is ")[0] for r in caplog.records] == [f"MptConfig attn_config.{option}={value!r}"]
    model.load_state_dict(plain.state_dict())
    batch = _left_padded_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, plain(**batch).logits)


@pytest.mark.parametrize("heads, bias_max", [(4, 8), (6, 8), (4, 4)])
def test_alibi_follows_heads_and_ignores_alibi_bias_max(heads, bias_max):
    """With zero query/key projections the scores are the ALiBi biases alone, so the attention of query
    ``q`` is softmax(slope * (k - q)) over keys k <= q, with MPT's slopes written out by hand; their maximum
    exponent is 8 whatever ``alibi_bias_max`` says, as in the reference 4.37 release."""
    config = polyformers.MptConfig(**dict(TINY, d_model=8 * heads, n_heads=heads, n_layers=1,
                                          attn_config=dict(alibi_bias_max=bias_max)))
    model = polyformers.MptModel(config).eval()
    with torch.no_grad():
        model.blocks[0].attn.Wqkv.weight.zero_()
        probs = model(input_ids=torch.arange(3, 9)[None], output_attentions=True).attentions[0][0]
    padded = 8 if heads == 6 else heads  # heads rounded up to a power of two
    slopes = [2.0 ** (-8 * k / padded) for k in range(1, padded + 1)]
    if heads == 6:
        slopes = (slopes[1::2] + slopes[::2])[:heads]
    for h, slope in enumerate(slopes):
        for q in range(6):
            expected = torch.softmax(torch.tensor([slope * (k - q) for k in range(q + 1)]), dim=0)
            assert torch.allclose(probs[h, q, : q + 1], expected, atol=1e-6)
            assert not probs[h, q, q + 1:].any()


def test_expansion_ratio_no_bias_and_logit_scale_are_ignored_as_in_the_reference():
    torch.manual_seed(0)
    config = polyformers.MptConfig(**dict(TINY, expansion_ratio=2, no_bias=False, logit_scale="inv_sqrt_d_model"))
    model = polyformers.MptForCausalLM(config).eval()
    block = model.transformer.blocks[0]
    assert block.ffn.up_proj.weight.shape == (128, 32) and block.ffn.down_proj.weight.shape == (32, 128)
    assert all(m.bias is None for m in (block.attn.Wqkv, block.attn.out_proj, block.norm_1, block.norm_2))
    plain = polyformers.MptForCausalLM(polyformers.MptConfig(**TINY)).eval()
    plain.load_state_dict(model.state_dict())
    ids = torch.arange(3, 10)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_biased_config_loads_the_reference_checkpoint_unchanged(parity):
    """The reference builds MPT without biases whatever ``no_bias`` says, and so does polyformers."""
    models, workdir = parity
    biased = polyformers.MptForCausalLM.from_pretrained(workdir / "causal_lm", no_bias=False)
    assert biased.transformer.blocks[0].attn.Wqkv.bias is None
    batch = _left_padded_batch()
    with torch.no_grad():
        assert torch.equal(biased(**batch).logits, models["causal_lm"](**batch).logits)


def test_gradient_checkpointing_gives_the_same_gradients(parity):
    models, _ = parity
    ids = decoder_inputs(4, TINY["vocab_size"], B, S)[1]
    qkv = lambda model: model.transformer.blocks[0].attn.Wqkv.weight  # noqa: E731
    assert_checkpointing_keeps_gradients(models["causal_lm"], ids, qkv)
