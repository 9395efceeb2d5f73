"""The compiled decoding step of MPT's and GPT-J's blocks (``polyformers.pt.fused``, ``kernels/blocks.cpp``):
the same bits as the blocks' Python forward for every kind of linear layer, with and without padding; taken
on every decoding step of ``generate``, and not taken where it would differ (hooks, training, attention
weights, a growing cache, a layer it does not know); a replaced module or reloaded weights are seen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polyformers import GPTJConfig, GPTJForCausalLM, MptConfig, MptForCausalLM
from polyformers.pt import fused, kernels
from polyformers.pt import layers as L
from polyformers.pt.cache import StaticCache
from polyformers.pt.quantize import quantize

KINDS = ("fp32", "bf16", "int8", "int4")


@pytest.fixture(autouse=True)
def _built():
    assert kernels.available(), kernels.why_not()


def _model(kind: str, seed: int = 0, family: str = "mpt"):
    torch.manual_seed(seed)
    if family == "mpt":
        config = MptConfig(d_model=64, n_heads=4, n_layers=3, vocab_size=120, max_seq_len=64, use_cache=True)
        model = MptForCausalLM(config).eval()
    else:  # rotary on 8 of each head's 16 dimensions; biased feed-forward layers
        config = GPTJConfig(n_embd=64, n_head=4, n_layer=3, rotary_dim=8, vocab_size=120, n_positions=64,
                            bos_token_id=None, eos_token_id=None, pad_token_id=None)
        model = GPTJForCausalLM(config).eval()
    return perturbed(model, kind)


def perturbed(model, kind: str):
    """``model`` with every parameter moved away from its initial value (norms included), then quantized as
    ``kind`` (one of KINDS) says; also used by test_fused_pegasus."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if kind != "fp32":
        quantize(model, bits={"bf16": 16, "int8": 8, "int4": 4}[kind], **({"group_size": 32} if kind == "int4" else {}))
    return model


def _blocks(model):
    return model.transformer.blocks if isinstance(model, MptForCausalLM) else model.transformer.h


class _Counter:
    """Wraps ``fused.alibi_blocks``: how many steps took the compiled path."""

    def __init__(self, monkeypatch):
        self.taken = 0
        for name in ("alibi_blocks", "rotary_blocks"):
            monkeypatch.setattr(fused, name, self._counting(getattr(fused, name)))

    def _counting(self, original):
        def counting(*args):
            out = original(*args)
            self.taken += out is not None
            return out

        return counting


def _decode(model, prompt, mask, steps: int, compiled: bool):
    """Prefill, then ``steps`` greedy steps through a StaticCache, as ``generate`` calls the model: the
    logits of every step and the cache's buffers."""
    fused.ENABLED = compiled
    try:
        batch, length = prompt.shape
        cache = StaticCache(model.config, max_batch_size=batch, max_cache_len=length + steps + 2)
        ids, logits = prompt, []
        with torch.inference_mode():
            for step in range(steps + 1):
                position = torch.arange(length) if step == 0 else torch.tensor([length + step - 1])
                out = model(ids, past_key_values=cache, attention_mask=mask, cache_position=position)
                logits.append(out.logits[:, -1])
                ids = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        return logits, cache
    finally:
        fused.ENABLED = True


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["mpt", "gptj"])
def test_decoding_steps_are_the_same_bits_as_the_python_blocks(family, kind, batch, monkeypatch):
    model = _model(kind, family=family)
    torch.manual_seed(1)
    prompt = torch.randint(0, 120, (batch, 6))
    mask = torch.ones_like(prompt)
    if batch > 1:
        mask[0, :2] = 0  # a left-padded row: the step's bias carries the mask
    counter = _Counter(monkeypatch)
    got, got_cache = _decode(model, prompt, mask, 5, compiled=True)
    assert counter.taken == 5  # every decoding step, not the prompt
    want, want_cache = _decode(model, prompt, mask, 5, compiled=False)
    assert counter.taken == 5
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for a, b in zip(got_cache.key_cache + got_cache.value_cache + got_cache._written,
                    want_cache.key_cache + want_cache.value_cache + want_cache._written):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["fp32", "int4"])
