"""Real trained weights: sentence-transformers' all-mpnet-base-v2 (12 layers, hidden 768) in polyformers'
MPNetModel must reproduce the reference's MPNetModel, and its mean-pooled embeddings must carry meaning.

The batch is tokenised by the reference's own tokenizer from the checkpoint folder, so this test checks the
model alone."""

from __future__ import annotations

import pytest
import torch
import transformers

import polyformers

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone is performing music with a guitar.",
    "The central bank raised interest rates again this quarter.",
    "A woman is slicing tomatoes in the kitchen.",
    "Short one.",
    "The new library opens at nine o'clock on weekdays and stays open until late in the evening.",
    "Stock markets fell sharply after the announcement.",
    "Le chat dort sur le canapé.",
]
ANCHOR, PARAPHRASE, UNRELATED = 0, 1, 2


@pytest.fixture(scope="module")
def mpnet(assets):
    folder = assets / "mpnet"
    model, info = polyformers.MPNetModel.from_pretrained(folder, output_loading_info=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.is_fast
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    reference, reference_info = transformers.MPNetModel.from_pretrained(folder, output_loading_info=True)
    return folder, model, info, reference.eval(), reference_info, batch


def test_checkpoint_loads_completely(mpnet):
    _, model, info, _, reference_info, _ = mpnet
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 768
    assert model.config.vocab_size == 30527 and model.config.max_position_embeddings == 514
    assert info["missing_keys"] == [] == sorted(reference_info["missing_keys"])
    assert info["unexpected_keys"] == [] == sorted(reference_info["unexpected_keys"])
    assert info["mismatched_keys"] == []
    assert model.dtype == torch.float32 and not model.training


def test_masked_lm_on_the_bare_checkpoint_reports_what_the_reference_does(mpnet):
    folder = mpnet[0]
    _, ours = polyformers.MPNetForMaskedLM.from_pretrained(folder, output_loading_info=True)
    _, reference = transformers.MPNetForMaskedLM.from_pretrained(folder, output_loading_info=True)
    # The reference also names lm_head.decoder.bias, its alias of lm_head.bias.
    assert set(ours["missing_keys"]) == set(reference["missing_keys"]) - {"lm_head.decoder.bias"}
    assert sorted(ours["unexpected_keys"]) == sorted(reference["unexpected_keys"]) == [
        "pooler.dense.bias", "pooler.dense.weight",
    ]


def test_hidden_states_match_the_reference(mpnet):
    _, model, _, reference, _, batch = mpnet
    assert batch["attention_mask"].eq(0).any(), "the batch should include padding"
    with torch.no_grad():
        expected = reference(**batch)
        ours = model(**batch)
    assert ours.last_hidden_state.shape == (len(SENTENCES), batch["input_ids"].shape[1], 768)
    diff = (ours.last_hidden_state - expected.last_hidden_state).abs().max().item()
    assert diff < 1e-4, f"last_hidden_state differs from the reference MPNetModel by {diff}"
    pooled = (ours.pooler_output - expected.pooler_output).abs().max().item()
    assert pooled < 1e-4, f"pooler_output differs from the reference MPNetModel by {pooled}"


def test_mean_pooled_embeddings_rank_the_paraphrase_first(mpnet):
    # all-mpnet-base-v2 is used as mean pooling over real tokens, then L2 normalisation (1_Pooling/config.json).
    _, model, _, _, _, batch = mpnet
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    keep = batch["attention_mask"][..., None].to(states.dtype)
    embeddings = torch.nn.functional.normalize((states * keep).sum(1) / keep.sum(1), dim=-1)
    cosines = embeddings @ embeddings[ANCHOR]
    paraphrase, unrelated = cosines[PARAPHRASE].item(), cosines[UNRELATED].item()
    message = f"cosine with the paraphrase {paraphrase:.3f}, with the unrelated sentence {unrelated:.3f}"
    assert paraphrase > 0.5 and unrelated < 0.3, message
    assert int(cosines[1:].argmax()) + 1 == PARAPHRASE, f"{message}; all cosines {cosines.tolist()}"
