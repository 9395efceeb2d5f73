"""RoBERTa's position ids, the sequence-length limit they imply, the pooler switch, the tied LM bias, and
the auto classes picking the RoBERTa models.

The position rule is compared with the reference's 4.37 release, run once for the module in its own
environment."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

import polyformers
from polyformers.pt.layers import position_ids_after_padding as create_position_ids_from_input_ids
from polyformers.pt.models.roberta import create_position_ids_from_inputs_embeds

from .tiny import auto_classes

TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
)
LIMIT = TINY["max_position_embeddings"] - TINY["pad_token_id"] - 1  # 38 tokens

# (input_ids, padding_idx, past length)
POSITION_CASES = [
    ([[0, 5, 6, 7, 2]], 1, 0),
    ([[0, 5, 6, 2, 1, 1], [1, 1, 0, 5, 6, 2]], 1, 0),  # right and left padding
    ([[0, 5, 1, 6, 2, 1]], 1, 0),  # a pad id inside the row
    ([[5, 6], [1, 7]], 1, 4),  # a decoding step after four cached tokens
    ([[3, 0, 0, 4], [0, 0, 0, 0]], 0, 2),  # another padding index; an all-padding row
    ([[1, 1, 1]], 1, 7),
]
EMBEDS_CASES = [(2, 5, 1), (1, 3, 0), (3, 1, 4)]  # (batch, length, padding_idx)

LEGACY = r"""
import json, sys, torch, transformers
from transformers.models.roberta import modeling_roberta as R
job = json.load(sys.stdin)
out = {"ids": [], "embeds": []}
for ids, pad, past in job["ids"]:
    out["ids"].append(R.create_position_ids_from_input_ids(torch.tensor(ids), pad, past).tolist())
for batch, length, pad in job["embeds"]:
    config = transformers.RobertaConfig(hidden_size=8, pad_token_id=pad, max_position_embeddings=16)
    embeddings = R.RobertaEmbeddings(config)
    out["embeds"].append(embeddings.create_position_ids_from_inputs_embeds(torch.zeros(batch, length, 8)).tolist())
model = transformers.RobertaModel.from_pretrained(job["folder"], add_pooling_layer=False).eval()
with torch.no_grad():
    result = model(torch.tensor(job["input_ids"]), return_dict=False, output_hidden_states=True)
out["no_pooler"] = [None if r is None else type(r).__name__ for r in result]
out["no_pooler_hidden"] = result[0].tolist()
lengths = {}
for n in job["lengths"]:
    try:
        model(torch.full((1, n), 5))
        lengths[n] = "ok"
    except IndexError:
        lengths[n] = "error"
