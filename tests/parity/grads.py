"""Helpers of the training parity tests (``test_gradients_pt.py``): tiny configs without dropout, inputs
and labels per head, the reference model with every parameter perturbed, and gradient comparisons.

The reference is the installed ``transformers`` release, run in this process. Where it departs from the
4.37 release that ELECTRA, RoBERTa, MPNet and Pegasus follow, the case is left out, with a comment saying
which (see SPECS and make_inputs).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Optional

import torch
import transformers

import polyformers

B, S, T = 3, 9, 6  # batch, sequence, Pegasus target length
CHOICES = 2  # multiple choice: (B_MC, CHOICES, S) inputs
B_MC = 2
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4

# Every dropout of each family at 0 (the reference's names), so that training forwards are deterministic.
_ENCODER_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {
    "electra": dict(
        vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
        summary_last_dropout=0.0, **_ENCODER_NO_DROPOUT,
    ),
    "roberta": dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        **_ENCODER_NO_DROPOUT,
    ),
    "mpnet": dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, pad_token_id=1, **_ENCODER_NO_DROPOUT,
    ),
    # rotary_dim 4 of head size 8: half of each head rotates.
    "gptj": dict(
        vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=None,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    ),
    "mpt": dict(
        d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=99, pad_token_id=0,
        resid_pdrop=0.0, emb_pdrop=0.0, classifier_dropout=0.0,
        attn_config=dict(attn_pdrop=0),  # the reference types it int
    ),
    "pegasus": dict(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=24,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    ),
}
PAD = {family: config["pad_token_id"] for family, config in FAMILIES.items()}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One class to train: its name (the same in both libraries), family, head task and config changes."""

    cls: str
    family: str
    task: str  # which labels: see make_inputs
    overrides: tuple = ()  # (key, value) pairs over the family's config
    variant: str = ""
    seed: int = 0

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.variant}" if self.variant else self.cls

    @property
    def config(self) -> dict:
        return dict(FAMILIES[self.family], **dict(self.overrides))


def _spec(cls, family, task, variant="", seed=0, **overrides):
    return Spec(cls, family, task, tuple(sorted(overrides.items())), variant, seed)


# The task of each head (class name after the family's prefix), and the labels of the classifying ones.
_HEAD_TASKS = {
    "Model": "base", "ForPreTraining": "rtd", "ForMaskedLM": "mlm", "ForCausalLM": "clm",
    "ForSequenceClassification": "seq", "ForTokenClassification": "tok", "ForQuestionAnswering": "qa",
    "ForMultipleChoice": "mc", "ForConditionalGeneration": "seq2seq",
}
_NUM_LABELS = {"seq": 3, "tok": 5}
_ENCODER_HEADS = ("Model", "ForPreTraining", "ForMaskedLM", "ForCausalLM")
_CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice")


def _family_specs(prefix: str, family: str, heads: tuple) -> list:
    """One spec for each of ``heads`` of a family; the causal LM of an encoder family is built as a decoder."""
    specs = []
    for head in heads:
        task = _HEAD_TASKS[head]
        overrides = {"num_labels": _NUM_LABELS[task]} if task in _NUM_LABELS else {}
        if task == "clm" and family in ("electra", "roberta"):
            overrides["is_decoder"] = True
        specs.append(_spec(prefix + head, family, task, **overrides))
    return specs


