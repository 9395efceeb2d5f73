"""Parity harness shared by every family's tests.

A family test declares :class:`Case` objects (reference class name, a tiny config, the calls to make).
:func:`run_parity` then, with the reference's 4.37 release in its own environment:

1. builds each reference model with every parameter perturbed, saves it, and records its outputs;
2. loads each folder into the polyformers class, runs the same calls, compares every output
   (class name, key order, every tensor, losses, caches) within ``atol``;
3. saves the polyformers model and has the reference load that folder and reproduce its outputs.

All cases of a test go to the reference in one job per direction, and one reference process, kept for
the life of the test process, answers every job: the start-up cost of the reference environment
(seconds) is paid once per test process, not per case or per job.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import select
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

ORACLE = Path(__file__).with_name("oracle_pt.py")
ATOL = 1e-4


@dataclasses.dataclass
class Call:
    """One forward call: tensors by name, plain values, or a field of an earlier call's output."""

    args: dict[str, Any]

    def encode(self, case: str, index: int, tensors: dict) -> dict:
        spec = {}
        for name, value in self.args.items():
            if isinstance(value, torch.Tensor):
                key = f"{case}.{index}.{name}"
                tensors[key] = value.clone().contiguous()  # inputs may share storage; files cannot
                spec[name] = {"tensor": key}
            elif isinstance(value, FromCall):
                spec[name] = {"from_call": value.index, "field": value.field}
            else:
                spec[name] = value
        return spec


@dataclasses.dataclass
class FromCall:
    """Refers to ``field`` of the output of call number ``index`` (e.g. a cache)."""

    index: int
    field: str


@dataclasses.dataclass
class Case:
    name: str
    cls: str  # class name, the same in the reference and in polyformers
    model_type: str
    config: dict
    calls: list[Call]
    seed: int = 0
    perturb: float = 0.1
    save_kwargs: dict = dataclasses.field(default_factory=dict)


ORACLE_TIMEOUT = 900  # seconds for one job

# One reference process per interpreter path, kept for the life of this (test) process: see oracle_pt.serve.
_oracles: dict[str, tuple[subprocess.Popen, Any]] = {}


