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


def test_default_template_is_chatml(gpt2):
    assert gpt2.chat_template is None
    text = gpt2.apply_chat_template(MESSAGES[1:], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"


def test_raise_exception_and_the_sandbox(gpt2):
    with pytest.raises(jinja2.TemplateError, match="unsupported role tool"):
        gpt2.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=CHAT_TEMPLATE)
    with pytest.raises(jinja2.exceptions.SecurityError):  # templates cannot change their inputs
        gpt2.apply_chat_template(MESSAGES, chat_template="{{ messages.append(1) }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        gpt2.apply_chat_template(MESSAGES, chat_template="{{ ''.__class__.__subclasses__() }}")
    with pytest.raises(TypeError, match="conversation"):
        gpt2.apply_chat_template("hello", chat_template=CHAT_TEMPLATE)