# Every PyTorch class of the six families, then variants that take other code paths.
SPECS = [
    *_family_specs("Electra", "electra", _ENCODER_HEADS[:4] + _CLASSIFIER_HEADS),
    *_family_specs("Roberta", "roberta", ("Model", "ForMaskedLM", "ForCausalLM") + _CLASSIFIER_HEADS),
    *_family_specs("MPNet", "mpnet", ("Model", "ForMaskedLM") + _CLASSIFIER_HEADS),
    *_family_specs("GPTJ", "gptj", ("Model", "ForCausalLM", "ForSequenceClassification", "ForQuestionAnswering")),
    *_family_specs("Mpt", "mpt", ("Model", "ForCausalLM") + _CLASSIFIER_HEADS[:3]),
    *_family_specs("Pegasus", "pegasus", ("Model", "ForConditionalGeneration", "ForCausalLM")),
    # other paths: other losses, untied / tied heads, scaled embeddings, ALiBi clipping and scaling. (Relative
    # positions in ELECTRA/RoBERTa, and untied RoBERTa / Pegasus heads, are left out: the installed reference
    # release dropped the former and unties more than the LM head for the latter, unlike 4.37.)
    _spec("ElectraForSequenceClassification", "electra", "regression", "regression", num_labels=1),
    _spec("RobertaForSequenceClassification", "roberta", "multi_label", "multi_label", num_labels=4,
          problem_type="multi_label_classification"),
    _spec("ElectraForMaskedLM", "electra", "mlm", "untied", tie_word_embeddings=False),
    _spec("GPTJForCausalLM", "gptj", "clm", "tied", tie_word_embeddings=True),
    _spec("MptForCausalLM", "mpt", "clm", "untied_scale", tie_word_embeddings=False,
          attn_config=dict(attn_pdrop=0, softmax_scale=0.3)),  # clip_qkv: 4.37 ignores it, see test_mpt_config_audit
    _spec("PegasusForConditionalGeneration", "pegasus", "seq2seq", "scaled_relu", scale_embedding=True,
          activation_function="relu"),
]
BY_ID = {spec.id: spec for spec in SPECS}


# ---------------------------------------------------------------------------------------------------
# inputs


def _padded_mask(shape, left: bool = True) -> torch.Tensor:
    """Ones, with the second row right-padded and (``left``) the third left-padded, in every block of
    rows of the last dimension."""
    mask = torch.ones(shape, dtype=torch.long)
    rows = mask.view(-1, shape[-1])
    rows[1, 6:] = 0
    if rows.shape[0] > 2:
        if left:
            rows[2, :3] = 0
        else:
            rows[2, 4:] = 0
    return mask


def make_inputs(spec: Spec, seed: int = 0) -> dict:
    """Inputs of a training forward for ``spec``, labels included (none for base models), with padding."""
    config = spec.config
    g = torch.Generator().manual_seed(1000 + seed)
    vocab = config["vocab_size"]
    pad = config["pad_token_id"]
    task = spec.task

    if spec.family == "pegasus":
        ids = torch.randint(2, vocab, (B, S), generator=g)
        mask = _padded_mask((B, S), left=False)
        ids = ids.masked_fill(mask == 0, pad)
        if task == "clm":
            dec_mask = _padded_mask((B, T), left=False)
            dec = torch.randint(2, vocab, (B, T), generator=g).masked_fill(dec_mask == 0, pad)
            return dict(input_ids=dec, attention_mask=dec_mask, labels=dec.masked_fill(dec_mask == 0, -100))
        if task == "seq2seq":
            labels = torch.randint(2, vocab, (B, T), generator=g)
            labels[1, 4:] = -100  # a shorter target: decoder inputs get padding from the shift
            return dict(input_ids=ids, attention_mask=mask, labels=labels)
        dec = torch.randint(2, vocab, (B, T), generator=g)
        dec[:, 0] = config["decoder_start_token_id"]
        dec_mask = torch.ones(B, T, dtype=torch.long)
        dec_mask[1, 4:] = 0
        return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec.masked_fill(dec_mask == 0, pad),
                    decoder_attention_mask=dec_mask)

    shape = (B_MC, CHOICES, S) if task == "mc" else (B, S)
    ids = torch.randint(3, vocab, shape, generator=g)
    if spec.family == "roberta":
        ids[..., 0] = config["bos_token_id"]
    # A causal BERT-style decoder gets right padding only: a left-padded row's padding positions see no key
    # at all, whose outputs 4.37 (uniform weights) and the installed release (zeros) define differently.
    # GPT-J and MPT, which follow the installed release, keep their left-padded row.
    mask = _padded_mask(shape, left=not config.get("is_decoder", False))
    ids = ids.masked_fill(mask == 0, pad)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if spec.family in ("electra", "roberta"):
        types = torch.zeros(shape, dtype=torch.long)
        types[..., 5:] = 1
        inputs["token_type_ids"] = types
    real = mask.bool()
    if task == "base":
        pass
    elif task == "rtd":
        inputs["labels"] = torch.randint(0, 2, shape, generator=g)
    elif task == "mlm":
        keep = (torch.rand(shape, generator=g) < 0.5) & real
        keep[0, 0] = True
        inputs["labels"] = ids.masked_fill(~keep, -100)
    elif task == "clm":
        inputs["labels"] = ids.masked_fill(~real, -100)
    elif task == "seq":
        inputs["labels"] = torch.randint(0, config["num_labels"], (B,), generator=g)
    elif task == "regression":
        inputs["labels"] = torch.randn(B, generator=g)
    elif task == "multi_label":
        inputs["labels"] = torch.randint(0, 2, (B, config["num_labels"]), generator=g).float()
    elif task == "tok":
        inputs["labels"] = torch.randint(0, config["num_labels"], shape, generator=g).masked_fill(~real, -100)
    elif task == "qa":
        inputs["start_positions"] = torch.randint(0, S, (B,), generator=g)
        inputs["end_positions"] = torch.randint(0, S, (B,), generator=g)
    elif task == "mc":
        inputs["labels"] = torch.randint(0, CHOICES, (B_MC,), generator=g)
    else:
        raise ValueError(f"unknown task {task!r}")
    return inputs


