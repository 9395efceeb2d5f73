"""PreTrainedTokenizerFast / ElectraTokenizerFast against the 4.37 reference, on the real ELECTRA vocabulary.

One description of tokenizers and calls (see _fast_runner.py) is run three times: by polyformers, by
the reference in its own interpreter (one subprocess for the whole module), and by polyformers again
for the folders that the reference saved. Each test then compares one group of answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ._texts import PAIRS, added, corpus_texts, pretokenized_words, sample_lines
from ._twins import add_slow_twins, follows_slow_twin

HERE = Path(__file__).resolve().parent
ORACLE_SCRIPT = HERE / "_fast_oracle.py"


def _load_runner():
    spec = importlib.util.spec_from_file_location("_fast_runner", HERE / "_fast_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()

EDGE_TEXTS = [
    "HäLLo Wörld, naïve café!",
    "ÅNGSTRÖM Ωmega ß ẞ İstanbul ı",
    "e\u0301cole a\u0300 la\u0308 n\u0303",
    "ﬁne ﬀ ligatures ½ ²",
    "soft\u00adhyphen and\u00ad\u00adtwo",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj",
    "ctrl\x00nul\x01soh\x07bel\x1f\x7fdel\x85nel end",
    "tabs\tand\r\nnewlines\n\nhere\x0bvt\x0cff",
    "nbsp\u00a0here\u2003em\u3000ideographic\u2028ls",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇯🇵",
    "special [CLS] inside [SEP] and [MASK] [PAD] [UNK] text",
    "lower [cls] [mask] and glued[SEP]tokens[MASK]x",
    "Chinese 中文字符测试 and Japanese ひらがな カタカナ 漢字混じり",
    "Korean 한국어 텍스트, Thai ภาษาไทย, Hindi नमस्ते",
    "Arabic مرحبا بالعالم Hebrew שלום",
    "punctuation don't stop!!! ... ?! «quotes» “curly” — dash",
    "numbers 3.14 1,000,000 $5 10% 2024-01-31",
    "url https://example.com/a?b=c&d=e#frag user@mail.org",
    "a" * 105 + " short",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "   leading and trailing spaces   ",
    " ",
    "",
    "<ent>glued<ent> newword MiXeD mixed [E1]after [E2] end",
    "x <ent> y newwordy MIXED",
]

OVERRIDE_TEXTS = [
    "HäLLo Wörld, naïve CAFÉ!",
    "ÅNGSTRÖM Ωmega ß İstanbul e\u0301cole",
    "Chinese 中文字符测试 Japanese 漢字混じり",
    "The Quick Brown Fox jumps Over THE lazy dog",
    "Ünïcödé Àccents everywhere: résumé, façade, jalapeño",
    "ctrl\x00nul\x07 and\u00a0nbsp",
]

WORDS = pretokenized_words("[SEP]")

LONG_PAIRS = [
    (
        "The quick brown fox jumps over the lazy dog near the river bank at sunset.",
        "A second passage that talks about something else entirely and goes on for a while.",
    ),
    ("Short question?", "A long context paragraph " * 6),
    ("A long question paragraph " * 6, "Short context."),
]

PROBES_BATCH = [
    ["char_to_token", [0, 5]],
    ["char_to_token", [1, 3]],
    ["char_to_token", [0, 3, 1]],
    ["token_to_chars", [0, 2]],
    ["token_to_chars", [1, 0]],
    ["word_to_tokens", [0, 1]],
    ["word_to_tokens", [0, 0, 1]],
    ["token_to_word", [1, 3]],
    ["char_to_word", [0, 4]],
    ["char_to_word", [0, 2, 1]],
    ["word_to_chars", [0, 1]],
    ["token_to_sequence", [0, 4]],
]


def _corpus(assets: Path) -> list[str]:
    return corpus_texts(assets, 40, 0, 6, 100, tutor_glob="tutor.*.utf-8")


def _build_spec(assets: Path, work: Path) -> dict:
    vocab = str(assets / "minilm" / "vocab.txt")
    tokenizer_json = str(assets / "minilm" / "tokenizer.json")
    folder = str(assets / "minilm")
    tokenizers: dict = {
        "v": {"cls": "ElectraTokenizerFast", "args": [vocab]},
        "j": {"cls": "ElectraTokenizerFast", "kwargs": {"tokenizer_file": tokenizer_json}},
        "m": {"cls": "ElectraTokenizerFast", "how": "from_pretrained", "args": [folder]},
        "left": {
            "cls": "ElectraTokenizerFast",
            "args": [vocab],
            "kwargs": {"padding_side": "left", "truncation_side": "left", "model_max_length": 24},
        },
        "added": {
            "cls": "ElectraTokenizerFast",
            "args": [vocab],
            "add_tokens": [
                [[added("<ent>", lstrip=True, rstrip=True), "newword", added("MiXeD", normalized=False)], False]
            ],
            "add_special_tokens": {"additional_special_tokens": [added("[E1]", lstrip=True), "[E2]"]},
        },
    }
    calls: list[dict] = []

    def call(group: str, tok: str, *args, op: str = "__call__", probes=None, side: str = "both", **kwargs) -> None:
        calls.append(
            {
                "id": f"{group}/{len(calls)}",
                "tok": tok,
                "op": op,
                "args": list(args),
                "kwargs": kwargs,
                "probes": probes or [],
                "side": side,
            }
        )

    rich = {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_length": True}

    # real text
    corpus = _corpus(assets)
    call("corpus", "v", corpus, **rich)
    call("corpus", "j", corpus[::3], **rich)
    call("corpus", "m", corpus[1::3], **rich)
    for text in corpus[::25]:
        call("corpus", "m", text, op="tokenize")

    # edge cases, one call each so that every character can be probed
    for tok in ("v", "added"):
        call("edge", tok, EDGE_TEXTS, **rich)
        for text in EDGE_TEXTS:
            probes = [["char_to_token", [i]] for i in range(len(text))]
            probes += [["char_to_word", [i]] for i in range(0, len(text), 3)]
            call("edge", tok, text, probes=probes, **rich)
            call("edge", tok, text, op="tokenize")

    # normalizer options: ours (fast, from tokenizer.json) vs the reference's slow tokenizer and its fast one
    for lower in (True, False):
        for strip in (None, True, False):
            for chinese in (True, False) if lower is False and strip is None else (True,):
                options = {"do_lower_case": lower, "strip_accents": strip, "tokenize_chinese_chars": chinese}
                name = f"lower={lower},strip={strip},chinese={chinese}"
                tokenizers[f"fast:{name}"] = {
                    "cls": "ElectraTokenizerFast",
                    "kwargs": {"tokenizer_file": tokenizer_json, **options},
                }
                tokenizers[f"slow:{name}"] = {
                    "cls": "ElectraTokenizer",
                    "args": [vocab],
                    "kwargs": options,
                    "side": "oracle",
                }
                for kind in ("fast", "slow"):
                    side = "both" if kind == "fast" else "oracle"
                    call(f"options:{name}:{kind}", f"{kind}:{name}", OVERRIDE_TEXTS, side=side)
                    call(f"options:{name}:{kind}", f"{kind}:{name}", OVERRIDE_TEXTS[0], op="tokenize", side=side)
                    call(f"options:{name}:{kind}", f"{kind}:{name}", OVERRIDE_TEXTS[2], op="tokenize", side=side)
    tokenizers["fast:chinese=False"] = {
        "cls": "ElectraTokenizerFast",
        "kwargs": {"tokenizer_file": tokenizer_json, "tokenize_chinese_chars": False},
    }
    tokenizers["slow:chinese=False"] = {
        "cls": "ElectraTokenizer",
        "args": [vocab],
        "kwargs": {"tokenize_chinese_chars": False},
        "side": "oracle",
    }
    call("options:chinese=False:fast", "fast:chinese=False", OVERRIDE_TEXTS)
    call("options:chinese=False:slow", "slow:chinese=False", OVERRIDE_TEXTS, side="oracle")

    # pairs, batches, pre-split words
    for tok in ("v", "left"):
        for first, second in PAIRS:
            # One text with an empty second one: the reference's fast tokenizer drops the pair, its slow one
            # and ours keep it (test_hypothesis_tokenizers.py compares with the slow one).
            if second:
                call("pairs", tok, first, second, **rich)
        call("pairs", tok, [p[0] for p in PAIRS], [p[1] for p in PAIRS], probes=PROBES_BATCH, **rich)
        call("pairs", tok, PAIRS, op="batch_encode_plus", **rich)
        call("pairs", tok, PAIRS[0][0], PAIRS[0][1], op="tokenize", add_special_tokens=True)
        call("pairs", tok, PAIRS[0][0], PAIRS[0][1], op="encode")
        call("words", tok, WORDS[0], is_split_into_words=True, probes=[["word_to_tokens", [3]]], **rich)
        call("words", tok, WORDS, is_split_into_words=True, padding=True, probes=PROBES_BATCH, **rich)
        call("words", tok, WORDS[:2], WORDS[1:], is_split_into_words=True, **rich)
        call("words", tok, WORDS[0], WORDS[1], is_split_into_words=True, **rich)

    # padding
    texts = [p[0] for p in PAIRS] + [p[1] for p in PAIRS]
    for tok in ("v", "left"):
        call("padding", tok, texts, padding=True, **rich)
        call("padding", tok, texts, padding="longest", pad_to_multiple_of=8)
        call("padding", tok, texts, padding="max_length", max_length=30, truncation=True)
        call("padding", tok, texts, padding="max_length", max_length=24, truncation=True, pad_to_multiple_of=8)
        call("padding", tok, texts[:3], padding=True, return_attention_mask=False, return_token_type_ids=False)
        call("padding", tok, texts[0], padding="max_length", max_length=40, **rich)
        call("padding", tok, PAIRS[:3], op="batch_encode_plus", padding=True, **rich)
        call("padding", tok, texts, padding=True, truncation=True)  # left uses model_max_length=24

    # truncation, stride and overflow; some combinations cannot be satisfied and must fail on both sides
    first = [p[0] for p in LONG_PAIRS]
    second = [p[1] for p in LONG_PAIRS]
    overflow = {"return_overflowing_tokens": True, **rich}
    for tok in ("v", "left"):
        for strategy in (True, "longest_first", "only_first", "only_second"):
            for one, two in LONG_PAIRS:
                call("truncation", tok, one, two, truncation=strategy, max_length=20, stride=3, **overflow)
            call(
                "truncation",
                tok,
                first,
                second,
                truncation=strategy,
                max_length=20,
                stride=3,
                probes=[["char_to_token", [1, 3]], ["token_to_chars", [2, 3]]],
                **overflow,
            )
            call("truncation", tok, first, second, truncation=strategy, max_length=20)
        call("truncation", tok, first[1:], second[1:], truncation="only_first", max_length=24, stride=2, **overflow)
        call("truncation", tok, first[0] + " " + second[1], truncation=True, max_length=12, stride=4, **overflow)
        call(
            "truncation",
            tok,
            first + second,
            truncation=True,
            max_length=16,
            stride=2,
            padding=True,
            pad_to_multiple_of=8,
            return_tensors="np",
            **overflow,
        )
        call("truncation", tok, first[0], truncation="only_first", max_length=10, return_overflowing_tokens=True)
        call("truncation", tok, second, max_length=12)
        call("truncation", tok, first, second, truncation="only_second", max_length=8)
        call("truncation", tok, WORDS, is_split_into_words=True, truncation=True, max_length=5, stride=1, **overflow)

    # tensors
    for kind in ("pt", "np", "tf", "jax"):
        call("tensors", "v", texts, padding=True, return_tensors=kind, **rich)
        call("tensors", "v", texts[0], return_tensors=kind)
        call("tensors", "v", texts[0], texts[1], return_tensors=kind, op="encode")

    # ids, tokens, decoding
    ids = [101, 7592, 1010, 2088, 999, 1045, 2123, 1005, 1056, 2113, 1012, 102, 0, 0]
    batch_ids = [ids, [101, 2023, 2003, 1037, 3231, 1029, 102], [100, 103, 2128, 3527, 2099]]
    for tok in ("v", "added", "m"):
        call("decode", tok, ids, op="decode")
        call("decode", tok, ids, op="decode", skip_special_tokens=True)
        call("decode", tok, ids, op="decode", clean_up_tokenization_spaces=False)
        call("decode", tok, 7592, op="decode")
        call("decode", tok, batch_ids, op="batch_decode", skip_special_tokens=True)
        call("decode", tok, batch_ids, op="batch_decode")
        call("decode", tok, ids, op="convert_ids_to_tokens")
        call("decode", tok, ids, op="convert_ids_to_tokens", skip_special_tokens=True)
        call("decode", tok, 2088, op="convert_ids_to_tokens")
        call("decode", tok, ["hello", "##ing", "notaword", "[MASK]", "<ent>", "[E1]"], op="convert_tokens_to_ids")
        call("decode", tok, "[SEP]", op="convert_tokens_to_ids")
        call("decode", tok, ["hello", "##ing", "world"], op="convert_tokens_to_string")
        call("decode", tok, [5, 6], [7], op="build_inputs_with_special_tokens")
        call("decode", tok, [5, 6], op="build_inputs_with_special_tokens")
        call("decode", tok, [5, 6], [7, 8, 9], op="create_token_type_ids_from_sequences")
        call("decode", tok, [5, 6], op="create_token_type_ids_from_sequences")
        call("decode", tok, False, op="num_special_tokens_to_add")
        call("decode", tok, True, op="num_special_tokens_to_add")
        call("decode", tok, op="get_added_vocab")
        call("decode", tok, [7592, 2088], [1037], op="prepare_for_model", padding="max_length", max_length=8)
        call("decode", tok, [7592, 2088], [1037], op="prepare_for_model", return_special_tokens_mask=True)  # fails
        call("decode", tok, [101, 7592, 102, 0], op="get_special_tokens_mask", already_has_special_tokens=True)
        call("decode", tok, [{"input_ids": [101, 7592, 102]}, {"input_ids": [101, 102]}], op="pad",
             return_attention_mask=True)
        call("decode", tok, {"input_ids": [[101, 7592, 2088, 102], [101, 102]]}, op="pad", padding="max_length",
             max_length=6, return_tensors="np")
    for text in EDGE_TEXTS:
        call("roundtrip", "added", text, op="encode", side="both")

    # growing the vocabulary step by step (calls run in order on one tokenizer)
    tokenizers["grow"] = {"cls": "ElectraTokenizerFast", "args": [vocab]}
    call("grow", "grow", ["foo_bar", added("<x>", lstrip=True), "hello"], op="add_tokens")
    call("grow", "grow", op="__len__")
    call("grow", "grow", "a foo_bar <x>b hello x [NEW] y", op="tokenize")
    call("grow", "grow", ["foo_bar", added("[Y]", rstrip=True)], op="add_tokens")
    call("grow", "grow", {"additional_special_tokens": ["[NEW]", "hello"]}, op="add_special_tokens")
    call("grow", "grow", {"cls_token": "[BOS]", "pad_token": "[PAD]"}, op="add_special_tokens")
    call("grow", "grow", op="__len__")
    call("grow", "grow", op="get_added_vocab")
    call("grow", "grow", ["a foo_bar <x>b hello x [NEW] y", "[Y] z [BOS]"], **rich)
    call("grow", "grow", [101, 1037, 30522, 30523, 30525, 30526, 1061, 102], op="decode", skip_special_tokens=True)
    call("grow", "grow", [30527, 1037, 30522, 30525, 102], op="convert_ids_to_tokens", skip_special_tokens=True)
    call("grow", "grow", op="num_special_tokens_to_add")

    # training a new vocabulary with the same pipeline
    lines = sample_lines(assets / "corpora" / "english.txt", 3000, seed=7)
    call("train", "v", lines, 400, op="train_new_from_iterator")
    call("train", "added", [lines[:1500], lines[1500:]], 300, op="train_new_from_iterator",
         new_special_tokens=["[NEW]"], special_tokens_map={"[CLS]": "[BOS]", "[MASK]": "[MSK]"})
    for train_call in calls[-2:]:
        train_call["check_texts"] = lines[:40] + ["hello [NEW] [BOS] x <ent> [E1] newword", "[MSK] [MASK]"]
    add_slow_twins(tokenizers, calls, TWINNED, "ElectraTokenizer")
    return {"tokenizers": tokenizers, "calls": calls}


# The tokenizers with added tokens and do_lower_case, where 4.37's fast tokenizer drifts from its slow one:
# polyformers' fast tokenizer follows the slow one there (_twins.py).
TWINNED = ("added", "grow")


def _run_oracle(legacy_python: Path, spec: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [str(legacy_python), str(ORACLE_SCRIPT)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def _ours(spec: dict, sides) -> dict:
    import polyformers.tokenizers as lib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # JSON round trip: both sides' answers then compare as plain data (tuples become lists)
        return json.loads(json.dumps(runner.run(spec, lib, sides=sides)))


@pytest.fixture(scope="module")
def results(assets: Path, legacy_python: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("fast")
    spec = _build_spec(assets, work)
    vocab = str(assets / "minilm" / "vocab.txt")
    tokenizer_json = str(assets / "minilm" / "tokenizer.json")

    # Folders that polyformers saves (first run) and the reference reloads.
    ours_saved = {
        "added": work / "ours-added",
        "cased": work / "ours-cased",
        "j": work / "ours-j",
        "legacy": work / "ours-legacy",
    }
    tokenizers = spec["tokenizers"]
    tokenizers["save:added"] = {**tokenizers["added"], "save": str(ours_saved["added"]), "side": "ours"}
    tokenizers["save:cased"] = {
        "cls": "ElectraTokenizerFast",
        "kwargs": {"tokenizer_file": tokenizer_json, "do_lower_case": False, "tokenize_chinese_chars": False},
        "save": str(ours_saved["cased"]),
        "side": "ours",
    }
    tokenizers["save:j"] = {**tokenizers["m"], "save": str(ours_saved["j"]), "side": "ours"}
    tokenizers["ref-save:j"] = {**tokenizers["m"], "save": str(work / "ref-j"), "side": "oracle"}
    tokenizers["save:legacy"] = {
        "cls": "ElectraTokenizerFast",
        "args": [vocab],
        "add_tokens": [[["newword"], False]],
        "save": str(ours_saved["legacy"]),
        "save_kwargs": {"legacy_format": True},
        "side": "ours",
    }
    # Folders that the reference saves and polyformers reloads (third run).
    oracle_saved = {"json": work / "ref-json", "vocab-only": work / "ref-vocab-only", "added": work / "ref-added"}
    tokenizers["ref-save:json"] = {
        "cls": "ElectraTokenizerFast",
        "args": [vocab],
        "kwargs": {"do_lower_case": False},
        "save": str(oracle_saved["json"]),
        "side": "oracle",
    }
    tokenizers["ref-save:added"] = {**tokenizers["added"], "save": str(oracle_saved["added"]), "side": "oracle"}
    tokenizers["ref-save:legacy"] = {
        "cls": "ElectraTokenizerFast",
        "args": [vocab],
        "save": str(oracle_saved["vocab-only"]),
        "save_kwargs": {"legacy_format": True},
        "side": "oracle",
    }
    bare = work / "bare-vocab"
    bare.mkdir()
    shutil.copy(vocab, bare / "vocab.txt")

    loads = {
        # name: (folder, side that loads it, the tokenizer whose answers it must reproduce)
        "load:ours-added": (ours_saved["added"], "oracle", "added"),
        "load:ours-cased": (ours_saved["cased"], "oracle", "fast:lower=False,strip=None,chinese=False"),
        "load:ours-legacy": (ours_saved["legacy"], "oracle", None),
        "load:ref-json": (oracle_saved["json"], "late", "fast:lower=False,strip=None,chinese=True"),
        "load:ref-added": (oracle_saved["added"], "late", "added"),
        "load:ref-vocab-only": (oracle_saved["vocab-only"], "late", "v"),
        "load:bare-vocab": (bare, "late", "v"),
    }
    probe_texts = EDGE_TEXTS + OVERRIDE_TEXTS
    for name, (folder, side, _) in loads.items():
        tokenizers[name] = {
            "cls": "ElectraTokenizerFast",
            "how": "from_pretrained",
            "args": [str(folder)],
            "side": side,
        }
        spec["calls"].append(
            {"id": f"{name}/encode", "tok": name, "args": [probe_texts], "kwargs": {"return_offsets_mapping": True},
             "side": side}
        )
        spec["calls"].append({"id": f"{name}/decode", "tok": name, "op": "batch_decode", "side": side,
                              "args": [[[101, 7592, 30522, 30523, 30524, 30525, 30526, 102]]]})
    # the reference's answers to compare with, for the tokenizers that are built only on one side
    for name in ("added", "fast:lower=False,strip=None,chinese=False", "fast:lower=False,strip=None,chinese=True", "v"):
        spec["calls"].append({"id": f"expect:{name}/encode", "tok": name, "args": [probe_texts],
                              "kwargs": {"return_offsets_mapping": True}})
        spec["calls"].append({"id": f"expect:{name}/decode", "tok": name, "op": "batch_decode",
                              "args": [[[101, 7592, 30522, 30523, 30524, 30525, 30526, 102]]]})

    add_slow_twins(tokenizers, spec["calls"], TWINNED, "ElectraTokenizer")
    ours = _ours(spec, sides=("both", "ours"))
    theirs = _run_oracle(legacy_python, spec)
    late = _ours(spec, sides=("late",))
    return {"spec": spec, "ours": ours, "theirs": theirs, "late": late, "loads": loads,
            "ours_saved": ours_saved, "oracle_saved": oracle_saved, "work": work}


def _group(results: dict, prefix: str) -> list[str]:
    ids = [c["id"] for c in results["spec"]["calls"] if c["id"].startswith(prefix + "/") and c["side"] == "both"]
    assert ids, f"no calls in group {prefix!r}"
    return ids


def _compare(ours, theirs, where: str) -> None:
    if ours != theirs:
        raise AssertionError(f"{where}: polyformers differs from the reference\n"
                             f"  ours:   {json.dumps(ours, ensure_ascii=False)[:1500]}\n"
                             f"  theirs: {json.dumps(theirs, ensure_ascii=False)[:1500]}")


# Where 4.37's fast tokenizer drifts from its slow one, polyformers' fast one follows the slow one
# (docs/differences-from-transformers-5.md): with do_lower_case a non-special token added with normalized=True
# is stored lowercased, so the growing tokenizer's "[Y]" is reported as "[y]" (the ids are the same).
_SLOW_CONTENTS = {"[Y]": "[y]"}


def _as_slow(call: dict, answer):
    if call["tok"] == "grow" and call["op"] == "get_added_vocab" and isinstance(answer, dict):
        return {_SLOW_CONTENTS.get(key, key): value for key, value in answer.items()}
    return answer


def _compare_group(results: dict, prefix: str) -> list[str]:
    """Compare a group's calls with 4.37's fast tokenizer, or with its slow twin where the two differ;
    returns the ids of the calls that follow the slow twin."""
    calls = {call["id"]: call for call in results["spec"]["calls"]}
    followed = []
    for call_id in _group(results, prefix):
        ours = results["ours"]["calls"][call_id]
        theirs = _as_slow(calls[call_id], results["theirs"]["calls"][call_id])
        if follows_slow_twin(ours, theirs, results["theirs"]["calls"].get(call_id + "|slow")):
            followed.append(call_id)
            continue
        _compare(ours, theirs, call_id)
    return followed


@pytest.mark.parametrize("name", ["v", "j", "m", "left", "added", "grow"])
def test_tokenizer_state_matches(results, name):
    ours = results["ours"]["tokenizers"][name]
    assert "__error__" not in ours, ours
    _compare(ours, results["theirs"]["tokenizers"][name], f"tokenizer {name}")


@pytest.mark.parametrize("group", ["corpus", "edge", "pairs", "words", "padding", "truncation", "tensors", "decode",
                                   "roundtrip", "grow", "train"])
def test_calls_match_reference(results, group):
    followed = _compare_group(results, group)
    # where 4.37's fast tokenizer drifts from its slow one (the normalized=False "MiXeD" matched as written;
    # add_tokens counting "hello", which the vocabulary holds), ours gives the slow one's answer
    assert bool(followed) == (group in ("edge", "roundtrip", "grow")), followed


def test_corpus_is_substantial(results):
    """The corpus comparison covers hundreds of lines in many scripts, with non-trivial tokenization."""
    first = results["ours"]["calls"][_group(results, "corpus")[0]]
    assert len(first["tokens"]) > 300
    assert sum("[UNK]" not in tokens for tokens in first["tokens"]) > 250
    assert any(any(t.startswith("##") for t in tokens) for tokens in first["tokens"])


def _option_groups(results):
    return sorted({c["id"].split("/")[0].rsplit(":", 1)[0] for c in results["spec"]["calls"]
                   if c["id"].startswith("options:")})


def test_every_option_combination_matches_slow_reference(results):
    groups = _option_groups(results)
    assert len(groups) == 8  # 2 lowercase x 3 strip_accents, chinese off twice
    for group in groups:
        fast_ids = _group(results, f"{group}:fast")
        slow_ids = [c["id"] for c in results["spec"]["calls"] if c["id"].startswith(f"{group}:slow/")]
        assert len(fast_ids) == len(slow_ids)
        for fast_id, slow_id in zip(fast_ids, slow_ids):
            ours = _strip(results["ours"]["calls"][fast_id])
            slow = _strip(results["theirs"]["calls"][slow_id])
            _compare(ours, slow, f"{fast_id} vs slow reference")
            # the reference's own fast tokenizer honours these three options too
            _compare(ours, _strip(results["theirs"]["calls"][fast_id]), f"{fast_id} vs fast reference")


def _strip(answer):
    return answer["data"] if isinstance(answer, dict) and "data" in answer else answer


def test_options_change_the_output(results):
    """Guard for the comparison above: the options really produce different tokenizations."""
    seen = set()
    for group in _option_groups(results):
        seen.add(json.dumps(_strip(results["ours"]["calls"][_group(results, f"{group}:fast")[0]])))
    assert len(seen) >= 5


@pytest.mark.parametrize("name", ["load:ours-added", "load:ours-cased", "load:ours-legacy"])
def test_reference_loads_our_folders(results, name):
    folder, _, expected = results["loads"][name]
    loaded = results["theirs"]["tokenizers"][name]
    assert "__error__" not in loaded, loaded
    if expected is None:
        expected_state = results["ours"]["tokenizers"]["save:legacy"]
        _compare(loaded["added_tokens_decoder"], expected_state["added_tokens_decoder"], name)
        assert not (folder / "tokenizer.json").exists()
        assert (folder / "vocab.txt").exists() and (folder / "added_tokens.json").exists()
        return
    assert (folder / "tokenizer.json").exists() and (folder / "vocab.txt").exists()
    for what in ("encode", "decode"):
        # 4.37's fast tokenizer loading our folder answers as it does when built the same way (where that
        # drifts from its slow one, ours follows the slow one: test_built_tokenizers_follow_the_slow_twin)
        _compare(_strip(results["theirs"]["calls"][f"{name}/{what}"]),
                 _strip(results["theirs"]["calls"][f"expect:{expected}/{what}"]), f"{name}/{what}")


@pytest.mark.parametrize("name", ["load:ref-json", "load:ref-added", "load:ref-vocab-only", "load:bare-vocab"])
def test_we_load_reference_folders(results, name):
    folder, _, expected = results["loads"][name]
    loaded = results["late"]["tokenizers"][name]
    assert "__error__" not in loaded, loaded
    if name == "load:ref-vocab-only":
        assert not (folder / "tokenizer.json").exists()
    for what in ("encode", "decode"):
        # as our tokenizer built the same way, which test_built_tokenizers_follow_the_reference checks
        _compare(_strip(results["late"]["calls"][f"{name}/{what}"]),
                 _strip(results["ours"]["calls"][f"expect:{expected}/{what}"]), f"{name}/{what}")


def test_built_tokenizers_follow_the_reference(results):
    """The tokenizers that the load tests take as the expected answers give 4.37's fast tokenizer's answers,
    or its slow one's where the two differ; and they do differ on the added tokens' case."""
    followed = []
    for name in ("added", "fast:lower=False,strip=None,chinese=False", "fast:lower=False,strip=None,chinese=True",
                 "v"):
        for what in ("encode", "decode"):
            call_id = f"expect:{name}/{what}"
            ours, theirs = results["ours"]["calls"][call_id], results["theirs"]["calls"][call_id]
            if follows_slow_twin(ours, theirs, results["theirs"]["calls"].get(call_id + "|slow")):
                followed.append(call_id)
            else:
                _compare(ours, theirs, call_id)
    assert followed == ["expect:added/encode"]


def test_transformers_5_loads_our_folder(results):
    from transformers import AutoTokenizer

    folder = results["ours_saved"]["added"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoTokenizer.from_pretrained(str(folder))
    import polyformers.tokenizers as lib

    ours = lib.ElectraTokenizerFast.from_pretrained(str(folder))
    texts = EDGE_TEXTS + OVERRIDE_TEXTS
    got = ours(texts, return_offsets_mapping=True)
    want = theirs(texts, return_offsets_mapping=True)
    # transformers 5, as 4.37's fast tokenizer, matches the normalized=False "MiXeD" as written; ours follows
    # the slow tokenizer, which lowercases the text first (docs/differences-from-transformers-5.md)
    drifted = [i for i, text in enumerate(texts) if "MiXeD" in text]
    assert drifted
    slow = lib.ElectraTokenizer.from_pretrained(str(folder))(texts)["input_ids"]
    for i in range(len(texts)):
        assert got["input_ids"][i] == (slow[i] if i in drifted else want["input_ids"][i]), texts[i]
        assert i in drifted or got["offset_mapping"][i] == [tuple(o) for o in want["offset_mapping"][i]], texts[i]
    assert all(got["input_ids"][i] != want["input_ids"][i] for i in drifted)
    assert ours.decode(got["input_ids"][23]) == theirs.decode(got["input_ids"][23])


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_saved_files_match_reference(results):
    """Same tokenizer saved by both: identical tokenizer_config.json, special_tokens_map.json, vocab.txt and
    (up to the backend's format version) tokenizer.json."""
    ours, theirs = results["ours_saved"]["j"], results["work"] / "ref-j"
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        got, want = _json(ours / name), _json(theirs / name)
        got.pop("name_or_path", None), want.pop("name_or_path", None)
        _compare(got, want, name)
    assert (ours / "vocab.txt").read_bytes() == (theirs / "vocab.txt").read_bytes()
    got, want = _json(ours / "tokenizer.json"), _json(theirs / "tokenizer.json")
    for key in ("truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"):
        _compare(got[key], want[key], f"tokenizer.json[{key!r}]")
    _compare(got["model"]["vocab"], want["model"]["vocab"], "tokenizer.json model vocab")


# ---------------------------------------------------------------------------------------------------
# Behaviour checked in-process: where polyformers deliberately goes beyond the reference, and errors.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib():
    import polyformers.tokenizers as module

    return module


@pytest.fixture(scope="module")
def vocab_file(assets) -> str:
    return str(assets / "minilm" / "vocab.txt")


@pytest.fixture(scope="module")
def tokenizer_json(assets) -> str:
    return str(assets / "minilm" / "tokenizer.json")


def test_backend_settings_are_restored_after_each_call(lib, tokenizer_json, vocab_file, tmp_path):
    """One call's padding/truncation must not leak into the backend (the reference leaves them set)."""
    tok = lib.ElectraTokenizerFast(tokenizer_file=tokenizer_json)
    before = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    assert before[0] is not None and before[1] is not None  # this tokenizer.json enables both
    out = tok(["a b c d e f g h i j k l", "x"], padding="max_length", truncation=True, max_length=10, stride=2,
              pad_to_multiple_of=5, return_overflowing_tokens=True)
    assert [len(row) for row in out["input_ids"]] == [10, 10, 10]
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == before
    assert tok("hello")["input_ids"] == [101, 7592, 102]  # and the next call is not padded to 128
    tok.save_pretrained(tmp_path)
    saved = _json(tmp_path / "tokenizer.json")
    original = _json(Path(tokenizer_json))
    for key in ("truncation", "padding"):
        assert {name: saved[key][name] for name in original[key]} == original[key]

    plain = lib.ElectraTokenizerFast(vocab_file)
    plain(["a b c", "d"], padding=True, truncation=True, max_length=4)
    assert plain.backend_tokenizer.truncation is None and plain.backend_tokenizer.padding is None


def _bert_backend(tokenizer_json: str, **normalizer):
    from tokenizers import Tokenizer, normalizers

    backend = Tokenizer.from_file(tokenizer_json)
    backend.no_truncation()
    backend.no_padding()
    backend.normalizer = normalizers.BertNormalizer(**normalizer)
    return backend


def test_clean_text_is_honoured(lib, tokenizer_json, tmp_path):
    """The reference ignores clean_text; we apply it, whether the backend comes from tokenizer.json or vocab."""
    text = "tab\there nul\x00inside bell\x07 ok"
    default = lib.ElectraTokenizerFast(tokenizer_file=tokenizer_json)
    raw = lib.ElectraTokenizerFast(tokenizer_file=tokenizer_json, clean_text=False)
    expected = _bert_backend(tokenizer_json, clean_text=False, handle_chinese_chars=True, lowercase=True)
    assert raw(text)["input_ids"] == expected.encode(text).ids
    assert raw(text)["input_ids"] != default(text)["input_ids"]

    # saved and reloaded, the option stays; and a tokenizer.json's own setting survives when not overridden
    raw.save_pretrained(tmp_path / "raw")
    again = lib.ElectraTokenizerFast.from_pretrained(tmp_path / "raw")
    assert again(text)["input_ids"] == expected.encode(text).ids
    from_file = lib.ElectraTokenizerFast(tokenizer_file=str(tmp_path / "raw" / "tokenizer.json"))
    assert from_file(text)["input_ids"] == expected.encode(text).ids


def test_normalizer_overrides_on_tokenizer_json(lib, tokenizer_json):
    """Every text option given to the constructor replaces the tokenizer.json's (here: a lowercasing one)."""
    tok = lib.ElectraTokenizerFast(tokenizer_file=tokenizer_json, do_lower_case=False, strip_accents=True,
                                   tokenize_chinese_chars=False, clean_text=False)
    state = json.loads(tok.backend_tokenizer.normalizer.__getstate__())
    assert state == {"type": "BertNormalizer", "clean_text": False, "handle_chinese_chars": False,
                     "strip_accents": True, "lowercase": False}
    assert tok.do_lower_case is False
    assert tok.tokenize("naïve Café") == tok.tokenize("naive Cafe") != tok.tokenize("naive cafe")
    assert tok.tokenize("中文") == ["中", "##文"]  # one word: no split around ideographs


def test_wordpieces_prefix_is_honoured(lib, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "@@believ", "@@ably", "##ably"])
                     + "\n", encoding="utf-8")
    tok = lib.ElectraTokenizerFast(str(vocab), wordpieces_prefix="@@")
    assert tok.tokenize("Unbelievably") == ["un", "@@believ", "@@ably"]
    assert tok.decode(tok("Unbelievably")["input_ids"], skip_special_tokens=True) == "unbelievably"
    tok.save_pretrained(tmp_path / "saved")
    default = lib.ElectraTokenizerFast(tokenizer_file=str(tmp_path / "saved" / "tokenizer.json"))
    assert default.tokenize("Unbelievably") == ["un", "@@believ", "@@ably"]
    hashes = lib.ElectraTokenizerFast(tokenizer_file=str(tmp_path / "saved" / "tokenizer.json"),
                                      wordpieces_prefix="##")
    assert hashes.tokenize("Unbelievably") == ["[UNK]"]
    assert hashes.backend_tokenizer.decoder.prefix == "##"


