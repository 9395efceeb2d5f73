"""Pegasus (PyTorch) against the reference's 4.37 release on perturbed random weights, both directions.

Every parameter is perturbed, the sinusoidal position tables included: the reference stores them in
checkpoints like any weight, so a stored table must be loaded as it is, not recomputed.
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import polyformers
from polyformers.outputs import BaseModelOutput
from polyformers.pt.models.pegasus import shift_tokens_right, sinusoidal_table
from tests.parity.harness import ATOL, Call, Case, FromCall, assert_same_outputs, run_model, run_parity

TINY = dict(
    vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=24,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)
# Odd width (the sine half is one column wider), scaled embeddings, another activation, deeper decoder.
ODD = dict(TINY, d_model=15, encoder_attention_heads=3, decoder_attention_heads=5, scale_embedding=True,
           activation_function="relu", decoder_layers=3)
B, S, T = 3, 9, 6


def _inputs(seed=0, config=TINY):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, config["vocab_size"], (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, config["pad_token_id"])
    dec = torch.randint(2, config["vocab_size"], (B, T), generator=g)
    dec[:, 0] = config["decoder_start_token_id"]
    dec_mask = torch.ones(B, T, dtype=torch.long)
    dec_mask[2, 4:] = 0
    labels = torch.randint(2, config["vocab_size"], (B, T), generator=g)
    labels[0, 4:] = -100
    labels[2, 1] = -100
    return g, ids, mask, dec, dec_mask, labels


def _head_masks(g, layers, heads):
    mask = torch.ones(layers, heads)
    mask[0, 1] = 0.0
    mask[-1, -1] = 0.5
    return mask[torch.randperm(layers, generator=g)]


def _seq2seq_calls(config, g, ids, mask, dec, dec_mask):
    every = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                 output_attentions=True, output_hidden_states=True)
    enc_layers, dec_layers = config["encoder_layers"], config["decoder_layers"]
    heads = dict(
        head_mask=_head_masks(g, enc_layers, config["encoder_attention_heads"]),
        decoder_head_mask=_head_masks(g, dec_layers, config["decoder_attention_heads"]),
        cross_attn_head_mask=_head_masks(g, dec_layers, config["decoder_attention_heads"]),
    )
    embeds = torch.randn(B, S, config["d_model"], generator=g)
    dec_embeds = torch.randn(B, T, config["d_model"], generator=g)
    k = 3  # cached decoding: a prefix, then one token at a time, then the whole sequence at once
    source = dict(input_ids=ids, attention_mask=mask)
    return [
        Call(every),                                                                            # 0
        Call(dict(every, **heads)),                                                             # 1
        Call(dict(every, return_dict=False)),                                                   # 2
        Call(dict(inputs_embeds=embeds, attention_mask=mask, decoder_inputs_embeds=dec_embeds,
                  use_cache=False)),                                                            # 3
        Call(dict(source, decoder_input_ids=dec[:, :k], decoder_attention_mask=dec_mask[:, :k])),  # 4
        Call(dict(source, decoder_input_ids=dec[:, k:k + 1], decoder_attention_mask=dec_mask[:, :k + 1],
                  past_key_values=FromCall(4, "past_key_values"), output_attentions=True)),     # 5
        Call(dict(source, decoder_input_ids=dec[:, k + 1:], decoder_attention_mask=dec_mask,
                  past_key_values=FromCall(5, "past_key_values"), output_hidden_states=True)),  # 6
        Call(dict(input_ids=ids, decoder_input_ids=dec)),                                       # 7: no masks
    ]


def _cases():
    g, ids, mask, dec, dec_mask, labels = _inputs()
    model_calls = _seq2seq_calls(TINY, g, ids, mask, dec, dec_mask)
    lm_calls = _seq2seq_calls(TINY, g, ids, mask, dec, dec_mask) + [
        Call(dict(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)),   # 8: shifted
        Call(dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels,
                  use_cache=True, return_dict=False)),                                              # 9
    ]
    g2, ids2, mask2, dec2, dec_mask2, labels2 = _inputs(1, ODD)
    odd_calls = _seq2seq_calls(ODD, g2, ids2, mask2, dec2, dec_mask2) + [
        Call(dict(input_ids=ids2, attention_mask=mask2, labels=labels2)),
    ]
    return [
        Case("model", "PegasusModel", "pegasus", TINY, model_calls),
        Case("lm", "PegasusForConditionalGeneration", "pegasus", TINY, lm_calls),
        Case("lm_odd_untied", "PegasusForConditionalGeneration", "pegasus", dict(ODD, tie_word_embeddings=False),
             odd_calls, seed=1, save_kwargs={"safe_serialization": False}),
    ]


def _causal_cases():
    g, ids, mask, dec, dec_mask, labels = _inputs(2)
    encoder_states = torch.randn(B, 5, TINY["d_model"], generator=g)
    encoder_mask = torch.ones(B, 5, dtype=torch.long)
    encoder_mask[0, 3:] = 0
    heads = dict(head_mask=_head_masks(g, 2, 4), cross_attn_head_mask=_head_masks(g, 2, 4))
    cross = dict(encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask)
    return [
        Case("causal", "PegasusForCausalLM", "pegasus", TINY, [
            Call(dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100),
                      output_attentions=True, output_hidden_states=True)),
            Call(dict(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)),
            Call(dict(input_ids=ids[:, 5:], attention_mask=mask, past_key_values=FromCall(1, "past_key_values"),
                      output_attentions=True)),
            Call(dict(input_ids=ids, attention_mask=mask, return_dict=False, use_cache=False)),
        ]),
        Case("causal_cross", "PegasusForCausalLM", "pegasus", dict(TINY, scale_embedding=True), [
            Call(dict(input_ids=dec, attention_mask=dec_mask, output_attentions=True, output_hidden_states=True,
                      **cross)),
            Call(dict(input_ids=dec[:, :4], attention_mask=dec_mask[:, :4], **cross)),
            Call(dict(input_ids=dec[:, 4:], attention_mask=dec_mask, past_key_values=FromCall(1, "past_key_values"),
                      **cross, output_attentions=True)),
            Call(dict(input_ids=dec, attention_mask=dec_mask, output_attentions=True, **cross, **heads)),
            Call(dict(inputs_embeds=torch.randn(B, T, TINY["d_model"], generator=g), labels=dec, **cross)),
        ], seed=3),
    ]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # Tiny models gain nothing from intra-op threads, and on a busy machine the threads of this process
    # and of the reference's wait on each other: one thread each is many times faster.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close(actual, expected, what):
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"{what} differs by {diff:.3g}"


def _check_cached_decoding(ours: dict, field: str, steps: tuple, what: str):
    """A prefix with the cache, then the rest a token or a few at a time, gives the full decode's states."""
    stepped = torch.cat([ours[f"call{i}.{field}"] for i in steps], dim=1)
    _close(stepped, ours[f"call0.{field}"], f"{what}: cached decoding vs the full decode")


