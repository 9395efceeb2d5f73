"""Behaviours where transformers 5 left 4.37 and polyformers keeps 4.37's (docs/differences-from-transformers-5.md).

The full comparisons with 4.37 run in the family parity tests; these pin the two plainest rows on their own:
4.37 honours ``head_mask`` (5 ignores it) and returns ``None`` for the cross-attentions of a decoder that has
none (5 returns ``()``).
"""

import pytest
import torch

import polyformers

TINY = dict(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32)


def test_head_mask_is_honoured():
    torch.manual_seed(0)
    model = polyformers.ElectraModel(polyformers.ElectraConfig(**TINY)).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = model(ids, output_attentions=True)
        masked = model(ids, head_mask=torch.tensor([[1.0, 0.0]]), output_attentions=True)
    assert not torch.allclose(plain.last_hidden_state, masked.last_hidden_state)
    assert torch.equal(masked.attentions[0][:, 1], torch.zeros_like(masked.attentions[0][:, 1]))


@pytest.mark.parametrize("family", ["Electra", "Roberta"])
def test_absent_cross_attentions_are_none(family):
    config_cls = getattr(polyformers, f"{family}Config")
    kwargs = dict(TINY, is_decoder=True)
    if family == "Roberta":
        kwargs.pop("embedding_size")
    model = getattr(polyformers, f"{family}ForCausalLM")(config_cls(**kwargs)).eval()
    with torch.no_grad():
        out = model(torch.tensor([[3, 4, 5]]), output_attentions=True)
    assert len(out.attentions) == 1 and out.cross_attentions is None


def test_query_seeing_no_key_gets_uniform_weights():
    """A left-padded row of a BERT-style decoder: its padding queries see no key. 4.37 (and polyformers)
    give them uniform weights over every key (4.37 printed [0.25] * 4 for this input); the installed release
    gives zeros."""
    torch.manual_seed(0)
    model = polyformers.ElectraForCausalLM(polyformers.ElectraConfig(**TINY, is_decoder=True)).eval()
    with torch.no_grad():
        out = model(torch.tensor([[0, 0, 5, 6]]), attention_mask=torch.tensor([[0, 0, 1, 1]]), output_attentions=True)
    assert torch.allclose(out.attentions[0][0, :, 0], torch.full((2, 4), 0.25))
