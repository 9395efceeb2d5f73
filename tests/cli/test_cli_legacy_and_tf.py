"""The command on the newer paths: `summarize`, `--framework tf`, `convert` from the reference's legacy
tf_model.h5, and the bad-input cases they add (one line on stderr, non-zero exit, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polyformers import pipeline
from tests.pipelines import checkpoints as ck
from tests.pipelines import legacy

from .test_cli import ok, run, run_process, user_error


@pytest.fixture(scope="module")
def world(tmp_path_factory, assets, legacy_python):
    return legacy.world(tmp_path_factory, assets, legacy_python)


def test_summarize_json_from_stdin_and_table(world):
    folder = world["folders"]["pegasus"]
    texts = legacy.SUMMARY_TEXTS
    want = pipeline("summarization", model=str(folder))(texts, max_length=12, num_beams=2)
    out = json.loads(ok(run("summarize", "-m", folder, "--json", "--max-length", "12", "--num-beams", "2",
                            "--batch-size", "2", stdin="\n".join(texts) + "\n")).stdout)
    assert out == [{"text": t.strip(), "summary": w["summary_text"]} for t, w in zip(texts, want)]
    assert len({r["summary"] for r in out}) == 3
    table = ok(run("summarize", "-m", folder, "--max-length", "12", "--num-beams", "2", texts[1])).stdout
    assert table.splitlines()[0].split() == ["#", "summary_text"] and want[1]["summary_text"] in table
    long = ok(run("summarize", "-m", folder, "--json", "--truncation", "--max-length", "10", legacy.LONG_ARTICLE))
    assert json.loads(long.stdout)[0]["summary"] == world["summaries"][-1][0]["summary_text"]
    user_error(run("summarize", "-m", folder, "--max-length", "10", legacy.LONG_ARTICLE), 1,
               "summarize: error:", "longer than the model's limit of 64", "truncation")
    user_error(run("summarize", "-m", folder, stdin="  \n\n"), 1, "empty input")


def test_framework_tf_matches_the_reference(world):
    folder = world["folders"]["electra_cls"]
    out = json.loads(ok(run_process("classify", "-m", folder, "--framework", "tf", "--json", "--top-k", "0",
                                    *legacy.SENTENCES[:2])).stdout)
    reference = world["tf"]["classification"][1]  # top_k=None on SENTENCES[0]
    got = {x["label"]: x["score"] for x in out[0]["labels"]}
    assert set(got) == {x["label"] for x in reference}
    for x in reference:
        assert abs(got[x["label"]] - x["score"]) <= 1e-4


def test_framework_without_a_class_is_one_line(tmp_path, assets, world):
    gptj = ck.build(tmp_path, "gptj", "GPTJForCausalLM", ck.GPTJ, lambda f: ck.bpe_files(assets, f, "GPT2Tokenizer"))
    user_error(run_process("generate", "-m", gptj, "--framework", "tf", "Hello"), 1,
               "generate: error:", "polyformers has no TFGPTJForCausalLM for the 'gptj' family")
    user_error(run_process("fill-mask", "-m", world["folders"]["electra_mlm"], "--framework", "flax", "a [MASK]."), 1,
               "polyformers has no FlaxElectraForMaskedLM")


def test_wrong_family_for_the_task_and_bad_commands(world):
    user_error(run("qa", "-m", world["folders"]["pegasus"], "Who?", "--context", "Duncan."), 1,
               "task 'question-answering' needs a model of family", "'pegasus' checkpoint")
    user_error(run("summarise", "x"), 2, "invalid choice: 'summarise'")
    user_error(run("classify", "-m", world["folders"]["electra_cls"], "--framework", "jax", "x"), 2,
               "argument --framework: invalid choice: 'jax'")


def test_convert_legacy_h5_verified(world, tmp_path):
    out = tmp_path / "out"
    report = json.loads(ok(run("convert", world["h5"], out, "--dtype", "float16", "--max-shard-size", "100KB",
                               "--json")).stdout)
    assert report["source_format"] == "tf" and report["verified"] and report["max_abs_diff_vs_tf"] <= 1e-4
    assert report["max_abs_diff_after_reload"] == 0.0
    assert "model.safetensors.index.json" in report["files"] and "merges.txt" in report["files"]
    info = json.loads(ok(run("info", out, "--json")).stdout)
    assert info["family"] == "roberta" and info["dtypes"].startswith("float16")
    shards = [f for f in report["files"] if f.endswith(".safetensors")]
    assert len(shards) > 1
    from polyformers import RobertaForMaskedLM
    import torch

    model = RobertaForMaskedLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(legacy.PROBE["input_ids"])).logits.numpy()
    assert np.abs(logits - np.array(world["h5_out"])).max() <= 0.05  # float16 weights

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((world["h5"] / "config.json").read_text())
    user_error(run("convert", empty, tmp_path / "x"), 1, "convert: error:", "no weights found",
               "tf_model.h5 or flax_model.msgpack")
    user_error(run("convert", world["h5"], tmp_path / "y", "--dtype", "float13"), 1, "--dtype", "float13")