def test_tokenizer_object_and_generic_class(lib, vocab_file):
    from polyformers.tokenizers.convert import wordpiece_tokenizer

    backend = wordpiece_tokenizer(vocab_file)
    tok = lib.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    electra = lib.ElectraTokenizerFast(vocab_file)
    texts = ["Hello world!", "HäLLo 中文 😀"]
    assert tok(texts, padding=True)["input_ids"] == electra(texts, padding=True)["input_ids"]
    backend.add_tokens(["zzzz"])  # the tokenizer works on its own copy
    assert "zzzz" not in tok.get_vocab() and len(tok) == 30522
    assert tok.is_fast and tok.backend_tokenizer is not backend


def test_slow_conversion_paths(lib, vocab_file, assets):
    from polyformers.tokenizers.convert import convert_slow_tokenizer

    texts = EDGE_TEXTS + OVERRIDE_TEXTS
    expected = lib.ElectraTokenizerFast(vocab_file)(texts)["input_ids"]
    for options in ({}, {"do_lower_case": False}, {"tokenize_chinese_chars": False, "strip_accents": True}):
        slow = lib.ElectraTokenizer(vocab_file, **options)
        backend = convert_slow_tokenizer(slow)
        fast = lib.ElectraTokenizerFast(tokenizer_object=backend, **options)
        assert fast(texts)["input_ids"] == slow(texts)["input_ids"], options
    converted = lib.ElectraTokenizerFast.from_pretrained(assets / "minilm", from_slow=True)
    assert converted(texts)["input_ids"] == expected
    with pytest.raises(ValueError, match="slow tokenizer"):
        convert_slow_tokenizer(object())


