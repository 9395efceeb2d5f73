"""ModelOutput behaves like the reference's: checked side by side with transformers' own classes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import transformers.modeling_outputs as ref_outputs
from transformers.models.electra import modeling_electra as ref_electra

import polyformers
from polyformers import outputs as ours_outputs

from .tiny import TINY, electra_inputs, labels_for

X = torch.arange(6.0).reshape(2, 3)
Y = torch.zeros(4)
Z = torch.ones(1)


def both(name):
    """The reference's output class and ours, for a class name both define."""
    ref = getattr(ref_outputs, name, None) or getattr(ref_electra, name)
    return ref, getattr(ours_outputs, name)


def describe(output) -> dict:
    """Everything observable about an output, in a form two implementations can be compared on."""
    fields = ("loss", "logits", "hidden_states", "attentions")
    return {
        "keys": list(output.keys()),
        "len": len(output),
        "attrs": {f: getattr(output, f) for f in fields},
        "tuple": output.to_tuple(),
        "by_index": [output[i] for i in range(len(output))],
        "negative": output[-1] if len(output) else None,
        "slice": output[:2],
        "values": list(output.values()),
        "items": [k for k, _ in output.items()],
        "dict": dict(output),
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a is b
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


CONSTRUCTIONS = {
    "keywords": lambda cls: cls(logits=X, attentions=(Y,)),
    "keywords_with_none": lambda cls: cls(loss=None, logits=X, hidden_states=None, attentions=(Y,)),
    "positional": lambda cls: cls(Z, X),
    "all_fields": lambda cls: cls(loss=Z, logits=X, hidden_states=(X, X), attentions=(Y,)),
    "from_dict": lambda cls: cls({"logits": X, "loss": Z}),
    "from_pairs": lambda cls: cls([("logits", X), ("attentions", (Y,))]),
    "from_pair_iterator": lambda cls: cls(iter([("logits", X)])),
    "tuple_value_not_pairs": lambda cls: cls((X, Y)),
    "empty": lambda cls: cls(),
}


@pytest.mark.parametrize("name", ["MaskedLMOutput", "ElectraForPreTrainingOutput"])
@pytest.mark.parametrize("how", sorted(CONSTRUCTIONS))
def test_access_matches_reference(name, how):
    ref_cls, our_cls = both(name)
    ref, ours = CONSTRUCTIONS[how](ref_cls), CONSTRUCTIONS[how](our_cls)
    expected, actual = describe(ref), describe(ours)
    for aspect in expected:
        assert same(expected[aspect], actual[aspect]), f"{how}: {aspect} differs: {actual[aspect]!r} vs {expected[aspect]!r}"
    assert isinstance(ours, dict) and isinstance(ours, polyformers.ModelOutput)


def test_none_fields_are_skipped_by_keys_indexing_and_to_tuple():
    _, cls = both("MaskedLMOutput")
    out = cls(loss=None, logits=X, hidden_states=None, attentions=(Y,))
    assert list(out.keys()) == ["logits", "attentions"]
    assert out[0] is X and out[1][0] is Y and out.to_tuple() == (X, (Y,))
    assert out.loss is None and out.hidden_states is None and "loss" not in out
    with pytest.raises(KeyError):
        out["loss"]
    with pytest.raises(IndexError):
        out[2]


def test_misses_raise_like_the_reference():
    for cls in both("MaskedLMOutput"):
        out = cls(logits=X)
        with pytest.raises(KeyError):
            out["hidden_states"]
        with pytest.raises(IndexError):
            out[1]
        with pytest.raises(AttributeError):
            out.not_a_field
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            cls(logits=X, bogus=1)


def test_setting_keeps_attribute_and_key_views_in_sync():
    for cls in both("MaskedLMOutput"):
        out = cls(logits=X, loss=Z)
        out.logits = Y  # attribute -> key
        assert out["logits"] is Y and out[1] is Y
        out["loss"] = X  # key -> attribute
        assert out.loss is X and out[0] is X
        out["hidden_states"] = (Z,)  # a new key appears in both views, at the end
        assert out.hidden_states == (Z,) and list(out.keys()) == ["loss", "logits", "hidden_states"]
        assert out.to_tuple()[-1] == (Z,)


def test_setting_an_absent_field_as_attribute_follows_4_37():
    # 4.37 (the documented release) keeps such a field out of the keys; later releases add it. Checked
    # against the 4.37 release: keys stay ['logits'] while the attribute holds the value.
    _, cls = both("MaskedLMOutput")
    out = cls(logits=X)
    out.loss = Z
    assert out.loss is Z
    assert list(out.keys()) == ["logits"] and out.to_tuple() == (X,)


def test_setting_a_key_to_none_keeps_the_key_like_the_reference():
    results = []
    for cls in both("MaskedLMOutput"):
        out = cls(logits=X, loss=Z)
        out.logits = None  # the attribute is cleared but the key keeps its value, in both
        results.append((list(out.keys()), out.logits, out["logits"]))
    (ref_keys, ref_attr, ref_item), (our_keys, our_attr, our_item) = results
    assert our_keys == ref_keys == ["loss", "logits"]
    assert ref_attr is None and our_attr is None
    assert ref_item is X and our_item is X


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("logits"),
        lambda o: o.pop("logits", None),
        lambda o: o.update({"loss": Z}),
        lambda o: o.update(loss=Z),
        lambda o: o.setdefault("loss", Z),
        lambda o: o.__delitem__("logits"),
    ],
    ids=["pop", "pop_default", "update_dict", "update_kwargs", "setdefault", "del"],
)
def test_forbidden_mutations_raise_and_change_nothing(mutate):
    ref_cls, our_cls = both("MaskedLMOutput")
    with pytest.raises(Exception):
        mutate(ref_cls(logits=X))
    out = our_cls(logits=X)
    with pytest.raises(Exception, match="MaskedLMOutput") as err:
        mutate(out)
    assert isinstance(err.value, TypeError)  # still caught by the reference's `except Exception`
    assert list(out.keys()) == ["logits"] and out.logits is X


