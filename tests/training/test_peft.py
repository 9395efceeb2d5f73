"""LoRA with ``peft`` on polyformers models (GPT-J, MPT, RoBERTa), trained by polyformers' Trainer.

Each family: a tiny random model with perturbed weights is saved once; ``get_peft_model`` wraps it (and, for
the comparison, the reference's class of the same name loaded from the same folder, with the same LoRA
weights); only the adapter (and, for classification, peft's copy of the head) trains; the Trainer lowers the
loss on a fixed batch with the reference's per-step losses; the adapter saves and reloads onto a fresh base;
``merge_and_unload`` gives a plain model that round-trips through both libraries' ``from_pretrained``.
Then the Trainer's checkpoints of a PeftModel, and the GPT-J document's ``Accelerator().device`` example.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file

import polyformers as pf

VOCAB, LENGTH, N = 99, 12, 8
STEPS = 12

FAMILIES = {
    "gptj": dict(
        cls="GPTJForCausalLM", task=TaskType.CAUSAL_LM, targets=["q_proj", "v_proj"],
        config=lambda: pf.GPTJConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ),
    "mpt": dict(
        cls="MptForCausalLM", task=TaskType.CAUSAL_LM, targets=["Wqkv"],
        config=lambda: pf.MptConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=VOCAB,
                                    pad_token_id=0),
    ),
    "roberta": dict(
        cls="RobertaForSequenceClassification", task=TaskType.SEQ_CLS, targets=["query", "value"],
        config=lambda: pf.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37, max_position_embeddings=64, num_labels=3,
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    ),
}


def _data(family: str) -> list[dict]:
    """A fixed, learnable batch: 8 copies of one sequence (causal LM), or 8 sequences with 3 classes."""
    g = torch.Generator().manual_seed(3)
    if FAMILIES[family]["task"] == TaskType.CAUSAL_LM:
        ids = torch.randint(3, VOCAB, (LENGTH,), generator=g)
        return [{"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": ids.clone()}
                for _ in range(N)]
    out = []
    for i in range(N):
        ids = torch.randint(3, VOCAB, (LENGTH,), generator=g)
        ids[0], ids[-1] = 0, 2  # <s> ... </s>
        types = torch.zeros(LENGTH, dtype=torch.long)
        types[LENGTH // 2:] = 1
        out.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                    "token_type_ids": types, "labels": i % 3})
    return out


def _batch(family: str) -> dict:
    data = _data(family)
    return {k: torch.stack([torch.as_tensor(d[k]) for d in data]) for k in data[0]}


def _lora(family: str) -> LoraConfig:
    spec = FAMILIES[family]
    return LoraConfig(r=4, lora_alpha=8, target_modules=spec["targets"], lora_dropout=0.0, task_type=spec["task"])


def _args(out, **kw) -> pf.TrainingArguments:
    base = dict(per_device_train_batch_size=N, learning_rate=1e-2, lr_scheduler_type="constant", max_steps=STEPS,
                logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=7)
    base.update(kw)
    return pf.TrainingArguments(str(out), **base)


class RecordingTrainer(pf.Trainer):
    """Keeps every micro-batch's exact loss (the logged ones are rounded to 4 decimals)."""

    def training_step(self, model, inputs):
        loss = super().training_step(model, inputs)
        self.losses = getattr(self, "losses", []) + [loss.item()]
        return loss


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """family -> folder holding a tiny polyformers model whose every weight is moved off its initialisation."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for family, spec in FAMILIES.items():
        torch.manual_seed(0)
        model = getattr(pf, spec["cls"])(spec["config"]())
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.save_pretrained(root / family)
        out[family] = str(root / family)
    return out


def _outputs(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


def _lora_weights(peft_model) -> dict:
    return {k: v for k, v in peft_model.state_dict().items() if "lora_" in k or "modules_to_save" in k}


# -------------------------------------------------------------------------------------------------
# the whole LoRA life cycle, against peft on the reference's class


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_trains_like_the_reference_saves_reloads_and_merges(family, checkpoints, tmp_path):
    spec, folder, batch = FAMILIES[family], checkpoints[family], _batch(family)
    ours_cls, ref_cls = getattr(pf, spec["cls"]), getattr(transformers, spec["cls"])
    base = ours_cls.from_pretrained(folder)
    before = _outputs(base, batch)  # a no-grad forward first: GPT-J stacks q/k/v into one buffer here

    # -- wrapping: peft finds our modules, and only the adapter (and peft's copy of the head) trains
    torch.manual_seed(0)  # lora_A's random initialisation
    model = get_peft_model(base, _lora(family))
    assert type(model).__name__ == {"CAUSAL_LM": "PeftModelForCausalLM",
                                    "SEQ_CLS": "PeftModelForSequenceClassification"}[spec["task"].value]
    torch.testing.assert_close(_outputs(model, batch), before, rtol=0, atol=0)  # lora_B starts at zero
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    config = base.config
    hidden = getattr(config, "n_embd", None) or getattr(config, "d_model", None) or config.hidden_size
    layers = getattr(config, "n_layer", None) or getattr(config, "n_layers", None) or config.num_hidden_layers
    out_width = {"gptj": hidden, "mpt": 3 * hidden, "roberta": hidden}[family]
    lora_count = layers * len(spec["targets"]) * 4 * (hidden + out_width)
    lora = {n: c for n, c in trainable.items() if ".lora_A." in n or ".lora_B." in n}
    assert len(lora) == 2 * layers * len(spec["targets"]) and sum(lora.values()) == lora_count
    head = {n: c for n, c in trainable.items() if n not in lora}
    if family == "roberta":  # SEQ_CLS: peft trains a copy of the classifier
        assert head and all(".classifier.modules_to_save." in n for n in head)
        assert sum(head.values()) == sum(p.numel() for p in base.classifier.original_module.parameters())
    else:
        assert not head
    counted_trainable, counted_all = model.get_nb_trainable_parameters()
    assert counted_trainable == sum(trainable.values())
    assert counted_all == sum(p.numel() for p in model.parameters())

    # -- the reference's class of the same name, same checkpoint, same LoRA weights
    ref = get_peft_model(ref_cls.from_pretrained(folder), _lora(family))
    ours_lora, ref_lora = _lora_weights(model), _lora_weights(ref)
    assert sorted(ours_lora) == sorted(ref_lora)  # peft sees the same module tree in both
    assert not ref.load_state_dict(ours_lora, strict=False).unexpected_keys
    torch.testing.assert_close(_outputs(model, batch), _outputs(ref, batch), rtol=0, atol=1e-5)

    losses = {}
    for name, m in (("ours", model), ("ref", ref)):
        trainer = RecordingTrainer(m, _args(tmp_path / name), train_dataset=_data(family))
        trainer.train()
        losses[name] = trainer.losses
    assert len(losses["ours"]) == STEPS
    assert losses["ours"][-1] < losses["ours"][0] - 0.05, losses["ours"]
    for step, (a, b) in enumerate(zip(losses["ours"], losses["ref"])):
        assert abs(a - b) <= 1e-4, f"step {step}: ours {a} vs reference {b}\n{losses}"
    # the frozen base did not move
    reloaded = ours_cls.from_pretrained(folder)
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
              for k, v in model.state_dict().items() if "lora_" not in k and "modules_to_save" not in k}
    for key, value in reloaded.state_dict().items():
        assert torch.equal(frozen[key.replace("classifier.", "classifier.original_module.")
                                  if family == "roberta" and key.startswith("classifier.") else key], value), key
    model.eval()
    adapted = _outputs(model, batch)
    assert not torch.allclose(adapted, before, atol=1e-3)

    # -- adapter files, and a fresh base with them gives the same outputs
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter_dir))
    assert not {"model.safetensors", "pytorch_model.bin"} & set(os.listdir(adapter_dir))
    saved_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == folder
    assert sorted(saved_config["target_modules"]) == sorted(spec["targets"])
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert saved and all("lora_" in k or "classifier" in k for k in saved)
    fresh = PeftModel.from_pretrained(ours_cls.from_pretrained(folder), adapter_dir)
    assert isinstance(fresh.get_base_model(), ours_cls)
    torch.testing.assert_close(_outputs(fresh, batch), adapted, rtol=0, atol=1e-6)
    # the reference's class takes our adapter too
    ref_fresh = PeftModel.from_pretrained(ref_cls.from_pretrained(folder), adapter_dir)
    torch.testing.assert_close(_outputs(ref_fresh, batch), adapted, rtol=0, atol=1e-5)

    # -- merged: a plain polyformers model with the adapted outputs, saved and reloaded by both libraries
    merged = fresh.merge_and_unload()
    assert type(merged) is ours_cls
    assert not any("lora_" in n or "base_layer" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_outputs(merged, batch), adapted, rtol=0, atol=1e-5)
    merged_dir = tmp_path / "merged"
    merged.save_pretrained(merged_dir)
    torch.testing.assert_close(_outputs(ours_cls.from_pretrained(merged_dir), batch), adapted, rtol=0, atol=1e-5)
    torch.testing.assert_close(_outputs(ref_cls.from_pretrained(merged_dir), batch), adapted, rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# the Trainer with a PeftModel: checkpoints, resumption, the columns it keeps


def _gptj_peft(checkpoints):
    base = pf.GPTJForCausalLM.from_pretrained(checkpoints["gptj"])
    torch.manual_seed(0)  # the same lora_A in every run
    return get_peft_model(base, _lora("gptj"))


def test_trainer_gradient_checkpointing_on_a_peft_model_keeps_the_losses(checkpoints, tmp_path):
    # The Trainer enables it through PeftModel's attribute forwarding; the embeddings are frozen, so
    # checkpointed blocks must still pass gradients to the adapters of the first block.
    losses = []
    for on in (False, True):
        trainer = RecordingTrainer(_gptj_peft(checkpoints), _args(tmp_path / str(on), max_steps=4,
                                                                  gradient_checkpointing=on),
                                   train_dataset=_data("gptj"))
        trainer.train()
        assert trainer.model.get_base_model().is_gradient_checkpointing == on
        losses.append(trainer.losses)
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    assert losses[1][-1] < losses[1][0]


def test_trainer_checkpoints_of_a_peft_model_hold_the_adapter_only(checkpoints, tmp_path):
    trainer = pf.Trainer(_gptj_peft(checkpoints), _args(tmp_path, save_strategy="steps", save_steps=4, max_steps=8),
                         train_dataset=_data("gptj"))
    trainer.train()
    for step in (4, 8):
        files = set(os.listdir(tmp_path / f"checkpoint-{step}"))
        assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                "trainer_state.json"} <= files
        assert not {"model.safetensors", "pytorch_model.bin"} & files  # as the reference: no copy of the base
    # the last checkpoint's adapter is the trained one
    final = PeftModel.from_pretrained(pf.GPTJForCausalLM.from_pretrained(checkpoints["gptj"]),
                                      tmp_path / "checkpoint-8")
    batch = _batch("gptj")
    trainer.model.eval()
    torch.testing.assert_close(_outputs(final, batch), _outputs(trainer.model, batch), rtol=0, atol=1e-6)


def test_trainer_resumes_a_peft_model_from_its_checkpoint(checkpoints, tmp_path):
    args = dict(save_strategy="steps", save_steps=4, max_steps=8, lr_scheduler_type="linear", warmup_steps=2)
    whole = RecordingTrainer(_gptj_peft(checkpoints), _args(tmp_path / "whole", **args), train_dataset=_data("gptj"))
    whole.train()
    resumed = RecordingTrainer(_gptj_peft(checkpoints), _args(tmp_path / "resumed", **args), train_dataset=_data("gptj"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-4"))
    assert len(resumed.losses) == 4
    assert resumed.losses == pytest.approx(whole.losses[4:], abs=1e-6)
    assert resumed.state.global_step == 8


def test_trainer_loads_the_best_adapter_at_end(checkpoints, tmp_path):
    # greater_is_better on the loss: the best checkpoint is the first one, not the model trained last
    args = _args(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                 load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    trainer = RecordingTrainer(_gptj_peft(checkpoints), args, train_dataset=_data("gptj"), eval_dataset=_data("gptj"))
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    best = PeftModel.from_pretrained(pf.GPTJForCausalLM.from_pretrained(checkpoints["gptj"]),
                                     tmp_path / "checkpoint-2")
    batch = _batch("gptj")
    trainer.model.eval()
    torch.testing.assert_close(_outputs(trainer.model, batch), _outputs(best, batch), rtol=0, atol=1e-6)


def test_trainer_keeps_the_base_models_columns_for_a_peft_model(checkpoints, tmp_path):
    # type_vocab_size=2 and half the tokens of type 1: the loss depends on token_type_ids.
    model = get_peft_model(pf.RobertaForSequenceClassification.from_pretrained(checkpoints["roberta"]),
                           _lora("roberta"))
    batch = _batch("roberta")
    with torch.no_grad():
        expected = model(**batch).loss.item()
        without_types = model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).loss.item()
    assert abs(expected - without_types) > 1e-4
    trainer = RecordingTrainer(model, _args(tmp_path, max_steps=1), train_dataset=_data("roberta"))
    trainer.train()
    assert trainer.losses[0] == pytest.approx(expected, abs=1e-6)


# -------------------------------------------------------------------------------------------------
# the GPT-J document's example: Accelerator().device, model.to(device), inputs moved to model.device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gptj_on_the_accelerator_device_generates(dtype, checkpoints):
    device = Accelerator().device
    model = pf.GPTJForCausalLM.from_pretrained(checkpoints["gptj"], dtype=dtype).to(device)
    assert model.device == device and model.dtype == dtype
    input_ids = torch.tensor([[5, 17, 42, 8, 63]]).to(model.device)
    torch.manual_seed(0)
    sampled = model.generate(input_ids, do_sample=True, temperature=0.9, max_length=20)
    assert sampled.shape == (1, 20) and sampled.device.type == device.type
    assert torch.equal(sampled[:, :5], input_ids)
    # greedy decoding on the device equals the reference's on the CPU, in float32
    greedy = model.generate(input_ids, do_sample=False, max_length=20)
    ref = transformers.GPTJForCausalLM.from_pretrained(checkpoints["gptj"], dtype=dtype).to(device)
    expected = ref.generate(input_ids, do_sample=False, max_length=20, pad_token_id=0)
    if dtype == torch.float32:
        assert torch.equal(greedy.cpu(), expected.cpu())
    else:  # half precision may round a near tie the other way: compare the first new tokens only
        assert torch.equal(greedy[:, :8].cpu(), expected[:, :8].cpu())
