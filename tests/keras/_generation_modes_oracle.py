"""Runs in the 4.37 reference environment (TensorFlow 2.15): the reference's TF ``generate`` on one checkpoint
for a batch of cases. Not a test module: tests/keras/test_generation_modes_keras.py drives it.

Usage: python _generation_modes_oracle.py job.json out.npz. The job holds ``folder`` (a PyTorch checkpoint of
RobertaForCausalLM), ``prompts``, ``mask`` and ``cases``: name -> {"settings": generate keywords, "xla": bool,
"model_generation_config": values set on the model's generation_config for that case}.
Every case returns a dict (``return_dict_in_generate=True``); the arrays go to out.npz as ``name.sequences``,
``name.scores.STEP``, ``name.attentions.STEP.LAYER``; stdout gets one JSON line after ``@@`` with, per case,
the output's class and field lengths, or the error a case raised.
"""

import json
import sys

import numpy as np


def main():
    job = json.load(open(sys.argv[1]))
    import tensorflow as tf
    import transformers

    model = transformers.TFRobertaForCausalLM.from_pretrained(job["folder"], from_pt=True)
    prompts, mask = tf.constant(job["prompts"], tf.int32), tf.constant(job["mask"], tf.int32)
    arrays, report = {}, {}
    for name, case in job["cases"].items():
        settings = dict(case["settings"], return_dict_in_generate=True)

        def run(ids, attention_mask):
            return model.generate(ids, attention_mask=attention_mask, **settings)

        # "model_generation_config": values set on the model's own generation_config for this case only
        own = case.get("model_generation_config", {})
        saved = {key: getattr(model.generation_config, key) for key in own}
        for key, value in own.items():
            setattr(model.generation_config, key, value)
        try:
            result = (tf.function(run, jit_compile=True) if case.get("xla") else run)(prompts, mask)
        except Exception as error:  # a refusal is an answer too
            report[name] = {"error": type(error).__name__, "message": str(error)[:500]}
            continue
        finally:
            for key, value in saved.items():
                setattr(model.generation_config, key, value)
        arrays[f"{name}.sequences"] = result.sequences.numpy()
        entry = {"class": type(result).__name__}
        for field in ("scores", "attentions", "hidden_states"):
            value = getattr(result, field, None)
            entry[field] = None if value is None else len(value)
        for step, scores in enumerate(result.scores or ()):
            arrays[f"{name}.scores.{step}"] = scores.numpy()
        for step, layers in enumerate(result.attentions or ()):
            for layer, weights in enumerate(layers):
                arrays[f"{name}.attentions.{step}.{layer}"] = weights.numpy()
        report[name] = entry
    np.savez(sys.argv[2], **arrays)
    print("@@" + json.dumps(report))


if __name__ == "__main__":
    main()
