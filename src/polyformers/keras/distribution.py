"""Training the Keras classes on many devices, with Keras' and TensorFlow's own distribution APIs.

Two ways, both giving the losses of one device on the same global batch:

* TensorFlow backend: build, compile and ``fit`` the model inside ``tf.distribute.MirroredStrategy``'s
  ``scope()``. :meth:`TFPreTrainedModel.compute_loss` scales the model's loss per replica as Keras' own
  losses are scaled, so the summed gradients and the reported loss are those of one device. Create one
  strategy per program and reuse it: a second MirroredStrategy's collectives collide with the first's.
* JAX backend (``KERAS_BACKEND=jax`` before Keras is imported): ``keras.distribution.DataParallel``, or
  ``keras.distribution.ModelParallel`` with the ``LayoutMap`` that :func:`layout_map` builds from a
  family's ``LAYOUT_RULES``: Megatron-style tensor parallelism, query/key/value and the first
  feed-forward projection split by output columns (whole heads per device), the attention output and
  the second feed-forward projection split by input rows, everything else replicated.

Layout rules are data kept next to each family (``LAYOUT_RULES`` in ``models/<family>.py``): regular
expressions that Keras matches against whole variable paths, which name each layer after its attribute
(the PyTorch module name), e.g. ``.../roberta/encoder/layer_0/attention/self/query/kernel``. The axis
named ``"model"`` in a rule is the mesh axis that shards the model; :func:`layout_map` renames it to the
caller's axis. ``fit`` on arrays refuses batches that the data axis does not divide (:func:`check_batch`).

For example, tensor parallelism over two devices and data parallelism over the others::

    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], keras.distribution.list_devices())
    config = RobertaConfig.from_pretrained(path)
    parallel = keras.distribution.ModelParallel(layout_map=layout_map(config, mesh), batch_dim_name="batch")
    with parallel.scope():
        model = TFRobertaForSequenceClassification.from_pretrained(path, config=config)
        model.compile(optimizer="adamw")
        model.fit(arrays, batch_size=8)

Set the distribution before the model is built (``keras.distribution.set_distribution`` or
``with distribution.scope()``): Keras places a variable when it is created. ``build_model`` then checks
that every rule of a ModelParallel layout map found a variable of the model.
"""

from __future__ import annotations

import importlib
import re
from typing import Optional, Sequence

import keras

from ..configs import PretrainedConfig

# model_type -> module in polyformers.keras.models whose LAYOUT_RULES apply
_FAMILIES = {"roberta": "roberta", "electra": "electra", "mpnet": "mpnet"}

# Config sizes a tensor-parallel layout splits over the model axis, with what they count.
_SPLIT_SIZES = (("num_attention_heads", "attention heads"), ("intermediate_size", "feed-forward units"))


def layout_rules(model_type: str) -> tuple:
    """The family's ``LAYOUT_RULES``: ``(regex over variable paths, axes per dimension)`` pairs."""
    if model_type not in _FAMILIES:
        raise ValueError(f"model_type: no layout rules for {model_type!r}; families with rules: {sorted(_FAMILIES)}")
    module = importlib.import_module(f"{__package__}.models.{_FAMILIES[model_type]}")
    return module.LAYOUT_RULES


def layout_map(
    model_or_config,
    device_mesh: "keras.distribution.DeviceMesh",
    *,
    model_axis: str = "model",
    rules: Optional[Sequence[tuple[str, tuple]]] = None,
) -> "keras.distribution.LayoutMap":
    """A ``keras.distribution.LayoutMap`` on ``device_mesh`` for tensor-parallel attention and
    feed-forward layers of the family of ``model_or_config`` (a TF* model or its config).

    ``model_axis`` is the mesh axis that splits the layers; ``rules`` replaces the family's
    ``LAYOUT_RULES``. Give the result to ``keras.distribution.ModelParallel(layout_map=...,
    batch_dim_name=<the other axis>)``. Raises ValueError when the mesh has no ``model_axis`` or its
    size does not divide the heads or the feed-forward width.
    """
    config = model_or_config
    if not isinstance(config, PretrainedConfig):
        config = getattr(model_or_config, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"model_or_config: expected a TF* model or its PretrainedConfig, given "
                        f"{type(model_or_config).__name__}")
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(f"device_mesh: expected a keras.distribution.DeviceMesh, given {type(device_mesh).__name__}")
    names = list(device_mesh.axis_names)
    if model_axis not in names:
        raise ValueError(f"model_axis: the mesh has axes {names} (shape {tuple(device_mesh.shape)}), "
                         f"no axis named {model_axis!r}")
    size = int(device_mesh.shape[names.index(model_axis)])
    for field, what in _SPLIT_SIZES:
        value = getattr(config, field, None)
        if value is not None and value % size:
            raise ValueError(
                f"mesh axis {model_axis!r} of size {size} does not divide {field}={value} ({what}): tensor "
                f"parallelism gives each device {value}/{size}; choose a model axis size that divides {value}"
            )
    if rules is None:
        rules = layout_rules(config.model_type)
    result = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in rules:
        re.compile(pattern)  # a bad pattern fails here, naming itself, rather than at variable creation
        result[pattern] = tuple(model_axis if axis == "model" else axis for axis in axes)
    return result


def check_layout_map(model, layouts: "keras.distribution.LayoutMap") -> None:
    """Raise ValueError when a rule of ``layouts`` matches no variable of ``model``, or splits a
    variable along a dimension that the mesh axis does not divide; each message names the rule."""
    paths = {variable.path: variable for variable in model.weights}
    mesh = layouts.device_mesh
    names = list(mesh.axis_names)
    for pattern in list(layouts.keys()):
        matched = [path for path in paths if path == pattern or re.fullmatch(pattern, path)]
        if not matched:
            shown = sorted(paths)[:4]
            raise ValueError(
                f"LayoutMap rule {pattern!r} matches no variable of {type(model).__name__} ({len(paths)} variables, "
                f"paths such as {shown}); Keras matches a rule against the whole variable.path"
            )
        axes = layouts[pattern].axes
        for path in matched:
            shape = tuple(paths[path].shape)
            if len(axes) != len(shape):
                raise ValueError(f"LayoutMap rule {pattern!r} gives {len(axes)} axes {tuple(axes)} to {path!r}, "
                                 f"which has shape {shape}")
            for dim, axis in zip(shape, axes):
                if axis is None:
                    continue
                if axis not in names:
                    raise ValueError(f"LayoutMap rule {pattern!r} names mesh axis {axis!r}; the mesh has axes {names}")
                size = int(mesh.shape[names.index(axis)])
                if dim % size:
                    raise ValueError(f"LayoutMap rule {pattern!r} splits a dimension of {dim} of {path!r} (shape "
                                     f"{shape}) over mesh axis {axis!r} of size {size}, which does not divide it")


def check_batch(batch_size: int, distribution=None, what: str = "batch_size") -> None:
    """Raise ValueError when the data axis of ``distribution`` (the global one by default) does not
    divide ``batch_size``: each device of that axis takes an equal slice of every batch."""
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        return
    mesh = distribution.device_mesh
    axis = getattr(distribution, "batch_dim_name", None)
    if axis is None or axis not in mesh.axis_names:
        return
    size = int(mesh.shape[list(mesh.axis_names).index(axis)])
    if batch_size % size:
        raise ValueError(
            f"{what}: the mesh's data axis {axis!r} has {size} devices, which do not divide a batch of "
            f"{batch_size} rows; use a batch size (and a dataset length, for the last batch) that {size} divides"
        )
