"""Pegasus generate() against the reference's 4.37 release, token for token.

The reference builds perturbed random tiny Pegasus models (seq2seq and decoder-only, with a random
``final_logits_bias`` that makes the end-of-sequence token come up within a few steps, but not always),
saves them, and runs every case in one subprocess; polyformers loads the folders and runs the same cases.
Sequences and beam indices must be identical, scores equal within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import polyformers
from polyformers.outputs import BaseModelOutput

ATOL = 1e-4
PAD, EOS, START = 0, 1, 0
TINY = dict(
    vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=40,
    pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START, forced_eos_token_id=EOS,
)
MODELS = [
    dict(name="s2s", cls="PegasusForConditionalGeneration", config=TINY, seed=0, eos_bias=2.5),
    dict(name="s2s_scaled", cls="PegasusForConditionalGeneration", config=dict(TINY, scale_embedding=True, d_model=24,
         decoder_layers=1), seed=1, eos_bias=2.0),
    dict(name="causal", cls="PegasusForCausalLM", config=TINY, seed=2, eos_bias=1.5),
]

REFERENCE = r'''
import json, os, sys
import torch, transformers
from safetensors.torch import load_file, save_file

# The reference asks whether torch is compiling on every forward, which imports torch._dynamo (seconds);
# nothing here compiles.
transformers.modeling_utils.is_torchdynamo_compiling = lambda: False


def build(spec, workdir):
    config = transformers.PegasusConfig(**spec["config"])
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, spec["cls"])(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        if hasattr(model, "final_logits_bias"):
            bias = torch.randn_like(model.final_logits_bias) * 0.5
            bias[0, config.eos_token_id] += spec["eos_bias"]
            model.final_logits_bias.copy_(bias)
        else:  # the causal model's head has no bias: make the end token's embedding more likely instead
            model.lm_head.weight[config.eos_token_id] *= spec["eos_bias"]
    model.save_pretrained(os.path.join(workdir, spec["name"]))
    return model.eval()


job = json.load(sys.stdin)
tensors = load_file(job["tensors"])
models = {spec["name"]: build(spec, job["workdir"]) for spec in job["models"]}
flat, summary = {}, {}
for case in job["runs"]:
    kwargs = {name: tensors[key] for name, key in case["inputs"].items()}
    kwargs.update(case["kwargs"])
    torch.manual_seed(case["seed"])
    try:
        result = models[case["model"]].generate(**kwargs)
    except Exception as err:
        summary[case["name"]] = {"error": f"{type(err).__name__}: {err}"}
        continue
    if isinstance(result, torch.Tensor):
        result = {"sequences": result}
        summary[case["name"]] = {"type": "Tensor"}
    else:
        summary[case["name"]] = {"type": type(result).__name__, "keys": list(result.keys())}
    for key in ("sequences", "sequences_scores", "beam_indices"):
        if result.get(key) is not None:
            flat[f"{case['name']}.{key}"] = result[key].contiguous()
    for i, step in enumerate(result.get("scores") or ()):
        flat[f"{case['name']}.scores.{i}"] = step.contiguous()
save_file(flat, os.path.join(job["workdir"], "generate.out.safetensors"))
print(json.dumps(summary))
'''


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    source = torch.randint(2, TINY["vocab_size"], (2, 7), generator=g)
    padded = torch.randint(2, TINY["vocab_size"], (3, 9), generator=g)
    padded_mask = torch.ones_like(padded)
    for row, length in enumerate((9, 6, 3)):  # right padding, as the tokenizer pads sources
        padded[row, length:] = PAD
        padded_mask[row, length:] = 0
    prompt = torch.randint(2, TINY["vocab_size"], (2, 5), generator=g)
    prefix = torch.randint(2, TINY["vocab_size"], (3, 2), generator=g)
    prefix[:, 0] = START
    head_mask = torch.ones(2, 4)
    head_mask[0, 1], head_mask[1, 2] = 0.0, 0.5
    return {"source": source, "padded": padded, "padded_mask": padded_mask, "prompt": prompt, "prefix": prefix,
            "head_mask": head_mask, "cross_head_mask": head_mask.flip(0)}


SCORES = dict(return_dict_in_generate=True, output_scores=True)
PADDED = {"input_ids": "padded", "attention_mask": "padded_mask"}
SOURCE = {"input_ids": "source"}
N = dict(max_new_tokens=10)
BEAM = dict(num_beams=3, max_new_tokens=8)

# name: (model, inputs, generate kwargs, seed)
CASES = {
    "greedy": ("s2s", SOURCE, N, 0),
    "greedy_padded": ("s2s", PADDED, dict(N, **SCORES), 0),
    "greedy_padded_default_mask": ("s2s", {"input_ids": "padded"}, N, 0),
    "greedy_max_length_forced_eos": ("s2s", PADDED, dict(max_length=6, **SCORES), 0),
    "greedy_other_forced_eos": ("s2s", PADDED, dict(max_length=7, forced_eos_token_id=7), 0),
    "greedy_no_forced_eos": ("s2s", PADDED, dict(max_length=7, forced_eos_token_id=None), 0),
    "greedy_min_length": ("s2s", PADDED, dict(N, min_length=8, **SCORES), 0),
    "greedy_no_repeat_ngram": ("s2s", PADDED, dict(N, max_new_tokens=14, no_repeat_ngram_size=2, **SCORES), 0),
    "greedy_head_masks": ("s2s", dict(PADDED, head_mask="head_mask", decoder_head_mask="cross_head_mask",
                                      cross_attn_head_mask="head_mask"), dict(N, **SCORES), 0),
    "greedy_decoder_prefix": ("s2s", dict(PADDED, decoder_input_ids="prefix"), N, 0),
    "greedy_scaled": ("s2s_scaled", PADDED, dict(N, **SCORES), 0),
    "beam": ("s2s", PADDED, dict(BEAM, **SCORES), 0),
    "beam_penalty_early_return": ("s2s", PADDED, dict(BEAM, length_penalty=0.6, early_stopping=True,
                                                      num_return_sequences=2, **SCORES), 0),
    "beam_long_never": ("s2s", SOURCE, dict(BEAM, max_new_tokens=12, length_penalty=-0.5, early_stopping="never",
                                            num_return_sequences=3, **SCORES), 0),
    "beam_min_length_ngram": ("s2s", PADDED, dict(BEAM, min_length=6, no_repeat_ngram_size=2,
                                                  forced_eos_token_id=None), 0),
    "beam_scaled": ("s2s_scaled", PADDED, dict(BEAM, num_beams=4, num_return_sequences=2, **SCORES), 0),
    "sample": ("s2s", PADDED, dict(N, do_sample=True, top_k=0, **SCORES), 11),
    "sample_top_k_temperature": ("s2s", PADDED, dict(N, do_sample=True, top_k=8, temperature=0.8,
                                                     num_return_sequences=2), 12),
    "sample_top_p_ngram": ("s2s", SOURCE, dict(N, do_sample=True, top_p=0.8, no_repeat_ngram_size=2,
                                               min_length=5, **SCORES), 13),
    "beam_sample": ("s2s", PADDED, dict(BEAM, do_sample=True, top_k=10, **SCORES), 14),
    "greedy_everything": ("s2s", PADDED, dict(max_new_tokens=4, output_attentions=True, output_hidden_states=True,
                                              **SCORES), 0),
    "beam_everything": ("s2s", PADDED, dict(BEAM, max_new_tokens=4, output_attentions=True, **SCORES), 0),
    "causal_greedy": ("causal", {"input_ids": "prompt"}, dict(N, **SCORES), 0),
    "causal_beam": ("causal", {"input_ids": "prompt"}, dict(BEAM, num_return_sequences=2, length_penalty=1.5,
                                                            **SCORES), 0),
    "causal_sample": ("causal", {"input_ids": "prompt"}, dict(N, do_sample=True, min_length=9,
                                                              no_repeat_ngram_size=3), 15),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy machine threads wait on each other:
    # one thread is many times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    workdir = tmp_path_factory.mktemp("pegasus_generate")
    tensors = _tensors()
    save_file(tensors, str(workdir / "inputs.safetensors"))
    job = {
        "workdir": str(workdir), "tensors": str(workdir / "inputs.safetensors"), "models": MODELS,
        "runs": [dict(name=name, model=model, inputs=inputs, kwargs=kwargs, seed=seed)
                 for name, (model, inputs, kwargs, seed) in CASES.items()],
    }
    script = workdir / "reference_generate.py"
    script.write_text(REFERENCE)
    result = subprocess.run([str(legacy_python), str(script)], input=json.dumps(job), capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    auto = {"PegasusForConditionalGeneration": polyformers.AutoModelForSeq2SeqLM,
            "PegasusForCausalLM": polyformers.AutoModelForCausalLM}
    models = {spec["name"]: auto[spec["cls"]].from_pretrained(workdir / spec["name"]) for spec in MODELS}
    for spec in MODELS:
        assert type(models[spec["name"]]).__name__ == spec["cls"]
    return summary, load_file(str(workdir / "generate.out.safetensors")), models, tensors


def _run(model, inputs: dict, kwargs: dict, seed: int, tensors: dict):
    torch.manual_seed(seed)
    result = model.generate(**{name: tensors[key] for name, key in inputs.items()}, **kwargs)
    if isinstance(result, torch.Tensor):
        return {"type": "Tensor"}, {"sequences": result}
    return {"type": type(result).__name__, "keys": list(result.keys())}, result


@pytest.mark.parametrize("name", list(CASES))
def test_generate_matches_reference(reference, name):
    summary, expected, models, tensors = reference
    model, inputs, kwargs, seed = CASES[name]
    assert "error" not in summary[name], summary[name]
    kind, result = _run(models[model], inputs, kwargs, seed, tensors)
    assert kind == summary[name]
    sequences = expected[f"{name}.sequences"]
    assert torch.equal(result["sequences"], sequences), f"{name}:\n{result['sequences']}\nreference:\n{sequences}"
    for key in ("sequences_scores", "beam_indices"):
        if f"{name}.{key}" in expected:
            want, got = expected[f"{name}.{key}"], result[key]
            assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=ATOL), key
    steps = sorted(int(k.split(".")[-1]) for k in expected if k.startswith(f"{name}.scores."))
    assert len(steps) == len(result.get("scores") or ())
    for i in steps:
        want, got = expected[f"{name}.scores.{i}"], result["scores"][i]
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)), f"{name}: step {i} bans other tokens"
        assert torch.allclose(got[finite], want[finite], atol=ATOL), f"{name}: step {i} scores differ"


def test_cases_exercise_what_they_claim(reference):
    """The random models must make the settings matter: some sequences stop early, some run to the end."""
    _, expected, _, _ = reference
    greedy = expected["greedy_padded.sequences"]
    early = (greedy[:, 1:-1] == EOS).any(dim=1)  # the last token may be the forced one
    assert early.any() and not early.all(), greedy
    running = ~early  # rows that reach max_length end with the forced token
    assert (expected["greedy_max_length_forced_eos.sequences"][running, -1] == EOS).all()
    assert (expected["greedy_other_forced_eos.sequences"][running, -1] == 7).all()
    assert not torch.equal(expected["greedy_min_length.sequences"], expected["greedy_padded.sequences"][:, :11])
    # Without an attention mask, the pad tokens of the sources are masked all the same.
    assert torch.equal(expected["greedy_padded_default_mask.sequences"], greedy)


def test_encoder_outputs_and_cache_reuse(reference):
    """generate() from precomputed encoder_outputs, and without the cache, gives the same tokens."""
    _, expected, models, tensors = reference
    model = models["s2s"]
    ids, mask = tensors["padded"], tensors["padded_mask"]
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask)
    assert isinstance(encoded, BaseModelOutput)
    from_encoder = model.generate(encoder_outputs=encoded, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(from_encoder, expected["greedy_padded.sequences"])
    uncached = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=8, use_cache=False)
    assert torch.equal(uncached, expected["beam.sequences"])
    assert model.can_generate() and not polyformers.PegasusModel(model.config).can_generate()
    assert model.get_decoder() is model.model.decoder and model.get_encoder() is model.model.encoder
