"""Training Flax seq2seq models (Pegasus) with optax, on one device or on a mesh.

The step follows the reference's Flax summarisation example: the decoder reads the labels shifted right
(``shift_tokens_right`` of the family's module), the loss is the token cross-entropy, optionally
label-smoothed (with the smoothed targets' own entropy subtracted, so a perfect prediction scores 0),
summed over the label tokens that ``decoder_attention_mask`` keeps and divided by their count, and each
step splits a fresh dropout key off the state's. The optimiser is ``optax.adamw`` with weight decay
masked off biases and LayerNorm parameters, as in that example.

On a mesh, :func:`make_train_step` compiles the step with ``jax.jit(in_shardings=..., out_shardings=...)``:
parameters and the optimiser's moments are laid out by a rule table of :mod:`.sharding`, the batch is
split on ``data``; XLA inserts the collectives, so the step computes what one device computes. When the
layout splits parameters over ``data`` (``fully_sharded``), each ``Dense`` layer gathers its weight just
for its own product, again in the backward pass, activations stay split by batch, and on CPU the step is
scheduled for memory: a device then peaks at about half of what it does with replicated parameters
(``bench/flax_sharding.py``).
"""

from __future__ import annotations


from typing import Any, Callable, Mapping, Optional, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import sharding as S

_LAYER_NORM_NAMES = ("layernorm", "layer_norm", "ln")


@flax.struct.dataclass
class TrainState:
    """What a training step reads and returns: the parameters, the optimiser's state, the number of steps
    taken and the key the next step's dropout key is split from."""

    step: jax.Array
    params: Any
    opt_state: Any
    dropout_rng: jax.Array


def decay_mask(params) -> dict:
    """True for the parameters AdamW decays: not biases, not LayerNorm parameters, and not
    ``final_logits_bias`` (a fixed buffer in the PyTorch classes, which no step may change)."""
    flat = flatten_dict(unfreeze(params))
    norm_modules = {path[:-1] for path in flat if any(n in "".join(path[:-1]).lower() for n in _LAYER_NORM_NAMES)}
    return unflatten_dict({
        path: path[-1] not in ("bias", "final_logits_bias") and path[:-1] not in norm_modules for path in flat
    })


def adamw(learning_rate: Union[float, Callable] = 1e-4, weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8) -> optax.GradientTransformation:
    """``optax.adamw`` with the example's weight-decay mask (:func:`decay_mask`)."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)


def cross_entropy(logits, labels, mask, label_smoothing: float = 0.0):
    """(summed loss, number of label tokens): the label-smoothed token cross-entropy minus the smoothed
    targets' entropy, summed where ``mask`` is 1."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # The entropy of the smoothed target (0 without smoothing; 0 * log(1e-20) is 0).
    floor = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    targets = jax.nn.one_hot(labels, vocab, dtype=jnp.float32) * (confidence - low) + low
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets) - floor
    mask = mask.astype(jnp.float32)
    return (losses * mask).sum(), mask.sum()


def _label_inputs(model, batch: Mapping[str, Any]):
    config = model.config
    labels = batch["labels"]
    from .models.pegasus import shift_tokens_right

    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    mask = batch.get("decoder_attention_mask")
    if mask is None:
        mask = ((labels != config.pad_token_id) & (labels != -100)).astype(jnp.int32)
    # -100 (the PyTorch loss's ignore index) is masked out; any id keeps one_hot in range.
    targets = jnp.where(labels == -100, config.pad_token_id, labels)
    return decoder_input_ids, mask, targets


def loss_fn(model, params, batch: Mapping[str, Any], dropout_rng=None, train: bool = False,
            label_smoothing: float = 0.0):
    """(mean loss over label tokens, number of label tokens) of ``model`` with ``params`` on ``batch``
    (``input_ids``, ``attention_mask``, ``labels``, optionally ``decoder_attention_mask``)."""
    decoder_input_ids, mask, targets = _label_inputs(model, batch)
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), decoder_input_ids=decoder_input_ids,
                   decoder_attention_mask=mask, params=params, dropout_rng=dropout_rng, train=train,
                   return_dict=True).logits
    total, count = cross_entropy(logits, targets, mask, label_smoothing)
    return total / count, count