def test_added_special_token_is_skipped(lib, vocab_file):
    tok = lib.ElectraTokenizerFast(vocab_file)
    assert tok.add_special_tokens({"additional_special_tokens": ["[NEW]"]}) == 1
    ids = tok("x [NEW] y")["input_ids"]
    assert ids == [101, 1060, 30522, 1061, 102]
    assert tok.decode(ids, skip_special_tokens=True) == "x y"
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["x", "y"]
    assert tok.added_tokens_decoder[30522].special and tok.additional_special_tokens == ["[NEW]"]


def test_save_formats(lib, vocab_file, tmp_path):
    tok = lib.ElectraTokenizerFast(vocab_file)
    tok.add_tokens(["foo_bar"])
    files = tok.save_pretrained(tmp_path / "fast-only", legacy_format=False)
    names = sorted(os.listdir(tmp_path / "fast-only"))
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert all(os.path.exists(f) for f in files)
    tok.save_pretrained(tmp_path / "prefixed", filename_prefix="pre")
    names = sorted(os.listdir(tmp_path / "prefixed"))
    assert names == ["pre-added_tokens.json", "pre-special_tokens_map.json", "pre-tokenizer.json",
                     "pre-tokenizer_config.json", "pre-vocab.txt"]
    reloaded = lib.ElectraTokenizerFast.from_pretrained(tmp_path / "fast-only")
    assert reloaded("a foo_bar")["input_ids"] == tok("a foo_bar")["input_ids"]


