"""Every ``MptConfig`` setting against what the reference's 4.37 ``MptForCausalLM`` computes with it.

4.37 stores all the settings of the original MPT code but acts on few: its feed-forward layer is always
``4 * d_model`` wide, its ALiBi slopes always use a maximum exponent of 8, it has no biases, no embedding
dropout, no logit scaling, no clipping, no query/key norms, and ``attn_pdrop`` (never ``resid_pdrop``)
drops the attention probabilities and both residual branches. For each setting at a non-default value,
4.37 builds a model, perturbs and saves it, and records its evaluation logits and the loss and gradients of
one seeded training step (one subprocess for every case, tests/parity/_mpt_config_oracle.py); polyformers
loads each checkpoint and must give the same numbers, and warn once for each setting it ignores.
"""

import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import polyformers
from polyformers.configs import MptConfig

ORACLE = Path(__file__).with_name("_mpt_config_oracle.py")
LOGGER = "polyformers.pt.models.mpt"
TINY = dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=16, vocab_size=61, pad_token_id=0)
B, S = 3, 9
TOL = 1e-4

# name -> (config overrides, the setting warned about or None when the setting is honoured)
CASES = {
    "default": ({}, None),
    "expansion_ratio": (dict(expansion_ratio=2), "expansion_ratio"),
    "alibi_bias_max": (dict(attn_config=dict(alibi_bias_max=6)), "attn_config.alibi_bias_max"),
    "alibi_bias_max_six_heads": (dict(d_model=48, n_heads=6, attn_config=dict(alibi_bias_max=3)),
                                 "attn_config.alibi_bias_max"),
    "no_bias": (dict(no_bias=False), "no_bias"),
    "resid_pdrop": (dict(resid_pdrop=0.3), "resid_pdrop"),
    "emb_pdrop": (dict(emb_pdrop=0.3), "emb_pdrop"),
    "attn_pdrop": (dict(attn_config=dict(attn_pdrop=0.2)), None),
    "attn_and_resid_pdrop": (dict(resid_pdrop=0.4, emb_pdrop=0.4, attn_config=dict(attn_pdrop=0.1)),
                             "resid_pdrop"),
    "embedding_fraction": (dict(embedding_fraction=0.25), "embedding_fraction"),
    "logit_scale": (dict(logit_scale=0.5), "logit_scale"),
    "logit_scale_inv_sqrt": (dict(logit_scale="inv_sqrt_d_model"), "logit_scale"),
    "clip_qkv": (dict(attn_config=dict(clip_qkv=0.05)), "attn_config.clip_qkv"),
    "qk_ln": (dict(attn_config=dict(qk_ln=True)), "attn_config.qk_ln"),
    "prefix_lm": (dict(attn_config=dict(prefix_lm=True)), "attn_config.prefix_lm"),
    "attn_uses_sequence_id": (dict(attn_config=dict(attn_uses_sequence_id=True)),
                              "attn_config.attn_uses_sequence_id"),
    "alibi_off": (dict(attn_config=dict(alibi=False)), "attn_config.alibi"),
    "attn_impl": (dict(attn_config=dict(attn_impl="triton")), "attn_config.attn_impl"),
    "attn_type": (dict(attn_config=dict(attn_type="multiquery_attention")), "attn_config.attn_type"),
    "softmax_scale": (dict(attn_config=dict(softmax_scale=0.3)), None),
    "softmax_scale_zero": (dict(attn_config=dict(softmax_scale=0.0)), None),
    "learned_pos_emb": (dict(learned_pos_emb=False), None),
    "norm_type": (dict(norm_type="layernorm"), "norm_type"),
    "init_device": (dict(init_device="meta"), "init_device"),
    "verbose": (dict(verbose=2), "verbose"),
    "layer_norm_epsilon": (dict(layer_norm_epsilon=0.3), None),
    "max_seq_len_exact": (dict(max_seq_len=S), None),
    "untied": (dict(tie_word_embeddings=False), None),
    "everything_ignored": (dict(expansion_ratio=3, no_bias=False, logit_scale=2.0, embedding_fraction=0.5,
                                attn_config=dict(clip_qkv=0.1, qk_ln=True, alibi_bias_max=2, attn_pdrop=0.1)),
                           "expansion_ratio"),
}
INIT_CASES = {"init_default": {}, "init_range": dict(initializer_range=0.2)}


