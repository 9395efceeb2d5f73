"""Where the parameters and the batch of a Flax model live on a device mesh, written as data.

A layout is a short table of ``(regex, PartitionSpec)`` rules over a parameter's path
(``"model/encoder/layers/0/self_attn/q_proj/kernel"``); the first rule whose regex matches a path
gives that parameter's ``PartitionSpec``. Three layouts come with the library, all over a mesh with the
axes ``("data", "model")``:

* ``DATA_PARALLEL``: every parameter replicated; only the batch is split (on ``data``).
* ``FULLY_SHARDED``: every matrix split over ``data`` along one dimension (FSDP / ZeRO-3 style: XLA
  gathers a weight where it is used and reduce-scatters its gradient); vectors stay replicated.
* ``TENSOR_PARALLEL``: attention and feed-forward split on ``model`` as in Megatron-LM: the query, key,
  value projections and ``fc1`` by output features (so by heads), ``out_proj`` and ``fc2`` by input
  features; the batch still goes on ``data``.

The rules are applied with :func:`param_shardings` (a ``NamedSharding`` per parameter), then
``jax.device_put`` or ``jax.jit(in_shardings=..., out_shardings=...)``; the model code is unchanged.
Sharded checkpoints are written and read with orbax-checkpoint (:func:`save_sharded`,
:func:`restore_sharded`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)

Rules = Sequence[tuple[str, P]]

DATA_PARALLEL: Rules = (
    (r".*", P()),
)

FULLY_SHARDED: Rules = (
    # The embedding is (vocab, d_model): d_model divides more often than a vocabulary does.
    (r"embedding$", P(None, DATA)),
    (r"kernel$", P(DATA, None)),
    (r".*", P()),
)

TENSOR_PARALLEL: Rules = (
    (r"(q_proj|k_proj|v_proj|fc1)/kernel$", P(None, MODEL)),
    (r"(q_proj|k_proj|v_proj|fc1)/bias$", P(MODEL)),
    (r"(out_proj|fc2)/kernel$", P(MODEL, None)),
    (r".*", P()),
)

LAYOUTS: dict[str, Rules] = {
    "data_parallel": DATA_PARALLEL,
    "fully_sharded": FULLY_SHARDED,
    "tensor_parallel": TENSOR_PARALLEL,
}

# Config fields holding head counts, checked against the ``model`` axis when a layout splits attention.
_HEAD_FIELDS = ("encoder_attention_heads", "decoder_attention_heads", "num_attention_heads", "n_head", "num_heads")


def make_mesh(shape: Sequence[int], devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A ``Mesh`` of ``shape = (data, model)`` over the first ``data * model`` of ``devices`` (default:
    ``jax.devices()``, every process's devices in a multi-process run), axes named ``("data", "model")``."""
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"shape must be two positive ints (data, model), got {shape!r}")
    devices = list(jax.devices() if devices is None else devices)
    needed = int(np.prod(shape))
    if needed > len(devices):
        raise ValueError(
            f"a mesh of shape (data={shape[0]}, model={shape[1]}) needs {needed} devices, {len(devices)} are available"
        )
    return Mesh(np.array(devices[:needed], dtype=object).reshape(shape), AXES)


def _rules(rules: Union[str, Rules]) -> Rules:
    if isinstance(rules, str):
        if rules not in LAYOUTS:
            raise ValueError(
                f"rules must be a list of (regex, PartitionSpec) or one of {sorted(LAYOUTS)}, got {rules!r}")
        return LAYOUTS[rules]
    for rule in rules:
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str) and isinstance(rule[1], P)):
            raise TypeError(f"each rule must be a (regex str, PartitionSpec) pair, got {rule!r}")
    return rules


def _axis_names(spec: P) -> list[str]:
    names = []
    for entry in spec:
        if entry is None:
            continue
        names.extend(entry if isinstance(entry, tuple) else (entry,))
    return names


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    return int(np.prod([mesh.shape[name] for name in (entry if isinstance(entry, tuple) else (entry,))]))