out["lengths"] = lengths
print(json.dumps(out))
"""


def _config(**overrides):
    return polyformers.RobertaConfig(**{**TINY, **overrides})


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta")
    torch.manual_seed(0)
    model = _perturbed(polyformers.RobertaModel(_config()))
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def reference(saved, legacy_python):
    job = {
        "ids": POSITION_CASES, "embeds": EMBEDS_CASES, "folder": str(saved[0]),
        "input_ids": [[0, 5, 6, 7, 2, 1, 1]], "lengths": [LIMIT, LIMIT + 1],
    }
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(legacy_python), "-c", LEGACY], input=json.dumps(job), capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(POSITION_CASES)))
def test_positions_from_input_ids_match_reference(reference, index):
    ids, pad, past = POSITION_CASES[index]
    ours = create_position_ids_from_input_ids(torch.tensor(ids), pad, past)
    assert ours.dtype == torch.long
    assert ours.tolist() == reference["ids"][index]


def test_positions_count_only_real_tokens():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 5, 6, 2]])
    assert create_position_ids_from_input_ids(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("index", range(len(EMBEDS_CASES)))
def test_positions_from_inputs_embeds_match_reference(reference, index):
    batch, length, pad = EMBEDS_CASES[index]
    ours = create_position_ids_from_inputs_embeds(torch.zeros(batch, length, 8), pad)
    assert ours.tolist() == reference["embeds"][index]


def test_left_and_right_padding_give_the_same_states(saved):
    _, model = saved
    real = [0, 5, 6, 7, 2]
    right = torch.tensor([real + [1, 1]])
    left = torch.tensor([[1, 1] + real])
    with torch.no_grad():
        a = model(right, attention_mask=(right != 1).long()).last_hidden_state[0, :5]
        b = model(left, attention_mask=(left != 1).long()).last_hidden_state[0, 2:]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# the length limit: positions start at pad_token_id + 1, so max_position_embeddings - pad_token_id - 1 fit


def test_length_limit_matches_reference(saved, reference):
    _, model = saved
    assert reference["lengths"] == {str(LIMIT): "ok", str(LIMIT + 1): "error"}
    with torch.no_grad():
        model(torch.full((1, LIMIT), 5))
    with pytest.raises(ValueError) as err:
        model(torch.full((1, LIMIT + 1), 5))
    message = str(err.value)
    assert "input_ids" in message and f"at most {LIMIT}" in message and f"{LIMIT + 1} positions" in message
    assert "max_position_embeddings is 40" in message


def test_padding_does_not_count_towards_the_limit(saved):
    _, model = saved
    ids = torch.cat([torch.full((1, LIMIT), 5), torch.full((1, 4), 1)], dim=1)
    with torch.no_grad():
        out = model(ids, attention_mask=(ids != 1).long())
    assert out.last_hidden_state.shape == (1, LIMIT + 4, TINY["hidden_size"])


def test_length_limit_counts_cached_tokens():
    torch.manual_seed(0)
    model = polyformers.RobertaModel(_config(is_decoder=True)).eval()
    with torch.no_grad():
        cache = model(torch.full((1, LIMIT - 1), 5)).past_key_values
        model(torch.full((1, 1), 5), past_key_values=cache)
        with pytest.raises(ValueError, match=f"{LIMIT + 1} positions .*at most {LIMIT}"):
            model(torch.full((1, 2), 5), past_key_values=cache)


def test_length_limit_for_inputs_embeds(saved):
    _, model = saved
    with pytest.raises(ValueError, match=f"inputs_embeds holds a sequence of {LIMIT + 1} positions"):
        model(inputs_embeds=torch.zeros(1, LIMIT + 1, TINY["hidden_size"]))


def test_relative_positions_have_no_table_limit():
    torch.manual_seed(0)
    model = polyformers.RobertaModel(_config(position_embedding_type="relative_key")).eval()
    with torch.no_grad():
        assert model(torch.full((1, LIMIT + 1), 5)).last_hidden_state.shape[1] == LIMIT + 1


def test_explicit_position_ids_are_checked(saved):
    _, model = saved
    with pytest.raises(IndexError, match="position_ids holds id 40, outside \\[0, 40\\)"):
        model(torch.full((1, 3), 5), position_ids=torch.tensor([[0, 1, 40]]))


# ---------------------------------------------------------------------------------------------------
# the pooler switch and the LM head's tied bias


def test_model_without_pooler_matches_reference(saved, reference):
    folder, full = saved
    model, info = polyformers.RobertaModel.from_pretrained(folder, add_pooling_layer=False, output_loading_info=True)
    assert model.pooler is None
    assert sorted(info["unexpected_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1]])
    with torch.no_grad():
        result = model(ids, return_dict=False, output_hidden_states=True)
        assert model(ids).pooler_output is None
        expected = full(ids).last_hidden_state
    # the reference keeps an empty pooled slot in the tuple
    assert [None if r is None else type(r).__name__ for r in result] == reference["no_pooler"]
    torch.testing.assert_close(result[0], torch.tensor(reference["no_pooler_hidden"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(result[0], expected, atol=1e-6, rtol=0)


def test_lm_bias_stays_one_parameter(saved, tmp_path):
    folder, _ = saved
    # a bare checkpoint gives the LM head nothing: both names of the bias must still be one zero vector
    model = polyformers.RobertaForMaskedLM.from_pretrained(folder)
    head = model.lm_head
    assert head.decoder.bias is head.bias and torch.count_nonzero(head.bias) == 0
    with torch.no_grad():
        head.bias.add_(torch.randn_like(head.bias))
    model.resize_token_embeddings(TINY["vocab_size"] + 5)
    assert head.decoder.bias is head.bias and head.bias.shape == (TINY["vocab_size"] + 5,)
    assert head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    again = polyformers.RobertaForMaskedLM.from_pretrained(tmp_path)
    assert again.lm_head.decoder.bias is again.lm_head.bias
    torch.testing.assert_close(again.lm_head.bias, head.bias)


# ---------------------------------------------------------------------------------------------------
# auto classes


AUTO = auto_classes("Roberta", "RobertaForMaskedLM")


@pytest.mark.parametrize("auto_name", sorted(AUTO))
def test_auto_classes_pick_roberta(saved, auto_name):
    folder, _ = saved
    assert type(polyformers.AutoConfig.from_pretrained(folder)) is polyformers.RobertaConfig
    model = getattr(polyformers, auto_name).from_pretrained(folder)
    assert type(model) is getattr(polyformers, AUTO[auto_name])
    assert type(getattr(polyformers, auto_name).from_config(_config())).__name__ == AUTO[auto_name]


def test_roberta_causal_lm_generates_what_a_full_forward_predicts():
    """generate() with the cache picks, at every step, the argmax of a fresh full forward over the tokens
    so far. (Prompts are unpadded: with a cache the reference numbers a new token's position after every
    cached slot, pads included, so a left-padded RoBERTa prompt is not equivalent to the bare one there.)"""
    config = polyformers.RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, is_decoder=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = polyformers.RobertaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    prompts = torch.tensor([[0, 4, 5, 9, 14], [0, 7, 3, 22, 8]])
    mask = (prompts != 1).long()
    out = model.generate(prompts, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None)
    for i, (row, row_mask) in enumerate(zip(prompts, mask)):
        tokens = row[row_mask.bool()][None]
        for _ in range(6):
            with torch.no_grad():
                logits = model(tokens).logits[:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        assert out[i, prompts.shape[1]:].tolist() == tokens[0, -6:].tolist()