def _check_encoder_outputs_reuse(model, case, expected):
    """The encoder's output, given back as a tuple or a BaseModelOutput, replaces the encoder."""
    calls = case.calls
    field = "logits" if "lm" in case.name else "last_hidden_state"
    full = expected[f"call0.{field}"]
    encoded = expected["call0.encoder_last_hidden_state"]
    hidden = tuple(expected[f"call0.encoder_hidden_states.{i}"] for i in range(case.config["encoder_layers"] + 1))
    base = {k: calls[0].args[k] for k in ("attention_mask", "decoder_input_ids", "decoder_attention_mask")}
    with torch.no_grad():
        for given in ((encoded,), [encoded, hidden], BaseModelOutput(last_hidden_state=encoded)):
            out = model(encoder_outputs=given, **base)
            _close(out[field], full, f"{case.name}: encoder_outputs as {type(given).__name__}")
            assert torch.equal(out.encoder_last_hidden_state, encoded)
        out = model(encoder_outputs=(encoded, hidden), return_dict=False, use_cache=False, **base)
        _close(out[0], full, f"{case.name}: encoder_outputs as a tuple, return_dict=False")
        assert len(out) == 3 and out[2] is hidden  # (logits or states, encoder states, encoder hidden states)
        # A step without the source: cross-attention reads the encoder's keys and values from the cache.
        step_args = {k: calls[5].args[k] for k in ("attention_mask", "decoder_input_ids", "decoder_attention_mask")}
        step = model(encoder_outputs=(encoded,), past_key_values=model(**calls[4].args).past_key_values, **step_args)
        _close(step[field], expected[f"call5.{field}"], f"{case.name}: a cached step from encoder_outputs")