def _config(overrides):
    return dict(TINY, **overrides)


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, TINY["vocab_size"], (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, :3] = 0
    labels = torch.where(mask.bool(), ids, -100)
    return dict(ids=ids, mask=mask, labels=labels)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, legacy_python):
    workdir = tmp_path_factory.mktemp("mpt_config_audit")
    inputs = _inputs()
    save_file(inputs, str(workdir / "inputs.safetensors"))
    cases = [dict(name=name, config=_config(overrides), seed=i)
             for i, (name, (overrides, _)) in enumerate(CASES.items())]
    cases += [dict(name=name, config=_config(overrides), seed=7, init_only=True)
              for name, overrides in INIT_CASES.items()]
    job = dict(workdir=str(workdir), inputs=str(workdir / "inputs.safetensors"), cases=cases)
    result = subprocess.run(
        [str(legacy_python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True, timeout=600,
        env={"PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin",
             "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, inputs, load_file(str(workdir / "oracle.out.safetensors"))


def _warned(records):
    return [r.getMessage() for r in records if r.name == LOGGER]


@pytest.mark.parametrize("name", list(CASES))
def test_reference_checkpoint_gives_reference_outputs_and_gradients(reference, name, caplog):
    workdir, inputs, expected = reference
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model = polyformers.MptForCausalLM.from_pretrained(workdir / name)
    warned = _warned(caplog.records)
    field = CASES[name][1]
    if field is None:
        assert warned == []
    else:
        # One warning per ignored setting, naming it, its value and what is used instead.
        assert len(warned) == len(set(warned)) and any(m.startswith(f"MptConfig {field}=") for m in warned)
        assert all("ignored, as in the reference 4.37 release: using " in m for m in warned)

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=inputs["ids"], attention_mask=inputs["mask"]).logits
    assert (logits - expected[f"{name}/logits"]).abs().max() <= TOL

    model.train()
    torch.manual_seed(list(CASES).index(name) + 1)  # the oracle's seed for this case's training step
    loss = model(input_ids=inputs["ids"], attention_mask=inputs["mask"], labels=inputs["labels"]).loss
    loss.backward()
    assert abs(loss.item() - expected[f"{name}/loss"].item()) <= TOL
    grads = {key: param.grad for key, param in model.named_parameters()}
    theirs = {key[len(f"{name}/grad/"):]: value for key, value in expected.items() if key.startswith(f"{name}/grad/")}
    assert set(grads) == set(theirs)
    for key, grad in grads.items():
        assert grad is not None and (grad - theirs[key]).abs().max() <= TOL, key


def test_dropout_cases_really_drop(reference):
    """The training-step comparisons above draw dropout masks: with dropout the loss differs from the
    evaluation loss, so equal gradients mean the same masks on the same tensors."""
    workdir, inputs, expected = reference
    model = polyformers.MptForCausalLM.from_pretrained(workdir / "attn_and_resid_pdrop").eval()
    with torch.no_grad():
        plain = model(input_ids=inputs["ids"], attention_mask=inputs["mask"], labels=inputs["labels"]).loss
    assert abs(plain.item() - expected["attn_and_resid_pdrop/loss"].item()) > 1e-3


@pytest.mark.parametrize("name", list(INIT_CASES))
def test_initial_weights_follow_the_reference_distribution(reference, name):
    """Fresh weights draw from the reference's distributions: the same tensors and shapes, unit norm scales,
    matrices and embeddings normal with standard deviation ``initializer_range`` (the random streams are
    consumed in another order, so the values themselves differ)."""
    _, _, expected = reference
    torch.manual_seed(7)
    model = polyformers.MptForCausalLM(MptConfig(**_config(INIT_CASES[name])))
    state = model.state_dict()
    theirs = {key[len(f"{name}/init/"):]: value for key, value in expected.items() if key.startswith(f"{name}/init/")}
    assert set(state) == set(theirs)
    std = INIT_CASES[name].get("initializer_range", 0.02)
    for key, value in state.items():
        assert value.shape == theirs[key].shape, key
        if "norm" in key:
            assert torch.equal(value, torch.ones_like(value)) and torch.equal(theirs[key], value), key
        else:
            assert abs(value.mean().item()) < 0.1 * std and abs(theirs[key].mean().item()) < 0.1 * std, key
            assert abs(value.std().item() - std) < 0.06 * std and abs(theirs[key].std().item() - std) < 0.06 * std, key


def test_ignored_settings_lists_non_default_values_only():
    assert MptConfig().ignored_settings() == []
    config = MptConfig(expansion_ratio=2, learned_pos_emb=False, attn_config=dict(alibi_bias_max=6, softmax_scale=0.5))
    assert [(name, value) for name, value, _ in config.ignored_settings()] == [
        ("expansion_ratio", 2), ("attn_config.alibi_bias_max", 6)]


def test_each_ignored_setting_warns_once_per_model(caplog):
    config = MptConfig(**_config(dict(expansion_ratio=2, attn_config=dict(clip_qkv=1.0))))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        polyformers.MptForCausalLM(config)
    assert _warned(caplog.records) == [
        "MptConfig expansion_ratio=2 is ignored, as in the reference 4.37 release: using a feed-forward width "
        "of 4 * d_model",
        "MptConfig attn_config.clip_qkv=1.0 is ignored, as in the reference 4.37 release: using unclipped "
        "queries, keys and values",
    ]


def test_attn_type_outside_the_reference_choices_raises():
    expected = "attn_type.*'multihead_attention', 'multiquery_attention'.*'grouped_query_attention'"
    with pytest.raises(ValueError, match=expected):
        MptConfig(attn_config=dict(attn_type="grouped_query_attention"))


def test_clip_case_would_clip(reference):
    """The clip_qkv case above is meaningful: its projections exceed the clipping bound, so clipping (as
    transformers 5 does) would change the outputs that 4.37 and polyformers agree on."""
    workdir, inputs, _ = reference
    model = polyformers.MptForCausalLM.from_pretrained(workdir / "clip_qkv").eval()
    bound = CASES["clip_qkv"][0]["attn_config"]["clip_qkv"]
    block = model.transformer.blocks[0]
    with torch.no_grad():
        qkv = block.attn.Wqkv(block.norm_1(model.transformer.wte(inputs["ids"])))
    assert qkv.abs().max() > 10 * bound
