"""Training polyformers' PyTorch models gives the reference's gradients.

Each class is built by the reference (``transformers``, in this process) from a tiny config without
dropout, every parameter perturbed, saved, and loaded by polyformers; then, in training mode, on padded
inputs with the head's labels:

1. the loss and the gradient of every parameter equal the reference's;
2. with gradient checkpointing the gradients are unchanged (and the layers do run twice);
3. tied parameters stay one tensor through optimizer steps and a save / load in either library;
4. a 20-step AdamW fine-tune gives the reference's 20 losses;
5. the inference fast paths (oneDNN linear, stacked QKV weights, padding skipping, static caches) never
   run while gradients are needed, and switching between eval and train keeps every output right.
"""

from __future__ import annotations

import re

import pytest
import torch

import polyformers
from polyformers.pt.generation import mixin as generation  # generate() builds its StaticCache there
from polyformers.pt import layers as L
from polyformers.pt.unpad import skip_padding
from tests.parity import grads as G

SPECS = G.SPECS


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Folder of each spec's perturbed reference checkpoint, written on first use."""
    root = tmp_path_factory.mktemp("grads")
    folders = {}

    def folder(spec: G.Spec):
        if spec.id not in folders:
            path = root / re.sub(r"\W", "_", spec.id)
            G.build_reference(spec).save_pretrained(path)
            folders[spec.id] = path
        return folders[spec.id]

    return folder


def _pair(spec, checkpoints):
    """The reference model (training mode) and polyformers' model loaded from its checkpoint."""
    ref = G.build_reference(spec)
    ours = G.load_ours(spec, checkpoints(spec))
    return ours, ref


def _optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


# ---------------------------------------------------------------------------------------------------
# 1. gradients


def test_every_exported_class_is_covered():
    """The specs cover every PyTorch model class of the six families that polyformers exports."""
    families = ("Electra", "Roberta", "MPNet", "GPTJ", "Mpt", "Pegasus")
    exported = {
        name for name in polyformers.__all__
        if name.startswith(families) and re.search(r"(Model|For\w+)$", name) and "PreTrained" not in name
        and not name.startswith(("TF", "Flax"))
    }
    assert exported - {spec.cls for spec in SPECS} == set()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_gradients_match_reference(spec, checkpoints):
    ours, ref = _pair(spec, checkpoints)
    inputs = G.make_inputs(spec)
    loss_ref = G.forward_backward(ref, inputs)
    loss_ours = G.forward_backward(ours, inputs)
    G.assert_close_loss(loss_ours, loss_ref, spec.id)
    compared = G.assert_same_gradients(ours, ref, spec.id)
    assert compared >= 10, f"{spec.id}: only {compared} gradients compared"


# ---------------------------------------------------------------------------------------------------
# 2. gradient checkpointing

_CHECKPOINTED = [spec for spec in SPECS if getattr(polyformers, spec.cls).supports_gradient_checkpointing]
_LAYER = re.compile(r"(^|\.)(layer|layers|h|blocks)\.\d+$")


def _count_layer_calls(model) -> dict:
    """Counts the forward calls of each transformer layer (the unit that checkpointing recomputes)."""
    calls = {}
    for name, module in model.named_modules():
        if _LAYER.search(name):
            calls[name] = 0
            module.register_forward_pre_hook(lambda m, args, name=name: calls.__setitem__(name, calls[name] + 1))
    assert calls, f"no transformer layers found in {type(model).__name__}"
    return calls


@pytest.mark.parametrize("spec", _CHECKPOINTED, ids=lambda s: s.id)
def test_gradient_checkpointing_keeps_gradients(spec, checkpoints):
    ours, ref = _pair(spec, checkpoints)
    inputs = G.make_inputs(spec)
    plain = G.load_ours(spec, checkpoints(spec))
    loss_plain = G.forward_backward(plain, inputs)

    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    calls = _count_layer_calls(ours)
    loss_ours = G.forward_backward(ours, inputs)
    # Each layer ran in the forward and again in the backward: checkpointing was really on.
    assert set(calls.values()) == {2}, f"{spec.id}: layer forward calls {calls}"
    loss_ref = G.forward_backward(ref, inputs)

    G.assert_close_loss(loss_ours, loss_plain, f"{spec.id} checkpointed vs plain", rtol=1e-6)
    G.assert_same_gradients(ours, plain, f"{spec.id} checkpointed vs plain", rtol=1e-6)
    G.assert_close_loss(loss_ours, loss_ref, f"{spec.id} checkpointed")
    G.assert_same_gradients(ours, ref, f"{spec.id} checkpointed")


