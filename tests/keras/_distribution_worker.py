"""Trains the Keras classes on several devices and on one, for tests/keras/test_distribution.py.

Run as ``python _distribution_worker.py BACKEND FOLDER``: BACKEND is ``tensorflow`` (two logical CPUs,
``tf.distribute.MirroredStrategy``) or ``jax`` (four host devices; ``keras.distribution.DataParallel``
and ``ModelParallel`` with polyformers' layout map). Devices must be configured before the framework
starts, hence a process of its own. FOLDER holds ``cases.json`` (name, Keras class, checkpoint folder),
``data.npz`` (training and evaluation inputs per case); the worker writes ``result_<BACKEND>.json``,
``logits_<BACKEND>.npz`` and, per case and mode, the folder that ``save_pretrained`` wrote under the
distribution.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

BACKEND, FOLDER = sys.argv[1], sys.argv[2]
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's flags come from the test (tests/conftest.py: the fastest compilation, which the one-device runs this
# worker compares with use too); the JAX backend adds four host devices.
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()

import numpy as np  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import polyformers as P  # noqa: E402
from polyformers.keras.distribution import layout_map  # noqa: E402

BATCH = 8  # global batch: 4 rows per replica on two CPUs, 2 per data shard on four devices


def train(cls, checkpoint, arrays, distribution=None):
    """(per-step losses, model) after one epoch of fit with plain SGD, the model loaded, compiled and
    trained under ``distribution`` (a tf.distribute strategy or a keras distribution), if any."""
    keras.utils.set_random_seed(0)
    means = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            means.append(float(logs["loss"]))

    with distribution.scope() if distribution is not None else contextlib.nullcontext():
        model = getattr(P, cls).from_pretrained(checkpoint)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
        model.fit(dict(arrays), batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    # fit reports the running mean of the epoch; step k's own loss is k*m_k - (k-1)*m_(k-1)
    steps = [means[0]] + [(k + 1) * means[k] - k * means[k - 1] for k in range(1, len(means))]
    return steps, model


def logits_of(model, inputs):
    return np.asarray(keras.ops.convert_to_numpy(model(dict(inputs), training=False)["logits"]))


def error_of(action):
    try:
        action()
    except Exception as error:  # the test checks the type and the message
        return {"type": type(error).__name__, "message": str(error)}
    return None


def main():
    started = time.perf_counter()
    cases = json.load(open(os.path.join(FOLDER, "cases.json")))
    data = np.load(os.path.join(FOLDER, "data.npz"))
    result, logits = {"losses": {}, "errors": {}}, {}

    if BACKEND == "tensorflow":
        # One strategy for the whole program, as TensorFlow expects: a second MirroredStrategy in the same
        # process starts its collectives anew and they collide with the first one's.
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        modes = {"mirrored": lambda case: strategy}
    else:
        devices = keras.distribution.list_devices()

        def model_parallel(case):
            mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
            config = getattr(P, case["config"]).from_pretrained(case["checkpoint"])
            return keras.distribution.ModelParallel(layout_map=layout_map(config, mesh), batch_dim_name="batch")

        modes = {"data": lambda case: keras.distribution.DataParallel(devices=devices), "model": model_parallel}

    for case in cases:
        name = case["name"]
        arrays = {key[len(name) + 1:]: data[key] for key in data.files if key.startswith(name + ":")}
        train_arrays = {k: v for k, v in arrays.items() if not k.startswith("eval_")}
        eval_arrays = {k[5:]: v for k, v in arrays.items() if k.startswith("eval_")}
        losses, _ = train(case["cls"], case["checkpoint"], train_arrays)
        result["losses"][f"{name}/one"] = losses
        for mode, make_scope in modes.items():
            distribution = make_scope(case)
            losses, model = train(case["cls"], case["checkpoint"], train_arrays, distribution)
            result["losses"][f"{name}/{mode}"] = losses
            saved = os.path.join(FOLDER, f"{BACKEND}_{name}_{mode}")
            with distribution.scope():
                model.save_pretrained(saved)
            if BACKEND == "jax":
                result.setdefault("shardings", {})[f"{name}/{mode}"] = {
                    v.path: list(getattr(v.value.sharding, "spec", ())) for v in model.weights
                }
            reloaded = getattr(P, case["cls"]).from_pretrained(saved)  # one device, no distribution
            # every trained weight comes back, by its checkpoint key
            trained = {key: keras.ops.convert_to_numpy(v) for key, (v, _) in model.checkpoint_variables().items()}
            again = {key: keras.ops.convert_to_numpy(v) for key, (v, _) in reloaded.checkpoint_variables().items()}
            result.setdefault("reload", {})[f"{name}/{mode}"] = {
                "same_keys": sorted(trained) == sorted(again),
                "max_difference": max(float(np.abs(trained[k] - again[k]).max()) for k in trained),
            }
            logits[f"{name}/{mode}/reloaded"] = logits_of(reloaded, eval_arrays)
            result.setdefault("saved", {})[f"{name}/{mode}"] = saved

    if BACKEND == "jax":
        first = cases[0]
        config = getattr(P, first["config"]).from_pretrained(first["checkpoint"])
        mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
        three = keras.distribution.DeviceMesh((1, 3), ["batch", "model"], devices[:3])

        def unmatched_rule():
            layouts = layout_map(config, mesh)
            layouts[".*/no_such_layer/kernel"] = (None, "model")
            with keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch").scope():
                getattr(P, first["cls"])(config).build_model()

        def indivisible_batch():
            train_arrays = {k[len(first["name"]) + 1:]: data[k] for k in data.files
                            if k.startswith(first["name"] + ":") and ":eval_" not in k}
            with keras.distribution.DataParallel(devices=devices).scope():
                model = getattr(P, first["cls"])(config)
                model.compile(optimizer="sgd")
                model.fit(train_arrays, batch_size=6, epochs=1, verbose=0)

        result["errors"] = {
            "unmatched_rule": error_of(unmatched_rule),
            "heads": error_of(lambda: layout_map(config, three)),
            "axis": error_of(lambda: layout_map(config, mesh, model_axis="tensor")),
            "batch": error_of(indivisible_batch),
        }

    result["seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time()
    np.savez(os.path.join(FOLDER, f"logits_{BACKEND}.npz"), **logits)
    json.dump(result, open(os.path.join(FOLDER, f"result_{BACKEND}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
