"""What the PyTorch generate() tests against the 4.37 reference share: the tiny models of four families, the
prompts, the one subprocess of the reference that runs every case of a module, and the comparison of a
result with the reference's (sequences identical, scores within 1e-4).

A reference run takes a job: the models to build (see tests/pt/_generation_modes_oracle.py for a model
spec's fields) and the runs, each a case name, a model name, inputs (argument name -> tensor name) and
generate() keyword arguments. It returns the oracle's summary (per case: output class and keys, or the
error raised), the tensors it returned under ``<case>.<field>``, and polyformers' models loaded from the
folders the reference saved.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import polyformers

ORACLE = Path(__file__).with_name("_generation_modes_oracle.py")
ATOL = 1e-4
PAD = 0
ROBERTA = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=64, is_decoder=True, pad_token_id=PAD)
GPTJ = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=1,
            eos_token_id=2, pad_token_id=PAD, activation_function="gelu_new")
MPT = dict(vocab_size=99, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, pad_token_id=PAD, eos_token_id=3,
           bos_token_id=1, use_cache=True)
PEGASUS = dict(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=40,
               pad_token_id=PAD, eos_token_id=1, decoder_start_token_id=PAD, forced_eos_token_id=1)
# Perturbed random models, one per family, with one token's output row scaled so that it comes up.
MODELS = [
    dict(name="roberta", cls="RobertaForCausalLM", config_cls="RobertaConfig", seed=0, perturb=0.1, boost={"5": 1.5},
         config=ROBERTA),
    dict(name="gptj", cls="GPTJForCausalLM", config_cls="GPTJConfig", seed=1, perturb=0.2, boost={"2": 1.5},
         config=GPTJ),
    dict(name="mpt", cls="MptForCausalLM", config_cls="MptConfig", seed=2, perturb=0.2, boost={"3": 1.5},
         config=MPT),
    dict(name="pegasus", cls="PegasusForConditionalGeneration", config_cls="PegasusConfig", seed=3, perturb=0.1,
         boost={"1": 1.5}, config=PEGASUS),
]
AUTO = {"RobertaForCausalLM": "AutoModelForCausalLM", "GPTJForCausalLM": "AutoModelForCausalLM",
        "MptForCausalLM": "AutoModelForCausalLM", "PegasusForCausalLM": "AutoModelForCausalLM",
        "PegasusForConditionalGeneration": "AutoModelForSeq2SeqLM"}
SCORES = dict(return_dict_in_generate=True, output_scores=True)
IDS = {"input_ids": "ids"}
LEFT = {"input_ids": "left", "attention_mask": "left_mask"}
SOURCE = {"input_ids": "source", "attention_mask": "source_mask"}


def prompt_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Two prompts of 5 ids, three left-padded decoder prompts and three right-padded sources."""
    ids = torch.randint(10, 99, (2, 5), generator=g)
    left = torch.randint(10, 99, (3, 6), generator=g)
    left_mask = torch.ones_like(left)
    for row, pads in enumerate((0, 2, 4)):  # decoder-only prompts are padded on the left
        left[row, :pads] = PAD
        left_mask[row, :pads] = 0
    source = torch.randint(2, 60, (3, 8), generator=g)
    source_mask = torch.ones_like(source)
    for row, length in enumerate((8, 5, 3)):  # sources are padded on the right
        source[row, length:] = PAD
        source_mask[row, length:] = 0
    return {"ids": ids, "left": left, "left_mask": left_mask, "source": source, "source_mask": source_mask}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_reference(workdir: Path, legacy_python: Path, tensors: dict, models: list, runs: list,
                  oracle: Path = ORACLE):
    """Runs the job in the reference's environment; returns (summary, its tensors, polyformers' models)."""
    save_file(tensors, str(workdir / "inputs.safetensors"))
    job = {"workdir": str(workdir), "tensors": str(workdir / "inputs.safetensors"), "models": models, "runs": runs}
    result = subprocess.run(
        [str(legacy_python), str(oracle)], input=json.dumps(job), capture_output=True, text=True, timeout=600,
        env={"PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin",
             "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    loaded = {spec["name"]: getattr(polyformers, AUTO[spec["cls"]]).from_pretrained(workdir / spec["name"])
              for spec in models}
    for spec in models:
        assert type(loaded[spec["name"]]).__name__ == spec["cls"]
    return summary, load_file(str(workdir / "generate.out.safetensors")), loaded


def assert_matches_reference(summary, expected, name, result):
    """The output class and keys of the reference's, sequences identical, sequence scores and beam indices
    (where the reference returned them) within ATOL, and every step's scores: the same tokens banned (-inf
    or other non-finite values equal) and the rest within ATOL."""
    assert "error" not in summary[name], summary[name]
    kind = {key: value for key, value in summary[name].items() if key != "states"}
    if isinstance(result, torch.Tensor):
        assert kind == {"type": "Tensor"}
        result = {"sequences": result}
    else:
        assert kind == {"type": type(result).__name__, "keys": list(result.keys())}
    want = expected[f"{name}.sequences"]
    assert torch.equal(result["sequences"], want), f"{name}:\n{result['sequences']}\nreference:\n{want}"
    for key in ("sequences_scores", "beam_indices"):
        if f"{name}.{key}" in expected:
            want, got = expected[f"{name}.{key}"], result[key]
            assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=ATOL), key
    steps = sorted(int(k.split(".")[-1]) for k in expected if k.startswith(f"{name}.scores."))
    assert len(steps) == len(result.get("scores") or ())
    for i in steps:
        want, got = expected[f"{name}.scores.{i}"], result["scores"][i]
        assert got.shape == want.shape
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)), f"{name}: step {i} bans other tokens"
        assert torch.equal(want[~finite], got[~finite]), f"{name}: step {i}"
        assert torch.allclose(got[finite], want[finite], atol=ATOL), f"{name}: step {i} scores differ"


def assert_cache_holds_all_but_the_last_token(decoder_only, seq2seq, source_length: int) -> None:
    """The cache a generate() returns covers every token but the last (the decoder-only result's and the
    seq2seq result's self-attention), and the seq2seq result's cross-attention cache the whole source."""
    assert decoder_only.past_key_values.get_seq_length() == decoder_only.sequences.shape[1] - 1
    assert seq2seq.past_key_values[0][0].shape[2] == seq2seq.sequences.shape[1] - 1
    assert seq2seq.past_key_values[0][2].shape[2] == source_length
