"""Loading holds one copy of the weights from the start: the projections a forward stacks load adjacent in
one buffer (the first forward then copies nothing), and building the model on meta imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import polyformers
from polyformers.pt import layers as L

from .tiny import TINY

CASES = {
    # family: (class, config, the stacked groups of one layer as (module path, [parts in stacking order]))
    "electra": ("ElectraModel", polyformers.ElectraConfig(**TINY),
                [("encoder.layer.0.attention.self", ["query", "key", "value"])]),
    "gptj": ("GPTJForCausalLM", polyformers.GPTJConfig(vocab_size=61, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                                       n_positions=64),
             [("transformer.h.1.attn", ["q_proj", "k_proj", "v_proj"])]),
    "pegasus": ("PegasusForConditionalGeneration",
                polyformers.PegasusConfig(vocab_size=61, d_model=16, encoder_layers=1, decoder_layers=1,
                                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                                          decoder_ffn_dim=24, max_position_embeddings=32),
                # defined k, v, q; stacked q, k, v (self-attention) and k, v (cross-attention)
                [("model.decoder.layers.0.self_attn", ["q_proj", "k_proj", "v_proj"]),
                 ("model.decoder.layers.0.encoder_attn", ["k_proj", "v_proj"])]),
}


def _adjacent(params) -> bool:
    first = params[0]
    offsets = [p.storage_offset() for p in params]
    return (all(p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for p in params)
            and offsets == [offsets[0] + sum(p.numel() for p in params[:i]) for i in range(len(params))])


@pytest.mark.parametrize("family", sorted(CASES))
def test_stacked_projections_load_adjacent_and_the_first_forward_copies_nothing(family, tmp_path):
    cls_name, config, groups = CASES[family]
    cls = getattr(polyformers, cls_name)
    torch.manual_seed(0)
    original = cls(config).eval()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    original.save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path).eval()
    for path, parts in groups:
        owner = model.get_submodule(path)
        for leaf in ("weight", "bias"):
            params = [getattr(getattr(owner, part), leaf) for part in parts]
            if params[0] is None:
                continue
            assert _adjacent(params), f"{path} {leaf}s of {parts} do not lie one after another"
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    ids = torch.randint(3, 61, (1, 6), generator=torch.Generator().manual_seed(1))
    kwargs = {"decoder_input_ids": ids[:, :3]} if family == "pegasus" else {}
    with torch.no_grad():
        out = model(input_ids=ids, **kwargs)
        want = original(input_ids=ids, **kwargs)
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers  # stacked in place
    first = "logits" if hasattr(out, "logits") else "last_hidden_state"
    assert torch.allclose(getattr(out, first), getattr(want, first), atol=1e-5)
    # the stacked buffer the forward used is the loaded one
    owner = model.get_submodule(groups[0][0])
    layers = [getattr(owner, part) for part in groups[0][1]]
    assert layers[0].__dict__["_stacked"].weight.data_ptr() == layers[0].weight.data_ptr()


def test_adjacent_refuses_what_is_not_adjacent():
    buffer = torch.arange(12.0).view(6, 2)
    a, b, c = buffer[0:2], buffer[2:4], buffer[4:6]
    assert L._adjacent([a, b, c]).data_ptr() == buffer.data_ptr()
    assert torch.equal(L._adjacent([a, c]), torch.cat([a, c])) and L._adjacent([a, c]).data_ptr() != a.data_ptr()
    assert L._adjacent([b, a]).data_ptr() != buffer.data_ptr()  # out of order: a copy
    assert torch.equal(L._adjacent([b, a]), torch.cat([b, a]))


def test_loading_imports_no_compiler_stack(tmp_path):
    """Initialising meta weights used to run torch's meta ``normal_``, which imports torch._dynamo (about
    70 MB of Python objects held beside the weights)."""
    cls_name, config, _ = CASES["electra"]
    getattr(polyformers, cls_name)(config).save_pretrained(tmp_path)
    script = (
        "import sys, json, torch, polyformers\n"
        f"m = polyformers.{cls_name}.from_pretrained({str(tmp_path)!r})\n"
        "p = m.embeddings.word_embeddings.weight\n"
        "print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules, 'meta': p.is_meta, 'std': float(p.std())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dynamo"] is False and result["meta"] is False and result["std"] > 0, result
