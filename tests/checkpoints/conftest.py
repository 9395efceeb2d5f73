"""A tiny ELECTRA saved by the reference library, shared by the checkpoint tests."""

from __future__ import annotations

import pytest

TINY_ELECTRA = dict(
    vocab_size=99,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)


@pytest.fixture(scope="package")
def reference_model():
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.ElectraModel(transformers.ElectraConfig(**TINY_ELECTRA)).eval()


@pytest.fixture(scope="package")
def reference_single(reference_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference_single")
    reference_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="package")
def reference_sharded(reference_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference_sharded")
    reference_model.save_pretrained(folder, max_shard_size="20KB")
    return folder
