"""The documented ElectraForPreTraining example (replaced-token detection) runs as written.

The example is kept verbatim below; only the import line and the checkpoint name are replaced, the
latter by a tiny random discriminator saved next to the real uncased BERT/ELECTRA vocabulary.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import polyformers

EXAMPLE = '''
from transformers import ElectraForPreTraining, AutoTokenizer
import torch
discriminator = ElectraForPreTraining.from_pretrained("google/electra-base-discriminator")
tokenizer = AutoTokenizer.from_pretrained("google/electra-base-discriminator")
sentence = "The quick brown fox jumps over the lazy dog"
fake_sentence = "The quick brown fox fake over the lazy dog"
fake_tokens = tokenizer.tokenize(fake_sentence, add_special_tokens=True)
fake_inputs = tokenizer.encode(fake_sentence, return_tensors="pt")
discriminator_outputs = discriminator(fake_inputs)
predictions = torch.round((torch.sign(discriminator_outputs[0]) + 1) / 2)
'''
PRINTED_TOKENS = ["[CLS]", "the", "quick", "brown", "fox", "fake", "over", "the", "lazy", "dog", "[SEP]"]
PRINTED_IDS = [101, 1996, 4248, 2829, 4419, 8275, 2058, 1996, 13971, 3899, 102]  # in the uncased vocabulary


@pytest.fixture(scope="module")
def discriminator_folder(assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("electra-discriminator")
    config = polyformers.ElectraConfig(
        vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    polyformers.ElectraForPreTraining(config).save_pretrained(folder)
    shutil.copy(assets / "minilm" / "vocab.txt", folder / "vocab.txt")
    # what the electra-base-discriminator repository carries besides its vocabulary
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def run_example(folder) -> dict:
    source = EXAMPLE.replace("from transformers import", "from polyformers import")
    source = source.replace('"google/electra-base-discriminator"', repr(str(folder)))
    assert source.count(repr(str(folder))) == 2 and "transformers" not in source
    namespace: dict = {}
    exec(compile(source, "electra_example", "exec"), namespace)
    return namespace


def test_example_runs_and_tokenises_as_printed(discriminator_folder):
    ns = run_example(discriminator_folder)
    assert ns["fake_tokens"] == PRINTED_TOKENS
    assert ns["fake_inputs"].tolist() == [PRINTED_IDS]
    assert ns["fake_inputs"].dtype == torch.long
    assert isinstance(ns["tokenizer"], polyformers.PreTrainedTokenizerBase)
    assert type(ns["discriminator"]) is polyformers.ElectraForPreTraining

    predictions = ns["predictions"]
    assert predictions.shape == (1, len(PRINTED_TOKENS))
    values = predictions.squeeze().tolist()
    assert len(values) == 11 and set(values) <= {0.0, 1.0}
    logits = ns["discriminator_outputs"].logits
    assert torch.equal(ns["discriminator_outputs"][0], logits)
    assert torch.equal(predictions, (logits > 0).to(predictions.dtype))  # sign -> {0, 1}, as documented


def test_example_predictions_follow_the_head(discriminator_folder, tmp_path):
    """A head that calls every token original (positive bias would call it replaced) gives all 0.0."""
    model = polyformers.ElectraForPreTraining.from_pretrained(discriminator_folder)
    for bias, expected in ((-3.0, 0.0), (3.0, 1.0)):
        with torch.no_grad():
            model.discriminator_predictions.dense_prediction.weight.zero_()
            model.discriminator_predictions.dense_prediction.bias.fill_(bias)
        folder = tmp_path / str(bias)
        model.save_pretrained(folder)
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(discriminator_folder / name, folder / name)
        ns = run_example(folder)
        assert ns["predictions"].squeeze().tolist() == [expected] * len(PRINTED_TOKENS)


def test_slow_tokenizer_agrees(discriminator_folder):
    slow = polyformers.AutoTokenizer.from_pretrained(discriminator_folder, use_fast=False)
    fake_sentence = "The quick brown fox fake over the lazy dog"
    # As in the 4.37 release, the slow tokenize() ignores add_special_tokens (only the fast one adds them).
    assert slow.tokenize(fake_sentence, add_special_tokens=True) == PRINTED_TOKENS[1:-1]
    assert slow.encode(fake_sentence, return_tensors="pt").tolist() == [PRINTED_IDS]
