"""A tokenizer behaviour where transformers 5 left 4.37 (docs/differences-from-transformers-5.md): a GPT-2
fast tokenizer given ``vocab_file=`` and ``merges_file=`` by keyword is built from those files (4.37);
transformers 5 leaves its vocabulary empty then (every text encodes to ``[]``)."""

import polyformers


def test_gpt2_fast_tokenizer_is_filled_from_vocab_and_merges_keywords(assets):
    files = dict(vocab_file=str(assets / "gpt2" / "vocab.json"), merges_file=str(assets / "gpt2" / "merges.txt"))
    for cls in (polyformers.GPT2TokenizerFast, polyformers.GPT2Tokenizer):
        tokenizer = cls(**files)
        assert tokenizer("hello world")["input_ids"] == [31373, 995]
        assert len(tokenizer) == 50257