# ---------------------------------------------------------------------------------------------------
# models


def build_reference(spec: Spec) -> torch.nn.Module:
    """The reference model for ``spec``, built with a fixed seed and every parameter moved off its initial
    value (norm scales off 1, biases off 0, position tables changed), in training mode."""
    cls = getattr(transformers, spec.cls)
    config = cls.config_class(**spec.config)
    torch.manual_seed(spec.seed)
    model = cls(config)
    g = torch.Generator().manual_seed(7 + spec.seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=g, dtype=param.dtype))
    return model.train()


def load_ours(spec: Spec, folder) -> torch.nn.Module:
    return getattr(polyformers, spec.cls).from_pretrained(folder).train()


def load_reference(spec: Spec, folder) -> torch.nn.Module:
    return getattr(transformers, spec.cls).from_pretrained(folder)


_PROBED_FIELDS = ("last_hidden_state", "pooler_output", "encoder_last_hidden_state")


def _probe(field: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(field.encode()))
    return torch.randn(tuple(shape), generator=g)


def objective(output) -> torch.Tensor:
    """The head's loss, or for a base model a fixed random linear function of its states."""
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    total = None
    for field in _PROBED_FIELDS:
        value = getattr(output, field, None)
        if value is not None:
            term = (value * _probe(field, value.shape)).sum()
            total = term if total is None else total + term
    assert total is not None, f"{type(output).__name__} has neither a loss nor hidden states to probe"
    return total


def forward_backward(model, inputs: dict) -> torch.Tensor:
    """One training forward and backward from zeroed gradients; returns the detached objective."""
    model.zero_grad(set_to_none=True)
    value = objective(model(**inputs))
    value.backward()
    return value.detach()


# ---------------------------------------------------------------------------------------------------
# comparisons


def _names(model) -> dict:
    return dict(model.named_parameters(remove_duplicate=False))


def _groups(params: dict, names) -> set:
    by_id: dict[int, list[str]] = {}
    for name in names:
        by_id.setdefault(id(params[name]), []).append(name)
    return {frozenset(group) for group in by_id.values()}