def test_pegasus_matches_reference(tmp_path, legacy_python):
    cases = _cases() + _causal_cases()
    models = run_parity(cases, tmp_path, legacy_python)
    for case in cases:
        model = models[case.name]
        ours, _ = run_model(model, case.calls)
        if case.cls == "PegasusForCausalLM":
            _check_cached_decoding(ours, "logits", (1, 2), case.name)
            continue
        _check_cached_decoding(ours, "logits" if "lm" in case.name else "last_hidden_state", (4, 5, 6), case.name)
        _check_encoder_outputs_reuse(model, case, load_file(str(tmp_path / f"{case.name}.out.safetensors")))


_LOADING = r"""
import json, sys, torch, transformers
from safetensors.torch import load_file, save_file

# The reference asks whether torch is compiling on every forward, which imports torch._dynamo (seconds).
transformers.modeling_utils.is_torchdynamo_compiling = lambda: False
job = json.load(sys.stdin)
tensors = load_file(job["tensors"])
out, info = {}, {}
for name, (cls, folder, args) in job["loads"].items():
    model, loading = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True)
    with torch.no_grad():
        out[name] = model(**{arg: tensors[key] for arg, key in args.items()})[0].contiguous()
    info[name] = {k: sorted(loading[k]) for k in ("missing_keys", "unexpected_keys")}
save_file(out, job["output"])
print(json.dumps(info))
"""


