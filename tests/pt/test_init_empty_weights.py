"""``init_empty_weights``: the public context that builds a model without allocating its weights."""

import torch

from polyformers import RobertaConfig, RobertaModel
from polyformers.pt.modeling import init_empty_weights


def _config():
    return RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20, max_position_embeddings=20)


def test_parameters_on_meta_buffers_real_and_restored_afterwards():
    with init_empty_weights():
        model = RobertaModel(_config())
    params = dict(model.named_parameters())
    assert params and all(p.device.type == "meta" for p in params.values())
    assert all(p.requires_grad for p in params.values())
    buffers = dict(model.named_buffers())
    assert buffers and all(b.device.type == "cpu" for b in buffers.values())
    # position ids computed in __init__ survive: they are not in every checkpoint
    assert torch.equal(buffers["embeddings.position_ids"][0, :4], torch.arange(4))
    # outside the context nothing is on meta any more, even after an exception inside it
    try:
        with init_empty_weights():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert all(p.device.type == "cpu" for p in RobertaModel(_config()).parameters())
