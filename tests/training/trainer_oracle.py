"""Runs a reference ``Trainer`` on a checkpoint folder and a batch of examples; prints its log history.

Called as a script by the tests, with the interpreter of either reference release (the 4.37 one lives
in its own environment): ``python trainer_oracle.py < job.json``. The job names the model class, the
checkpoint folder, a safetensors file of stacked examples, and the TrainingArguments.
"""

import json
import sys

import torch
import transformers
from safetensors.torch import load_file


def main() -> None:
    job = json.load(sys.stdin)
    model = getattr(transformers, job["cls"]).from_pretrained(job["folder"])
    columns = load_file(job["data"])
    n = next(iter(columns.values())).shape[0]
    data = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    eval_data = data[: job.get("eval_examples", 0)] or None
    args = transformers.TrainingArguments(**job["args"])
    metrics = None
    if job.get("accuracy"):
        def metrics(p):
            return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}
    trainer = transformers.Trainer(model, args, train_dataset=data, eval_dataset=eval_data, compute_metrics=metrics)
    trainer.train()
    print(json.dumps({"log_history": trainer.state.log_history}))


if __name__ == "__main__":
    main()
