"""Pegasus' decoding step in one compiled call (``fused.cross_blocks``, ``kernels/blocks.cpp``): the same bits as
its decoder blocks' Python forward for every kind of linear layer and activation, with padded sources and beams;
taken on every step after the first, and not where it would differ (attention weights or hidden states asked
for, hooks, training, head masks, a cache of another dtype)."""

from __future__ import annotations

import pytest
import torch

from polyformers import PegasusConfig, PegasusForConditionalGeneration
from polyformers.pt import fused, kernels

from .test_fused import KINDS, perturbed

NEW = 6


@pytest.fixture(autouse=True)
def _built():
    assert kernels.available(), kernels.why_not()


def _model(kind: str = "fp32", activation: str = "gelu", seed: int = 0):
    torch.manual_seed(seed)
    config = PegasusConfig(vocab_size=120, d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                           max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                           activation_function=activation)
    return perturbed(PegasusForConditionalGeneration(config).eval(), kind)


def _source():
    ids = torch.randint(2, 120, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a row padded on the left, one on the right
    mask[2, -4:] = 0
    return ids, mask


class _Counter:
    def __init__(self, monkeypatch):
        self.taken = 0
        original = fused.cross_blocks

        def counting(*args):
            out = original(*args)
            self.taken += out is not None
            return out

        monkeypatch.setattr(fused, "cross_blocks", counting)


def _generate(model, **kwargs):
    ids, mask = _source()
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_length=NEW + 1, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, **kwargs)


def _same(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and len(a.scores) == len(b.scores) and all(
        torch.equal(x, y) for x, y in zip(a.scores, b.scores))


@pytest.mark.parametrize("kind", KINDS)
def test_the_compiled_step_gives_the_python_blocks_bits(kind, monkeypatch):
    model = _model(kind)
    counter = _Counter(monkeypatch)
    compiled = _generate(model)
    assert counter.taken == NEW - 1  # every step after the first, which has no cache yet
    monkeypatch.setattr(fused, "ENABLED", False)
    python = _generate(model)
    assert counter.taken == NEW - 1
    assert _same(compiled, python)


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_other_activations_and_beams(activation, monkeypatch):
    model = _model(activation=activation)
    counter = _Counter(monkeypatch)
    compiled = _generate(model)
    beams = _generate(model, num_beams=2)  # 3 x 2 rows, the cache reordered between steps
    assert counter.taken == 2 * (NEW - 1)
    monkeypatch.setattr(fused, "ENABLED", False)
    assert _same(compiled, _generate(model))
    assert _same(beams, _generate(model, num_beams=2))


def test_not_taken_where_it_would_differ(monkeypatch):
    model = _model()
    want = _generate(model)
    counter = _Counter(monkeypatch)
    # attention weights and hidden states asked for: the blocks run in Python, with the same tokens
    for flags in ({"output_attentions": True}, {"output_hidden_states": True}):
        out = _generate(model, **flags)
        assert torch.equal(out.sequences, want.sequences), flags
    assert counter.taken == 0
    # a hook on a module inside a block sees every step
    seen = []
    handle = model.model.decoder.layers[1].encoder_attn.register_forward_hook(lambda *args: seen.append(1))
    assert _same(_generate(model), want) and counter.taken == 0 and len(seen) == NEW
    handle.remove()
    # a float64 model's states: not float32
    double = _model().double()
    ids, mask = _source()
    with torch.no_grad():
        double.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert counter.taken == 0
    # head masks: the Python blocks apply them
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                       decoder_head_mask=torch.ones(3, 4))
    assert counter.taken == 0
    # and back: taken again, the same bits
    assert _same(_generate(model), want) and counter.taken == NEW - 1


