"""Tiny random checkpoints with real tokenizers, written by polyformers itself, for the server tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# A small template in the style of real chat templates: roles as prefixes, a generation prompt, and a
# rejection of conversations the model cannot take.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role ' + message['role']) }}"
    "{% endif %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _perturb(model, seed: int, scale: float) -> None:
    """Random weights with some spread, so greedy choices are not near-ties between tokens."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def _gpt2_tokenizer(assets: Path, folder: Path, chat_template: str | None, max_length: int) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(assets / "gpt2" / name, folder / name)
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "bos_token": "<|endoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def gptj(assets: Path, folder: Path, *, n_positions: int = 256, n_embd: int = 64, n_layer: int = 2,
         chat_template: str | None = CHAT_TEMPLATE, seed: int = 0) -> Path:
    import torch

    from polyformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(seed)
    config = GPTJConfig(vocab_size=50257, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=4,
                        rotary_dim=8, bos_token_id=50256, eos_token_id=50256)
    model = GPTJForCausalLM(config).eval()
    _perturb(model, seed, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _gpt2_tokenizer(assets, folder, chat_template, n_positions)
    return folder


def mpt(assets: Path, folder: Path, seed: int = 1) -> Path:
    import torch

    from polyformers import MptConfig, MptForCausalLM

    torch.manual_seed(seed)
    config = MptConfig(vocab_size=50257, d_model=64, n_heads=4, n_layers=2, max_seq_len=256)
    model = MptForCausalLM(config).eval()
    _perturb(model, seed, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _gpt2_tokenizer(assets, folder, None, 256)
    return folder


def pegasus(assets: Path, folder: Path, seed: int = 2) -> Path:
    import torch

    from polyformers import PegasusConfig, PegasusForConditionalGeneration, PegasusTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = PegasusTokenizer(str(assets / "spm" / "test_model.model"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    vocab = max(tokenizer.get_vocab().values()) + 8  # room above the last id the tokenizer gives
    config = PegasusConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                           decoder_start_token_id=0, forced_eos_token_id=None)
    model = PegasusForConditionalGeneration(config).eval()
    _perturb(model, seed, 0.05)
    model.save_pretrained(folder)
    return folder


def mpnet(assets: Path, folder: Path, seed: int = 3) -> Path:
    import torch

    from polyformers import MPNetConfig, MPNetModel

    torch.manual_seed(seed)
    config = MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=514)
    model = MPNetModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(assets / "mpnet" / name, folder / name)
    return folder