def test_equality_and_dict_interop_match_reference():
    for cls in both("MaskedLMOutput"):
        out = cls(logits=X)
        assert out == {"logits": X}
        assert out.get("loss") is None and out.get("logits") is X
        assert "logits" in out and "loss" not in out
        assert {**out} == {"logits": X}


@pytest.mark.parametrize("name", ["MaskedLMOutput", "BaseModelOutputWithPastAndCrossAttentions"])
def test_pickle_and_copy_round_trip(name):
    _, cls = both(name)
    out = cls(**{f: X for f in list(cls.__dataclass_fields__)[:2]})
    for clone in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out), copy.copy(out)):
        assert type(clone) is cls
        assert list(clone.keys()) == list(out.keys())
        for key in out.keys():
            assert torch.equal(clone[key], out[key]) and torch.equal(getattr(clone, key), out[key])


def test_field_order_matches_reference_for_every_shared_class():
    for name in ours_outputs.__all__:
        ref_cls = getattr(ref_outputs, name, None) or getattr(ref_electra, name, None)
        if ref_cls is None or name == "ModelOutput":
            continue
        ours = list(getattr(ours_outputs, name).__dataclass_fields__)
        ref = list(ref_cls.__dataclass_fields__)
        assert ours == ref, f"{name}: fields {ours}, reference {ref}"


# ---------------------------------------------------------------------------------------------------
# return_dict=False on the models gives exactly to_tuple()


def _assert_nested_equal(a, b, where):
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_nested_equal(x, y, f"{where}[{i}]")


HEADS = {
    "ElectraModel": ({}, {}),
    "ElectraForPreTraining": ({}, {"labels": "binary"}),
    "ElectraForMaskedLM": ({}, {"labels": "ids"}),
    "ElectraForCausalLM": ({"is_decoder": True}, {"labels": "ids"}),
    "ElectraForSequenceClassification": ({"num_labels": 3}, {"labels": "classes"}),
    "ElectraForTokenClassification": ({"num_labels": 3}, {"labels": "token_classes"}),
    "ElectraForQuestionAnswering": ({}, {"start_positions": "positions", "end_positions": "positions"}),
    "ElectraForMultipleChoice": ({}, {"labels": "choice"}),
}


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no_labels"])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_return_dict_false_is_to_tuple(name, with_labels):
    extra_config, label_kinds = HEADS[name]
    config = polyformers.ElectraConfig(**TINY, **extra_config)
    torch.manual_seed(0)
    model = getattr(polyformers, name)(config).eval()
    inputs = electra_inputs(multiple_choice=name == "ElectraForMultipleChoice")
    kwargs = dict(inputs, output_hidden_states=True, output_attentions=True)
    if with_labels:
        kwargs.update({arg: labels_for(kind, inputs) for arg, kind in label_kinds.items()})
    if name == "ElectraForCausalLM" and not with_labels:
        kwargs["use_cache"] = True  # the cache is part of the tuple too
    with torch.no_grad():
        as_dict = model(**kwargs)
        as_tuple = model(**kwargs, return_dict=False)
    assert isinstance(as_dict, polyformers.ModelOutput)
    assert type(as_tuple) is tuple
    _assert_nested_equal(as_tuple, as_dict.to_tuple(), name)
    keys = list(as_dict.keys())
    assert ("loss" in keys) == (with_labels and bool(label_kinds))
    assert "hidden_states" in keys and "attentions" in keys
    assert len(as_tuple) == len(keys)


def test_config_return_dict_false_gives_tuples():
    config = polyformers.ElectraConfig(**TINY, return_dict=False)
    model = polyformers.ElectraForPreTraining(config).eval()
    ids = electra_inputs()["input_ids"]
    with torch.no_grad():
        out = model(ids)
        forced = model(ids, return_dict=True)
    assert type(out) is tuple and len(out) == 1
    assert isinstance(forced, polyformers.ModelOutput) and torch.equal(out[0], forced.logits)