def test_errors_name_the_argument(lib, vocab_file, tmp_path):
    with pytest.raises(ValueError, match="vocab_file"):
        lib.ElectraTokenizerFast()
    with pytest.raises(ValueError, match="tokenizer_file"):
        lib.ElectraTokenizerFast(tokenizer_file=str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match="tokenizer_object"):
        lib.PreTrainedTokenizerFast(tokenizer_object="not a tokenizer")
    with pytest.raises(ValueError, match="tokenizer_object"):
        lib.PreTrainedTokenizerFast()
    with pytest.raises(ValueError, match="vocab_file"):
        lib.ElectraTokenizerFast(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unk_token"):
        lib.ElectraTokenizerFast(vocab_file, unk_token="<not-there>")
    tok = lib.ElectraTokenizerFast(vocab_file)
    with pytest.raises(ValueError, match="max_length"):
        tok("a b", "c d e f g h i j", truncation="only_first", max_length=8)
    with pytest.raises(ValueError, match="stride"):
        tok("a b c d e f", "g h i j k l", truncation="only_first", max_length=10, stride=4,
            return_overflowing_tokens=True)
    with pytest.raises(TypeError, match="batch_text_or_text_pairs"):
        tok._batch_encode_plus("not a batch")


def test_import_is_framework_free(vocab_file):
    code = (
        "import sys, polyformers.tokenizers as t\n"
        f"tok = t.ElectraTokenizerFast({vocab_file!r})\n"
        "tok(['a b', 'c'], padding=True, return_tensors='np'); tok.decode([101, 102])\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1] / "src"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