def test_training_mode_and_gradients_keep_the_python_blocks(monkeypatch):
    model = _model()
    ids, mask = _source()
    with torch.no_grad():
        encoded = model.model.encoder(ids, attention_mask=mask)
        first = model(attention_mask=mask, encoder_outputs=encoded, use_cache=True,
                      decoder_input_ids=torch.zeros(3, 1, dtype=torch.long))
    counter = _Counter(monkeypatch)
    step = dict(attention_mask=mask, encoder_outputs=encoded, decoder_input_ids=torch.full((3, 1), 5),
                past_key_values=first.past_key_values, use_cache=True)
    with torch.no_grad():
        compiled = model(**step)
    assert counter.taken == 1
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(fused, "ENABLED", False)
        python = model(**step)
    assert counter.taken == 1 and torch.equal(compiled.logits, python.logits)
    assert all(torch.equal(a, b)
               for x, y in zip(compiled.past_key_values, python.past_key_values) for a, b in zip(x, y))
    graded = model(**step)  # gradients on: Python, through torch's kernels
    assert counter.taken == 1 and graded.logits.requires_grad
    torch.testing.assert_close(graded.logits, python.logits, rtol=1e-5, atol=1e-5)
    model.train()
    model.config.dropout = 0.0
    with torch.no_grad():
        model(**step)
    assert counter.taken == 1


def test_the_operator_names_a_bad_argument():
    model = _model()
    plan_model = model.model.decoder
    ids, mask = _source()
    with torch.no_grad():
        encoded = model.model.encoder(ids, attention_mask=mask)
        first = model(attention_mask=mask, encoder_outputs=encoded, use_cache=True,
                      decoder_input_ids=torch.zeros(3, 1, dtype=torch.long))
        hidden = torch.randn(3, 1, 64)
        assert fused.cross_blocks(plan_model, hidden, None, None, encoded.last_hidden_state, first.past_key_values)
        plan = plan_model._fused_plan
        keys, values, cross_keys, cross_values = (list(p) for p in zip(*first.past_key_values))
        with pytest.raises(RuntimeError, match="activation: expected"):
            kernels.ops().cross_blocks(hidden, plan.tensors, plan.layout, keys, values, cross_keys, cross_values, None,
                                       None, 0.25, 1e-5, 4, "swish")
        with pytest.raises(RuntimeError, match="cross keys and values"):
            kernels.ops().cross_blocks(hidden, plan.tensors, plan.layout, keys, values, [k[:, :2] for k in cross_keys],
                                       cross_values, None, None, 0.25, 1e-5, 4, "none")
        with pytest.raises(RuntimeError, match="heads: expected a divisor"):
            kernels.ops().cross_blocks(hidden, plan.tensors, plan.layout, keys, values, cross_keys, cross_values, None,
                                       None, 0.25, 1e-5, 5, "none")


def test_the_logits_bias_added_in_the_product_gives_the_same_bits(monkeypatch):
    """A decoding step's final_logits_bias goes into the LM head's product (one pass less over the scores):
    the same bits as adding it afterwards; with a hook on the head, the head's own output is what the hook sees."""
    model = _model()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    ids, mask = _source()
    seen = []

    def keep(module, args, output):
        seen.append((args[0], output))

    with torch.no_grad():
        encoded = model.model.encoder(ids, attention_mask=mask)
        step = dict(attention_mask=mask, encoder_outputs=encoded, decoder_input_ids=torch.full((3, 1), 5))
        body = model.model(**step, return_dict=True)
        want = model.lm_head(body.last_hidden_state) + model.final_logits_bias
        assert torch.equal(model(**step).logits, want)
        handle = model.lm_head.register_forward_hook(keep)
        hooked = model(**step).logits
        handle.remove()
        assert torch.equal(hooked, want) and len(seen) == 1
        assert torch.equal(seen[0][1], model.lm_head(seen[0][0]))  # without the bias
    with torch.no_grad(), monkeypatch.context() as patch:  # on torch's path (no kernels): added afterwards
        patch.setattr(kernels, "ready", lambda: False)
        torch.testing.assert_close(model(**step).logits, want, rtol=1e-6, atol=1e-6)
