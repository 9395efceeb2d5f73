"""The multi-device side of tests/flax/test_sharding.py: runs in a fresh process whose XLA_FLAGS give it
several CPU devices (set by the test before JAX starts), or as one of the processes of a
``jax.distributed`` run.

    python _sharding_worker.py meshes JOB.json        all mesh cases in one process (4 devices)
    python _sharding_worker.py distributed JOB.json I  process I of 2 (2 devices each)

JOB.json: {"out": folder for results, "port": coordinator port (distributed)}. Results: out/meshes.npz
(arrays), out/meshes.json (messages), out/dist<I>.json, saved folders under out/.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

STEPS = 10
CONFIG = dict(
    vocab_size=96, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.1,
    attention_dropout=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, activation_function="gelu",
)
# (name, mesh shape, layout)
TRAIN_CASES = [("2x2", (2, 2), "tensor_parallel"), ("4x1", (4, 1), "fully_sharded"), ("1x4", (1, 4), "tensor_parallel")]
DISTRIBUTED_CASE = TRAIN_CASES[0]


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, CONFIG["vocab_size"], (8, 10)).astype(np.int32)
    ids[1::2, -3:] = 0
    labels = rng.integers(2, CONFIG["vocab_size"], (8, 6)).astype(np.int32)
    labels[:, -1] = 1
    labels[::3, -2:] = 0
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32), "labels": labels}


def build():
    from polyformers import FlaxPegasusForConditionalGeneration, PegasusConfig

    model = FlaxPegasusForConditionalGeneration(PegasusConfig(**CONFIG), seed=3)
    params = jax_tree_to_numpy(model.params)
    return model, params


def jax_tree_to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def optimizer():
    from polyformers.flax import training as T

    return T.adamw(1e-3, weight_decay=0.01)


def train(model, params, shape=None, layout=None, steps=STEPS):
    """Losses of ``steps`` steps and the final state, on one device (shape None) or on a mesh."""
    import jax

    from polyformers.flax import sharding as S
    from polyformers.flax import training as T

    opt = optimizer()
    data = batch()
    if shape is None:
        state = T.create_state(params, opt, seed=7)
        step = T.make_train_step(model, opt, label_smoothing=0.1)
        placed = {k: jax.numpy.asarray(v) for k, v in data.items()}
    else:
        mesh = S.make_mesh(shape)
        shardings = T.state_shardings(model, opt, mesh, layout)
        state = T.create_state(params, opt, seed=7, shardings=shardings)
        step = T.make_train_step(model, opt, mesh, shardings=shardings, label_smoothing=0.1)
        placed = S.shard_batch(data, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, placed)
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
    return losses, state


def flat(tree):
    from flax.traverse_util import flatten_dict

    return {"/".join(k): v for k, v in flatten_dict(tree).items()}


def error_of(fn):
    try:
        fn()
    except (ValueError, TypeError, FileNotFoundError) as error:
        return f"{type(error).__name__}: {error}"
    return None


# One layer each way: the parameters (mostly the shared embedding) still outweigh the activations, and the two
# compilations take 4.8 s instead of 6.8 (the ratio of the peaks is 0.47 either way).
MEMORY_CONFIG = dict(vocab_size=2048, d_model=128, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, max_position_embeddings=64,
                     dropout=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def compiled_peaks(batch: int = 16) -> dict:
    """Peak bytes per device of the compiled training step under each layout on a 4x1 mesh."""
    import jax

    from polyformers import FlaxPegasusForConditionalGeneration, PegasusConfig
    from polyformers.flax import sharding as S
    from polyformers.flax import training as T

    model = FlaxPegasusForConditionalGeneration(PegasusConfig(**MEMORY_CONFIG), _do_init=False)
    zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), model.params_shape_tree)
    opt, mesh = optimizer(), S.make_mesh((4, 1))
    ids = np.ones((batch, 32), np.int32)
    data = S.shard_batch({"input_ids": ids, "attention_mask": ids, "labels": np.ones((batch, 16), np.int32)}, mesh)
    peaks = {}
    for layout in ("data_parallel", "fully_sharded"):
        shardings = T.state_shardings(model, opt, mesh, layout)
        state = T.create_state(zeros, opt, shardings=shardings)
        analysis = T.make_train_step(model, opt, mesh, shardings=shardings).compiled.lower(state, data).compile() \
            .memory_analysis()
        peaks[f"memory.{layout}"] = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                        + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return peaks


def meshes(job) -> None:
    import jax

    from polyformers import FlaxPegasusForConditionalGeneration, PegasusConfig
    from polyformers.flax import sharding as S
    from polyformers.flax import training as T

    start = time.perf_counter()
    out = job["out"]
    assert len(jax.devices()) == 4, jax.devices()
    model, params = build()
    arrays, info = {}, {"devices": len(jax.devices())}

    # 1. Training: one device, then every mesh case.
    losses, state = train(model, params)
    arrays["train.one.losses"] = np.array(losses)
    for key, value in flat(jax_tree_to_numpy(state.params)).items():
        arrays[f"train.one.params.{key}"] = value
    sharded_states = {}
    for name, shape, layout in TRAIN_CASES:
        losses, state = train(model, params, shape, layout)
        arrays[f"train.{name}.losses"] = np.array(losses)
        for key, value in flat(jax_tree_to_numpy(state.params)).items():
            arrays[f"train.{name}.params.{key}"] = value
        leaf = state.params["model"]["encoder"]["layers"]["0"]["fc1"]["kernel"]
        info[f"train.{name}.fc1_spec"] = str(leaf.sharding.spec)
        info[f"train.{name}.fc1_shard_shape"] = list(leaf.addressable_shards[0].data.shape)
        sharded_states[name] = state

    info["time.train"] = time.perf_counter() - start
    # 2. Generation with sharded parameters and a batch split on "data".
    ids, mask = batch()["input_ids"], batch()["attention_mask"]
    settings = {"greedy": dict(max_new_tokens=7), "beam": dict(max_new_tokens=7, num_beams=3)}
    # Random initial weights predict nearly the same tokens for every input: larger ones vary more.
    noise = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda x: x + noise.normal(0, 0.5, x.shape).astype(x.dtype), params)
    for name, kwargs in settings.items():
        arrays[f"generate.one.{name}"] = np.asarray(model.generate(ids, attention_mask=mask, params=params, **kwargs).sequences)
    mesh = S.make_mesh((2, 2))
    sharded = S.place(params, S.param_shardings(params, mesh, "tensor_parallel", config=model.config))
    placed = S.shard_batch({"input_ids": ids, "attention_mask": mask}, mesh)
    for name, kwargs in settings.items():
        result = model.generate(placed["input_ids"], attention_mask=placed["attention_mask"], params=sharded, **kwargs)
        arrays[f"generate.2x2.{name}"] = np.asarray(result.sequences)
        info[f"generate.2x2.{name}.sharding"] = str(result.sequences.sharding)

    info["time.generate"] = time.perf_counter() - start
    # 3. Orbax: save the 2x2 tensor-parallel state, restore it on the 4x1 fully sharded and the 1x4 layouts.
    saved = sharded_states["2x2"]
    S.save_sharded(os.path.join(out, "orbax_2x2"), saved)
    opt = optimizer()
    for name, shape, layout in TRAIN_CASES[1:]:
        target_mesh = S.make_mesh(shape)
        shardings = T.state_shardings(model, opt, target_mesh, layout)
        restored = S.restore_sharded(os.path.join(out, "orbax_2x2"), saved, shardings)
        diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) if np.size(a) else 0.0
                 for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(saved))]
        info[f"orbax.{name}.max_diff"] = max(diffs)
        info[f"orbax.{name}.leaves"] = len(diffs)
        leaf = restored.params["model"]["encoder"]["layers"]["0"]["fc1"]["kernel"]
        info[f"orbax.{name}.fc1_spec"] = str(leaf.sharding.spec)
        info[f"orbax.{name}.mesh"] = dict(leaf.sharding.mesh.shape)
    other = FlaxPegasusForConditionalGeneration(PegasusConfig(**dict(CONFIG, d_model=8, encoder_ffn_dim=16)))
    info["orbax.other_model_error"] = error_of(lambda: S.restore_sharded(
        os.path.join(out, "orbax_2x2"), {"params": other.params}))
    deeper = FlaxPegasusForConditionalGeneration(PegasusConfig(**dict(CONFIG, decoder_layers=2)))
    info["orbax.other_model_paths_error"] = error_of(lambda: S.restore_sharded(
        os.path.join(out, "orbax_2x2"), {"params": deeper.params}))

    info["time.orbax"] = time.perf_counter() - start
    # 4. save_pretrained of sharded parameters: the canonical safetensors folder, for PyTorch to load.
    trained = sharded_states["2x2"].params
    model.save_pretrained(os.path.join(out, "saved_from_2x2"), params=trained)
    dec = np.array([[0, 5, 6, 7, 8]] * 8, dtype=np.int32)
    arrays["save.ids"], arrays["save.mask"], arrays["save.dec"] = ids, mask, dec
    arrays["save.flax_logits"] = np.asarray(model(ids, attention_mask=mask, decoder_input_ids=dec,
                                                  params=jax_tree_to_numpy(trained)).logits)

    # 5. Bad input on a mesh.
    info["error.batch"] = error_of(lambda: S.shard_batch({"input_ids": np.zeros((6, 4), np.int32)}, S.make_mesh((4, 1))))
    three_heads = FlaxPegasusForConditionalGeneration(PegasusConfig(**dict(CONFIG, encoder_attention_heads=2,
                                                                            decoder_attention_heads=2, d_model=8,
                                                                            encoder_ffn_dim=16, decoder_ffn_dim=16)))
    info["error.heads"] = error_of(lambda: S.param_shardings(three_heads.params, S.make_mesh((1, 4)), "tensor_parallel",
                                                             config=three_heads.config))
    odd = FlaxPegasusForConditionalGeneration(PegasusConfig(**dict(CONFIG, d_model=6, encoder_attention_heads=2,
                                                                   decoder_attention_heads=2)))
    info["error.dimension"] = error_of(lambda: S.param_shardings(odd.params, S.make_mesh((4, 1)), "fully_sharded"))
    info["error.mesh_size"] = error_of(lambda: S.make_mesh((4, 2)))

    # 6. Memory of the compiled step per device: fully sharded against replicated, on a model whose
    # parameters outweigh its activations at this batch (XLA's own memory analysis; nothing runs).
    info.update(compiled_peaks())

    info["time.total"] = time.perf_counter() - start
    np.savez(os.path.join(out, "meshes.npz"), **arrays)
    with open(os.path.join(out, "meshes.json"), "w") as f:
        json.dump(info, f)


def distributed(job, process_id: int) -> None:
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{job['port']}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    model, params = build()
    name, shape, layout = DISTRIBUTED_CASE
    losses, state = train(model, params, shape, layout)
    report = {
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(), "devices": jax.device_count(),
        "collectives": jax.config.jax_cpu_collectives_implementation, "case": name, "losses": losses,
        "fully_addressable": bool(state.params["model"]["shared"]["embedding"].is_fully_addressable),
    }
    # Parameters spanning both processes: save_pretrained gathers them (each process writes a folder).
    model.save_pretrained(os.path.join(job["out"], f"dist_saved{process_id}"), params=state.params)
    with open(os.path.join(job["out"], f"dist{process_id}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, job_file = sys.argv[1], sys.argv[2]
    with open(job_file) as f:
        job = json.load(f)
    if mode == "meshes":
        meshes(job)
    elif mode == "distributed":
        distributed(job, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
