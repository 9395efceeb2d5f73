"""Inference fast paths: padding skipped by the encoders (pt/unpad.py) and int8 quantization with
float32 outlier columns (pt/quantize.py), against the ordinary padded float32 forward."""

import copy

import pytest
import torch
from torch import nn

import polyformers
from polyformers.pt import kernels
from polyformers.pt.quantize import OUTLIER_THRESHOLD, Int8Linear, quantize_int8
from polyformers.pt.unpad import skip_padding

TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=80, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
FAMILIES = {
    "electra": (polyformers.ElectraConfig, dict(embedding_size=24), 0),
    "roberta": (polyformers.RobertaConfig, dict(pad_token_id=1), 1),
    "roberta_relative": (
        polyformers.RobertaConfig, dict(pad_token_id=1, position_embedding_type="relative_key_query"), 1
    ),
    "mpnet": (polyformers.MPNetConfig, {}, 1),
}
LENGTH = 70
# Rows of very different lengths: full, one token, short, long; the last one left-padded.
LENGTHS = [LENGTH, 1, 6, 41]


def _model(family, cls_name="Model", **overrides):
    config_class, extra, _ = FAMILIES[family]
    prefix = {"electra": "Electra", "mpnet": "MPNet"}.get(family, "Roberta")
    torch.manual_seed(0)
    model = getattr(polyformers, prefix + cls_name)(config_class(**TINY, **extra, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _inputs(family, seed=0):
    pad = FAMILIES[family][2]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY["vocab_size"], (len(LENGTHS), LENGTH), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
    mask[-1] = mask[-1].flip(0)
    ids[mask == 0] = pad
    return dict(input_ids=ids, attention_mask=mask)


def _run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_skipping_padding_keeps_real_tokens_and_zeroes_padding(family):
    model, inputs = _model(family), _inputs(family)
    padded = _run(model, inputs, output_hidden_states=True)
    fast = _run(skip_padding(model), inputs, output_hidden_states=True)
    keep = inputs["attention_mask"].bool()
    assert len(fast.hidden_states) == len(padded.hidden_states)
    # The embeddings are computed everywhere; every layer after them only on the real tokens.
    assert torch.equal(fast.hidden_states[0], padded.hidden_states[0])
    for ours, theirs in zip(fast.hidden_states[1:] + (fast.last_hidden_state,),
                            padded.hidden_states[1:] + (padded.last_hidden_state,)):
        assert (ours[keep] - theirs[keep]).abs().max() <= 1e-5
        assert torch.count_nonzero(ours[~keep]) == 0
    assert torch.count_nonzero(padded.last_hidden_state[~keep]) > 0  # the padded path does compute them
    if family != "electra":  # the pooler reads the first token, real in the right-padded rows
        assert (fast.pooler_output[:-1] - padded.pooler_output[:-1]).abs().max() <= 1e-5

    # Without hidden states, and as a tuple, the same numbers.
    plain = _run(model, inputs, return_dict=False)[0]
    assert torch.equal(plain, fast.last_hidden_state)
    skip_padding(model, enabled=False)
    assert torch.equal(_run(model, inputs).last_hidden_state, padded.last_hidden_state)


@pytest.mark.parametrize("family", ["electra", "mpnet"])
def test_padded_path_kept_where_padding_positions_are_observable_or_absent(family):
    model, inputs = _model(family), _inputs(family)
    head_mask = torch.ones(TINY["num_hidden_layers"], TINY["num_attention_heads"])
    square = inputs["attention_mask"][:, None, :].repeat(1, LENGTH, 1)
    cases = [
        (inputs, dict(output_attentions=True)),
        (inputs, dict(head_mask=head_mask)),
        (dict(inputs, attention_mask=square), {}),  # a per-query mask is not a padding mask
        (dict(inputs, attention_mask=torch.ones_like(inputs["attention_mask"])), {}),  # nothing to skip
        (dict(input_ids=inputs["input_ids"]), {}),
    ]
    expected = [_run(model, i, **kw).last_hidden_state for i, kw in cases]
    padded = _run(model, inputs).last_hidden_state
    skip_padding(model)
    for (i, kw), want in zip(cases, expected):
        assert torch.equal(_run(model, i, **kw).last_hidden_state, want)
    model.train()  # training always pads (no dropout in TINY, so train and eval agree)
    assert torch.equal(_run(model, inputs).last_hidden_state, padded)


def test_decoder_keeps_the_padded_path():
    model, inputs = _model("roberta", is_decoder=True), _inputs("roberta")
    expected = _run(model, inputs, use_cache=False).last_hidden_state
    assert torch.equal(_run(skip_padding(model), inputs, use_cache=False).last_hidden_state, expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_heads_on_the_packed_path(family):
    inputs = _inputs(family)
    keep = inputs["attention_mask"].bool()
    classifier = _model(family, "ForSequenceClassification", num_labels=3)
    tagger = _model(family, "ForTokenClassification", num_labels=5)
    labels = torch.where(keep, torch.randint(0, 5, keep.shape), -100)
    want_cls = _run(classifier, inputs).logits
    want_tag = _run(tagger, inputs, labels=labels)
    got_cls = _run(skip_padding(classifier), inputs).logits
    got_tag = _run(skip_padding(tagger), inputs, labels=labels)
    assert (got_cls[:-1] - want_cls[:-1]).abs().max() <= 1e-5  # the left-padded row pools a padding token
    assert (got_tag.logits[keep] - want_tag.logits[keep]).abs().max() <= 1e-5
    assert abs(float(got_tag.loss) - float(want_tag.loss)) <= 1e-5


def test_skip_padding_needs_an_encoder():
    with pytest.raises(ValueError, match="skip_padding.*Linear"):
        skip_padding(nn.Linear(2, 2))


@pytest.fixture(params=["kernel", "fbgemm"])
def int8_path(request):
    """Int8Linear built and run with polyformers' int8 kernel, then with torch's fbgemm."""
    if request.param == "kernel":
        assert kernels.available(), kernels.why_not()
        yield request.param
    else:
        with kernels.switched_off():
            yield request.param


def test_int8_linear_keeps_outlier_columns_exact_enough(int8_path):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(2, 10, 64)
    x[..., 5] *= 80  # one hidden dimension 100x the others, as in post-norm encoders
    with torch.no_grad():
        want = linear(x)
        layer = Int8Linear.from_linear(linear, outlier_threshold=OUTLIER_THRESHOLD)
        got = layer(x)
        plain = Int8Linear.from_linear(linear)(x)  # no column taken out
        calm = x.clamp(-2, 2)  # nothing above the threshold: the plain product
        assert torch.equal(layer(calm), Int8Linear.from_linear(linear)(calm))
        assert layer(x[:, :0]).shape == (2, 0, 48)
    error = lambda y: float((y - want).norm() / want.norm())  # noqa: E731
    assert got.shape == want.shape
    assert error(got) < 0.02
    assert error(plain) > 2 * error(got)
    with pytest.raises(ValueError, match="64 features.*given shape \\(3, 63\\)"):
        layer(torch.randn(3, 63))


def test_int8_outlier_columns_survive_stacking(int8_path):
    torch.manual_seed(0)
    linears = [nn.Linear(32, n) for n in (16, 8)]
    x = torch.randn(3, 32)
    x[:, 7] *= 50
    layers = [Int8Linear.from_linear(lin, outlier_threshold=3.0) for lin in linears]
    with torch.no_grad():
        alone = torch.cat([layer(x) for layer in layers], dim=-1)
        stack = Int8Linear.stack(layers)
        assert stack.outlier_threshold == 3.0 and torch.allclose(stack(x), alone, atol=1e-5)
        assert torch.allclose(layers[1](x), alone[:, 16:], atol=1e-5)
    with pytest.raises(ValueError, match="one outlier_threshold"):
        Int8Linear.stack([Int8Linear.from_linear(linears[0]), Int8Linear.from_linear(linears[1], 3.0)])


def test_int8_per_row_rounds_each_row_as_it_would_be_alone(int8_path):
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    # rows of very different ranges and offsets: one range for the call would round the small ones coarsely
    x = torch.randn(6, 64) * torch.tensor([0.01, 1.0, 30.0, 0.5, 3.0, 1.0])[:, None] + torch.linspace(-2, 5, 6)[:, None]
    x[5] = 0.25  # a constant row
    with torch.no_grad():
        want = linear(x)
        per_row = Int8Linear.from_linear(linear, per_row=True)
        with kernels.switched_off():
            plain = Int8Linear.from_linear(linear)  # fbgemm's, one range per call
        got = per_row(x)
        assert torch.equal(got, torch.cat([per_row(row[None]) for row in x]))
        assert torch.equal(per_row(x.view(2, 3, 64)), got.view(2, 3, 40))
        assert not torch.equal(plain(x), torch.cat([plain(row[None]) for row in x]))  # what per_row fixes
        if int8_path == "kernel":  # which rounds every row on its own range, per_row or not
            default = Int8Linear.from_linear(linear)
            assert torch.equal(default(x), torch.cat([default(row[None]) for row in x]))
        assert per_row(x[:0]).shape == (0, 40)
        for i in range(6):
            scale = want[i].norm()
            assert (got[i] - want[i]).norm() / scale < 0.02, i
        # against the int8 weight in float, what is left is the inputs' rounding: the narrow row is rounded
        # on its own range, not on the 30x row's
        weight, scales, bias = per_row.unpack()
        exact = x @ (weight.float() * scales[:, None]).t() + bias
        assert (got[0] - exact[0]).norm() < 0.1 * (plain(x)[0] - exact[0]).norm()
        # stacked layers keep their rows
        linears = [nn.Linear(64, n) for n in (24, 8)]
        layers = [Int8Linear.from_linear(lin, per_row=True) for lin in linears]
        alone = torch.cat([layer(x) for layer in layers], dim=-1)
        stack = Int8Linear.stack(layers)
        assert stack.per_row and torch.allclose(stack(x), alone, atol=1e-5)
        assert torch.equal(layers[1](x), stack(x)[:, 24:])
    with pytest.raises(ValueError, match="all per_row or none"):
        Int8Linear.stack([Int8Linear.from_linear(linears[0]), Int8Linear.from_linear(linears[1], per_row=True)])
    with pytest.raises(ValueError, match="per_row=True takes outlier_threshold=None, given 3.0"):
        quantize_int8(nn.Sequential(linear), outlier_threshold=3.0, per_row=True)
    with pytest.raises(TypeError, match="per_row: expected a bool, given 'yes'"):
        quantize_int8(nn.Sequential(linear), per_row="yes")


def test_quantized_model_is_close_to_float32():
    model, inputs = _model("mpnet", "ForSequenceClassification", num_labels=3), _inputs("mpnet")
    skip_padding(model)
    want = _run(model, inputs)
    quantized = quantize_int8(copy.deepcopy(model).train(), outlier_threshold=OUTLIER_THRESHOLD)
    assert not quantized.training and not any(p.requires_grad for p in quantized.parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and not any(isinstance(m, nn.Linear) for m in quantized.modules())
    int8 = [m for m in quantized.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == len(linears) and all(m.outlier_threshold == OUTLIER_THRESHOLD for m in int8)
    got = _run(quantized, inputs)
    keep = inputs["attention_mask"].bool()
    hidden_want = _run(model.mpnet, inputs).last_hidden_state[keep]
    hidden_got = _run(quantized.mpnet, inputs).last_hidden_state[keep]
    assert torch.nn.functional.cosine_similarity(hidden_want, hidden_got, dim=-1).min() > 0.99
    assert (got.logits - want.logits).abs().max() < 0.1


def test_quantize_rejects_what_it_cannot_quantize():
    model = _model("electra")
    with pytest.raises(ValueError, match="float32.*float16"):
        quantize_int8(copy.deepcopy(model).half())
    for bad in (0, -1.0, True, "3"):
        with pytest.raises(ValueError, match=f"outlier_threshold: expected None or a number > 0, given {bad!r}"):
            quantize_int8(model, outlier_threshold=bad)
    with pytest.raises(TypeError, match="torch.nn.Module, given str"):
        quantize_int8("model")
