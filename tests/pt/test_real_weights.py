"""Real trained weights: the all-MiniLM-L6-v2 BERT encoder is an ELECTRA body whose embeddings are as wide
as its hidden states, so polyformers' ElectraModel must reproduce the reference's BertModel on it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import polyformers

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone is performing music with a guitar.",
    "The central bank raised interest rates again this quarter.",
    "Short one.",
]
# fields that describe the network; the rest of config.json (model_type, versions, names) is BERT's own
BERT_FIELDS = (
    "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size", "initializer_range",
    "intermediate_size", "layer_norm_eps", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
    "pad_token_id", "position_embedding_type", "type_vocab_size", "vocab_size",
)


@pytest.fixture(scope="module")
def minilm(assets):
    folder = assets / "minilm"
    bert = json.loads((folder / "config.json").read_text())
    config = polyformers.ElectraConfig(**{k: bert[k] for k in BERT_FIELDS}, embedding_size=bert["hidden_size"])
    model, info = polyformers.ElectraModel.from_pretrained(folder, config=config, output_loading_info=True)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return folder, config, model, info, batch


def test_config_is_the_bert_one(minilm):
    _, config, model, _, _ = minilm
    assert config.embedding_size == config.hidden_size == 384
    assert config.num_hidden_layers == 6 and config.num_attention_heads == 12 and config.vocab_size == 30522
    assert not hasattr(model, "embeddings_project")  # equal widths: no projection, as in the reference


def test_only_the_pooler_is_unexpected(minilm):
    _, _, model, info, _ = minilm
    assert info["missing_keys"] == []
    assert sorted(info["unexpected_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert info["mismatched_keys"] == []
    assert model.dtype == torch.float32 and not model.training


def test_head_model_on_the_bare_checkpoint(minilm):
    folder, config, _, _, _ = minilm
    _, info = polyformers.ElectraForPreTraining.from_pretrained(folder, config=config, output_loading_info=True)
    assert sorted(info["unexpected_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert sorted(info["missing_keys"]) == [
        "discriminator_predictions.dense.bias", "discriminator_predictions.dense.weight",
        "discriminator_predictions.dense_prediction.bias", "discriminator_predictions.dense_prediction.weight",
    ]


def test_hidden_states_match_reference_bert(minilm):
    folder, _, model, _, batch = minilm
    reference = transformers.BertModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        ours = model(**batch)
        every = model(**batch, output_hidden_states=True)
    assert batch["attention_mask"].eq(0).any(), "the batch should include padding"
    assert ours.last_hidden_state.shape == expected.shape == (len(SENTENCES), batch["input_ids"].shape[1], 384)
    diff = (ours.last_hidden_state - expected).abs().max().item()
    assert diff < 1e-4, f"last_hidden_state differs from BertModel by {diff}"
    assert len(every.hidden_states) == 7 and torch.equal(every.hidden_states[-1], ours.last_hidden_state)


def _mean_pooled(model, batch):
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_paraphrase_ranks_above_unrelated(minilm):
    _, _, model, _, batch = minilm
    emb = _mean_pooled(model, batch)
    paraphrase = float(emb[0] @ emb[1])
    unrelated = float(emb[0] @ emb[2])
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)


def test_padding_does_not_change_a_sentence(minilm):
    folder, _, model, _, batch = minilm
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    alone = tokenizer([SENTENCES[-1]], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        single = model(**alone).last_hidden_state[0]
        padded = model(**batch).last_hidden_state[-1, :n]
    assert n < batch["input_ids"].shape[1]
    assert (single - padded).abs().max() < 1e-4