def test_loading_partial_checkpoints(tmp_path, legacy_python):
    """A checkpoint without the sinusoidal tables loads with the exact tables, reported missing as the
    reference reports them; a seq2seq checkpoint loads into the bare model and the decoder-only model
    with the reference's missing and unexpected keys. The reference loads the same folders to the
    same outputs."""
    config = polyformers.PegasusConfig(**ODD)
    torch.manual_seed(0)
    _, ids, mask, dec, _, _ = _inputs(3, ODD)
    tensors = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    seq2seq_args = {k: k for k in tensors}
    causal_args = {"input_ids": "decoder_input_ids"}
    folders = {}
    for name in ("PegasusForConditionalGeneration", "PegasusForCausalLM"):
        model = getattr(polyformers, name)(config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)
        folder = folders[name] = str(tmp_path / name)
        model.save_pretrained(folder)
        weights = load_file(f"{folder}/model.safetensors")
        save_file({k: v for k, v in weights.items() if "embed_positions" not in k}, f"{folder}/model.safetensors",
                  metadata={"format": "pt"})
    seq2seq, causal = folders["PegasusForConditionalGeneration"], folders["PegasusForCausalLM"]
    loads = {
        "seq2seq": ("PegasusForConditionalGeneration", seq2seq, seq2seq_args),
        "causal": ("PegasusForCausalLM", causal, causal_args),
        "bare_from_seq2seq": ("PegasusModel", seq2seq, seq2seq_args),
        "causal_from_seq2seq": ("PegasusForCausalLM", seq2seq, causal_args),
    }
    ours = {}
    for name, (cls, folder, args) in loads.items():
        loaded, info = getattr(polyformers, cls).from_pretrained(folder, output_loading_info=True)
        tables = loaded.get_position_embeddings()
        for table in tables if isinstance(tables, tuple) else (tables,):
            assert not table.weight.requires_grad
            assert torch.equal(table.weight, sinusoidal_table(ODD["max_position_embeddings"], ODD["d_model"]))
        with torch.no_grad():
            first = loaded(**{arg: tensors[key] for arg, key in args.items()})[0]
        ours[name] = (first, {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys")})

    save_file(tensors, str(tmp_path / "inputs.safetensors"))
    script = tmp_path / "loading.py"
    script.write_text(_LOADING)
    job = dict(tensors=str(tmp_path / "inputs.safetensors"), loads=loads, output=str(tmp_path / "out.safetensors"))
    result = subprocess.run([str(legacy_python), str(script)], input=json.dumps(job), capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    reference_info = json.loads(result.stdout.strip().splitlines()[-1])
    expected = load_file(job["output"])
    assert reference_info["seq2seq"]["missing_keys"] == [
        "model.decoder.embed_positions.weight", "model.encoder.embed_positions.weight"
    ]
    # The reference names the missing keys of a bare model loaded from a head checkpoint with the head's
    # prefix ("model.encoder..."); the shared loader names them as the bare model's own keys.
    reference_info["bare_from_seq2seq"]["missing_keys"] = [
        k.removeprefix("model.") for k in reference_info["bare_from_seq2seq"]["missing_keys"]
    ]
    for name, (first, info) in ours.items():
        assert info == reference_info[name], f"{name}: loading info {info} vs the reference's {reference_info[name]}"
        if name != "causal_from_seq2seq":  # its token embedding is missing there, hence random
            assert_same_outputs({"first": expected[name]}, {"first": first}, name)


def test_shift_tokens_right():
    labels = torch.tensor([[5, 6, -100, -100], [7, -100, 8, 9]])
    assert shift_tokens_right(labels, 3, 2).tolist() == [[2, 5, 6, 3], [2, 7, 3, 8]]
    with pytest.raises(ValueError, match="pad_token_id"):
        shift_tokens_right(labels, None, 2)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        shift_tokens_right(labels, 0, None)


def test_bad_input_names_the_argument():
    model = polyformers.PegasusForConditionalGeneration(polyformers.PegasusConfig(**TINY)).eval()
    _, ids, mask, dec, dec_mask, _ = _inputs()
    good = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    bad = {
        "decoder_input_ids": dict(good, decoder_input_ids=None),
        r"input_ids holds id 99, outside \[0, 99\)": dict(good, input_ids=torch.full_like(ids, 99)),
        "decoder_input_ids holds id -1": dict(good, decoder_input_ids=dec - 100),
        r"attention_mask must have shape \(batch, sequence\) = \(3, 9\)": dict(good, attention_mask=mask[:, :4]),
        r"decoder_attention_mask must have shape \(batch, sequence\) = \(3, 6\)": dict(
            good, decoder_attention_mask=mask),
        r"decoder_head_mask must have shape \(layers, heads\) = \(2, 4\)": dict(good, decoder_head_mask=torch.ones(4)),
        r"cross_attn_head_mask must have shape": dict(good, cross_attn_head_mask=torch.ones(3, 4)),
        "max_position_embeddings=24": dict(good, input_ids=torch.ones(1, 30, dtype=torch.long), attention_mask=None,
                                           decoder_input_ids=dec[:1], decoder_attention_mask=None),
        r"decoder_inputs_embeds must have shape \(batch, sequence, 32\)": dict(
            good, decoder_input_ids=None, decoder_inputs_embeds=torch.randn(3, 6, 8)),
        "encoder_outputs must be a BaseModelOutput or a tuple": dict(good, encoder_outputs=torch.randn(3, 9, 32)),
        r"encoder_outputs.last_hidden_state must have shape \(batch, source length, d_model\) = \(3, \*, 32\), "
        r"got \(3, 9, 16\)": dict(good, encoder_outputs=(torch.randn(3, 9, 16),)),
        r"encoder_outputs.last_hidden_state .* got \(2, 9, 32\)": dict(good, encoder_outputs=(torch.randn(2, 9, 32),)),
        r"encoder_outputs.last_hidden_state .* got \(3, 9\)": dict(good, encoder_outputs=(torch.randn(3, 9),)),
    }
    for message, kwargs in bad.items():
        with pytest.raises((ValueError, IndexError, TypeError), match=message):
            model(**kwargs)
