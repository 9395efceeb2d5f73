"""``apply_chat_template`` on the tokenizers (the chat endpoint's formatting)."""

from __future__ import annotations

import jinja2
import pytest
import torch

from polyformers import AutoTokenizer, GPT2Tokenizer

from .checkpoints import CHAT_TEMPLATE

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def gpt2(assets):
    return GPT2Tokenizer(str(assets / "gpt2" / "vocab.json"), str(assets / "gpt2" / "merges.txt"))


def test_render_and_tokenize(gpt2):
    text = gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, tokenize=False)
    assert text == "system: Be brief.\nuser: Hello there\n"
    prompt = gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, tokenize=False,
                                      add_generation_prompt=True)
    assert prompt == text + "assistant:"
    ids = gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, add_generation_prompt=True)
    assert ids == gpt2.encode(prompt, add_special_tokens=False)
    tensor = gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, return_tensors="pt")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, len(gpt2.encode(text)))
    cut = gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, truncation=True, max_length=3)
    assert cut == gpt2.encode(text)[:3]


def test_template_sees_special_tokens_and_trims_blocks(gpt2):
    # Expected strings as the 4.37 reference renders them: a block tag takes its line's indentation and
    # its newline with it; an expression's do not.
    template = "{% for m in messages %}\n    {{ m.content }}{{ eos_token }}\n{% endfor %}"
    assert gpt2.apply_chat_template(MESSAGES, chat_template=template, tokenize=False) == \
        "    Be brief.<|endoftext|>\n    Hello there<|endoftext|>\n"
    template = "{% for m in messages %}\n    {% if m.role == 'user' %}U{% endif %}{{ m.content }}\n{% endfor %}"
    assert gpt2.apply_chat_template(MESSAGES, chat_template=template, tokenize=False) == "Be brief.\nUHello there\n"
    ids = gpt2.apply_chat_template(MESSAGES, chat_template="{{ bos_token }}{{ messages[1].content }}")
    assert ids[0] == 50256  # the special token is recognised in the rendered text, not added


def test_template_from_the_tokenizer_and_its_folder(gpt2, assets, tmp_path):
    gpt2.chat_template = CHAT_TEMPLATE
    try:
        assert gpt2.apply_chat_template(MESSAGES, tokenize=False).startswith("system: Be brief.")
        gpt2.save_pretrained(tmp_path)
    finally:
        gpt2.chat_template = None
    for use_fast in (False, True):
        loaded = AutoTokenizer.from_pretrained(tmp_path, use_fast=use_fast)
        assert loaded.chat_template == CHAT_TEMPLATE
        assert loaded.apply_chat_template(MESSAGES, add_generation_prompt=True) == \
            gpt2.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATE, add_generation_prompt=True)


_DEFAULTS_JOB = r"""
import json, sys
from transformers import GPT2Tokenizer, GPT2TokenizerFast, GPTNeoXTokenizerFast, RobertaTokenizer
vocab, merges, neox, messages = json.loads(sys.stdin.read())
made = {"GPT2Tokenizer": GPT2Tokenizer(vocab, merges), "GPT2TokenizerFast": GPT2TokenizerFast(vocab, merges),
        "RobertaTokenizer": RobertaTokenizer(vocab, merges),
        "GPTNeoXTokenizerFast": GPTNeoXTokenizerFast.from_pretrained(neox)}
print(json.dumps({name: [tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                         tok.apply_chat_template(messages)] for name, tok in made.items()}))
"""


def test_default_templates_are_the_reference_classes(assets, legacy_python):
    """With no template set, each class uses 4.37's default for it: GPT-2 and GPT-NeoX (GPT-J's and MPT's
    tokenizers) join the messages' texts with the end-of-text token, others use ChatML."""
    import json
    import subprocess
    from pathlib import Path

    import polyformers

    vocab, merges = str(assets / "gpt2" / "vocab.json"), str(assets / "gpt2" / "merges.txt")
    neox = str(Path(__file__).resolve().parents[1] / "fixtures" / "neox")
    proc = subprocess.run([str(legacy_python), "-c", _DEFAULTS_JOB], input=json.dumps([vocab, merges, neox, MESSAGES]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = {"GPT2Tokenizer": polyformers.GPT2Tokenizer(vocab, merges),
            "GPT2TokenizerFast": polyformers.GPT2TokenizerFast(vocab, merges),
            "RobertaTokenizer": polyformers.RobertaTokenizer(vocab, merges),
            "GPTNeoXTokenizerFast": polyformers.GPTNeoXTokenizerFast.from_pretrained(neox)}
    for name, tok in ours.items():
        assert tok.chat_template is None
        text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        assert [text, tok.apply_chat_template(MESSAGES)] == reference[name], name
    assert reference["GPT2Tokenizer"][0] == "Be brief.<|endoftext|>Hello there<|endoftext|>"
    assert reference["RobertaTokenizer"][0].startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_raise_exception_and_the_sandbox(gpt2):
    with pytest.raises(jinja2.TemplateError, match="unsupported role tool"):
        gpt2.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=CHAT_TEMPLATE)
    with pytest.raises(jinja2.exceptions.SecurityError):  # templates cannot change their inputs
        gpt2.apply_chat_template(MESSAGES, chat_template="{{ messages.append(1) }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        gpt2.apply_chat_template(MESSAGES, chat_template="{{ ''.__class__.__subclasses__() }}")
    with pytest.raises(TypeError, match="conversation"):
        gpt2.apply_chat_template("hello", chat_template=CHAT_TEMPLATE)