@pytest.mark.parametrize("family", ["mpt", "gptj"])
def test_generate_takes_it_on_every_step_with_the_same_tokens(family, kind, monkeypatch):
    model = _model(kind, seed=2, family=family)
    prompt = torch.randint(0, 120, (2, 5))
    mask = torch.ones_like(prompt)
    mask[1, 0] = 0
    counter = _Counter(monkeypatch)
    with torch.inference_mode():
        got = model.generate(prompt, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
        assert counter.taken == 8
        fused.ENABLED = False
        try:
            want = model.generate(prompt, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
        finally:
            fused.ENABLED = True
    assert counter.taken == 8
    assert torch.equal(got, want)


def _generate(model, **kwargs):
    prompt = torch.arange(1, 7).view(1, 6)
    with torch.inference_mode():
        return model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, **kwargs)


@pytest.mark.parametrize("family", ["mpt", "gptj"])
def test_hooks_training_attention_weights_and_growing_caches_run_the_python_blocks(family, monkeypatch):
    model = _model("fp32", seed=3, family=family)
    blocks = _blocks(model)
    counter = _Counter(monkeypatch)
    want = _generate(model)
    assert counter.taken == 4
    seen = []
    out_proj = blocks[1].attn.out_proj
    handle = out_proj.register_forward_hook(lambda *a: seen.append(1))
    assert torch.equal(_generate(model), want)
    handle.remove()
    assert len(seen) == 5 and counter.taken == 4  # the hook ran on the prompt and on every step
    handle = blocks[2].register_forward_pre_hook(lambda *a: None)
    _generate(model)
    handle.remove()
    assert counter.taken == 4
    blocks[0].train()  # one block in training mode: dropout would apply there
    _generate(model)
    blocks[0].eval()
    assert counter.taken == 4
    out = _generate(model, output_attentions=True, return_dict_in_generate=True)  # a growing cache, weights
    assert torch.equal(out.sequences, want) and counter.taken == 4
    assert torch.equal(_generate(model), want) and counter.taken == 8


def test_a_replaced_layer_or_reloaded_weights_are_seen(monkeypatch):
    model = _model("int4", seed=4)
    counter = _Counter(monkeypatch)
    _generate(model)
    # A layer it does not know: the Python blocks run (the layer's forward is the truth).
    block = model.transformer.blocks[1]
    plain = nn.Linear(256, 64, bias=False)
    block.ffn.down_proj = plain
    taken = counter.taken
    got = _generate(model)
    assert counter.taken == taken
    fused.ENABLED = False
    try:
        assert torch.equal(got, _generate(model))
    finally:
        fused.ENABLED = True
    # A layer it knows, with other weights: taken, with the new weights.
    replacement = L.Linear(256, 64, bias=False).eval()
    with torch.no_grad():
        replacement.weight.normal_(0, 0.5)
    block.ffn.down_proj = replacement
    got = _generate(model)
    assert counter.taken == taken + 4
    fused.ENABLED = False
    try:
        assert torch.equal(got, _generate(model))
    finally:
        fused.ENABLED = True
    # Other 4-bit weights loaded into the same layers (repacked): the new weights.
    other = _model("int4", seed=5)
    other.transformer.blocks[1].ffn.down_proj = L.Linear(256, 64, bias=False).eval()
    model.load_state_dict(other.state_dict())
    fused.ENABLED = False
    try:
        want = _generate(other)
    finally:
        fused.ENABLED = True
    assert torch.equal(_generate(model), want)
    assert counter.taken == taken + 8


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_gptj_projections_stacked_again_are_read_again(kind, monkeypatch):
    # q, k and v are multiplied as one stacked matrix, made by the prompt's forward. A new k_proj (another
    # weight) is stacked again by the next prompt; the compiled steps must read the new stack.
    model = _model(kind, seed=6, family="gptj")
    counter = _Counter(monkeypatch)
    _generate(model)
    attn = model.transformer.h[1].attn
    fresh = L.Linear(64, 64, bias=False).eval()
    with torch.no_grad():
        fresh.weight.normal_(0, 0.3)
    if kind != "fp32":
        quantize_fresh = nn.Sequential(fresh)
        quantize(quantize_fresh, bits={"bf16": 16, "int8": 8}[kind])
        fresh = quantize_fresh[0]
    attn.k_proj = fresh
    got = _generate(model)
    assert counter.taken == 8
    fused.ENABLED = False
    try:
        assert torch.equal(got, _generate(model))
    finally:
        fused.ENABLED = True


def test_the_operator_names_what_is_wrong():
    hidden = torch.zeros(1, 1, 64)
    cache = [torch.zeros(1, 4, 8, 16)]
    written = [torch.zeros(8, dtype=torch.bool)]
    bias = torch.zeros(1, 4, 1, 3)
    with pytest.raises(RuntimeError, match="alibi_blocks: expected per block one key"):
        kernels.ops().alibi_blocks(hidden, [None] * 19, [0] * 12, cache, cache, written, 2, bias, 0.25, 1e-5, 4)
    with pytest.raises(RuntimeError, match="alibi_blocks: slot"):
        kernels.ops().alibi_blocks(hidden, [None] * 20, [0] * 12, cache, cache, written, 3, bias, 0.25, 1e-5, 4)
    with pytest.raises(RuntimeError, match="alibi_blocks: hidden"):
        kernels.ops().alibi_blocks(hidden.double(), [None] * 20, [0] * 12, cache, cache, written, 2, bias, 0.25,
                                   1e-5, 4)
