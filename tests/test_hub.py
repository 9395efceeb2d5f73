"""The Hub code path (huggingface_hub) exercised offline through a local Hub cache.

A Hub cache is a plain folder layout (``models--owner--name/refs/<rev>`` naming a snapshot folder), so a
checkpoint placed there is resolved by the real ``hf_hub_download`` with ``local_files_only=True``: the
same code a networked run takes, minus the download.
"""

import shutil

import pytest
import torch

import polyformers
from polyformers.checkpoints.files import cached_file

TINY = dict(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=20, max_position_embeddings=32)


def _publish(cache, repo_id, revision_name, commit, folder):
    """Place ``folder``'s files in a Hub cache as snapshot ``commit`` of ``repo_id``, named ``revision_name``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision_name).write_text(commit)


def _model(seed):
    torch.manual_seed(seed)
    return polyformers.ElectraModel(polyformers.ElectraConfig(**TINY)).eval()


@pytest.fixture()
def hub_cache(tmp_path):
    cache = tmp_path / "hub"
    for name, commit, seed in (("main", "a" * 40, 0), ("v2", "b" * 40, 1)):
        folder = tmp_path / name
        _model(seed).save_pretrained(folder)
        _publish(cache, "acme/tiny-electra", name, commit, folder)
    return cache


def test_hub_id_loads_from_the_cache_with_revision(hub_cache):
    ids = torch.tensor([[1, 2, 3, 4]])
    main = polyformers.ElectraModel.from_pretrained("acme/tiny-electra", cache_dir=hub_cache, local_files_only=True)
    v2 = polyformers.ElectraModel.from_pretrained(
        "acme/tiny-electra", cache_dir=hub_cache, local_files_only=True, revision="v2"
    )
    by_commit = polyformers.ElectraModel.from_pretrained(
        "acme/tiny-electra", cache_dir=hub_cache, local_files_only=True, revision="b" * 40
    )
    with torch.no_grad():
        assert torch.allclose(main(ids)[0], _model(0)(ids)[0], atol=1e-6)
        assert torch.allclose(v2(ids)[0], _model(1)(ids)[0], atol=1e-6)
        assert torch.equal(v2(ids)[0], by_commit(ids)[0])
        assert not torch.allclose(main(ids)[0], v2(ids)[0])
    config = polyformers.AutoConfig.from_pretrained("acme/tiny-electra", cache_dir=hub_cache, local_files_only=True)
    assert config.hidden_size == 16


def test_offline_miss_names_the_id(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="acme/never-published"):
        polyformers.ElectraModel.from_pretrained("acme/never-published", cache_dir=hub_cache)
    with pytest.raises(OSError, match="acme/tiny-electra"):
        cached_file("acme/tiny-electra", "config.json", cache_dir=hub_cache, revision="v9", local_files_only=True)


def test_missing_file_in_cached_repo(hub_cache):
    assert cached_file("acme/tiny-electra", "vocab.txt", cache_dir=hub_cache, local_files_only=True,
                       missing_ok=True) is None
    with pytest.raises(OSError, match="vocab.txt"):
        cached_file("acme/tiny-electra", "vocab.txt", cache_dir=hub_cache, local_files_only=True)


def test_paths_that_cannot_be_hub_ids_are_reported_as_missing_folders(tmp_path):
    with pytest.raises(OSError, match="no such checkpoint folder"):
        polyformers.ElectraModel.from_pretrained(str(tmp_path / "nowhere" / "model"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    # A file is not a checkpoint folder (configs accept a config.json path, as the reference does).
    with pytest.raises((OSError, ValueError), match="model.safetensors"):
        polyformers.ElectraModel.from_pretrained(str(weights))


def test_offline_uncached_repo_is_an_error_even_for_optional_files(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="acme/elsewhere"):
        cached_file("acme/elsewhere", "added_tokens.json", cache_dir=hub_cache, missing_ok=True)
    assert cached_file("acme/tiny-electra", "added_tokens.json", cache_dir=hub_cache, missing_ok=True) is None
