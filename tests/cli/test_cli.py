"""The ``polyformers`` command: JSON and tables, stdin, errors.

Most calls run ``polyformers.cli.main`` in this process, with its own stdin, stdout, stderr and
environment (:func:`run`): a fresh interpreter costs about 1.4 s of CPU a call, mostly importing torch.
The calls that only a process shows, the interpreter's exit code for ``python -m polyformers``, text
piped into it, TensorFlow and JAX starting with the process' stderr closed, run as a user runs them
(:func:`run_process`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines import checkpoints as ck

ROOT = Path(__file__).resolve().parents[2]


def run_process(*args, stdin: str = "", env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m polyformers ARGS`` with ``stdin`` piped in and the output captured."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("POLYFORMERS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "polyformers", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=timeout)


@contextlib.contextmanager
def _environment(changes: dict):
    saved = dict(os.environ)
    os.environ.update(changes)
    os.environ.pop("POLYFORMERS_DEBUG", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(*args, stdin: str = "", env=None) -> subprocess.CompletedProcess:
    """The command's ``main`` in this process, as :func:`run_process` would see it: ``stdin`` as a pipe's
    text (not a terminal), stdout and stderr captured, the exit code of ``main`` or of argparse's exit."""
    from polyformers import cli

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with _environment(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exit_:  # argparse on a malformed command line
                code = exit_.code
    finally:
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["polyformers", *map(str, args)], code, out.getvalue(), err.getvalue())


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def user_error(proc, code: int, *fragments: str) -> None:
    """One line on stderr naming the problem, the given exit code and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def mpnet_tiny(tmp_path_factory, assets):
    def tokenizer(folder):
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(assets / "mpnet" / name, folder / name)

    config = dict(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=130)
    return ck.build(tmp_path_factory.mktemp("mpnet"), "mpnet", "MPNetModel", config, tokenizer)


@pytest.fixture(scope="module")
def electra(tmp_path_factory, assets):
    """One folder per head the commands need, all tiny ELECTRA with the real uncased vocabulary."""
    root = tmp_path_factory.mktemp("electra")
    files = lambda f: ck.wordpiece_files(assets, f)
    labels = dict(enumerate(ck.NER_LABELS))
    return {
        "mlm": ck.build(root / "mlm", "electra", "ElectraForMaskedLM", ck.ELECTRA, files),
        "cls": ck.build(root / "cls", "electra", "ElectraForSequenceClassification", ck.ELECTRA, files, num_labels=2),
        "ner": ck.build(root / "ner", "electra", "ElectraForTokenClassification", ck.ELECTRA, files, id2label=labels,
                        label2id={v: k for k, v in labels.items()}),
        "qa": ck.build(root / "qa", "electra", "ElectraForQuestionAnswering", ck.ELECTRA, files),
        "rtd": ck.build(root / "rtd", "electra", "ElectraForPreTraining", ck.ELECTRA, files),
    }


def test_embed_json_from_arguments_and_stdin(mpnet_tiny):
    out = json.loads(ok(run("embed", "--model", mpnet_tiny, "--json", "hello world", "second text")).stdout)
    assert [r["text"] for r in out] == ["hello world", "second text"]
    assert all(len(r["embedding"]) == 32 for r in out)
    assert abs(sum(x * x for x in out[0]["embedding"]) - 1.0) < 1e-4
    piped = json.loads(ok(run_process("embed", "--model", mpnet_tiny, "--json",
                                      stdin="hello world\n\nsecond text\n")).stdout)
    assert [r["text"] for r in piped] == ["hello world", "second text"]
    assert piped[0]["embedding"] == pytest.approx(out[0]["embedding"], abs=1e-6)
    table = ok(run("embed", "--model", mpnet_tiny, "hello world")).stdout
    assert table.splitlines()[0].split()[:3] == ["#", "dim", "norm"] and "hello world" in table


def test_similarity_table_and_json(mpnet_tiny):
    out = json.loads(ok(run("similarity", "-m", mpnet_tiny, "--json", "a cat", "a cat", "a dog")).stdout)
    assert out["source_sentence"] == "a cat"
    assert [r["sentence"] for r in out["results"]] == ["a cat", "a dog"]
    assert out["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    table = ok(run("similarity", "-m", mpnet_tiny, "a cat", "a dog")).stdout
    assert "rank" in table and "a dog" in table


def test_search_cache_reembeds_only_changed_files(mpnet_tiny, tmp_path, assets):
    lines = (assets / "corpora" / "macbeth.txt").read_text().splitlines()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(lines[900:1000]))
    b.write_text("\n".join(lines[2000:2060]))
    cache = tmp_path / "cache"
    search = lambda *extra: json.loads(ok(run("search", "-m", mpnet_tiny, "--json", "--cache-dir", cache,
                                              "a dagger", a, b, *extra)).stdout)
    first = search()
    assert sorted(first["embedded_files"]) == sorted([str(a), str(b)]) and first["cached_files"] == []
    assert len(first["results"]) == 5 and first["results"][0]["score"] >= first["results"][-1]["score"]
    assert {"score", "file", "line", "text"} == set(first["results"][0])
    manifest = json.loads((cache / "manifest.json").read_text())
    assert set(manifest["files"]) == {str(a), str(b)}

    second = search()
    assert second["embedded_files"] == [] and sorted(second["cached_files"]) == sorted([str(a), str(b)])
    assert second["results"] == first["results"]

    b.write_text(b.read_text() + "\n\nA dagger of the mind, a false creation.\n")
    third = search("--top-k", "50")
    assert third["embedded_files"] == [str(b)] and third["cached_files"] == [str(a)]
    assert any("false creation" in r["text"] for r in third["results"])
    # The old version of b is gone from the cache: one embedding file per live entry.
    assert len(list(cache.glob("*.npy"))) == 2

    table = ok(run("search", "-m", mpnet_tiny, "--cache-dir", cache, "a dagger", tmp_path, "-k", "2")).stdout
    assert table.splitlines()[0] == "query: a dagger" and "a.txt:" in table or "b.txt:" in table


def test_search_glob_embeds_all_files_in_one_pass_with_per_file_results(mpnet_tiny, tmp_path, assets):
    lines = (assets / "corpora" / "macbeth.txt").read_text().splitlines()
    plays = tmp_path / "plays"
    plays.mkdir()
    for name, (lo, hi) in {"one_gut.txt": (880, 960), "two_gut.txt": (2000, 2040), "three.txt": (100, 130)}.items():
        (plays / name).write_text("\n".join(lines[lo:hi]))
    query = "is this a dagger which I see before me"
    both = json.loads(ok(run("search", "-m", mpnet_tiny, "--json", "--no-cache", "-k", "200", query,
                             plays / "*_gut.txt", plays / "one_gut.txt")).stdout)
    # the pattern picks two of the three files; the file named again is searched once
    assert sorted(both["embedded_files"]) == sorted(str(plays / n) for n in ("one_gut.txt", "two_gut.txt"))
    alone = []
    for name in ("one_gut.txt", "two_gut.txt"):
        alone += json.loads(ok(run("search", "-m", mpnet_tiny, "--json", "--no-cache", "-k", "200", query,
                                   plays / name)).stdout)["results"]
    # rows of both files shared batches: the same passages and scores as embedding each file alone
    key = lambda r: (r["file"], r["line"])
    assert len(both["results"]) == len(alone) > 10
    for x, y in zip(sorted(both["results"], key=key), sorted(alone, key=key)):
        assert key(x) == key(y) and x["text"] == y["text"] and x["score"] == pytest.approx(y["score"], abs=1e-5)
    recursive = json.loads(ok(run("search", "-m", mpnet_tiny, "--json", "--no-cache", query,
                                  tmp_path / "**" / "*.txt")).stdout)
    assert len(recursive["embedded_files"]) == 3
    user_error(run("search", "-m", mpnet_tiny, "query", plays / "*.md"), 1, "matches no file", "*.md")


def test_search_errors(mpnet_tiny, tmp_path):
    binary = tmp_path / "image.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" * 10)
    user_error(run("search", "-m", mpnet_tiny, "--cache-dir", tmp_path / "c", "query", binary), 1,
               "search: error:", "binary file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    user_error(run("search", "-m", mpnet_tiny, "--cache-dir", tmp_path / "c", "query", empty), 1, "no text to search")
    user_error(run("search", "-m", mpnet_tiny, "--cache-dir", tmp_path / "c", "   ", empty), 1, "query is empty")
    user_error(run("search", "-m", mpnet_tiny, "query", tmp_path / "missing.txt"), 1, "no such file")
    user_error(run("search", "query"), 2, "the following arguments are required: PATH")


def test_usage_and_input_errors(mpnet_tiny, electra):
    user_error(run_process("translate", "x"), 2, "invalid choice: 'translate'")
    user_error(run(), 2, "required: COMMAND")
    user_error(run("embed", "-m", mpnet_tiny, "--batch-size", "0", "x"), 2, "expected a positive integer, got '0'")
    user_error(run_process("embed", "-m", mpnet_tiny, stdin="\n  \n"), 1, "empty input")
    user_error(run("summarize", "-m", electra["mlm"], "some text"), 1, "task 'summarization' needs a model of family pegasus",
               "'electra' checkpoint")
    user_error(run("fill-mask", "-m", electra["mlm"], "no mask here"), 1, "no mask token ([MASK])")
    user_error(run("fill-mask", "x"), 2, "--model is required for fill-mask")
    user_error(run("qa", "-m", electra["qa"], "why " * 300, "--context", "Because."), 1, "question is", "tokens")
    user_error(run("info", "/no/such/folder"), 1, "/no/such/folder")


def test_framework_without_a_class_for_the_family(tmp_path, assets):
    folder = ck.build(tmp_path, "mpt", "MptForCausalLM", ck.MPT, lambda f: ck.bpe_files(assets, f, "GPT2Tokenizer"))
    user_error(run_process("generate", "-m", folder, "--framework", "tf", "Hello"), 1,
               "polyformers has no TFMptForCausalLM")
    out = json.loads(ok(run("generate", "-m", folder, "--json", "--max-new-tokens", "3", "Hello")).stdout)
    assert out[0]["prompt"] == "Hello" and out[0]["generated"][0]["generated_text"].startswith("Hello")


def test_task_commands_json(electra):
    fill = json.loads(ok(run("fill-mask", "-m", electra["mlm"], "--json", "--top-k", "2", "Paris is [MASK].")).stdout)
    assert len(fill[0]["predictions"]) == 2 and {"score", "token", "token_str", "sequence"} == set(fill[0]["predictions"][0])
    cls = json.loads(ok(run("classify", "-m", electra["cls"], "--json", "--top-k", "0", "good", "bad")).stdout)
    assert [sorted(x["label"] for x in r["labels"]) for r in cls] == [["LABEL_0", "LABEL_1"]] * 2
    ner = json.loads(ok(run("ner", "-m", electra["ner"], "--json", "--aggregation", "first",
                            stdin="Wolfgang lives in Berlin.\n")).stdout)
    assert ner[0]["text"] == "Wolfgang lives in Berlin." and all("entity_group" in e for e in ner[0]["entities"])
    qa = json.loads(ok(run("qa", "-m", electra["qa"], "--json", "--top-k", "2", "Who is king?",
                           "--context", "Duncan is the king of Scotland.")).stdout)
    assert len(qa["answers"]) == 2 and all(a["answer"] in "Duncan is the king of Scotland." for a in qa["answers"])
    det = json.loads(ok(run("detect", "-m", electra["rtd"], "--json", "the quick brown fox")).stdout)
    assert [t["token"] for t in det[0]["tokens"]] == ["the", "quick", "brown", "fox"]
    table = ok(run("detect", "-m", electra["rtd"], "the quick brown fox")).stdout
    assert "p(replaced)" in table.splitlines()[0]


def test_real_model_search_finds_the_dagger(tmp_path, assets):
    """The demo's path end to end on the real all-mpnet-base-v2 (default model), over a slice of Macbeth."""
    lines = (assets / "corpora" / "macbeth.txt").read_text().splitlines()
    play = tmp_path / "macbeth-act2.txt"
    play.write_text("\n".join(lines[940:1040]))
    env = {"POLYFORMERS_ASSETS": str(assets)}
    args = ("search", "--json", "--cache-dir", tmp_path / "cache", "a vision of a dagger floating in the air", play)
    first = json.loads(ok(run(*args, env=env)).stdout)
    assert first["model"] == str(assets / "mpnet")
    assert "dagger which I see before me" in first["results"][0]["text"]
    second = json.loads(ok(run(*args, env=env)).stdout)
    assert second["embedded_files"] == [] and second["results"] == first["results"]


def test_info_and_convert_from_a_legacy_bin(tmp_path, electra):
    import torch
    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"
    shutil.copytree(electra["mlm"], legacy)
    state = load_file(legacy / "model.safetensors")
    (legacy / "model.safetensors").unlink()
    torch.save(state, legacy / "pytorch_model.bin")
    info = json.loads(ok(run("info", legacy, "--json")).stdout)
    assert info["family"] == "electra" and info["parameters"] == sum(t.numel() for t in state.values())
    assert "pytorch_model.bin" in [f["name"] for f in info["files"]]
    out = tmp_path / "out"
    report = json.loads(ok(run("convert", legacy, out, "--dtype", "float16", "--max-shard-size", "400KB", "--json")).stdout)
    assert report["verified"] and report["max_abs_diff_after_reload"] == 0.0
    assert "model.safetensors.index.json" in report["files"] and "vocab.txt" in report["files"]
    converted = json.loads(ok(run("info", out, "--json")).stdout)
    assert converted["dtypes"].startswith("float16") and converted["parameters"] == info["parameters"]
    user_error(run("convert", legacy, legacy), 1, "dest must differ from source")