# ---------------------------------------------------------------------------------------------------
# 3. tied weights

_TIED = {
    "ElectraForMaskedLM": [{"electra.embeddings.word_embeddings.weight", "generator_lm_head.weight"}],
    "ElectraForCausalLM": [{"electra.embeddings.word_embeddings.weight", "generator_lm_head.weight"}],
    "RobertaForMaskedLM": [{"roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight"},
                           {"lm_head.bias", "lm_head.decoder.bias"}],
    "RobertaForCausalLM": [{"roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight"},
                           {"lm_head.bias", "lm_head.decoder.bias"}],
    "MPNetForMaskedLM": [{"mpnet.embeddings.word_embeddings.weight", "lm_head.decoder.weight"}],
    "PegasusModel": [{"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}],
    "PegasusForConditionalGeneration": [{"model.shared.weight", "model.encoder.embed_tokens.weight",
                                         "model.decoder.embed_tokens.weight", "lm_head.weight"}],
    "PegasusForCausalLM": [{"model.decoder.embed_tokens.weight", "lm_head.weight"}],
    "MptForCausalLM": [{"transformer.wte.weight", "lm_head.weight"}],
    "GPTJForCausalLM-tied": [{"transformer.wte.weight", "lm_head.weight"}],
}


def _assert_tied(model, groups, what):
    params = dict(model.named_parameters(remove_duplicate=False))
    for group in groups:
        first, *rest = sorted(group)
        for name in rest:
            assert params[name] is params[first], f"{what}: {name} is not the same parameter as {first}"
            assert params[name].data_ptr() == params[first].data_ptr(), f"{what}: {name} and {first} differ in storage"


@pytest.mark.parametrize("spec_id", sorted(_TIED))
def test_tied_weights_stay_tied_through_training_and_saving(spec_id, checkpoints, tmp_path):
    spec = G.BY_ID[spec_id]
    groups = _TIED[spec_id]
    ours, ref = _pair(spec, checkpoints)
    _assert_tied(ours, groups, f"{spec_id} after loading")
    _assert_tied(ref, groups, f"{spec_id} reference")  # the expected ties are the reference's
    G.common_parameters(ours, ref, spec_id)  # and no other tie differs
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}

    opt_ours, opt_ref = _optimizer(ours), _optimizer(ref)
    for step in range(3):
        inputs = G.make_inputs(spec, seed=step)
        G.forward_backward(ours, inputs)
        G.forward_backward(ref, inputs)
        opt_ours.step()
        opt_ref.step()
        _assert_tied(ours, groups, f"{spec_id} after step {step + 1}")
    moved = [name for name, p in ours.named_parameters() if not torch.equal(p.detach(), before[name])]
    tied_names = set().union(*groups)
    assert tied_names & set(moved), f"{spec_id}: the tied parameters did not train"
    G.assert_same_parameters(ours, ref, f"{spec_id} after 3 AdamW steps", atol=1e-5)

    trained = {name: p.detach().clone() for name, p in ours.named_parameters(remove_duplicate=False)}
    ours.save_pretrained(tmp_path / "ours")
    for loader, what in ((G.load_ours, "polyformers"), (G.load_reference, "reference")):
        loaded = loader(spec, tmp_path / "ours")
        _assert_tied(loaded, groups, f"{spec_id} saved by polyformers, loaded by {what}")
        params = dict(loaded.named_parameters(remove_duplicate=False))
        for name, value in trained.items():
            if name in params:
                assert torch.equal(params[name].detach(), value), f"{spec_id}: {what} loaded {name} changed"
    # The reference's trained checkpoint gives polyformers the reference's trained values.
    ref.save_pretrained(tmp_path / "ref")
    back = G.load_ours(spec, tmp_path / "ref")
    _assert_tied(back, groups, f"{spec_id} saved by the reference")
    G.assert_same_parameters(back, ref, f"{spec_id} reference checkpoint after training", atol=0.0, skip=None)


# ---------------------------------------------------------------------------------------------------
# 4. a short fine-tune

_FINE_TUNED = ["ElectraForPreTraining", "RobertaForMaskedLM", "MPNetForSequenceClassification", "GPTJForCausalLM",
               "MptForCausalLM", "PegasusForConditionalGeneration"]


@pytest.mark.parametrize("spec_id", _FINE_TUNED)
def test_fine_tuning_gives_reference_losses(spec_id, checkpoints):
    spec = G.BY_ID[spec_id]
    ours, ref = _pair(spec, checkpoints)
    batches = [G.make_inputs(spec, seed=i) for i in range(4)]
    losses = {}
    for name, model in (("ours", ours), ("ref", ref)):
        torch.manual_seed(0)
        optimizer = _optimizer(model)
        losses[name] = []
        for step in range(20):
            losses[name].append(float(G.forward_backward(model, batches[step % len(batches)])))
            optimizer.step()
    for step, (mine, theirs) in enumerate(zip(losses["ours"], losses["ref"])):
        assert abs(mine - theirs) <= 1e-4, f"{spec_id}: step {step} loss {mine:.7g}, reference {theirs:.7g}"
    assert losses["ref"][-1] < losses["ref"][0], f"{spec_id}: the fine-tune did not learn: {losses['ref']}"


# ---------------------------------------------------------------------------------------------------
# 5. inference fast paths and train / eval switches

_FAST = ["GPTJForCausalLM", "MptForCausalLM", "RobertaForMaskedLM", "PegasusForConditionalGeneration",
         "ElectraForPreTraining", "MPNetForMaskedLM"]


class _OneDNNSpy:
    """Counts the calls of ``torch.ops.mkldnn._linear_pointwise``, as pt/layers.py makes them, and the
    static caches that ``generate`` builds."""

    def __init__(self, monkeypatch):
        assert L._has_onednn_linear(), "this torch build has no oneDNN linear: the fast path cannot be tested"
        self.calls = 0
        self.static_caches = 0
        original = torch.ops.mkldnn._linear_pointwise

        def spy(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
        spy_self = self

        class CountedStaticCache(generation.StaticCache):
            def __init__(self, *args, **kwargs):
                spy_self.static_caches += 1
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(generation, "StaticCache", CountedStaticCache)


def _stacked_layers(model) -> list:
    return [m for m in model.modules() if "_stacked" in m.__dict__]


def _assert_stacked(model, what):
    """The layers' weights are views of the stacked buffer that the inference forward built."""
    stacked = _stacked_layers(model)
    assert stacked, f"{what}: an inference forward stacked no weights"
    for first in stacked:
        buffer = first.__dict__["_stacked"].weight
        assert first.weight.data_ptr() == buffer.data_ptr(), f"{what}: weights no longer in the stacked buffer"


def _check_eval(ours, ref, spec, inputs, spy, padding_skipped, what):
    """Inference (eval, no gradients) of ``ours`` through its fast paths equals the reference's."""
    ours.eval()
    ref.eval()
    spy.calls = 0
    context = torch.inference_mode if what.endswith("inference_mode") else torch.no_grad
    with context():
        out_ours = ours(**inputs)
    with torch.no_grad():
        out_ref = ref(**inputs)
    assert spy.calls > 0, f"{what}: the oneDNN linear did not run in inference"
    keep = inputs["attention_mask"] if padding_skipped else None
    G.assert_same_tensor(out_ours.logits, out_ref.logits, f"{what}: logits", 1e-4, keep)
    if spec.family != "mpt":  # MPT's checkpoint already holds one fused Wqkv
        _assert_stacked(ours, what)
    if hasattr(ours, "generate"):
        prompt = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        if spec.family in ("gptj", "mpt"):  # a decoder continues prompts padded on the left only
            prompt = {k: v[:, :5] for k, v in prompt.items()}
            assert not prompt["attention_mask"][:, -1].eq(0).any() and prompt["attention_mask"].eq(0).any()
        settings = dict(max_new_tokens=4, do_sample=False, num_beams=1, use_cache=True)  # MPT defaults to none
        spy.static_caches = 0
        with torch.no_grad():
            mine = ours.generate(**prompt, **settings)
        if getattr(ours, "_supports_static_cache", False):
            assert spy.static_caches == 1, f"{what}: generate decoded without its static cache"
        with torch.no_grad():
            theirs = ref.generate(**prompt, **settings, pad_token_id=spec.config["pad_token_id"])
        assert torch.equal(mine, theirs), f"{what}: generated {mine.tolist()}, reference {theirs.tolist()}"


def _training_step(ours, ref, opt_ours, opt_ref, spec, inputs, spy, what):
    ours.train()
    ref.train()
    spy.calls = 0
    loss_ours = G.forward_backward(ours, inputs)
    assert spy.calls == 0, f"{what}: the oneDNN linear ran {spy.calls} times in a training forward/backward"
    loss_ref = G.forward_backward(ref, inputs)
    G.assert_close_loss(loss_ours, loss_ref, what)
    missing = [n for n, p in ours.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{what}: no gradient reached {missing}"
    G.assert_same_gradients(ours, ref, what)
    opt_ours.step()
    opt_ref.step()
    G.assert_same_parameters(ours, ref, f"{what}: after the optimizer step", atol=1e-5)


@pytest.mark.parametrize("spec_id", _FAST)
def test_fast_paths_stay_out_of_training(spec_id, checkpoints, monkeypatch, tmp_path):
    spec = G.BY_ID[spec_id]
    ours, ref = _pair(spec, checkpoints)
    ours.eval()
    padding_skipped = spec.family in ("electra", "roberta", "mpnet")
    if padding_skipped:
        skip_padding(ours)
    spy = _OneDNNSpy(monkeypatch)
    inputs = G.make_inputs(spec)
    opt_ours, opt_ref = _optimizer(ours), _optimizer(ref)
    # eval -> train -> eval -> train -> eval, the first inference under inference_mode (as pipelines run),
    # the second training step with gradient checkpointing where the class supports it
    for round_, mode in enumerate(("inference_mode", "no_grad")):
        _check_eval(ours, ref, spec, inputs, spy, padding_skipped, f"{spec_id} eval {round_} under {mode}")
        if round_ == 1 and ours.supports_gradient_checkpointing:
            ours.gradient_checkpointing_enable()
        _training_step(ours, ref, opt_ours, opt_ref, spec, G.make_inputs(spec, seed=round_ + 1), spy,
                       f"{spec_id} training step {round_}")
    _check_eval(ours, ref, spec, inputs, spy, padding_skipped, f"{spec_id} eval after training")

    # A fresh reference model carrying polyformers' trained weights gives the same inference outputs.
    ours.save_pretrained(tmp_path / "trained")
    fresh = G.load_reference(spec, tmp_path / "trained").eval()
    with torch.no_grad():
        expected = fresh(**inputs).logits
        actual = ours.eval()(**inputs).logits
    G.assert_same_tensor(actual, expected, f"{spec_id}: trained weights in a fresh reference model", 1e-4,
                         inputs["attention_mask"] if padding_skipped else None)


_FROZEN = re.compile(r"(query|key|value|[qkv]_proj)\.(weight|bias)$")


@pytest.mark.parametrize("spec_id", ["RobertaForSequenceClassification", "GPTJForCausalLM",
                                     "PegasusForConditionalGeneration"])
def test_frozen_projections_after_inference(spec_id, checkpoints):
    """Fine-tuning with the attention projections frozen, after an inference forward stacked them: the
    training forward may run them stacked (they need no gradient), and every other parameter gets the
    reference's gradient, the input gradients flowing through the stacked matrix."""
    spec = G.BY_ID[spec_id]
    ours, ref = _pair(spec, checkpoints)
    for model in (ours, ref):
        frozen = [p.requires_grad_(False) for name, p in model.named_parameters() if _FROZEN.search(name)]
        assert len(frozen) >= 6, f"{spec_id}: froze only {len(frozen)} parameters"
    inputs = G.make_inputs(spec)
    with torch.no_grad():
        ours.eval()(**inputs)
    assert _stacked_layers(ours), f"{spec_id}: an inference forward stacked no weights"
    ours.train()
    loss_ours = G.forward_backward(ours, inputs)
    loss_ref = G.forward_backward(ref, inputs)
    G.assert_close_loss(loss_ours, loss_ref, f"{spec_id} with frozen projections")
    G.assert_same_gradients(ours, ref, f"{spec_id} with frozen projections")
