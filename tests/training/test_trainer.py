"""The Trainer's own behaviour: checkpoints and exact resumption after a kill, best-model bookkeeping,
callbacks, logging, data handling and the errors that bad input gets."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import polyformers as pf
from tests.training.trainer_script import examples, tiny_model

SCRIPT = Path(__file__).with_name("trainer_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _run_script(job: dict, workdir: Path, name: str) -> subprocess.CompletedProcess:
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(job))
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, env=_env(),
                          timeout=300)


def _losses(history: list) -> list:
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def _args(out, **kw) -> pf.TrainingArguments:
    base = dict(per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, report_to="none",
                save_strategy="no", disable_tqdm=True)
    base.update(kw)
    return pf.TrainingArguments(str(out), **base)


def _accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def _classification_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 99, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": i % 3} for i in range(n)]


def _classifier():
    torch.manual_seed(0)
    return pf.RobertaForSequenceClassification(pf.RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=3))


# -------------------------------------------------------------------------------------------------
# checkpoints and resumption


def test_killed_run_resumes_with_the_uninterrupted_losses(tmp_path):
    # Dropout on and shuffled batches: equal losses need the data order, the optimizer, the schedule and
    # every random generator restored exactly.
    args = dict(per_device_train_batch_size=4, num_train_epochs=3, logging_steps=1, learning_rate=2e-3,
                warmup_steps=3, weight_decay=0.01, save_steps=5, report_to="none", disable_tqdm=True, seed=5,
                gradient_accumulation_steps=2, use_cpu=True)
    job = dict(family="gptj", dropout=0.1, examples=20)
    whole = _run_script(dict(job, args=dict(args, output_dir=str(tmp_path / "whole"))), tmp_path, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_result = json.loads(whole.stdout.strip().splitlines()[-1])
    expected = _losses(whole_result["log_history"])
    assert len(expected) == 9  # 3 epochs of ceil(5 micro-batches / 2) steps
    assert not whole_result["datasets_imported"]  # a list of examples needs no `datasets` (0.45 s to import)

    out = tmp_path / "killed"
    killed = _run_script(dict(job, args=dict(args, output_dir=str(out)), kill_at_step=7), tmp_path, "killed")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert pf.get_last_checkpoint(str(out)) == str(out / "checkpoint-5")
    # a save that was cut short leaves only a hidden partial folder, which resuming ignores
    (out / ".checkpoint-10.partial").mkdir()
    resumed = _run_script(dict(job, args=dict(args, output_dir=str(out)), resume=True), tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _losses(json.loads(resumed.stdout.strip().splitlines()[-1])["log_history"])
    assert got == expected


def test_checkpoint_folder_contents_and_weights_only_loading(tmp_path):
    model = tiny_model("roberta", 0.0)
    trainer = pf.Trainer(model, _args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1),
                         train_dataset=examples(16))
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]
    ckpt = tmp_path / "checkpoint-4"
    assert {"config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json", "training_args.json"} <= {p.name for p in ckpt.iterdir()}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.load(ckpt / name, weights_only=True)  # nothing in them needs unpickling code
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["max_steps"] == 4 and len(state["log_history"]) == 4
    weights = load_file(str(ckpt / "model.safetensors"))
    for name, p in trainer.model.state_dict().items():
        if name in weights:
            assert torch.equal(weights[name], p), name
    # the reference loads the checkpoint and gives the same outputs
    ref = transformers.RobertaForMaskedLM.from_pretrained(ckpt).eval()
    ids = torch.randint(3, 99, (2, 9))
    with torch.no_grad():
        assert (ref(ids).logits - trainer.model.eval()(ids).logits).abs().max() <= 1e-4


def test_tied_weights_stay_tied_through_training_and_saving(tmp_path):
    model = tiny_model("roberta", 0.0)
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    trainer = pf.Trainer(model, _args(tmp_path, max_steps=3), train_dataset=examples(12))
    before = model.roberta.embeddings.word_embeddings.weight.detach().clone()
    trainer.train()
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    assert not torch.equal(before, model.roberta.embeddings.word_embeddings.weight)
    trainer.save_model(str(tmp_path / "final"))
    again = pf.RobertaForMaskedLM.from_pretrained(tmp_path / "final")
    assert again.lm_head.decoder.weight is again.roberta.embeddings.word_embeddings.weight
    assert torch.equal(again.roberta.embeddings.word_embeddings.weight, model.roberta.embeddings.word_embeddings.weight)


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path):
    trainer = pf.Trainer(tiny_model("roberta", 0.0), _args(tmp_path, max_steps=2), train_dataset=examples(8))
    with pytest.raises(ValueError, match="resume_from_checkpoint=.*not a Trainer checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="resume_from_checkpoint=True but output_dir"):
        trainer.train(resume_from_checkpoint=True)


def test_best_model_is_loaded_at_the_end_and_kept_by_the_rotation(tmp_path):
    # A learning rate this high makes the evaluation loss rise after the first steps.
    data = _classification_data()
    trainer = pf.Trainer(_classifier(), _args(tmp_path, learning_rate=0.5, max_steps=8, evaluation_strategy="steps",
                                              eval_steps=2, save_strategy="steps", save_steps=2, save_total_limit=1,
                                              load_best_model_at_end=True, metric_for_best_model="loss"),
                         train_dataset=data, eval_dataset=data[:8])
    trainer.train()
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    best_step = min(evals, key=lambda x: x[1])[0]
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint"))
    assert f"checkpoint-{best_step}" in kept and "checkpoint-8" in kept and len(kept) <= 2
    assert abs(trainer.evaluate()["eval_loss"] - min(e for _, e in evals)) <= 1e-6


def test_early_stopping(tmp_path):
    data = _classification_data()
    trainer = pf.Trainer(_classifier(), _args(tmp_path, learning_rate=0.5, max_steps=40, evaluation_strategy="steps",
                                              eval_steps=1, save_strategy="steps", save_steps=1, save_total_limit=2,
                                              load_best_model_at_end=True),
                         train_dataset=data, eval_dataset=data[:8],
                         callbacks=[pf.EarlyStoppingCallback(early_stopping_patience=2)])
    trainer.train()
    assert trainer.state.global_step < 40
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    best = min(evals)
    assert evals.index(best) == len(evals) - 3  # stopped after two evaluations without improvement
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        pf.Trainer(_classifier(), _args(tmp_path / "b", max_steps=2), train_dataset=data,
                   callbacks=[pf.EarlyStoppingCallback()]).train()


# -------------------------------------------------------------------------------------------------
# evaluation, prediction, logging


def test_predict_and_evaluate(tmp_path):
    data = _classification_data(10)
    trainer = pf.Trainer(_classifier(), _args(tmp_path, per_device_eval_batch_size=4), compute_metrics=_accuracy)
    out = trainer.predict(data)
    assert out.predictions.shape == (10, 3) and out.label_ids.tolist() == [i % 3 for i in range(10)]
    assert set(out.metrics) >= {"test_loss", "test_accuracy", "test_runtime"}
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(torch.stack([d["input_ids"] for d in data])).logits
    assert (torch.from_numpy(out.predictions) - logits).abs().max() <= 1e-5
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([d["labels"] for d in data]))
    # the loss of 3 batches (4, 4, 2 rows), each weighted by its rows
    assert abs(out.metrics["test_loss"] - want.item()) <= 1e-5
    metrics = trainer.evaluate(eval_dataset={"a": data[:4], "b": data[4:]})
    assert {"eval_a_loss", "eval_b_loss", "eval_a_accuracy"} <= set(metrics)


def test_token_predictions_of_different_lengths_are_padded_with_minus_100(tmp_path):
    torch.manual_seed(0)
    model = pf.ElectraForTokenClassification(pf.ElectraConfig(
        vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=37, num_labels=2))
    data = [{"input_ids": torch.arange(3, 3 + n), "labels": torch.ones(n, dtype=torch.long)} for n in (5, 5, 7, 7)]
    out = pf.Trainer(model, _args(tmp_path, per_device_eval_batch_size=2)).predict(data)
    assert out.predictions.shape == (4, 7, 2)
    assert out.label_ids[:2, 5:].tolist() == [[-100, -100]] * 2 and out.label_ids[2:].min() == 1


def test_jsonl_report_and_plain_log_lines_without_a_terminal(tmp_path):
    err = io.StringIO()
    with redirect_stderr(err):
        trainer = pf.Trainer(tiny_model("roberta", 0.0),
                             _args(tmp_path, max_steps=4, logging_steps=2, report_to="jsonl", disable_tqdm=None),
                             train_dataset=examples(16))
        trainer.train()
    lines = [json.loads(x) for x in err.getvalue().splitlines() if x.startswith("{")]
    assert [x["loss"] for x in lines if "loss" in x] == [h["loss"] for h in trainer.state.log_history if "loss" in h]
    logged = (Path(trainer.args.logging_dir) / "log_history.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in logged] == [2, 4, 4]


def test_progress_bar_shows_loss_and_learning_rate(tmp_path):
    bar = pf.ProgressCallback()
    trainer = pf.Trainer(tiny_model("roberta", 0.0), _args(tmp_path, max_steps=3, disable_tqdm=False),
                         train_dataset=examples(12))
    trainer.pop_callback(pf.ProgressCallback)
    trainer.add_callback(bar)
    seen = []

    class Peek(pf.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if bar.training_bar is not None:
                seen.append((bar.training_bar.n, dict(bar.training_bar.postfix and [
                    kv.split("=") for kv in bar.training_bar.postfix.split(", ")] or {})))

    trainer.add_callback(Peek())
    with redirect_stderr(io.StringIO()):
        trainer.train()
    assert seen[0][0] == 1 and set(seen[0][1]) == {"loss", "learning_rate"}


def test_gradient_checkpointing_argument_keeps_the_losses(tmp_path):
    def run(flag):
        trainer = pf.Trainer(tiny_model("gptj", 0.0), _args(tmp_path / str(flag), max_steps=4,
                                                              gradient_checkpointing=flag),
                             train_dataset=examples(16))
        trainer.train()
        assert trainer.model.is_gradient_checkpointing == flag
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert run(True) == run(False)


def test_bf16_mixed_precision_trains(tmp_path):
    def run(bf16):
        trainer = pf.Trainer(tiny_model("gptj", 0.0), _args(tmp_path / str(bf16), max_steps=6, bf16=bf16),
                             train_dataset=examples(24))
        trainer.train()
        assert trainer.model.dtype == torch.float32  # autocast computes in bf16; the weights stay fp32
        return torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h])

    half, full = run(True), run(False)
    assert torch.isfinite(half).all()
    assert 0 < (half - full).abs().max() <= 0.05  # bf16 did compute, and close to fp32


def test_label_smoothing_equals_the_reference(tmp_path):
    data = _classification_data(8)
    model = _classifier().eval()  # no dropout: both losses see the same logits
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(50)  # confident logits, where smoothing changes the loss
    ours = pf.Trainer(model, _args(tmp_path, label_smoothing_factor=0.2))
    theirs_args = transformers.TrainingArguments(str(tmp_path / "r"), label_smoothing_factor=0.2, report_to="none")
    batch = {k: torch.stack([torch.as_tensor(d[k]) for d in data]) for k in data[0]}
    loss = ours.compute_loss(model, dict(batch))
    smoother = transformers.trainer_pt_utils.LabelSmoother(epsilon=theirs_args.label_smoothing_factor)
    want = smoother(model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])
    assert abs(loss.item() - want.item()) <= 1e-6
    plain = model(**batch).loss
    assert abs(loss.item() - plain.item()) > 1e-3


# -------------------------------------------------------------------------------------------------
# data


def test_datasets_dataset_with_extra_columns(tmp_path):
    import datasets

    rows = _classification_data(12)
    ds = datasets.Dataset.from_dict({
        "input_ids": [r["input_ids"].tolist() for r in rows], "labels": [r["labels"] for r in rows],
        "text": [f"row {i}" for i in range(12)], "idx": list(range(12)),
    })
    trainer = pf.Trainer(_classifier(), _args(tmp_path, max_steps=3), train_dataset=ds, eval_dataset=ds,
                         compute_metrics=_accuracy)
    trainer.train()
    assert "eval_accuracy" in trainer.evaluate()
    with pytest.raises(ValueError, match="none of the dataset's columns"):
        pf.Trainer(_classifier(), _args(tmp_path, max_steps=3),
                   train_dataset=datasets.Dataset.from_dict({"text": ["a", "b"]})).train()


def test_collator_and_tokenizer_defaults_pad_batches(tmp_path, assets):
    tok = pf.AutoTokenizer.from_pretrained(assets / "minilm")
    texts = ["a short line", "a much longer line of text than the first one", "third"]
    rows = [dict(tok(t), labels=i % 2) for i, t in enumerate(texts * 4)]
    torch.manual_seed(0)
    model = pf.ElectraForSequenceClassification(pf.ElectraConfig(
        vocab_size=tok.vocab_size, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=37))
    trainer = pf.Trainer(model, _args(tmp_path, max_steps=2), train_dataset=rows, tokenizer=tok)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "tokenizer_config.json").exists()
    assert pf.AutoTokenizer.from_pretrained(tmp_path / "final")("a short line")["input_ids"] == rows[0]["input_ids"]


# -------------------------------------------------------------------------------------------------
# bad input


def test_missing_label_column(tmp_path):
    data = [{"input_ids": torch.arange(3, 11)} for _ in range(8)]
    trainer = pf.Trainer(_classifier(), _args(tmp_path, max_steps=2), train_dataset=data)
    with pytest.raises(ValueError, match=r"returned no loss.*label columns \['labels'\]"):
        trainer.train()


def test_labels_out_of_range(tmp_path):
    data = _classification_data(8)
    data[3]["labels"] = 7
    trainer = pf.Trainer(_classifier(), _args(tmp_path, max_steps=2, per_device_train_batch_size=8),
                         train_dataset=data)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) \(num_labels.*got a label 7"):
        trainer.train()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_steps=0), "max_steps=0"),
    (dict(lr_scheduler_type="triangle"), "lr_scheduler_type must be one of"),
    (dict(evaluation_strategy="sometimes"), "evaluation_strategy must be one of"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size must be a positive integer"),
    (dict(fsdp="shard_everything"), "fsdp must be one of"),
    (dict(load_best_model_at_end=True, evaluation_strategy="steps", save_strategy="epoch"),
     "load_best_model_at_end needs save_strategy"),
    (dict(report_to="wandb"), "report_to names an integration"),
    (dict(deepspeed="ds.json"), "deepspeed="),
    (dict(evaluation_strategy="steps", eval_strategy="epoch"), "disagree"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        pf.TrainingArguments(str(tmp_path), **kwargs)


def test_eval_strategy_is_the_new_name(tmp_path):
    assert pf.TrainingArguments(str(tmp_path), eval_strategy="epoch").evaluation_strategy.value == "epoch"


def test_fsdp_needs_torch_distributed(tmp_path):
    trainer = pf.Trainer(tiny_model("gptj", 0.0), _args(tmp_path, max_steps=2, fsdp="full_shard"),
                         train_dataset=examples(8))
    with pytest.raises(ValueError, match="needs torch.distributed: launch the script with torchrun"):
        trainer.train()


def test_empty_train_dataset(tmp_path):
    trainer = pf.Trainer(_classifier(), _args(tmp_path, max_steps=2, dataloader_drop_last=True),
                         train_dataset=_classification_data(3))
    with pytest.raises(ValueError, match="train_dataset gives no batch"):
        trainer.train()


def test_fsdp_refuses_a_model_it_cannot_wrap(tmp_path):
    from polyformers.training.fsdp import _blocks

    model = tiny_model("gptj", 0.0)
    assert [type(b).__name__ for b in _blocks(model, None)] == ["GPTJBlock", "GPTJBlock"]
    assert len(_blocks(model, ["GPTJBlock"])) == 2
    with pytest.raises(ValueError, match=r"transformer_layer_cls_to_wrap'\]=\['LlamaDecoderLayer'\] names no module "
                                         r"of GPTJForCausalLM; its module classes are \[.*'GPTJBlock'"):
        _blocks(model, ["LlamaDecoderLayer"])
    args = pf.TrainingArguments(str(tmp_path), fsdp="full_shard auto_wrap",
                                fsdp_config={"fsdp_transformer_layer_cls_to_wrap": "GPTJBlock"})
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["GPTJBlock"]


def test_dataloader_workers_give_the_same_losses(tmp_path):
    # In a fresh process: worker processes are forked, and a fork of a process that has started JAX's
    # threads (as other tests of this session do) may deadlock.
    def run(workers):
        args = dict(output_dir=str(tmp_path / str(workers)), per_device_train_batch_size=4, max_steps=4,
                    logging_steps=1, report_to="none", disable_tqdm=True, save_strategy="no",
                    dataloader_num_workers=workers, use_cpu=True)
        done = _run_script(dict(family="roberta", examples=16, args=args), tmp_path, f"w{workers}")
        assert done.returncode == 0, done.stderr[-3000:]
        return _losses(json.loads(done.stdout.strip().splitlines()[-1])["log_history"])

    assert run(2) == run(0)


def test_flos_tokens_seen_and_resuming_a_finished_run(tmp_path):
    model = tiny_model("roberta", 0.0)
    args = _args(tmp_path, max_steps=3, save_strategy="steps", save_steps=3, include_num_input_tokens_seen=True)
    trainer = pf.Trainer(model, args, train_dataset=examples(12))
    trainer.train()
    assert trainer.state.num_input_tokens_seen == 3 * 4 * 12
    assert trainer.state.total_flos == 6 * model.num_parameters(exclude_embeddings=True) * 3 * 4 * 12
    again = pf.Trainer(tiny_model("roberta", 0.0), args, train_dataset=examples(12))
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 3
    assert [h["step"] for h in again.state.log_history if "loss" in h] == [1, 2, 3]


def test_log_lines_are_strict_json(capsys):
    pf.PrinterCallback().on_log(None, pf.TrainerState(), pf.TrainerControl(), logs={"loss": float("nan"), "x": 1.0})
    assert json.loads(capsys.readouterr().err) == {"loss": "nan", "x": 1.0}


def test_custom_optimizer_scheduler_and_preprocessed_logits(tmp_path):
    model = _classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    seen = []

    def argmax_first(logits, labels):
        seen.append(tuple(logits.shape))
        return logits.argmax(-1)

    data = _classification_data(8)
    trainer = pf.Trainer(model, _args(tmp_path, max_steps=4), train_dataset=data, eval_dataset=data,
                         optimizers=(optimizer, scheduler), preprocess_logits_for_metrics=argmax_first,
                         compute_metrics=lambda p: {"mean_pred": float(p.predictions.mean())})
    trainer.train()
    assert [h["learning_rate"] for h in trainer.state.log_history if "loss" in h] == [0.05, 0.025, 0.025, 0.0125]
    metrics = trainer.evaluate()
    assert seen == [(8, 3)] and "eval_mean_pred" in metrics  # one batch of per_device_eval_batch_size 8
    with pytest.raises(ValueError, match="a scheduler needs the optimizer"):
        pf.Trainer(model, _args(tmp_path), optimizers=(None, scheduler))
