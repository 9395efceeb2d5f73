"""`polyformers train`: every task for a few steps on tiny random checkpoints, resuming, metrics.json,
the saved model loading back, the errors bad input gets, and a two-process torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polyformers as pf
from polyformers.cli import main
from polyformers.training.cli_train import DataCollatorForReplacedTokenDetection

ROOT = Path(__file__).resolve().parents[2]
TAGS = ["O", "B-PER", "I-PER", "B-LOC"]
FAST = ["--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--logging-steps", "1"]


# ----------------------------------------------------------------------------- tiny checkpoints and data


def _wordpiece(assets: Path, folder: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json"):
        shutil.copy(assets / "minilm" / name, folder / name)
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "ElectraTokenizer", "do_lower_case": true, "model_max_length": 64}')


def _bpe(assets: Path, folder: Path, tokenizer_class: str) -> None:
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(assets / "gpt2" / name, folder / name)
    (folder / "tokenizer_config.json").write_text(f'{{"tokenizer_class": "{tokenizer_class}"}}')


@pytest.fixture(scope="module")
def models(tmp_path_factory, assets):
    """A bare ELECTRA encoder (every head is new), a tiny RoBERTa and a tiny GPT-J, random weights."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    electra = pf.ElectraModel(pf.ElectraConfig(
        vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64))
    electra.save_pretrained(root / "electra")
    _wordpiece(assets, root / "electra")
    roberta = pf.RobertaModel(pf.RobertaConfig(
        vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    roberta.save_pretrained(root / "roberta")
    _bpe(assets, root / "roberta", "RobertaTokenizer")
    gptj = pf.GPTJForCausalLM(pf.GPTJConfig(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                            rotary_dim=4, bos_token_id=50256, eos_token_id=50256))
    gptj.save_pretrained(root / "gptj")
    _bpe(assets, root / "gptj", "GPT2Tokenizer")
    return {name: str(root / name) for name in ("electra", "roberta", "gptj")}


SENTENCES = {
    "sea": ["the ship sailed over the grey sea", "waves broke upon the rocky shore", "a storm rose at sea tonight",
            "the sailors hauled the heavy nets", "salt water filled the little boat", "gulls cried above the harbour"],
    "war": ["the soldiers marched to the battle", "swords clashed upon the field", "the king raised his army",
            "drums of war sounded at dawn", "the castle walls were besieged", "arrows flew across the moat"],
    "love": ["she wrote him a tender letter", "their hearts were joined forever", "he sighed for his sweet lady",
             "a kiss beneath the summer moon", "the lovers met in secret", "roses for my own true love"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = [(s, label) for label, texts in SENTENCES.items() for s in texts]
    with open(root / "cls.csv", "w", encoding="utf-8") as f:
        f.write("sentence,topic\n" + "".join(f"{s},{label}\n" for s, label in rows))
    with open(root / "cls.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": s, "label": i % 2}) + "\n" for i, (s, _) in enumerate(rows)))
    with open(root / "ner.jsonl", "w", encoding="utf-8") as f:
        for i, (s, _) in enumerate(rows):
            words = s.split()
            f.write(json.dumps({"tokens": words, "ner_tags": [TAGS[(i + j) % len(TAGS)] for j in range(len(words))]})
                    + "\n")
    (root / "lines.txt").write_text("\n\n".join(s for s, _ in rows) + "\n", encoding="utf-8")
    (root / "empty.csv").write_text("", encoding="utf-8")
    (root / "header_only.csv").write_text("text,label\n", encoding="utf-8")
    (root / "blank.txt").write_text("\n  \n", encoding="utf-8")
    return {p.name: str(p) for p in root.iterdir()}


def train(capsys, *argv) -> tuple[int, str, str]:
    code = main(["train", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trained(capsys, *argv) -> dict:
    code, out, err = train(capsys, *argv, "--json")
    assert code == 0, err[-3000:]
    return json.loads(out)


# ----------------------------------------------------------------------------- the tasks


def test_text_classification_csv_string_labels_logs_and_reload(models, data, tmp_path, capsys):
    out = tmp_path / "cls"
    code, stdout, stderr = train(capsys, "text-classification", "--model", models["electra"], "--train",
                                 data["cls.csv"], "--eval", data["cls.csv"], "--output", out, "--text-column",
                                 "sentence", "--label-column", "topic", "--eval-before", "--save-steps", "2", *FAST)
    assert code == 0, stderr
    # Not a terminal: one JSON line per log entry on stderr (the loss at every step), the table on stdout.
    logs = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]
    assert [e["loss"] for e in logs if "loss" in e] and len([e for e in logs if "loss" in e]) == 3
    assert stdout.splitlines()[0].split() == ["metric", "value"] and "eval_accuracy" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "text-classification" and metrics["global_step"] == 3
    assert metrics["train_samples"] == metrics["eval_samples"] == 18
    for key in ("train_loss", "train_runtime", "eval_loss", "eval_accuracy", "initial_eval_accuracy"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["eval_accuracy"] <= 1
    assert (out / "checkpoint-2" / "trainer_state.json").exists()

    model = pf.AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = pf.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "ElectraForSequenceClassification"
    assert model.config.id2label == {0: "love", 1: "sea", 2: "war"}
    assert model.config.label2id == {"love": 0, "sea": 1, "war": 2}
    with torch.no_grad():
        logits = model(**tokenizer(["the ship sailed"], return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    # The evaluation of the reloaded model is the run's: the saved model is the trained one.
    pipe = pf.pipeline("text-classification", model=str(out))
    hits = sum(pipe(s)[0]["label"] == lab for lab, texts in SENTENCES.items() for s in texts)
    assert hits / 18 == pytest.approx(metrics["eval_accuracy"])


def test_text_classification_jsonl_integer_labels_quiet(models, data, tmp_path, capsys):
    out = tmp_path / "ids"
    code, stdout, stderr = train(capsys, "text-classification", "-m", models["roberta"], "--train", data["cls.jsonl"],
                                 "--output", out, "--quiet", "--num-labels", "3", "--grad-accum", "2", *FAST)
    assert code == 0, stderr
    assert not any(ln.startswith("{") for ln in stderr.splitlines())  # --quiet: no log lines
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_loss" not in metrics
    # The same command and seed give the same run, new head included.
    code, _, stderr = train(capsys, "text-classification", "-m", models["roberta"], "--train", data["cls.jsonl"],
                            "--output", tmp_path / "again", "--quiet", "--num-labels", "3", "--grad-accum", "2", *FAST)
    assert code == 0, stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["train_loss"] == metrics["train_loss"]


def test_token_classification_tags_go_to_first_subtokens(models, data, tmp_path, capsys):
    # The alignment itself, on words that split into several WordPiece tokens.
    from polyformers.training.cli_train import LabelSpace, _Run

    tokenizer = pf.AutoTokenizer.from_pretrained(models["electra"])
    run = _Run(type("A", (), {"task": "token-classification", "max_length": None, "model": "m", "quiet": True})())
    space = LabelSpace(dict(enumerate(TAGS)), by_name=True)
    words = ["Macbeth", "unsheathed", "his", "sword"]
    split = {"texts": [words], "labels": [["B-PER", "O", "O", "B-LOC"]], "numbers": [1]}
    (feature,) = run.encode(tokenizer, split, space, "f", "--train")
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    expected = [-100]
    for word, tag in zip(words, [1, 0, 0, 3]):
        n = len(tokenizer.tokenize(word))
        assert n >= 1
        expected += [tag] + [-100] * (n - 1)
    expected += [-100]
    assert feature["labels"] == expected, list(zip(pieces, feature["labels"]))
    assert len(expected) > len(words) + 2  # some word really was split

    for name in ("electra", "roberta"):  # byte-level BPE needs add_prefix_space for pre-split words
        out = tmp_path / name
        metrics = trained(capsys, "token-classification", "-m", models[name], "--train", data["ner.jsonl"], "--eval",
                          data["ner.jsonl"], "--output", out, "--quiet", *FAST)
        assert 0 <= metrics["eval_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"])
        model = pf.AutoModelForTokenClassification.from_pretrained(out)
        assert model.config.id2label == dict(enumerate(sorted(TAGS)))


def test_masked_lm_reports_perplexity(models, data, tmp_path, capsys):
    out = tmp_path / "mlm"
    metrics = trained(capsys, "masked-lm", "-m", models["electra"], "--train", data["lines.txt"], "--eval",
                      data["lines.txt"], "--output", out, "--quiet", *FAST)
    assert metrics["train_samples"] == 18 and metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert "eval_accuracy" not in metrics
    assert type(pf.AutoModelForMaskedLM.from_pretrained(out)).__name__ == "ElectraForMaskedLM"


def test_masked_lm_batches_always_predict_a_token(models):
    from polyformers.training.cli_train import _MaskedLMBatches, mask_once

    tokenizer = pf.AutoTokenizer.from_pretrained(models["electra"])
    features = [dict(tokenizer(t)) for t in ("the sea", "a storm rose at sea tonight")]
    # A batch in which nothing was chosen would give a NaN loss: one token is chosen anyway.
    collate = _MaskedLMBatches(pf.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.0))
    batch = collate([dict(f) for f in features])
    (row, col), = (batch["labels"] != -100).nonzero().tolist()
    assert batch["input_ids"][row, col] == tokenizer.mask_token_id
    assert batch["labels"][row, col] == features[row]["input_ids"][col] and 0 < col < len(features[row]["input_ids"]) - 1
    # The evaluation set is masked once, reproducibly, each example predicting at least one token.
    once, again = [dict(f) for f in features], [dict(f) for f in features]
    mask_once(pf.DataCollatorForLanguageModeling(tokenizer), once, seed=1)
    mask_once(pf.DataCollatorForLanguageModeling(tokenizer), again, seed=1)
    assert once == again and all(any(x != -100 for x in f["labels"]) for f in once)
    padded = collate(once)
    assert padded["labels"][0].tolist()[: len(once[0]["labels"])] == once[0]["labels"]


def test_causal_lm_pads_with_eos_when_the_tokenizer_has_no_pad_token(models, data, tmp_path, capsys):
    out = tmp_path / "clm"
    metrics = trained(capsys, "causal-lm", "-m", models["gptj"], "--train", data["cls.jsonl"], "--eval",
                      data["lines.txt"], "--output", out, "--quiet", "--bf16", "--gradient-checkpointing", *FAST)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    model = pf.AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPTJForCausalLM"
    assert pf.AutoTokenizer.from_pretrained(out).pad_token == "<|endoftext|>"


def test_replaced_token_detection(models, data, tmp_path, capsys):
    out = tmp_path / "rtd"
    metrics = trained(capsys, "replaced-token-detection", "-m", models["electra"], "--train", data["lines.txt"],
                      "--eval", data["lines.txt"], "--output", out, "--quiet", "--eval-before", *FAST)
    for key in ("eval_accuracy", "eval_precision", "eval_recall", "initial_eval_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert type(pf.ElectraForPreTraining.from_pretrained(out)).__name__ == "ElectraForPreTraining"

    code, _, err = train(capsys, "replaced-token-detection", "-m", models["roberta"], "--train", data["lines.txt"],
                         "--output", tmp_path / "x", "--quiet")
    assert code == 1 and "'roberta' checkpoint, not an 'electra' one" in err


def test_rtd_collator_replaces_ordinary_tokens_only(models):
    tokenizer = pf.AutoTokenizer.from_pretrained(models["electra"])
    lines = [" ".join(["word"] * 40), "a short one", " ".join(["the sea"] * 30)]
    features = [dict(tokenizer(t)) for t in lines]
    collator = DataCollatorForReplacedTokenDetection(tokenizer, generator=torch.Generator().manual_seed(0))
    batch = collator(features)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    original = tokenizer.pad(features, return_tensors="pt")["input_ids"]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(labels == -100, mask == 0)  # padding is ignored, every real token is labelled
    assert torch.equal(labels == 1, ids != original)  # label 1 exactly where a token changed
    assert not (labels == 1)[special].any() and not torch.isin(ids[labels == 1], torch.tensor(tokenizer.all_special_ids)).any()
    share = (labels == 1).sum() / ((labels != -100) & ~special).sum()
    assert 0.05 < share < 0.3, share
    # Pre-labelled examples (a fixed evaluation set) are only padded.
    fixed = collator([{"input_ids": [101, 5, 102], "labels": [0, 1, 0]}, {"input_ids": [101, 102], "labels": [0, 0]}])
    assert fixed["labels"].tolist() == [[0, 1, 0], [0, 0, -100]]


def test_resume_continues_from_the_last_checkpoint(models, data, tmp_path, capsys):
    out = tmp_path / "resume"
    common = ["text-classification", "-m", models["electra"], "--train", data["cls.jsonl"], "--output", out, "--quiet",
              "--batch-size", "4", "--save-steps", "2", "--logging-steps", "1", "--seed", "3"]
    first = trained(capsys, *common, "--max-steps", "4")
    assert first["global_step"] == 4 and sorted(os.listdir(out)).count("checkpoint-4") == 1

    code, _, err = train(capsys, *common, "--max-steps", "6")
    assert code == 1 and "already holds checkpoints (checkpoint-4)" in err and "--resume" in err

    second = trained(capsys, *common, "--max-steps", "6", "--resume")
    assert second["global_step"] == 6
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-4 come from checkpoint-4's history, 5-6 were trained now
    assert (out / "checkpoint-6").is_dir()

    code, _, err = train(capsys, *common[:6], tmp_path / "fresh", "--resume")
    assert code == 1 and "--resume" in err and "no checkpoint-N folder" in err


# ----------------------------------------------------------------------------- errors


def _one_line_error(capsys, code: int, *argv, fragments=()):
    got, _, err = train(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("polyformers train: error:"), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_user_errors_name_the_argument(models, data, tmp_path, capsys):
    m, out = models["electra"], str(tmp_path / "never")
    base = ["text-classification", "-m", m, "--output", out]
    _one_line_error(capsys, 1, *base, "--train", tmp_path / "missing.csv", fragments=("--train", "no such file"))
    _one_line_error(capsys, 1, *base, "--train", data["cls.jsonl"], "--eval", tmp_path / "gone.jsonl",
                    fragments=("--eval", "gone.jsonl", "no such file"))
    _one_line_error(capsys, 1, *base, "--train", data["cls.csv"],
                    fragments=("has none of the columns 'label', 'labels'", "--label-column",
                               "its columns are: 'sentence', 'topic'"))
    _one_line_error(capsys, 1, *base, "--train", data["cls.csv"], "--text-column", "sentence", "--label-column", "y",
                    fragments=("no column 'y'", "--label-column", "its columns are: 'sentence', 'topic'"))
    _one_line_error(capsys, 1, *base, "--train", data["cls.jsonl"], "--text-column", "body",
                    fragments=("cls.jsonl", "no column 'body'", "--text-column", "'text', 'label'"))
    _one_line_error(capsys, 1, *base, "--train", data["empty.csv"], fragments=("--train", "empty"))
    _one_line_error(capsys, 1, *base, "--train", data["header_only.csv"], fragments=("--train", "empty", "no rows"))
    _one_line_error(capsys, 1, "masked-lm", "-m", m, "--output", out, "--train", data["blank.txt"],
                    fragments=("--train", "empty"))
    _one_line_error(capsys, 1, *base, "--train", data["lines.txt"], fragments=("--train", "CSV", "JSON lines"))
    # Labels the head cannot hold: three topics for two outputs, an integer id past the head.
    _one_line_error(capsys, 1, *base, "--train", data["cls.csv"], "--text-column", "sentence", "--label-column",
                    "topic", "--num-labels", "2", fragments=("3 labels", "--num-labels 2"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 4}\n')
    _one_line_error(capsys, 1, *base, "--train", bad, "--num-labels", "3", fragments=("label 4", "--num-labels 3"))
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"tokens": ["a", "b"], "ner_tags": ["O"]}\n')
    _one_line_error(capsys, 1, "token-classification", "-m", m, "--output", out, "--train", ragged,
                    fragments=("line 1", "2 words", "1 tags"))
    assert not os.path.exists(out)  # nothing was written for a run that could not start


def test_command_line_errors_exit_2(models, data, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, fragment in [
        (["train", "text-classification", "-m", models["electra"], "--train", data["cls.csv"], "-o", "x",
          "--max-steps", "0"], "argument --max-steps: expected a positive integer, got '0'"),
        (["train", "poetry", "-m", models["electra"], "--train", data["cls.csv"], "-o", "x"],
         "argument task: invalid choice: 'poetry'"),
        (["train", "masked-lm", "-m", models["electra"], "--train", data["lines.txt"], "-o", "x",
          "--warmup-ratio", "2"], "--warmup-ratio: expected a ratio in [0, 1]"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert fragment in capsys.readouterr().err
    code, _, err = train(capsys, "masked-lm", "-m", models["electra"], "--train", data["lines.txt"], "-o", "x",
                         "--num-labels", "3")
    assert code == 2 and "--num-labels applies to text-classification and token-classification" in err
    code, _, err = train(capsys, "masked-lm", "-m", models["electra"], "--train", data["lines.txt"], "-o", "x",
                         "--eval-steps", "2")
    assert code == 2 and "--eval-steps needs --eval FILE" in err
    assert not os.path.exists("x")


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_print_once(models, data, tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "POLYFORMERS_DEBUG")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT / "src"))
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--standalone", "--local-addr", "127.0.0.1", "-m", "polyformers.cli",
         "train", "text-classification", "-m", models["electra"], "--train", data["cls.csv"], "--eval", data["cls.csv"],
         "--text-column", "sentence", "--label-column", "topic", "--output", str(out), "--max-steps", "2",
         "--batch-size", "3", "--logging-steps", "1", "--save-steps", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("eval_accuracy") == 1, proc.stdout  # one table, from process 0
    losses = [ln for ln in proc.stderr.splitlines() if ln.startswith('{"loss"')]
    assert len(losses) == 2, proc.stderr  # one log line per step, not one per process
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["eval_samples"] == 18
    assert metrics["train_samples_per_second"] > 0
    assert pf.AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 3


# ----------------------------------------------------------------------------- the README's data set


def test_play_dataset_script_is_deterministic_and_disjoint(assets, tmp_path):
    script = ROOT / "scripts" / "make_play_dataset.py"
    runs = []
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, str(script), "--assets", str(assets), "--out", str(tmp_path / name),
                               "--train-per-play", "40", "--eval-per-play", "10", "--minilm-electra",
                               str(tmp_path / name / "minilm")], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        runs.append({f: (tmp_path / name / f).read_text() for f in ("train.csv", "eval.csv")})
    assert runs[0] == runs[1]
    import csv

    train_rows = list(csv.DictReader(runs[0]["train.csv"].splitlines()))
    eval_rows = list(csv.DictReader(runs[0]["eval.csv"].splitlines()))
    assert len(train_rows) == 80 and len(eval_rows) == 20
    assert {r["label"] for r in train_rows} == {"hamlet", "macbeth"}
    assert not {r["text"] for r in train_rows} & {r["text"] for r in eval_rows}
    assert not any(r["text"].startswith("[") or r["text"].isupper() for r in train_rows + eval_rows)
    config = pf.AutoConfig.from_pretrained(tmp_path / "a" / "minilm")
    assert config.model_type == "electra" and config.embedding_size == config.hidden_size == 384