def common_parameters(ours, ref, what: str) -> tuple[dict, dict, list]:
    """Parameters by name of both models, and the names they share, after checking that every parameter
    of either model has a shared name (other names are aliases of a tied parameter, which one library
    may expose and the other not) and that the shared names are tied the same way."""
    o, r = _names(ours), _names(ref)
    common = sorted(set(o) & set(r))
    for side, params in (("polyformers", o), ("reference", r)):
        reached = {id(params[name]) for name in common}
        lost = sorted(name for name, p in params.items() if id(p) not in reached)
        assert not lost, f"{what}: {side} parameters without a counterpart in the other library: {lost}"
    tied_o, tied_r = _groups(o, common), _groups(r, common)
    assert tied_o == tied_r, (
        f"{what}: parameters tied differently; polyformers {sorted(map(sorted, tied_o - tied_r))}, "
        f"reference {sorted(map(sorted, tied_r - tied_o))}"
    )
    return o, r, common


def assert_close_loss(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = LOSS_RTOL) -> None:
    diff = abs(float(ours) - float(ref))
    limit = rtol * max(1.0, abs(float(ref)))
    assert diff <= limit, f"{what}: loss {float(ours):.8g}, reference {float(ref):.8g} (diff {diff:.3g} > {limit:.3g})"


def assert_same_gradients(ours, ref, what: str, rtol: float = GRAD_RTOL) -> int:
    """Every parameter's gradient equals the reference's: max|g - g_ref| <= rtol * max(1, max|g_ref|).
    A parameter that trains must have a gradient in both. Returns how many gradients were compared."""
    o, r, common = common_parameters(ours, ref, what)
    compared = 0
    for name in common:
        po, pr = o[name], r[name]
        assert po.requires_grad == pr.requires_grad, (
            f"{what}: {name} requires_grad={po.requires_grad}, reference {pr.requires_grad}"
        )
        if not pr.requires_grad:
            assert po.grad is None, f"{what}: frozen parameter {name} got a gradient"
            continue
        if pr.grad is None:  # unused by this forward (PegasusForCausalLM's cross-attention without an encoder)
            assert po.grad is None, f"{what}: {name} got a gradient, the reference's got none"
            continue
        assert po.grad is not None, f"{what}: {name} got no gradient, the reference's did"
        assert po.grad.shape == pr.grad.shape, f"{what}: {name} gradient shape {tuple(po.grad.shape)}"
        scale = max(1.0, pr.grad.abs().max().item())
        diff = (po.grad - pr.grad).abs().max().item()
        assert diff <= rtol * scale, (
            f"{what}: gradient of {name} differs by {diff:.3g} (limit {rtol * scale:.3g}; "
            f"max |reference gradient| {pr.grad.abs().max().item():.3g})"
        )
        compared += 1
    return compared


# Attention key biases add one constant to each query's scores, which softmax ignores: their true gradient
# is zero and the computed one rounding noise, which Adam scales up to steps of about the learning rate in
# either library. After optimizer steps they are not compared (their gradients are, in absolute terms).
KEY_BIAS = re.compile(r"(attention\.self\.key|attention\.attn\.k|\.k_proj)\.bias$")


def assert_same_parameters(ours, ref, what: str, atol: float, skip: Optional[re.Pattern] = KEY_BIAS) -> None:
    o, r, common = common_parameters(ours, ref, what)
    for name in common:
        if skip is not None and skip.search(name):
            continue
        diff = (o[name].detach() - r[name].detach()).abs().max().item()
        assert diff <= atol, f"{what}: parameter {name} differs by {diff:.3g} (tolerance {atol})"


def assert_same_tensor(ours: torch.Tensor, ref: torch.Tensor, what: str, atol: float,
                       keep: Optional[torch.Tensor] = None) -> None:
    """``ours`` equals ``ref`` within ``atol``; with ``keep`` (a (batch, sequence) mask), only at the
    positions it keeps (for states that padding skipping leaves at zero)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
    if keep is not None:
        ours, ref = ours[keep.bool()], ref[keep.bool()]
    diff = (ours.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
    assert diff <= atol, f"{what}: differs by {diff:.3g} (tolerance {atol})"