def partition_specs(params: Mapping, rules: Union[str, Rules]) -> dict:
    """The ``PartitionSpec`` of every parameter of ``params`` (same pytree structure), from the first
    rule whose regex matches the parameter's path; every rule must match some parameter and every
    parameter some rule."""
    rules = _rules(rules)
    flat = flatten_dict(unfreeze(params))
    compiled = [(pattern, re.compile(pattern), spec) for pattern, spec in rules]
    used = {pattern: False for pattern, _ in rules}
    specs = {}
    for path in flat:
        name = "/".join(path)
        chosen = None
        for pattern, regex, spec in compiled:
            if regex.search(name):
                used[pattern] = True
                if chosen is None:
                    chosen = spec
        if chosen is None:
            raise ValueError(
                f"no partition rule matches the parameter {name!r}; add a rule for it (e.g. ('.*', PartitionSpec()))")
        specs[path] = chosen
    unused = [pattern for pattern, hit in used.items() if not hit]
    if unused:
        raise ValueError(
            f"the partition rule {unused[0]!r} matches no parameter of the model (parameters look like "
            f"{'/'.join(next(iter(flat)))!r}); fix or remove the rule"
        )
    return unflatten_dict(specs)


def param_shardings(params: Mapping, mesh: Mesh, rules: Union[str, Rules], config: Any = None) -> dict:
    """The ``NamedSharding`` of every parameter on ``mesh`` under ``rules`` (a layout name or a rule table).

    Every split dimension must be divisible by the size of its mesh axes; with ``config`` given, a
    layout that splits on ``model`` also needs the head counts divisible by the ``model`` axis (each
    device then holds whole heads)."""
    for axis in AXES:
        if axis not in mesh.shape:
            raise ValueError(f"mesh must have the axes {AXES}, got {tuple(mesh.axis_names)}")
    specs = flatten_dict(partition_specs(params, rules))
    flat = flatten_dict(unfreeze(params))
    splits_model = False
    shardings = {}
    for path, spec in specs.items():
        shape = tuple(np.shape(flat[path]))
        name = "/".join(path)
        if len(spec) > len(shape):
            raise ValueError(f"the partition spec {spec} of {name!r} has {len(spec)} entries, the parameter only "
                             f"{len(shape)} dimensions {shape}")
        for dim, entry in enumerate(spec):
            for axis in ([] if entry is None else (entry if isinstance(entry, tuple) else (entry,))):
                if axis not in mesh.shape:
                    raise ValueError(f"the partition spec {spec} of {name!r} names the axis {axis!r}, the mesh has "
                                     f"{tuple(mesh.axis_names)}")
            size = _axis_size(mesh, entry)
            if shape[dim] % size:
                raise ValueError(
                    f"mesh axis {entry!r} of size {size} does not divide dimension {dim} (size {shape[dim]}) of "
                    f"{name!r} {shape}; pick a mesh shape whose {entry!r} size divides {shape[dim]}"
                )
        if MODEL in _axis_names(spec) and mesh.shape[MODEL] > 1:
            splits_model = True
        shardings[path] = NamedSharding(mesh, spec)
    if config is not None and splits_model:
        check_heads(config, mesh)
    return unflatten_dict(shardings)


def check_heads(config: Any, mesh: Mesh) -> None:
    """Refuse a ``model`` axis whose size does not divide the attention heads of ``config``."""
    size = mesh.shape[MODEL]
    for field in _HEAD_FIELDS:
        heads = getattr(config, field, None)
        if isinstance(heads, int) and heads % size:
            raise ValueError(
                f"mesh axis 'model' of size {size} does not divide config.{field}={heads}: tensor parallelism "
                "splits attention by heads; pick a 'model' size that divides the head count"
            )


