"""TFPreTrainedModel: what every Keras model shares — input formats, loading, saving, training with fit.

Weights live in one canonical format, safetensors with the PyTorch key names and layouts. A Keras
variable's key comes from the attribute names that lead to it (they are the PyTorch module names) and
one renaming rule, :func:`torch_name`; the same rule reads the ``tf_model.h5`` files written by the
reference's TF classes. A family lists the few keys the rule cannot derive in ``_checkpoint_exceptions``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..checkpoints import find_weights, save_weights
from ..checkpoints.files import pop_hub_kwargs, push_folder
from ..checkpoints.legacy import find_legacy_weights, tf_key
from .._shared import bridge_prefix, config_for_loading, output_flags, warn_loading
from ..configs import PretrainedConfig

import keras  # noqa: E402  (after polyformers.keras has chosen the backend)
from keras import ops

logger = logging.getLogger("polyformers")

# ---------------------------------------------------------------------------------------------------
# Names: Keras variable -> PyTorch key

# One rule, shared with the reader of the reference's tf_model.h5 files: TF 2 names and Keras attribute
# paths both become PyTorch keys through it.
torch_name = tf_key


def _walk(layer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(attribute path, variable) for every variable under ``layer``; the attribute names of nested
    layers (and list indices) make the path, a variable contributes its own Keras name."""
    for attr, value in vars(layer).items():
        if isinstance(value, keras.Variable):
            yield prefix + value.name, value
        elif attr.startswith("_"):
            continue  # Keras' own bookkeeping (tracked copies of the sublayers)
        elif isinstance(value, keras.layers.Layer):
            yield from _walk(value, f"{prefix}{attr}.")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, keras.layers.Layer) for v in value):
            for i, sub in enumerate(value):
                yield from _walk(sub, f"{prefix}{attr}.{i}.")


# ---------------------------------------------------------------------------------------------------
# The three input formats


def unpack_inputs(call):
    """Let ``call`` take its inputs as keywords, as a list/tuple in signature order, or as a dict (or
    BatchEncoding) in the first argument; all of them arrive at ``call`` as keywords.

    ``training`` stays a keyword: Keras passes it itself.
    """
    names = [n for n in inspect.signature(call).parameters if n not in ("self", "training", "kwargs")]

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        owner = type(self).__name__
        packed = _pack(owner, names, args[0]) if args else {}
        rest = args[1:]
        if rest:
            if isinstance(args[0], (list, tuple)) or _is_mapping(args[0]):
                raise ValueError(
                    f"{owner}: when the first argument packs the inputs (list or dict), pass the others "
                    f"as keywords, not positionally; got {len(rest)} more positional argument(s)"
                )
            if len(args) > len(names):
                raise ValueError(f"{owner} takes at most {len(names)} positional inputs ({names}), got {len(args)}")
            packed.update(zip(names[1:], rest))
        both = sorted(k for k in kwargs if k in packed and packed[k] is not None and kwargs[k] is not None)
        if both:
            raise ValueError(f"{owner} got {both} both in its first argument and as keyword(s); pass each input once")
        for key, value in packed.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        return call(self, **kwargs)

    return wrapper


@functools.lru_cache(maxsize=None)
def _input_names(layer_class) -> tuple:
    """The input arguments of a main layer's ``call``, in order (the output flags and ``training`` left out)."""
    skip = ("self", "output_attentions", "output_hidden_states", "training")
    return tuple(n for n in inspect.signature(layer_class.call).parameters if n not in skip)


def _is_mapping(value) -> bool:
    # BatchEncoding and the like: keys and items, but not an array
    return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "items")
                                          and not hasattr(value, "shape"))


def _pack(owner: str, names: list[str], first) -> dict:
    """The inputs packed in the first argument, by name."""
    if _is_mapping(first):
        unknown = [k for k in first.keys() if k not in names]
        if unknown:
            raise ValueError(f"{owner} got unknown input name(s) {unknown} in its input dict; expected names among {names}")
        return dict(first.items())
    if isinstance(first, (list, tuple)):
        if len(first) > len(names):
            raise ValueError(
                f"{owner} got a list of {len(first)} inputs, expected at most {len(names)}, in this order: {names}"
            )
        return dict(zip(names, first))
    return {names[0]: first}


