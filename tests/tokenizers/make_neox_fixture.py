"""Builds tests/fixtures/neox/: the GPT-NeoX / MPT tokenizer as a tokenizer.json, with reference tokenizations.

No model hub is reachable from the test machines, but the llama.cpp sources inside the llama-cpp-python
source distribution carry the MPT vocabulary (the GPT-NeoX-20B one) as a vocab-only GGUF file,
``vendor/llama.cpp/models/ggml-vocab-mpt.gguf``, next to reference tokenizations of 47 texts (``.inp`` /
``.out``) that were made with the original tokenizer. This script turns the GGUF back into the
tokenizer.json the original checkpoints ship (NFC, byte-level BPE, the two control tokens at ids 0 and 1
and the 23 whitespace-run tokens added after the BPE vocabulary), checks it against every reference case
and writes the folder.

    python tests/tokenizers/make_neox_fixture.py                  # downloads the sdist with pip
    python tests/tokenizers/make_neox_fixture.py --sdist llama_cpp_python-0.3.36.tar.gz

Needs the ``gguf`` package (pure Python) and, for the download, ``scikit-build-core`` importable by pip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SDIST = "llama-cpp-python==0.3.36"
MEMBERS = {
    "vendor/llama.cpp/models/ggml-vocab-mpt.gguf": "ggml-vocab-mpt.gguf",
    "vendor/llama.cpp/models/ggml-vocab-mpt.gguf.inp": "ggml-vocab-mpt.gguf.inp",
    "vendor/llama.cpp/models/ggml-vocab-mpt.gguf.out": "ggml-vocab-mpt.gguf.out",
    "vendor/llama.cpp/LICENSE": "LICENSE",
}
OUT_DEFAULT = Path(__file__).resolve().parents[1] / "fixtures" / "neox"
CASE_SEPARATOR = "\n__ggml_vocab_test__\n"

# GGUF token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4


def download_sdist(directory: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
         SDIST, "-d", str(directory)],
        check=True,
    )
    return next(directory.glob("llama_cpp_python-*.tar.gz"))


def extract(sdist: Path, directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[-1]
            if inner in MEMBERS:
                target = directory / MEMBERS[inner]
                target.write_bytes(archive.extractfile(member).read())
                found[MEMBERS[inner]] = target
    missing = set(MEMBERS.values()) - set(found)
    if missing:
        raise SystemExit(f"{sdist}: expected {sorted(missing)} inside the source distribution")
    return found


def read_gguf_vocab(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(name: str):
        return reader.fields[name].contents()

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"{path}: expected a byte-level BPE ('gpt2') vocabulary, got {model!r}")
    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "types": field("tokenizer.ggml.token_type"),
        "merges": field("tokenizer.ggml.merges"),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
        "unk": field("tokenizer.ggml.unknown_token_id"),
    }


def build_tokenizer(gguf_vocab: dict) -> Tokenizer:
    tokens, types = gguf_vocab["tokens"], gguf_vocab["types"]
    vocab: dict[str, int] = {}
    specials: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    for index, (token, kind) in enumerate(zip(tokens, types)):
        if kind == USER_DEFINED and token == f"[PAD{index}]":
            continue  # rows that only pad the embedding matrix to a multiple of 128
        if kind == NORMAL:
            vocab[token] = index
        elif kind == CONTROL:
            vocab[token] = index  # the control tokens are BPE vocabulary entries as well as special tokens
            specials.append((index, token))
        elif kind == USER_DEFINED:
            added.append((index, token))
        else:
            raise SystemExit(f"token {index} {token!r}: unexpected GGUF token type {kind}")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise SystemExit("the BPE vocabulary ids are not 0..n-1")
    merges = [tuple(line.split(" ")) for line in gguf_vocab["merges"]]
    if any(len(merge) != 2 for merge in merges):
        raise SystemExit("a merge is not two space-separated tokens")

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                   fuse_unk=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for _, token in specials])
    # The whitespace runs were added as ordinary tokens, matched on the normalized text.
    for index, token in added:
        tokenizer.add_tokens([AddedToken(token, normalized=True, special=False)])
        if tokenizer.token_to_id(token) != index:
            raise SystemExit(f"added token {token!r} got id {tokenizer.token_to_id(token)}, expected {index}")
    for index, token in specials:
        if tokenizer.token_to_id(token) != index:
            raise SystemExit(f"special token {token!r} got id {tokenizer.token_to_id(token)}, expected {index}")
    return tokenizer


def read_cases(inp: Path, out: Path) -> list[tuple[str, list[int]]]:
    texts = inp.read_text(encoding="utf-8").split(CASE_SEPARATOR)
    lines = out.read_text(encoding="utf-8").split("\n")
    # every text is followed by the separator, and the .out file ends with a newline
    if texts and texts[-1] == "":
        texts.pop()
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) != len(lines):
        raise SystemExit(f"{inp.name} has {len(texts)} texts but {out.name} has {len(lines)} lines")
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines)]


def check(tokenizer: Tokenizer, cases: list[tuple[str, list[int]]]) -> None:
    wrong = [(text, ids) for text, ids in cases if tokenizer.encode(text, add_special_tokens=False).ids != ids]
    if wrong:
        raise SystemExit(f"{len(wrong)} of {len(cases)} reference cases differ, first: {wrong[0]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="llama-cpp-python source distribution (downloaded if absent)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sdist = args.sdist or download_sdist(tmp)
        files = extract(sdist, tmp)
        gguf_vocab = read_gguf_vocab(files["ggml-vocab-mpt.gguf"])
        tokenizer = build_tokenizer(gguf_vocab)
        cases = read_cases(files["ggml-vocab-mpt.gguf.inp"], files["ggml-vocab-mpt.gguf.out"])
        check(tokenizer, cases)

        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        state = json.loads(tokenizer.to_str())
        # "a b" strings, the merges format that every version of the tokenizers library reads
        state["model"]["merges"] = [" ".join(pair) if isinstance(pair, list) else pair
                                    for pair in state["model"]["merges"]]
        (out / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False, separators=(",", ":")),
                                            encoding="utf-8")
        check(Tokenizer.from_file(str(out / "tokenizer.json")), cases)
        names = {gguf_vocab[key]: tokenizer.id_to_token(gguf_vocab[key]) for key in ("bos", "eos", "unk")}
        special_map = {
            "bos_token": names[gguf_vocab["bos"]],
            "eos_token": names[gguf_vocab["eos"]],
            "unk_token": names[gguf_vocab["unk"]],
        }
        (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
        config = {
            "add_prefix_space": False,
            **special_map,
            "clean_up_tokenization_spaces": True,
            "model_max_length": 2048,
            "tokenizer_class": "GPTNeoXTokenizer",
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in ("ggml-vocab-mpt.gguf.inp", "ggml-vocab-mpt.gguf.out", "LICENSE"):
            (out / name).write_bytes(files[name].read_bytes())
        print(f"wrote {out}: vocabulary {tokenizer.get_vocab_size(with_added_tokens=False)} "
              f"(+{tokenizer.get_vocab_size() - tokenizer.get_vocab_size(with_added_tokens=False)} added), "
              f"{len(gguf_vocab['merges'])} merges, {len(cases)} reference cases reproduced")


if __name__ == "__main__":
    main()
