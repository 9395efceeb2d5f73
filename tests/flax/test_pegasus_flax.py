"""Flax Pegasus against polyformers' PyTorch Pegasus (the ground truth) and the reference's 4.37 Flax
classes, on one perturbed tiny checkpoint: forward outputs, encode/decode with the cache, jit, generate,
loading (safetensors, the reference's msgpack), saving, dtype casts and bad input.

Compilation dominates the run time, so the model, the reference's outputs and the calls are shared
module-wide and the shapes are few.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from polyformers import (
    AutoTokenizer,
    FlaxPegasusForConditionalGeneration,
    FlaxPegasusModel,
    PegasusConfig,
    PegasusForConditionalGeneration,
    PegasusModel,
    PegasusTokenizer,
)

ATOL = 1e-4
ORACLE = Path(__file__).with_name("oracle_flax.py")
CONFIG = dict(
    vocab_size=1103, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=64, dropout=0.1,
    activation_function="gelu",
)
IDS = np.array([[5, 6, 7, 8, 9, 1], [10, 11, 12, 13, 1, 0], [200, 21, 220, 23, 1024, 25]], dtype=np.int32)
MASK = (IDS != 0).astype(np.int32)
DEC = np.array([[0, 5, 6, 7], [0, 17, 8, 0], [0, 40, 41, 42]], dtype=np.int32)
# Generation settings checked token for token against the reference's Flax classes, and against
# PyTorch except where the reference's own two implementations disagree: its PyTorch beam search divides
# a finished hypothesis's score by its length counting the decoder start token, the Flax one without
# it; its Flax min_length bans the end token for one step more.
NOT_LIKE_TORCH = {"beam_penalised", "min_length_bos"}
GENERATE = {
    "greedy": dict(max_new_tokens=9),
    "beam": dict(max_new_tokens=9, num_beams=3),
    "beam_penalised": dict(max_new_tokens=10, num_beams=4, length_penalty=0.5, num_return_sequences=2),
    "min_length_bos": dict(max_new_tokens=9, min_length=7, forced_bos_token_id=30),
}


def _np(x):
    return np.asarray(x, dtype=np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, assets):
    """A perturbed PyTorch Pegasus saved with a tokenizer (the real SentencePiece test model)."""
    folder = tmp_path_factory.mktemp("pegasus")
    torch.manual_seed(0)
    model = PegasusForConditionalGeneration(PegasusConfig(**CONFIG)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" not in name:  # a fixed table in every implementation
                param.add_(torch.randn_like(param) * 0.5)
        model.final_logits_bias.add_(torch.randn_like(model.final_logits_bias) * 0.5)
        model.final_logits_bias[0, 1] += 3.0  # so that some sequences end before max_length
    model.save_pretrained(folder)
    PegasusTokenizer(str(assets / "spm" / "test_model.model")).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def model(checkpoint):
    return FlaxPegasusForConditionalGeneration.from_pretrained(checkpoint[0])


@pytest.fixture(scope="module")
def reference(checkpoint, model, legacy_python, tmp_path_factory):
    """The reference's Flax Pegasus on the same checkpoint, and its PyTorch Pegasus on our Flax save."""
    work = tmp_path_factory.mktemp("reference")
    np.savez(work / "inputs.npz", input_ids=IDS, attention_mask=MASK, decoder_input_ids=DEC)
    model.save_pretrained(work / "flax_saved")
    job = {
        "folder": str(checkpoint[0]), "inputs": str(work / "inputs.npz"), "out": str(work / "out.npz"),
        "msgpack_dir": str(work / "msgpack"), "pt_folder": str(work / "flax_saved"),
        "generate": [{"name": name, "kwargs": kwargs} for name, kwargs in GENERATE.items()],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               JAX_PLATFORMS="cpu")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(legacy_python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(np.load(work / "out.npz")), work


def _torch_generate(pt, **kwargs):
    with torch.no_grad():
        return pt.generate(torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK), **kwargs).numpy()


# ---------------------------------------------------------------------------------------------------
# Forward