def batch_sharding(mesh: Mesh, batch_size: Optional[int] = None) -> NamedSharding:
    """The sharding of a (batch, ...) input: split on ``data``, replicated on ``model``."""
    size = mesh.shape[DATA]
    if batch_size is not None and batch_size % size:
        raise ValueError(
            f"mesh axis 'data' of size {size} does not divide the batch size {batch_size}; use a batch size that "
            f"is a multiple of {size}"
        )
    return NamedSharding(mesh, P(DATA))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict:
    """Every array of ``batch`` placed on ``mesh``, split on ``data`` along its first dimension.

    Each process passes the whole global batch (as numpy); in a multi-process run every process keeps
    only the rows of its own devices."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch[{key!r}] must have a batch dimension, got a scalar")
        sharding = batch_sharding(mesh, value.shape[0])
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
    return out


def place(tree, shardings):
    """``tree`` (numpy or JAX arrays, identical on every process) put on ``shardings`` (same structure).

    Works in a multi-process run too, where each process builds only its own devices' shards."""
    def put(value, sharding):
        if isinstance(value, jax.Array) and value.is_fully_addressable and sharding.is_fully_addressable:
            return jax.device_put(value, sharding)
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ---------------------------------------------------------------------------------------------------
# Sharded checkpoints (orbax-checkpoint): each process writes its own shards, restore re-shards


def save_sharded(directory: Union[str, os.PathLike], tree) -> None:
    """Write ``tree`` (parameters or a training state, sharded or not) as an orbax checkpoint in
    ``directory`` (which must not exist yet). Called by every process of a multi-process run."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_sharded(directory: Union[str, os.PathLike], target, shardings=None):
    """Read the orbax checkpoint in ``directory`` into the structure of ``target`` (arrays or
    ``jax.ShapeDtypeStruct``s), placed on ``shardings`` (same structure; default: the shardings of
    ``target``'s arrays), whatever mesh the checkpoint was written from.

    A checkpoint of another model (other parameter paths or shapes) is refused, naming the path."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory must be an orbax checkpoint folder, {directory!r} does not exist")
    if shardings is None:
        shardings = jax.tree_util.tree_map(lambda x: getattr(x, "sharding", None), target)
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), target, shardings)
    checkpointer = ocp.StandardCheckpointer()
    try:
        _check_checkpoint(checkpointer, directory, abstract)
        return checkpointer.restore(directory, abstract)
    finally:
        checkpointer.close()


def _path_name(path) -> str:
    # The stored tree comes back as nested dicts and lists whatever containers were saved (a dataclass's
    # fields become dict keys), so entries are compared by name.
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            names.append(str(entry))
    return "/".join(names)


def _check_checkpoint(checkpointer, directory: str, abstract) -> None:
    stored = checkpointer.metadata(directory)
    stored = getattr(stored, "item_metadata", stored)
    saved = {_path_name(p): tuple(getattr(m, "shape", ()) or ())
             for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
    wanted = {_path_name(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    missing = sorted(wanted.keys() - saved.keys())
    if missing:
        raise ValueError(
            f"the checkpoint {directory!r} does not hold {missing[0]} (and {len(missing) - 1} more of the "
            f"{len(wanted)} expected entries): a checkpoint of another model? It holds e.g. {sorted(saved)[:2]}"
        )
    for key, shape in wanted.items():
        if saved[key] != shape:
            raise ValueError(
                f"the checkpoint {directory!r} holds {key} with shape {saved[key]}, the model expects {shape}: "
                "a checkpoint of another model configuration?"
            )


__all__ = [
    "DATA", "MODEL", "DATA_PARALLEL", "FULLY_SHARDED", "TENSOR_PARALLEL", "LAYOUTS", "make_mesh",
    "partition_specs", "param_shardings", "check_heads", "batch_sharding", "shard_batch", "place", "replicated",
    "save_sharded", "restore_sharded",
]