def _check_batch(batch: Mapping[str, Any]) -> None:
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(
                f"batch must hold {key!r} (and may hold attention_mask, decoder_attention_mask), got {sorted(batch)}")
    unknown = sorted(set(batch) - {"input_ids", "attention_mask", "labels", "decoder_attention_mask"})
    if unknown:
        raise ValueError(
            f"batch holds unknown entries {unknown}; expected input_ids, attention_mask, labels, decoder_attention_mask")


def create_state(params, optimizer: optax.GradientTransformation, seed: int = 0,
                 shardings: Optional["TrainState"] = None) -> TrainState:
    """A fresh :class:`TrainState` for ``params``; with ``shardings`` (from :func:`state_shardings`) every
    leaf is placed there (in a multi-process run ``params`` must be the same on every process)."""
    dropout_rng = jax.random.PRNGKey(seed)
    if shardings is None:
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          dropout_rng=dropout_rng)
    params = S.place(params, shardings.params)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    return TrainState(step=S.place(np.zeros((), np.int32), shardings.step), params=params, opt_state=opt_state,
                      dropout_rng=S.place(np.asarray(dropout_rng), shardings.dropout_rng))


def state_shardings(model, optimizer: optax.GradientTransformation, mesh: Mesh, rules: Union[str, S.Rules],
                    params=None) -> TrainState:
    """The ``NamedSharding`` of every leaf of the training state: parameters by ``rules``, each optimiser
    moment like the parameter it belongs to, counters and keys replicated."""
    params = model.params_shape_tree if params is None else params
    param_sh = S.param_shardings(params, mesh, rules, config=model.config)
    by_path = {path: sh for path, sh in flatten_dict(param_sh).items()}
    shapes = {path: tuple(np.shape(v)) for path, v in flatten_dict(unfreeze(params)).items()}
    abstract = jax.eval_shape(optimizer.init, jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params))
    replicated = S.replicated(mesh)

    def like_param(path, leaf):
        names = []
        for entry in reversed(path):  # the trailing dict keys are the parameter's path
            if not isinstance(entry, jax.tree_util.DictKey):
                break
            names.insert(0, str(entry.key))
        key = tuple(names)
        if key in by_path and shapes[key] == tuple(leaf.shape):
            return by_path[key]
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(like_param, abstract)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, dropout_rng=replicated)


def _splits_data(sharding: NamedSharding) -> bool:
    return any(entry == S.DATA or (isinstance(entry, tuple) and S.DATA in entry) for entry in sharding.spec)


def _without_data_axis(sharding: NamedSharding) -> NamedSharding:
    """The sharding a parameter is computed with: its stored one with the ``data`` axis dropped."""
    def drop(entry):
        if isinstance(entry, tuple):
            kept = tuple(axis for axis in entry if axis != S.DATA)
            return kept or None
        return None if entry == S.DATA else entry

    return NamedSharding(sharding.mesh, P(*(drop(entry) for entry in sharding.spec)))