def test_call_matches_pytorch_and_reference(checkpoint, model, reference):
    pt = checkpoint[1]
    out = model(IDS, attention_mask=MASK, decoder_input_ids=DEC, output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        expected = pt(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                      decoder_input_ids=torch.tensor(DEC, dtype=torch.long), output_attentions=True,
                      output_hidden_states=True)
    assert type(out).__name__ == "FlaxSeq2SeqLMOutput"
    assert list(out.keys()) == [k for k in expected.keys() if k not in ("loss", "past_key_values")]
    ref = reference[0]
    for key, value in out.items():
        items = value if isinstance(value, tuple) else (value,)
        torch_items = expected[key] if isinstance(value, tuple) else (expected[key],)
        assert len(items) == len(torch_items)
        for i, (ours, theirs) in enumerate(zip(items, torch_items)):
            np.testing.assert_allclose(_np(ours), theirs.numpy(), atol=ATOL, err_msg=f"{key}[{i}] vs PyTorch")
            flax_key = f"call.{key}.{i}" if isinstance(value, tuple) else f"call.{key}"
            np.testing.assert_allclose(_np(ours), ref[flax_key], atol=ATOL, err_msg=f"{key}[{i}] vs reference Flax")
    as_tuple = model(IDS, attention_mask=MASK, decoder_input_ids=DEC, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2  # logits, encoder_last_hidden_state
    np.testing.assert_allclose(_np(as_tuple[0]), _np(out.logits), atol=1e-6)


def test_bare_model_loads_head_checkpoint(checkpoint):
    bare = FlaxPegasusModel.from_pretrained(checkpoint[0])
    assert set(bare.params) == {"shared", "encoder", "decoder"}
    pt = PegasusModel.from_pretrained(checkpoint[0]).eval()
    out = bare(IDS, attention_mask=MASK, decoder_input_ids=DEC)
    with torch.no_grad():
        expected = pt(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                      decoder_input_ids=torch.tensor(DEC, dtype=torch.long))
    assert type(out).__name__ == "FlaxSeq2SeqModelOutput"
    np.testing.assert_allclose(_np(out.last_hidden_state), expected.last_hidden_state.numpy(), atol=ATOL)
    decoded = bare.decode(DEC, bare.encode(IDS, MASK), encoder_attention_mask=MASK)
    assert type(decoded).__name__ == "FlaxBaseModelOutputWithPastAndCrossAttentions"
    np.testing.assert_allclose(_np(decoded.last_hidden_state), expected.last_hidden_state.numpy(), atol=ATOL)


def test_encode_decode_and_cache_steps(model, reference):
    ref = reference[0]
    encoded = model.encode(IDS, attention_mask=MASK)
    assert type(encoded).__name__ == "FlaxBaseModelOutput"
    np.testing.assert_allclose(_np(encoded.last_hidden_state), ref["encode"], atol=ATOL)
    full = model.decode(DEC, encoded, encoder_attention_mask=MASK)
    assert type(full).__name__ == "FlaxCausalLMOutputWithCrossAttentions"
    np.testing.assert_allclose(_np(full.logits), ref["decode"], atol=ATOL)

    # A two-token prefill then one token at a time through a preallocated cache equals one full decode.
    cache = model.init_cache(IDS.shape[0], 6, encoded)
    steps, start = [], 0
    for width in (2, 1, 1):
        positions = np.broadcast_to(np.arange(start, start + width), (IDS.shape[0], width))
        out = model.decode(DEC[:, start:start + width], encoded, encoder_attention_mask=MASK, past_key_values=cache,
                           decoder_position_ids=positions)
        cache = out.past_key_values
        steps.append(_np(out.logits))
        start += width
    np.testing.assert_allclose(np.concatenate(steps, axis=1), _np(full.logits), atol=ATOL)
    as_tuple = model.decode(DEC[:, :1], encoded, encoder_attention_mask=MASK, return_dict=False,
                            past_key_values=model.init_cache(IDS.shape[0], 6, encoded),
                            decoder_position_ids=np.zeros((IDS.shape[0], 1), dtype=np.int32))
    assert len(as_tuple) == 2 and isinstance(as_tuple[1], dict)  # logits, past_key_values
    np.testing.assert_allclose(_np(as_tuple[0]), _np(full.logits[:, :1]), atol=ATOL)


def test_jit_equals_eager(model):
    eager = model(IDS, attention_mask=MASK, decoder_input_ids=DEC)
    jitted = jax.jit(model.__call__)(IDS, attention_mask=MASK, decoder_input_ids=DEC)
    assert type(jitted).__name__ == "FlaxSeq2SeqLMOutput" and list(jitted.keys()) == list(eager.keys())
    np.testing.assert_allclose(_np(jitted.logits), _np(eager.logits), atol=1e-5)

    encode = jax.jit(model.encode)
    encoded = encode(IDS, MASK)
    np.testing.assert_allclose(_np(encoded.last_hidden_state), _np(eager.encoder_last_hidden_state), atol=1e-5)

    @jax.jit
    def decode_step(params, tokens, positions, cache, encoder_states):
        return model.decode(tokens, (encoder_states,), MASK, decoder_position_ids=positions, past_key_values=cache,
                            params=params)

    cache = model.init_cache(IDS.shape[0], 6, encoded)
    for i in range(2):
        out = decode_step(model.params, DEC[:, i:i + 1], np.full((IDS.shape[0], 1), i, np.int32), cache,
                          encoded.last_hidden_state)
        cache = out.past_key_values
        np.testing.assert_allclose(_np(out.logits[:, 0]), _np(eager.logits[:, i]), atol=1e-5)


def test_dropout_in_training(model):
    with pytest.raises(ValueError, match="dropout_rng"):
        model(IDS, decoder_input_ids=DEC, train=True)
    a = model(IDS, decoder_input_ids=DEC, train=True, dropout_rng=jax.random.PRNGKey(1)).logits
    b = model(IDS, decoder_input_ids=DEC, train=True, dropout_rng=jax.random.PRNGKey(2)).logits
    assert not np.allclose(_np(a), _np(b))


# ---------------------------------------------------------------------------------------------------
# Generation


def test_generate_matches_pytorch_and_reference(checkpoint, model, reference):
    ref = reference[0]
    for name, kwargs in GENERATE.items():
        ours = np.asarray(model.generate(IDS, attention_mask=MASK, **kwargs).sequences)
        np.testing.assert_array_equal(ours, ref[f"generate.{name}"], err_msg=f"{name} vs reference Flax")
        if name in NOT_LIKE_TORCH:
            continue
        theirs = _torch_generate(checkpoint[1], **kwargs)
        padded = np.full(ours.shape, model.config.pad_token_id)
        padded[:, : theirs.shape[1]] = theirs
        np.testing.assert_array_equal(ours, padded, err_msg=f"{name} vs PyTorch")
    # The settings above make some sequences stop early and others run to max_length.
    last = np.concatenate([ref[f"generate.{name}"][:, -1] for name in GENERATE])
    assert (last == model.config.pad_token_id).any() and (last == model.config.eos_token_id).any()


def test_generate_compiles_once(model):
    model.generate(IDS, attention_mask=MASK, max_new_tokens=9)
    programs = dict(model._compiled_generate)
    model.generate(IDS + 1, attention_mask=MASK, max_new_tokens=9)
    assert model._compiled_generate.keys() == programs.keys()
    assert all(fn._cache_size() == 1 for fn in model._compiled_generate.values())
    # The same program under the caller's jit, and step by step in Python, give the same tokens.
    jitted = jax.jit(lambda ids, mask: model.generate(ids, attention_mask=mask, max_new_tokens=9).sequences)(IDS, MASK)
    stepwise = model.generate(IDS, attention_mask=MASK, max_new_tokens=9, trace=False).sequences
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(stepwise))


def test_sampling(model):
    greedy = np.asarray(model.generate(IDS, attention_mask=MASK, max_new_tokens=9).sequences)
    top1 = model.generate(IDS, attention_mask=MASK, max_new_tokens=9, do_sample=True, top_k=1,
                          prng_key=jax.random.PRNGKey(3)).sequences
    np.testing.assert_array_equal(np.asarray(top1), greedy)
    settings = dict(max_new_tokens=9, do_sample=True, temperature=1.5, top_p=0.9)
    first = model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(0), **settings).sequences
    again = model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(0), **settings).sequences
    other = model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(1), **settings).sequences
    assert type(model.generate(IDS, attention_mask=MASK, prng_key=jax.random.PRNGKey(0), **settings)).__name__ \
        == "FlaxSampleOutput"
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert np.asarray(first).shape == greedy.shape and (np.asarray(first)[:, 0] == 0).all()


