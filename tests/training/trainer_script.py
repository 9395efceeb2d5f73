"""A fine-tuning script as a user writes it, run by the tests in fresh processes (alone, under
``torchrun`` or ``accelerate launch``).

``python trainer_script.py JOB.json``; the job gives the family, the output folder and the
TrainingArguments. Process 0 prints the log history as one JSON line at the end. With ``kill_at_step``
the process kills itself (SIGKILL, nothing flushed) right after that optimisation step. With
``exit_report`` each process writes, as the last thing before the interpreter finalises, whether its
process group is still alive (``exit_report``.RANK).
"""

import atexit
import gc
import json
import os
import signal
import sys

import torch

import polyformers as pf


def tiny_model(family: str, dropout: float):
    torch.manual_seed(0)
    if family == "gptj":
        config = pf.GPTJConfig(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
                               resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=1,
                               eos_token_id=2, pad_token_id=0)
        model = pf.GPTJForCausalLM(config)
    elif family == "roberta":
        config = pf.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout)
        model = pf.RobertaForMaskedLM(config)
    else:
        raise SystemExit(f"unknown family {family!r}")
    with torch.no_grad():  # move every weight off its default initialisation
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def examples(n: int, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 99, (length,), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": ids.clone()})
    return out


class KillAt(pf.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


KEPT = []


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    torch.set_num_threads(1)
    if job.get("exit_report"):
        # registered before anything of polyformers', so it runs after their exit handlers
        def report():
            alive = torch.distributed.is_available() and torch.distributed.is_initialized()
            wrappers = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
            with open(f"{job['exit_report']}.{os.environ.get('RANK', '0')}", "w", encoding="utf-8") as f:
                f.write(json.dumps({"process_group_alive": alive, "ddp_wrappers_alive": wrappers}))

        atexit.register(report)
    model = tiny_model(job["family"], job.get("dropout", 0.0))
    if job.get("load"):
        model = type(model).from_pretrained(job["load"])
    callbacks = [KillAt(job["kill_at_step"])] if job.get("kill_at_step") else []
    args = pf.TrainingArguments(**job["args"])
    data = examples(job.get("examples", 32))
    trainer = pf.Trainer(model, args, train_dataset=data, eval_dataset=data[:8] if job.get("eval") else None,
                         callbacks=callbacks)
    trainer.train(resume_from_checkpoint=job.get("resume"))
    if job.get("keep_trainer"):  # as a script whose trainer is a module-level name: alive at exit
        KEPT.append(trainer)
    if job.get("save_model"):
        trainer.save_model(job["save_model"])
    if job.get("state_bytes"):
        from polyformers.training.fsdp import local_state_bytes

        mine = torch.tensor([float(local_state_bytes(trainer.model, trainer.optimizer))])
        if torch.distributed.is_initialized():
            every = [torch.zeros(1) for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather(every, mine)
        else:
            every = [mine]
        job_bytes = [int(t.item()) for t in every]
    else:
        job_bytes = None
    if trainer.is_world_process_zero():
        print(json.dumps({"log_history": trainer.state.log_history, "state_bytes": job_bytes,
                          "datasets_imported": "datasets" in sys.modules}), flush=True)


if __name__ == "__main__":
    main()