def _gathered_layers(mesh: Mesh, param_shardings) -> Callable:
    """A flax method interceptor for a step whose parameters are split over ``data`` (fully sharded).

    Left alone, XLA may keep such a weight split and move the batch to it instead, so that a device
    holds activations of the whole global batch, and it keeps every gathered weight from the forward pass
    alive for the backward pass. Here each ``Dense`` layer gathers its weight in a rematerialised
    function (``jax.checkpoint``): the backward pass gathers it again rather than keeping it, and the
    transpose of the gather reduce-scatters the gradient. The inputs and outputs of ``Dense`` and
    ``Embed`` are pinned to the ``data`` axis on their batch dimension. The arithmetic is ``nn.Dense``'s
    own, so losses and updates equal the unsharded step's."""
    compute = {path: _without_data_axis(sh) for path, sh in flatten_dict(unfreeze(param_shardings)).items()}

    def on_batch(x):
        if not isinstance(x, jax.Array) or x.ndim < 2:
            return x
        spec = P(S.DATA, *([P.UNCONSTRAINED] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def dense(module, x):
        path = tuple(module.scope.path)
        kernel = module.get_variable("params", "kernel")
        bias = module.get_variable("params", "bias") if module.use_bias else None
        kernel_sh, bias_sh = compute.get(path + ("kernel",)), compute.get(path + ("bias",))

        @jax.checkpoint
        def gathered(x, kernel, bias):
            if kernel_sh is not None:
                kernel = jax.lax.with_sharding_constraint(kernel, kernel_sh)
            if bias is not None and bias_sh is not None:
                bias = jax.lax.with_sharding_constraint(bias, bias_sh)
            x, kernel, bias = flax.linen.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
            y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=module.precision)
            return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))

        return gathered(x, kernel, bias)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if type(module) is flax.linen.Dense and context.method_name == "__call__" and not kwargs \
                and module.dot_general is None and module.dot_general_cls is None:
            return on_batch(dense(module, on_batch(args[0])))
        if isinstance(module, (flax.linen.Dense, flax.linen.Embed)) and context.method_name in ("__call__", "attend"):
            return on_batch(next_fun(*(on_batch(a) for a in args), **kwargs))
        return next_fun(*args, **kwargs)

    return interceptor


# XLA:CPU's default scheduler orders for concurrency and ignores memory; a fully sharded step scheduled for
# memory peaks at about half of what it does otherwise (bench/flax_sharding.py).
_CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def make_train_step(model, optimizer: optax.GradientTransformation, mesh: Optional[Mesh] = None,
                    rules: Union[str, S.Rules] = "data_parallel", label_smoothing: float = 0.0,
                    shardings: Optional[TrainState] = None, donate: bool = True):
    """A compiled ``step(state, batch) -> (state, metrics)``: one AdamW update on the batch's mean token
    loss, ``metrics = {"loss", "num_labels"}``.

    With ``mesh``, the state is laid out by ``shardings`` (default: :func:`state_shardings` with ``rules``)
    and the batch split on ``data``; the caller places them there (:func:`create_state`,
    :func:`polyformers.flax.sharding.shard_batch`)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")

    gather = None  # with a mesh that splits parameters over data, set below; read when the step is traced

    def step(state: TrainState, batch):
        dropout_rng, next_rng = jax.random.split(state.dropout_rng)

        def objective(params):
            if gather is None:
                return loss_fn(model, params, batch, dropout_rng=dropout_rng, train=True,
                               label_smoothing=label_smoothing)
            # The model's own compiled programs are bypassed: a cached trace would not see the interceptor.
            with flax.linen.intercept_methods(gather), jax.disable_jit():
                return loss_fn(model, params, batch, dropout_rng=dropout_rng, train=True,
                               label_smoothing=label_smoothing)

        (loss, count), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, dropout_rng=next_rng)
        return new_state, {"loss": loss, "num_labels": count}

    def checked(compiled):
        def run(state, batch):
            _check_batch(batch)
            return compiled(state, batch)
        run.compiled = compiled
        return run

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return checked(jax.jit(step, donate_argnums=donate_argnums))
    if shardings is None:
        shardings = state_shardings(model, optimizer, mesh, rules)
    options = None
    if any(_splits_data(sh) for sh in jax.tree_util.tree_leaves(shardings.params)):
        gather = _gathered_layers(mesh, shardings.params)
        if all(device.platform == "cpu" for device in mesh.devices.flat):
            options = _CPU_MEMORY_SCHEDULER
    data = NamedSharding(mesh, P(S.DATA))
    replicated = S.replicated(mesh)
    compiled = jax.jit(step, in_shardings=(shardings, data), out_shardings=(shardings, replicated),
                       donate_argnums=donate_argnums, compiler_options=options)
    return checked(compiled)


__all__ = ["TrainState", "adamw", "decay_mask", "cross_entropy", "loss_fn", "create_state", "state_shardings",
           "make_train_step"]