# ---------------------------------------------------------------------------------------------------
# Opening a checkpoint


def _open_weights(path: str, use_safetensors, variant, hub, exceptions):
    """Canonical safetensors first, then the reference's ``tf_model.h5``, then ``pytorch_model.bin``."""
    if use_safetensors is not False:
        try:
            return find_weights(path, variant=variant, use_safetensors=True, **hub)
        except OSError:
            if use_safetensors:
                raise
    h5 = find_legacy_weights(path, "tf", exceptions=exceptions, **hub)
    if h5 is not None:
        return h5
    return find_weights(path, variant=variant, use_safetensors=False, **hub)


# ---------------------------------------------------------------------------------------------------


def name_after_attribute(attribute: str, value) -> None:
    """Give a sublayer its attribute's name, so that Keras variable paths read like checkpoint keys
    (``.../encoder/layer_0/attention/self/query/kernel``) and stay the same from one model to the next;
    ``keras.distribution.LayoutMap`` rules match those paths. A layer that already has variables (a table
    shared by a tied head) keeps its name: its variables' paths are fixed at creation."""
    if isinstance(value, keras.layers.Layer) and not attribute.startswith("_") and not value.built:
        value.name = attribute


class Composite:
    """What the models and their blocks (``layers.Block``) share as Keras layers made of other layers: each
    sublayer is named after its attribute, and builds itself on its first call from the shapes it sees,
    so there is nothing to build here (and no symbolic trace to build through)."""

    def __setattr__(self, name, value):
        name_after_attribute(name, value)
        super().__setattr__(name, value)

    def build(self, input_shape=None):
        self.built = True