# ---------------------------------------------------------------------------------------------------
# Loading, saving, dtypes


def test_reference_msgpack_and_init_modes(checkpoint, model, reference):
    folder = reference[1] / "msgpack"
    assert (folder / "flax_model.msgpack").exists()
    loaded = FlaxPegasusForConditionalGeneration.from_pretrained(folder)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bare = FlaxPegasusModel.from_pretrained(folder, from_pt=True)  # from_pt is accepted; the prefix is bridged
    assert set(bare.params) == {"shared", "encoder", "decoder"}

    lazy, params = FlaxPegasusForConditionalGeneration.from_pretrained(checkpoint[0], _do_init=False)
    with pytest.raises(ValueError, match="_do_init=False"):
        lazy.params
    np.testing.assert_allclose(_np(lazy(IDS, decoder_input_ids=DEC, params=params).logits),
                               _np(model(IDS, decoder_input_ids=DEC).logits), atol=1e-6)
    empty = FlaxPegasusForConditionalGeneration(model.config, _do_init=False)
    assert jax.tree_util.tree_structure(empty.params_shape_tree) == jax.tree_util.tree_structure(model.params)
    fresh = jax.jit(lambda rng: empty.init_weights(rng, (1, 1)))(jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(model.params)


def test_save_loads_in_pytorch_and_reference(checkpoint, model, reference, tmp_path):
    model.save_pretrained(tmp_path)
    pt = PegasusForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = pt(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                    decoder_input_ids=torch.tensor(DEC, dtype=torch.long)).logits.numpy()
    expected = _np(model(IDS, attention_mask=MASK, decoder_input_ids=DEC).logits)
    np.testing.assert_allclose(logits, expected, atol=ATOL)
    np.testing.assert_allclose(reference[0]["pt_from_flax_save"], expected, atol=ATOL)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["PegasusForConditionalGeneration"]


def test_dtypes(model):
    half = model.to_bf16(model.params)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(model.params)} == {jnp.dtype(jnp.float32)}
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(model.to_fp32(half))} == {jnp.dtype(jnp.float32)}
    mask = {key: jax.tree_util.tree_map(lambda x: key == "model", value) for key, value in model.params.items()}
    partly = model.to_fp16(model.params, mask)
    assert partly["final_logits_bias"].dtype == jnp.float32 and partly["model"]["shared"]["embedding"].dtype == jnp.float16

    bf16 = FlaxPegasusForConditionalGeneration(model.config, dtype=jnp.bfloat16, _do_init=False)
    out = bf16(IDS, decoder_input_ids=DEC, params=model.params).logits
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(_np(out), _np(model(IDS, decoder_input_ids=DEC).logits), atol=0.5)


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input(model):
    encoded = model.encode(IDS, MASK)
    short = model.init_cache(IDS.shape[0], 2, encoded)
    with pytest.raises(ValueError, match=r"max_length >= 4.*|room for 2"):
        model.decode(DEC, encoded, MASK, past_key_values=short,
                     decoder_position_ids=np.broadcast_to(np.arange(4), DEC.shape))
    with pytest.raises(ValueError, match="decoder_position_ids must be given with past_key_values"):
        model.decode(DEC[:, :1], encoded, MASK, past_key_values=short)
    params = jax.tree_util.tree_map(lambda x: x, model.params)
    del params["model"]["decoder"]["layer_norm"]
    with pytest.raises(ValueError, match=r"params .*missing \['model/decoder/layer_norm/bias'"):
        model(IDS, decoder_input_ids=DEC, params=params)
    wrong = jax.tree_util.tree_map(lambda x: x, model.params)
    wrong["final_logits_bias"] = jnp.zeros((1, 7))
    with pytest.raises(ValueError, match=r"final_logits_bias has shape \(1, 7\), expected \(1, 1103\)"):
        model(IDS, decoder_input_ids=DEC, params=wrong)
    with pytest.raises(ValueError, match=r"dtype must be a floating dtype .*int32"):
        FlaxPegasusForConditionalGeneration(model.config, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, 1103\).*1103\]"):
        model.encode(np.array([[1, 1103]]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.encode(IDS, attention_mask=MASK[:, :2])
    with pytest.raises(ValueError, match="not neither|neither generation settings nor model inputs: \\['bogus'\\]"):
        model.generate(IDS, bogus=1)
    with pytest.raises(TypeError, match="expects a PretrainedConfig"):
        FlaxPegasusModel({"d_model": 16})


# ---------------------------------------------------------------------------------------------------
# The documented examples, with a local folder


def test_spec_examples(checkpoint):
    folder = str(checkpoint[0])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = FlaxPegasusModel.from_pretrained(folder)
    inputs = tokenizer("Hello, my dog is cute", return_tensors="jax")
    outputs = model(**inputs)
    last_hidden_states = outputs.last_hidden_state
    assert last_hidden_states.shape == (1, inputs["input_ids"].shape[1], CONFIG["d_model"])

    model = FlaxPegasusForConditionalGeneration.from_pretrained(folder)
    text = "My friends are cool but they eat too many carbs."
    inputs = tokenizer(text, max_length=1024, return_tensors="np")
    encoder_outputs = model.encode(**inputs)
    decoder_start_token_id = model.config.decoder_start_token_id
    decoder_input_ids = jnp.ones((inputs.input_ids.shape[0], 1), dtype="i4") * decoder_start_token_id
    outputs = model.decode(decoder_input_ids, encoder_outputs)
    last_decoder_hidden_states = outputs.logits
    assert last_decoder_hidden_states.shape == (1, 1, CONFIG["vocab_size"])

    inputs = tokenizer([text], max_length=1024, return_tensors="np")
    summary_ids = model.generate(inputs["input_ids"], max_new_tokens=6).sequences
    summary = tokenizer.batch_decode(summary_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert isinstance(summary, list) and len(summary) == 1 and isinstance(summary[0], str)


@pytest.mark.parametrize("settings", [dict(), dict(min_length=6)])  # (beams: Flax keeps other hypotheses)
def test_eos_none_takes_the_models_end_token_as_4_37(checkpoint, model, settings):
    # 4.37 (Flax as PyTorch): the loops replace eos_token_id=None by the model's generation_config value, the
    # processors (min_length) see None; eos_token_id=[] is "no end token". Token 370 comes second here.
    pt = checkpoint[1]
    before = (model.generation_config.eos_token_id, pt.generation_config.eos_token_id)
    model.generation_config.eos_token_id = pt.generation_config.eos_token_id = 370
    try:
        kwargs = dict(max_new_tokens=9, eos_token_id=None, pad_token_id=0, **settings)
        ours = np.asarray(model.generate(IDS, attention_mask=MASK, **kwargs).sequences)
        theirs = _torch_generate(pt, **kwargs)
        none = np.asarray(model.generate(IDS, attention_mask=MASK, **dict(kwargs, eos_token_id=[])).sequences)
    finally:
        model.generation_config.eos_token_id, pt.generation_config.eos_token_id = before
    padded = np.full(ours.shape, 0)
    padded[:, : theirs.shape[1]] = theirs
    np.testing.assert_array_equal(ours, padded)
    assert (ours == 370).any(axis=1).all() and (ours[:, -1] == 0).all()  # each stopped at 370, then padding
    assert not np.array_equal(ours, none) and (none[:, -1] != 0).all()
