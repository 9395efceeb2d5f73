"""The Trainer against the reference's: the 4.37 release (in its own environment) and the installed one.

Same perturbed checkpoint, same examples, same TrainingArguments: the logged losses, learning rates
and evaluation metrics must agree.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

import polyformers as pf

ORACLE = Path(__file__).with_name("trainer_oracle.py")
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    ref = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**CONFIG))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ref.save_pretrained(folder)
    return folder


def _examples(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mask = torch.ones(8, dtype=torch.long)
        mask[6:] = i % 2  # some rows padded
        out.append({"input_ids": torch.randint(3, 99, (8,), generator=g), "attention_mask": mask,
                    "labels": torch.tensor(i % 3)})
    return out


def _run_reference(python, folder: Path, data: list[dict], args: dict, workdir: Path, **extra) -> list[dict]:
    data_file = workdir / "data.safetensors"
    save_file({k: torch.stack([d[k] for d in data]) for k in data[0]}, str(data_file))
    job = dict(cls="RobertaForSequenceClassification", folder=str(folder), data=str(data_file), args=args, **extra)
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", TF_CPP_MIN_LOG_LEVEL="3",
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True,
                          env=env, timeout=600, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["log_history"]


def _accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def test_same_losses_learning_rates_and_metrics_as_4_37(tmp_path, legacy_python):
    # 8 examples, 2 micro-batches of 4, accumulation 2: each optimisation step sees the whole set, so the
    # reference's unseeded shuffling cannot change a loss. Warm-up, decay, clipping and weight decay act.
    folder = _checkpoint(tmp_path / "ckpt")
    data = _examples(8)
    common = dict(per_device_train_batch_size=4, per_device_eval_batch_size=3, gradient_accumulation_steps=2,
                  num_train_epochs=6, logging_steps=1, learning_rate=3e-3, weight_decay=0.1, warmup_steps=2,
                  max_grad_norm=0.5, lr_scheduler_type="cosine", evaluation_strategy="steps", eval_steps=3,
                  save_strategy="no", report_to="none", disable_tqdm=True, seed=7, use_cpu=True)
    reference = _run_reference(legacy_python, folder, data, dict(common, output_dir=str(tmp_path / "ref")),
                               tmp_path, eval_examples=5, accuracy=True)

    model = pf.RobertaForSequenceClassification.from_pretrained(folder)
    trainer = pf.Trainer(model, pf.TrainingArguments(str(tmp_path / "ours"), **common), train_dataset=data,
                         eval_dataset=data[:5], compute_metrics=_accuracy)
    trainer.train()
    ours = trainer.state.log_history

    def rows(history, key):
        return [(h["step"], h[key]) for h in history if key in h]

    assert [s for s, _ in rows(ours, "loss")] == [s for s, _ in rows(reference, "loss")] == list(range(1, 7))
    for (step, a), (_, b) in zip(rows(ours, "loss"), rows(reference, "loss")):
        assert abs(a - b) <= 1e-4, f"step {step}: loss {a} vs 4.37's {b}"
    for (step, a), (_, b) in zip(rows(ours, "learning_rate"), rows(reference, "learning_rate")):
        assert abs(a - b) <= 1e-12, f"step {step}: learning rate {a} vs 4.37's {b}"
    assert rows(ours, "epoch") == rows(reference, "epoch")
    for key in ("eval_loss", "eval_accuracy"):
        got, want = rows(ours, key), rows(reference, key)
        assert [s for s, _ in got] == [s for s, _ in want] == [3, 6]
        for (step, a), (_, b) in zip(got, want):
            assert abs(a - b) <= 1e-5, f"step {step}: {key} {a} vs 4.37's {b}"
    train_loss = [h["train_loss"] for h in ours if "train_loss" in h]
    assert abs(train_loss[0] - [h["train_loss"] for h in reference if "train_loss" in h][0]) <= 1e-4


def test_same_data_order_and_losses_as_the_installed_reference(tmp_path):
    # Shuffled batches that differ from step to step: equal losses mean the same examples in the same
    # order (both shuffle with a generator seeded from the seed and the epoch).
    folder = _checkpoint(tmp_path / "ckpt")
    data = _examples(20)
    common = dict(per_device_train_batch_size=4, num_train_epochs=2, logging_steps=1, learning_rate=1e-3,
                  save_strategy="no", report_to="none", disable_tqdm=True, seed=11, use_cpu=True)
    ref_model = transformers.RobertaForSequenceClassification.from_pretrained(folder)
    reference = transformers.Trainer(ref_model, transformers.TrainingArguments(str(tmp_path / "ref"), **common),
                                     train_dataset=data)
    reference.train()
    trainer = pf.Trainer(pf.RobertaForSequenceClassification.from_pretrained(folder),
                         pf.TrainingArguments(str(tmp_path / "ours"), **common), train_dataset=data)
    trainer.train()
    want = [h["loss"] for h in reference.state.log_history if "loss" in h]
    got = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(got) == len(want) == 10
    assert len({round(x, 3) for x in got}) > 5  # the batches do differ
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-4, (got, want)


@pytest.mark.parametrize("kind", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                  "constant_with_warmup", "inverse_sqrt"])
def test_schedules_equal_the_reference(kind):
    def lrs(get):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = get(kind, opt, num_warmup_steps=3, num_training_steps=12)
        out = []
        for _ in range(14):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    ours, theirs = lrs(pf.get_scheduler), lrs(transformers.get_scheduler)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-12, (ours, theirs)
    assert len(set(ours)) > 1 or kind == "constant"