class TFPreTrainedModel(Composite, keras.Model):
    """Base class of every Keras model: configuration, the input formats, checkpoint I/O and ``fit``.

    Subclasses set ``config_class`` and ``base_model_prefix`` (the attribute holding the main layer,
    also the key prefix in checkpoints of models with a head) and decorate ``call`` with
    :func:`unpack_inputs`.
    """

    config_class: type = PretrainedConfig
    base_model_prefix: str = ""
    main_input_name: str = "input_ids"
    _checkpoint_exceptions: dict[str, str] = {}  # Keras attribute path -> PyTorch key, where the rule fails
    _keys_to_ignore_on_load_unexpected: list[str] = [r"\.position_ids$"]

    def __init__(self, config: PretrainedConfig, *inputs, **kwargs):
        if not isinstance(config, PretrainedConfig):
            raise TypeError(
                f"{type(self).__name__} expects a PretrainedConfig (e.g. {self.config_class.__name__}) as config, "
                f"got {type(config).__name__}; to load a checkpoint use {type(self).__name__}.from_pretrained(path)"
            )
        super().__init__(**kwargs)
        self.config = config
        self.name_or_path = getattr(config, "name_or_path", "")
        # The reference's models take plain values (flags, None) positionally, as Python functions do.
        self._allow_non_tensor_positional_args = True

    @property
    def dummy_inputs(self) -> dict:
        """Small inputs that reach every layer, for building the variables."""
        ids = np.array([[0, 5, 6, 7, 2]], dtype="int32")
        inputs = {"input_ids": ids}
        if getattr(self.config, "add_cross_attention", False):
            inputs["encoder_hidden_states"] = np.zeros((1, 3, self.config.hidden_size), dtype="float32")
        return inputs

    def build_model(self) -> "TFPreTrainedModel":
        """Create every variable now, by running the model once on :attr:`dummy_inputs`."""
        if not getattr(self, "_built_by_call", False):
            self(self.dummy_inputs, training=False)
            self._built_by_call = True
            distribution = keras.distribution.distribution()
            if isinstance(distribution, keras.distribution.ModelParallel):
                # Keras replicates a variable that no rule matches, silently: a rule that matches nothing
                # (a typo, another family's path) is caught here, where the variables are known.
                from .distribution import check_layout_map

                check_layout_map(self, distribution._layout_map)
        return self

    def _flags(self, output_attentions, output_hidden_states, return_dict):
        return output_flags(self.config, output_attentions, output_hidden_states, return_dict)

    def _encode(self, arguments: dict):
        """A model's first step, from the arguments of its ``call`` (its ``locals()``): the output flags
        resolved against the config, then the main layer run on the inputs among those arguments, in the
        main layer's order. Returns (the main layer's output, return_dict)."""
        output_attentions, output_hidden_states, return_dict = self._flags(
            arguments["output_attentions"], arguments["output_hidden_states"], arguments["return_dict"]
        )
        names = _input_names(type(self.base_model))
        given = [i for i, name in enumerate(names) if name in arguments]
        inputs = [arguments.get(name) for name in names[: given[-1] + 1]]
        body = self.base_model(*inputs, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, training=arguments["training"])
        return body, return_dict

    @property
    def base_model(self):
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self):
        return self.base_model.embeddings.word_embeddings

    def can_generate(self) -> bool:
        return False

    # ---------------------------------------------------------------------------------------------
    # names

    def checkpoint_variables(self) -> dict[str, tuple[Any, bool]]:
        """PyTorch key -> (Keras variable, transposed?) for every variable of the model.

        A bare model keeps its keys without ``base_model_prefix``, as the PyTorch bare model saves them.
        """
        found = {}
        for path, variable in _walk(self):
            key, transpose = torch_name(path, self._checkpoint_exceptions)
            if key in found:
                raise RuntimeError(f"two variables of {type(self).__name__} map to the checkpoint key {key!r}")
            found[key] = (variable, transpose)
        prefix = self.base_model_prefix + "."
        if self.base_model_prefix and found and all(k.startswith(prefix) for k in found):
            found = {k[len(prefix):]: v for k, v in found.items()}
        return found

    # ---------------------------------------------------------------------------------------------
    # loading

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs):
        return cls(config, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Union[str, os.PathLike], *model_args,
        config: Optional[Union[PretrainedConfig, str, os.PathLike]] = None, from_pt: bool = False,
        ignore_mismatched_sizes: bool = False, output_loading_info: bool = False,
        use_safetensors: Optional[bool] = None, variant: Optional[str] = None, **kwargs,
    ):
        """Build the model and read its weights: safetensors with PyTorch names (what every framework
        saves), a ``tf_model.h5`` written by the reference's TF classes, or ``pytorch_model.bin``.

        ``from_pt`` is accepted for compatibility and changes nothing: PyTorch names are the canonical
        ones. Other keyword arguments update the configuration.
        """
        del from_pt
        if kwargs.pop("from_flax", False):
            raise ValueError("from_flax=True is not supported: save the Flax model with save_pretrained (safetensors)")
        for accepted in ("load_weight_prefix", "mirror", "_from_auto", "_from_pipeline", "trust_remote_code"):
            kwargs.pop(accepted, None)
        hub = pop_hub_kwargs(kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        config, model_kwargs = config_for_loading(cls.config_class, path, config, hub, kwargs)

        with _open_weights(path, use_safetensors, variant, hub, cls._checkpoint_exceptions) as reader:
            model = cls(config, *model_args, **model_kwargs)
            model.build_model()
            info = model._load_weights(reader, ignore_mismatched_sizes, path)
        if model.can_generate():
            # Generation settings live in generation_config.json when the checkpoint has one; otherwise the
            # model derives them from its config on first use.
            from ..checkpoints.files import cached_file
            from ..generation_config import GENERATION_CONFIG_NAME, GenerationConfig

            generation_file = cached_file(path, GENERATION_CONFIG_NAME, missing_ok=True, **hub)
            if generation_file is not None:
                model.generation_config = GenerationConfig.from_pretrained(generation_file)
        if output_loading_info:
            return model, info
        return model

    def _load_weights(self, reader, ignore_mismatched_sizes: bool, source: str) -> dict:
        ours = self.checkpoint_variables()
        keys = list(reader.keys())
        mapping, unexpected = bridge_prefix(self.base_model_prefix + "." if self.base_model_prefix else "", ours, keys)
        name = type(self).__name__
        if not mapping:
            raise OSError(
                f"none of the {len(keys)} weights in {source!r} belong to {name}: it expects names such as "
                f"{list(ours)[:3]}, the checkpoint has {keys[:3]} (a checkpoint of another architecture?)"
            )
        mismatched = []
        for key, ckpt_key in mapping.items():
            variable, transpose = ours[key]
            array = reader.get(ckpt_key, framework="np")
            if transpose:
                array = array.T
            if tuple(array.shape) != tuple(variable.shape):
                if not ignore_mismatched_sizes:
                    raise ValueError(
                        f"shape mismatch for {key!r}: the checkpoint {source!r} has {tuple(reader.shape(ckpt_key))} "
                        f"(PyTorch layout), the model built from its config expects {tuple(variable.shape)}"
                        f"{' transposed' if transpose else ''}; pass ignore_mismatched_sizes=True to initialise it anew"
                    )
                mismatched.append((key, tuple(reader.shape(ckpt_key)), tuple(variable.shape)))
                continue
            variable.assign(np.asarray(array).astype(variable.dtype))
        skipped = {k for k, _, _ in mismatched}
        missing = [k for k in ours if k not in mapping and k not in skipped]
        ignored = self._keys_to_ignore_on_load_unexpected
        unexpected = [k for k in unexpected if not any(re.search(p, k) for p in ignored)]
        warn_loading(name, source, missing, unexpected, mismatched)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched,
                "error_msgs": []}

    # ---------------------------------------------------------------------------------------------
    # saving

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        saved_model: bool = False,
        version: int = 1,
        push_to_hub: bool = False,
        signatures=None,
        max_shard_size: Union[int, str] = "5GB",
        create_pr: bool = False,
        safe_serialization: bool = True,
        token: Optional[Union[str, bool]] = None,
        **kwargs,
    ) -> None:
        """Write config.json and the weights as safetensors with PyTorch names and layouts, which the
        PyTorch, Keras and Flax classes all load. ``safe_serialization`` is accepted; the format is always
        safetensors. With ``saved_model=True`` a TensorFlow SavedModel with the serving signature of
        :meth:`export` is written too, in ``saved_model/<version>`` inside the folder."""
        if signatures is not None:
            raise ValueError(
                f"signatures: custom SavedModel signatures are not supported, given {type(signatures).__name__}; "
                "export with model.export(path, input_signature={...}) to choose the serving inputs"
            )
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a folder, got the file {save_directory!r}")
        if saved_model:
            self.export(os.path.join(save_directory, "saved_model", str(version)))
        self.build_model()
        os.makedirs(save_directory, exist_ok=True)
        state = {key: np.ascontiguousarray(np.asarray(v.numpy()).T if t else np.asarray(v.numpy()))
                 for key, (v, t) in self.checkpoint_variables().items()}
        save_weights(state, save_directory, max_shard_size=max_shard_size, metadata={"format": "pt"}, framework="np")
        config = copy.deepcopy(self.config)
        # The architecture is named as the PyTorch class, as the reference's TF classes did.
        name = type(self).__name__
        config.architectures = [name[2:] if name.startswith("TF") else name]
        config.save_pretrained(save_directory)
        if self.can_generate():
            self.generation_config.save_pretrained(save_directory)
        if push_to_hub:
            push_folder(save_directory, token=token, create_pr=create_pr, **kwargs)

    # ---------------------------------------------------------------------------------------------
    # SavedModel

    @property
    def input_signature(self) -> dict:
        """The serving inputs: int32 token ids, attention mask and, where the model takes them, token
        types, with every dimension free (batch, sequence and, for multiple choice, choices)."""
        import tensorflow as tf

        rank = np.ndim(self.dummy_inputs[self.main_input_name])
        taken = inspect.signature(type(self).call).parameters
        return {name: tf.TensorSpec((None,) * rank, tf.int32, name=name)
                for name in ("input_ids", "attention_mask", "token_type_ids") if name in taken}

    def serving(self, inputs: dict) -> dict:
        """The exported endpoint: the model in inference mode on a dict of inputs, returning the output
        fields that are tensors (caches and per-layer tuples do not fit a serving signature)."""
        import tensorflow as tf

        output = self(**inputs, training=False, return_dict=True)
        return {name: value for name, value in output.items() if tf.is_tensor(value)}

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Write a TensorFlow SavedModel whose ``serve`` endpoint (also its ``serving_default`` signature)
        takes the inputs of ``input_signature`` by name (default :attr:`input_signature`) and returns the
        output fields by name. Other formats go to Keras' own ``export``."""
        if format != "tf_saved_model":
            return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)
        if keras.backend.backend() != "tensorflow":
            raise ValueError(f"format: a tf_saved_model needs the TensorFlow backend, the Keras backend is "
                             f"{keras.backend.backend()!r}")
        signature = self.input_signature if input_signature is None else input_signature
        if isinstance(signature, (list, tuple)) and len(signature) == 1:
            signature = signature[0]
        if not isinstance(signature, Mapping):
            raise TypeError(
                f"input_signature: expected a dict of tf.TensorSpec by input name (e.g. {{'input_ids': ...}}), "
                f"given {type(signature).__name__}"
            )
        self.build_model()
        from keras.export import ExportArchive

        archive = ExportArchive()
        archive.track(self)
        archive.add_endpoint("serve", self.serving, input_signature=[dict(signature)])
        archive.write_out(os.fspath(filepath), verbose=bool(verbose))

    # ---------------------------------------------------------------------------------------------
    # training

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """Keras' ``fit``. Under a ``keras.distribution`` with a data axis, arrays whose batches (the last
        one included) that axis does not divide are refused here, with the sizes, before any step runs."""
        if keras.distribution.distribution() is not None:
            leaves = [leaf for leaf in keras.tree.flatten(x) if isinstance(leaf, np.ndarray)] if x is not None else []
            if leaves:
                from .distribution import check_batch

                rows = len(leaves[0])
                size = 32 if batch_size is None else int(batch_size)
                check_batch(min(size, rows))
                if rows % size and rows > size:
                    check_batch(rows % size, what=f"the last batch ({rows} rows in batches of {size})")
        return super().fit(x, y, batch_size, *args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """With a loss given to ``compile``, that loss on the logits; otherwise the model's own loss,
        computed from the labels in the input dict (averaged over examples).

        Under a ``tf.distribute`` strategy each replica returns its share (see :func:`_per_replica`). A
        per-token loss (masked LM, token classification) is then the mean of the replicas' token means,
        which equals the global token mean when every replica holds as many labelled tokens; the JAX
        backend's ``keras.distribution`` computes the loss on the global batch and always equals it."""
        if self._compile_loss is not None:
            logits = y_pred.get("logits", y_pred[0]) if isinstance(y_pred, Mapping) else y_pred
            return super().compute_loss(x, y, logits, sample_weight, training=training)
        loss = y_pred.get("loss") if isinstance(y_pred, Mapping) else None
        if loss is None:
            raise ValueError(
                f"{type(self).__name__} computed no loss: put the labels in the input dict (x), e.g. "
                "{'input_ids': ..., 'labels': ...}, or pass a loss to compile()"
            )
        total = ops.mean(loss)
        for extra in self.losses:
            total = total + ops.cast(extra, total.dtype)
        return _per_replica(total)


def _per_replica(loss):
    """A replica's share of the loss under a ``tf.distribute`` strategy, as Keras' own losses scale it:
    the strategy sums the replicas' gradients and Keras' loss tracker multiplies the value back, so a
    per-replica mean divided by the number of replicas gives the gradients and the reported loss of
    one device on the global batch. Other backends (and no strategy) see the loss unchanged."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * ops.cast(1.0 / replicas, loss.dtype)


def as_output(output, return_dict: bool):
    """The reference's ``return_dict=False``: a tuple of the fields that are set."""
    return output if return_dict else output.to_tuple()