def _oracle(python: Path) -> tuple[subprocess.Popen, Any]:
    key = str(python)
    if key in _oracles and _oracles[key][0].poll() is None:
        return _oracles[key]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    log = tempfile.TemporaryFile("w+")  # its stderr: a file, which never fills up as an unread pipe would
    process = subprocess.Popen([key, str(ORACLE), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=log, text=True, env=env)
    _oracles[key] = (process, log)
    atexit.register(_close, process, log)
    return process, log


def _close(process: subprocess.Popen, log) -> None:
    if process.poll() is None:
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    log.close()


def _run_oracle(python: Optional[Path], job: dict) -> dict:
    if python is None:  # the installed (current) reference, in this process
        from tests.parity.oracle_pt import run_job

        return run_job(job)
    process, log = _oracle(python)
    process.stdin.write(json.dumps(job) + "\n")
    process.stdin.flush()
    ready, _, _ = select.select([process.stdout], [], [], ORACLE_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    answer = json.loads(line) if line.strip() else None
    if answer is None or "error" in answer:
        if answer is None:  # no answer: the process died or hangs; the next job starts a new one
            process.kill()
            process.wait()
        log.seek(0)
        detail = answer["error"] if answer else log.read()[-4000:]
        raise RuntimeError(f"reference run failed:\n{detail}")
    return answer["summary"]


def flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach()
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten(item, f"{prefix}.{i}", out)
    elif hasattr(value, "to_legacy_cache"):  # a Cache object: compared as (key, value) per layer
        flatten(value.to_legacy_cache(), prefix, out)


def _resolve(call: Call, outputs: list) -> dict:
    args = {}
    for name, value in call.args.items():
        args[name] = outputs[value.index][value.field] if isinstance(value, FromCall) else value
    return args


def run_model(model, calls: list[Call]) -> tuple[dict, list]:
    """Run ``calls`` on a polyformers model; returns flattened tensors and (class, keys) per call."""
    flat, outputs, kinds = {}, [], []
    for i, call in enumerate(calls):
        with torch.no_grad():
            result = model(**_resolve(call, outputs))
        outputs.append(result)
        if isinstance(result, tuple):
            kinds.append({"type": "tuple", "keys": [str(k) for k in range(len(result))]})
            flatten(result, f"call{i}", flat)
        else:
            kinds.append({"type": type(result).__name__, "keys": list(result.keys())})
            for key, value in result.items():
                flatten(value, f"call{i}.{key}", flat)
    return flat, kinds


def assert_same_outputs(expected: dict, actual: dict, what: str, atol: float = ATOL) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"{what}: outputs differ in structure; missing {missing}, extra {extra}"
    for key, ref in expected.items():
        ours = actual[key]
        assert tuple(ours.shape) == tuple(ref.shape), f"{what}: {key} has shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
        if ref.is_floating_point():
            diff = (ours.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
            assert diff <= atol, f"{what}: {key} differs by {diff:.3g} (tolerance {atol})"
        else:
            assert torch.equal(ours, ref), f"{what}: {key} differs"


def from_pretrained(name: str, folder) -> Any:
    """polyformers' class ``name`` loaded from ``folder``: the default ``load`` of run_parity."""
    import polyformers

    return getattr(polyformers, name).from_pretrained(folder)


def bert_style_extras(config: dict, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A head mask with one head off and one halved, and masked-LM labels at position 2 of every row (and
    position 4 of row 0, with id 7), for the encoder families' cases."""
    head_mask = torch.ones(config["num_hidden_layers"], config["num_attention_heads"])
    head_mask[0, 1] = 0.0
    head_mask[1, 3] = 0.5
    mlm_labels = torch.full(ids.shape, -100)
    mlm_labels[:, 2] = ids[:, 2]
    mlm_labels[0, 4] = 7
    return head_mask, mlm_labels


def second_segment(batch: int, length: int, start: int = 5) -> torch.Tensor:
    """Token type ids: 0 before position ``start`` of every row, 1 from there on."""
    types = torch.zeros(batch, length, dtype=torch.long)
    types[:, start:] = 1
    return types


def embeds_and_positions(g: torch.Generator, config: dict, width: int, batch: int, length: int):
    """Input embeddings of ``width`` and position ids below ``config["max_position_embeddings"]``, in that
    order drawn from ``g``."""
    embeds = torch.randn(batch, length, width, generator=g)
    return embeds, torch.randint(0, config["max_position_embeddings"], (batch, length), generator=g)


def cross_attention_inputs(g: torch.Generator, config: dict, batch: int, length: int = 5):
    """Encoder states of ``length`` positions drawn from ``g`` and their mask, row 0 masked from position 3."""
    states = torch.randn(batch, length, config["hidden_size"], generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 3:] = 0
    return states, mask


def call_args(ids: torch.Tensor, mask: torch.Tensor, **more) -> tuple[dict, dict]:
    """The arguments of a plain call (``ids``, ``mask`` and ``more``) and the same asking for every
    attention map and hidden state."""
    base = dict(input_ids=ids, attention_mask=mask, **more)
    return base, dict(base, output_attentions=True, output_hidden_states=True)


def encoder_case_args(config: dict, g: torch.Generator, ids: torch.Tensor, mask: torch.Tensor, width: int, **more):
    """What the encoder families' cases are built from: :func:`call_args`, :func:`bert_style_extras` and
    :func:`embeds_and_positions` (embeddings of ``width``), as (base, every, head mask, masked-LM labels,
    embeddings, positions)."""
    base, every = call_args(ids, mask, **more)
    head_mask, mlm_labels = bert_style_extras(config, ids)
    return (base, every, head_mask, mlm_labels, *embeds_and_positions(g, config, width, *ids.shape))


def masked_lm_cases(cls: str, family: str, config: dict, calls: list, base: dict, labels: torch.Tensor) -> list:
    """"masked_lm" with ``calls``, and "masked_lm_untied" (output embeddings not tied) with ``labels`` on
    ``base``."""
    return [
        Case("masked_lm", cls, family, config, calls),
        Case("masked_lm_untied", cls, family, dict(config, tie_word_embeddings=False),
             [Call(dict(base, labels=labels))]),
    ]


def causal_lm_calls(base: dict, every: dict, ids: torch.Tensor, step: torch.Tensor, labels: torch.Tensor,
                    **step_args) -> list:
    """A decoder's language-model calls: ``labels`` with every output, the last logit, chosen logits, a
    5-token prefix with its cache, then ``step`` continuing that cache (with ``step_args``), and a loss
    as a tuple."""
    return [
        Call(dict(every, labels=labels)),
        Call(dict(base, logits_to_keep=1)),
        Call(dict(base, logits_to_keep=torch.tensor([0, 4, 8]))),
        Call(dict(input_ids=ids[:, :5], use_cache=True, output_attentions=True)),
        Call(dict(input_ids=step, past_key_values=FromCall(3, "past_key_values"), **step_args,
                  output_attentions=True, output_hidden_states=True)),
        Call(dict(base, labels=ids, return_dict=False)),
    ]


def sequence_classification_cases(cls: str, family: str, config: dict, g: torch.Generator, single: list,
                                  inputs: dict, **multi_config) -> list:
    """The three problem types of a sequence-classification head: "seq_single" (3 labels) with the caller's
    ``single`` calls, then "seq_regression" (1 label) and "seq_multi" (4 labels, multi-label, with
    ``multi_config`` added to its config) on ``inputs``, their labels drawn from ``g`` in that order."""
    rows = len(inputs["input_ids"])
    return [
        Case("seq_single", cls, family, dict(config, num_labels=3), single),
        Case("seq_regression", cls, family, dict(config, num_labels=1),
             [Call(dict(inputs, labels=torch.randn(rows, generator=g)))]),
        Case("seq_multi", cls, family,
             dict(config, num_labels=4, problem_type="multi_label_classification", **multi_config),
             [Call(dict(inputs, labels=torch.randint(0, 2, (rows, 4), generator=g).float()))]),
    ]


def token_labels(g: torch.Generator, mask: torch.Tensor, num_labels: int = 5) -> torch.Tensor:
    """Token-classification labels below ``num_labels`` drawn from ``g``, -100 where ``mask`` is 0."""
    return torch.where(mask.bool(), torch.randint(0, num_labels, tuple(mask.shape), generator=g), -100)


def decoder_inputs(seed: int, vocab_size: int, batch: int = 3, length: int = 9):
    """A generator seeded with ``seed`` (for the caller's further draws), ids from 3 up, and a mask with
    row 1 padded on the right and row 2 on the left (the ids under the padding are left as drawn)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return g, ids, mask


def decoder_head_inputs(g: torch.Generator, ids: torch.Tensor, vocab_size: int):
    """For a decoder's heads: ``ids`` with pad id 0 over row 1 from position 6 and row 2 up to position 3,
    a function drawing one label below its argument per row from ``g``, and two next tokens per row (from 3
    up) drawn from ``g`` now."""
    padded = ids.clone()
    padded[1, 6:] = 0
    padded[2, :3] = 0
    rows = len(ids)
    labels = lambda n: torch.randint(0, n, (rows,), generator=g)  # noqa: E731
    return padded, labels, torch.randint(3, vocab_size, (rows, 2), generator=g)


def left_padded_batch(vocab_size: int, position_ids: bool = False) -> dict:
    """The ids of ``decoder_inputs(3, vocab_size)`` with rows 1 and 2 padded on the left by 4 and 7 tokens
    (pad id 0), their mask, and with ``position_ids`` the positions counted over real tokens only."""
    _, ids, _ = decoder_inputs(3, vocab_size)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    batch = dict(input_ids=ids.masked_fill(mask == 0, 0), attention_mask=mask)
    if position_ids:
        batch["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return batch


def in_process_parity(label: str, cases: Callable[[], list]):
    """A module fixture: run_parity of ``cases()`` against the installed reference, in this process;
    gives (polyformers' models by case name, the folder of the checkpoints)."""
    import pytest

    @pytest.fixture(scope="module")
    def parity(tmp_path_factory):
        workdir = tmp_path_factory.mktemp(label)
        return run_parity(cases(), workdir, None), workdir

    return parity


# Largest logit error of a half-precision model, as a share of the largest float32 logit: float16 keeps ~3
# significant digits, bfloat16 ~2, so these are a few units in the last place.
HALF_TOLERANCE = {torch.float16: 0.005, torch.bfloat16: 0.03}


def load_full_and_half(cls, folder: Path, dtype: torch.dtype):
    """``cls`` from ``folder`` in float32 and in ``dtype`` (every parameter of the latter in ``dtype``)."""
    full = cls.from_pretrained(folder)
    half = cls.from_pretrained(folder, dtype=dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    return full, half


def causal_lm_in_half(parity, cls, dtype: torch.dtype, batch: dict):
    """From an :func:`in_process_parity` fixture's value: ``cls`` loaded from the "causal_lm" checkpoint in
    float32 and in ``dtype``, and the mask of ``batch``'s real (not padding) tokens."""
    full, half = load_full_and_half(cls, parity[1] / "causal_lm", dtype)
    return full, half, batch["attention_mask"].bool()


def assert_checkpointing_keeps_gradients(model, ids, weight: Callable[[Any], torch.Tensor]) -> None:
    """The gradient of ``weight(model)`` for a language-model loss is the same with gradient checkpointing
    on as off (and not zero)."""
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.gradient_checkpointing_enable() if enabled else model.gradient_checkpointing_disable()
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(weight(model).grad.clone())
    model.gradient_checkpointing_disable()
    model.eval()
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def assert_reference_reads_half_save(model, folder: Path, batch: dict, logits: torch.Tensor, tolerance) -> None:
    """A half-precision polyformers model saved to ``folder`` keeps its dtype when the installed reference
    loads it with dtype="auto", and gives ``logits`` within ``tolerance`` at the positions the mask keeps."""
    import transformers

    model.save_pretrained(folder)
    reference = getattr(transformers, type(model).__name__).from_pretrained(folder, dtype="auto")
    assert reference.dtype == model.dtype
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        theirs = reference(**batch).logits
    assert (theirs[real].float() - logits[real].float()).abs().max() <= tolerance


def run_parity(
    cases: list[Case],
    workdir: Path,
    legacy_python: Optional[Path],
    load: Callable[[str, str], Any] = from_pretrained,
    atol: float = ATOL,
    check_reverse: bool = True,
) -> dict[str, Any]:
    """Run the three steps above; ``load(class_name, folder)`` loads a polyformers model.

    ``legacy_python`` is the 4.37 environment's interpreter; ``None`` compares with the installed
    reference release in-process instead.

    Returns the polyformers models by case name, for extra checks by the caller.
    """
    workdir = Path(workdir)
    tensors: dict[str, torch.Tensor] = {}
    job_cases = []
    for case in cases:
        folder = workdir / case.name
        job_cases.append({
            "name": case.name, "cls": case.cls, "model_type": case.model_type, "config": case.config,
            "seed": case.seed, "perturb": case.perturb, "folder": str(folder), "save_kwargs": case.save_kwargs,
            "calls": [{"args": c.encode(case.name, i, tensors)} for i, c in enumerate(case.calls)],
        })
    tensor_file = workdir / "inputs.safetensors"
    save_file(tensors, str(tensor_file)) if tensors else None
    build = {"mode": "build", "workdir": str(workdir), "tensors": str(tensor_file) if tensors else None,
             "cases": job_cases}
    reference_kinds = _run_oracle(legacy_python, build)

    models, reverse_cases = {}, []
    for case, job_case in zip(cases, job_cases):
        expected = load_file(str(workdir / f"{case.name}.out.safetensors"))
        model = load(case.cls, job_case["folder"])
        actual, kinds = run_model(model, case.calls)
        assert kinds == reference_kinds[case.name], (
            f"{case.name}: output classes/keys {kinds} differ from the reference's {reference_kinds[case.name]}"
        )
        assert_same_outputs(expected, actual, case.name, atol)
        models[case.name] = model
        if check_reverse:
            ours = workdir / f"{case.name}-ours"
            model.save_pretrained(ours)
            reverse_cases.append(dict(job_case, name=case.name + "-ours", folder=str(ours)))

    if reverse_cases:
        back = dict(build, mode="load", cases=reverse_cases)
        _run_oracle(legacy_python, back)
        for case in cases:
            expected = load_file(str(workdir / f"{case.name}.out.safetensors"))
            again = load_file(str(workdir / f"{case.name}-ours.out.safetensors"))
            assert_same_outputs(expected, again, f"{case.name} saved by polyformers, loaded by the reference", atol)
    return models
