"""An encoder in two precisions (:mod:`polyformers.pt.mixed`): the twin shares every tensor, batches go the
short or the long way by their shortest row, the layers of each way, and errors. The real model's
embeddings are checked in tests/cli/test_search_fast.py."""

from __future__ import annotations

import copy

import pytest
import torch

from polyformers import MPNetConfig, MPNetModel
from polyformers.pt import kernels
from polyformers.pt.mixed import ShortRowsSplit, int8_with_bf16, twin
from polyformers.pt.quantize import Bf16Linear, Int8Linear, quantize
from polyformers.pt.unpad import skip_padding


def _mpnet(seed: int = 0) -> MPNetModel:
    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=40)
    model = MPNetModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _batch(lengths, width=None):
    width = width or max(lengths)
    ids = torch.randint(3, 60, (len(lengths), width), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask + (1 - mask), mask


def test_twin_shares_the_tensors_but_not_the_layers():
    model = _mpnet()
    copy_ = twin(model)
    assert copy_ is not model and copy_.encoder.layer[0] is not model.encoder.layer[0]
    ours = dict(model.named_parameters())
    for name, p in copy_.named_parameters():
        assert p is ours[name]
    assert [n for n, _ in copy_.named_buffers()] == [n for n, _ in model.named_buffers()]
    hook = copy_.register_forward_hook(lambda *a: None)
    assert not model._forward_hooks
    hook.remove()
    quantize(copy_, bits=16)
    assert isinstance(copy_.encoder.layer[0].output.dense, Bf16Linear)
    assert isinstance(model.encoder.layer[0].output.dense, torch.nn.Linear)
    ids, mask = _batch([7, 4])
    with torch.no_grad():
        torch.testing.assert_close(copy_(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state,
                                   atol=0.05, rtol=0)


@pytest.fixture(scope="module")
def split():
    assert kernels.available(), kernels.why_not()  # the int8 layers take polyformers' kernel
    reference = _mpnet()
    return reference, int8_with_bf16(skip_padding(copy.deepcopy(reference)), short_tokens=5)


def test_each_way_has_its_layers(split):
    reference, model = split
    assert isinstance(model, ShortRowsSplit) and model.config is model.long.config and not model.training
    long_layers = dict(model.long.named_modules())
    float32 = dict(reference.named_modules())
    for name, layer in model.short.named_modules():
        if name.endswith(("attn.q", "attn.k", "attn.v", "attn.o")):
            assert isinstance(layer, Bf16Linear) and isinstance(long_layers[name], Int8Linear), name
        if name.endswith("intermediate.dense"):  # the feed-forward input (intermediate_size outputs)
            assert type(layer) is type(float32[name]) and isinstance(long_layers[name], Int8Linear), name
            assert torch.equal(layer.weight, float32[name].weight) and layer.weight.dtype == torch.float32
        if name.endswith("output.dense"):  # the feed-forward output (intermediate_size inputs): one layer
            assert isinstance(layer, Bf16Linear) and long_layers[name] is layer, name
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(n.startswith("short.") and n.endswith("intermediate.dense") for n in linears), linears
    assert model.short.embeddings is not model.long.embeddings
    assert model.short.embeddings.word_embeddings.weight is model.long.embeddings.word_embeddings.weight
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("lengths, way", [([9, 8, 6], "long"), ([9, 8, 5], "short"), ([5, 3], "short"),
                                          ([6], "long"), ([2], "short")])
def test_a_batch_goes_the_way_of_its_shortest_row(split, lengths, way):
    reference, model = split
    calls = []
    hooks = [getattr(model, w).register_forward_hook(lambda *a, w=w: calls.append(w)) for w in ("long", "short")]
    try:
        ids, mask = _batch(lengths)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
            expected = reference(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [way]
    real = mask.bool()
    # Both ways round (8 or 16 bits), well within a few hundredths of the float32 states here.
    torch.testing.assert_close(out.last_hidden_state[real], expected.last_hidden_state[real], atol=0.05, rtol=0)
    assert (out.last_hidden_state[real] != expected.last_hidden_state[real]).any()


def test_without_a_mask_the_width_is_the_length(split):
    _, model = split
    ids, _ = _batch([4, 4])
    calls = []
    hook = model.short.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    assert calls == [1]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"short_tokens: expected an int >= 0, given -1"):
        ShortRowsSplit(_mpnet(), _mpnet(), -1)
    with pytest.raises(ValueError, match=r"short_tokens: expected an int >= 0, given True"):
        ShortRowsSplit(_mpnet(), _mpnet(), True)
    with pytest.raises(ValueError, match="expected input_ids or inputs_embeds, given neither"):
        ShortRowsSplit(_mpnet(), _mpnet(), 3)()
    model = _mpnet()
    object.__setattr__(model.config, "intermediate_size", None)  # around the config's own check
    with pytest.raises(ValueError, match=r"config has an int intermediate_size, given MPNetModel with None"):
        int8_with_bf16(model, 3)
    half = _mpnet()
    half.encoder.layer[0].output.dense.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"int8_with_bf16: expected float32 weights on the CPU, given "
                                         r"torch.bfloat16 on cpu in 'dense'"):
        int8_with_bf16(half, 3)
