"""Tiny randomized checkpoints written by the reference library, with real tokenizer files beside them."""

from __future__ import annotations

import shutil
from pathlib import Path

ELECTRA = dict(vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=128)
ROBERTA = dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2)
GPTJ = dict(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
            bos_token_id=50256, eos_token_id=50256)
MPT = dict(vocab_size=50257, d_model=32, n_heads=4, n_layers=2, max_seq_len=128)
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def wordpiece_files(assets: Path, folder: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json"):
        shutil.copy(assets / "minilm" / name, folder / name)
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "ElectraTokenizer", "do_lower_case": true, "model_max_length": 128}')


def bpe_files(assets: Path, folder: Path, tokenizer_class: str) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(assets / "gpt2" / name, folder / name)
    (folder / "tokenizer_config.json").write_text(f'{{"tokenizer_class": "{tokenizer_class}"}}')


def build(folder: Path, family: str, class_name: str, config: dict, tokenizer, seed: int = 0, **extra) -> Path:
    """A reference ``class_name`` with every parameter perturbed (so no output sits at an init value)."""
    import torch
    import transformers

    config_cls = {"electra": "ElectraConfig", "roberta": "RobertaConfig", "gptj": "GPTJConfig",
                  "mpnet": "MPNetConfig", "mpt": "MptConfig"}[family]
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(getattr(transformers, config_cls)(**config, **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer(folder)
    return folder
