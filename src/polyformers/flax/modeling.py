"""FlaxPreTrainedModel: what every Flax model shares — parameters beside a stateless linen Module,
initialisation, dtype casts, loading and saving.

A Flax model is a ``flax.linen`` Module (``model.module``, pure, no state) plus the parameter pytree
(``model.params``); every call applies the module to the given or stored parameters, so ``jax.jit`` of
a call compiles it with the parameters as an argument.

Weights live in one canonical format, safetensors with the PyTorch key names and layouts. A parameter's
PyTorch key comes from its path in the pytree (the submodule names are the PyTorch module names) and
one renaming rule, :func:`torch_key`; a family lists the few paths the rule cannot derive in
``_checkpoint_exceptions``. ``flax_model.msgpack`` files written by the reference's Flax classes hold
the same pytree and are read through the same rule (``checkpoints/legacy.py``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import FrozenDict, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from ..checkpoints import find_weights, save_weights
from ..checkpoints.files import cached_file, pop_hub_kwargs, push_folder
from ..checkpoints.legacy import find_legacy_weights, flax_key
from .._shared import bridge_prefix, config_for_loading, output_flags, warn_loading
from ..configs import PretrainedConfig

logger = logging.getLogger("polyformers")

Path = tuple[str, ...]

_PROGRAMS: dict = {}  # compiled module.apply, by module, method and flags

# ---------------------------------------------------------------------------------------------------
# Names: pytree path -> PyTorch key

# One rule, shared with the reader of the reference's flax_model.msgpack files (whose pytree paths are
# ours): a parameter's path becomes its PyTorch key through it.
torch_key = flax_key


def _is_float(dtype) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:
        return False


def _describe(shape_tree: Mapping[Path, Any]) -> str:
    return ", ".join(f"{'/'.join(p)} {tuple(s)}" for p, s in list(shape_tree.items())[:3])


# ---------------------------------------------------------------------------------------------------


class FlaxPreTrainedModel:
    """Base class of every Flax model: configuration, the parameter pytree, dtype casts, checkpoint I/O.

    Subclasses set ``config_class``, ``module_class`` (the linen Module), ``base_model_prefix`` (the
    parameter subtree of the bare model inside a model with a head, also the key prefix in checkpoints)
    and implement ``init_weights``.

    ``dtype`` is the computation dtype only; the parameters stay float32 until :meth:`to_fp16` or
    :meth:`to_bf16` casts them. With ``_do_init=False`` no parameters are created (only their shapes
    are traced) and every call needs ``params=``.
    """

    config_class: type = PretrainedConfig
    module_class: Any = None
    base_model_prefix: str = ""
    main_input_name: str = "input_ids"
    _checkpoint_exceptions: dict[str, str] = {}  # dotted pytree path -> PyTorch key, where the rule fails
    _keys_to_ignore_on_load_unexpected: list[str] = []  # PyTorch keys with no Flax parameter, by regex

    def __init__(
        self,
        config: PretrainedConfig,
        module,
        input_shape: tuple = (1, 1),
        seed: int = 0,
        dtype: Any = jnp.float32,
        _do_init: bool = True,
    ):
        if not isinstance(config, PretrainedConfig):
            raise TypeError(
                f"{type(self).__name__} expects a PretrainedConfig (e.g. {self.config_class.__name__}) as config, "
                f"got {type(config).__name__}; to load a checkpoint use {type(self).__name__}.from_pretrained(path)"
            )
        self.config = config
        self.module = module
        self.dtype = dtype
        self.input_shape = tuple(input_shape)
        self.key = jax.random.PRNGKey(seed)
        self.name_or_path = getattr(config, "name_or_path", "")
        self._missing_keys: set = set()
        self._is_initialized = _do_init
        self.generation_config = None
        if self.can_generate():
            from ..generation_config import GenerationConfig

            self.generation_config = GenerationConfig.from_model_config(config)

        shapes = jax.eval_shape(lambda rng: self.init_weights(rng, self.input_shape), self.key)
        self._params_shape_tree = unfreeze(shapes)
        self._expected = {path: (tuple(s.shape), s.dtype) for path, s in flatten_dict(self._params_shape_tree).items()}
        self._known_treedefs: set = set()
        self._params = None
        if _do_init:  # compiled: the random initialisers run op by op otherwise, slowly
            self._params = jax.jit(lambda rng: self.init_weights(rng, self.input_shape))(self.key)
        if self._params is not None:
            self._params = unfreeze(self._params)
            self._known_treedefs.add(jax.tree_util.tree_structure(self._params))

    # ---------------------------------------------------------------------------------------------
    # parameters

    @staticmethod
    def check_dtype(dtype) -> None:
        if not _is_float(dtype):
            raise ValueError(f"dtype must be a floating dtype (jnp.float32, jnp.bfloat16, jnp.float16), got {dtype!r}")

    def init_weights(self, rng: jax.Array, input_shape: tuple, params: Optional[dict] = None) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not define init_weights")

    @property
    def required_params(self) -> set:
        return set(self._expected)

    @property
    def params_shape_tree(self) -> dict:
        return self._params_shape_tree

    @property
    def params(self) -> dict:
        if not self._is_initialized:
            raise ValueError(
                f"{type(self).__name__} was created with _do_init=False and holds no params: pass them to each call "
                "(params=...), or create the model with _do_init=True"
            )
        return self._params

    @params.setter
    def params(self, params) -> None:
        self._check_params(params, "params")
        self._params = unfreeze(params) if isinstance(params, FrozenDict) else params
        self._is_initialized = True

    def _check_params(self, params, name: str = "params") -> None:
        """Refuse a pytree whose paths or shapes are not the model's; cheap for a structure seen before."""
        if not isinstance(params, Mapping):
            raise TypeError(f"{name} must be a dict of parameters (a pytree), got {type(params).__name__}")
        treedef = jax.tree_util.tree_structure(params)
        if treedef in self._known_treedefs and self._shapes_match(params):
            return
        flat = flatten_dict(unfreeze(params))
        missing = sorted("/".join(p) for p in self._expected.keys() - flat.keys())
        unexpected = sorted("/".join(p) for p in flat.keys() - self._expected.keys())
        if missing or unexpected:
            raise ValueError(
                f"{name} does not have the structure of {type(self).__name__}'s parameters: missing "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''} (expected paths such as {_describe(self._shape_only())})"
            )
        for path, array in flat.items():
            expected = self._expected[path][0]
            if tuple(np.shape(array)) != expected:
                raise ValueError(
                    f"{name}: {'/'.join(path)} has shape {tuple(np.shape(array))}, expected {expected} for this config"
                )
        self._known_treedefs.add(treedef)

    def _shape_only(self) -> dict:
        return {p: s for p, (s, _) in self._expected.items()}

    def _shapes_match(self, params) -> bool:
        leaves = jax.tree_util.tree_leaves(params)
        expected = jax.tree_util.tree_leaves(self._params_shape_tree)
        return all(tuple(np.shape(a)) == tuple(b.shape) for a, b in zip(leaves, expected))

    def _resolve_params(self, params):
        if params is None:
            return self.params
        self._check_params(params)
        return params

    def _apply(self, variables, *args, method=None, mutable=False, rngs=None, static: Mapping[str, Any], **arrays):
        """``self.module.apply`` compiled once per method and flags (``static``), so even an eager call
        runs as one program instead of op by op; inside a caller's ``jax.jit`` it simply inlines."""
        key = (self._module_key(), method, mutable if isinstance(mutable, bool) else tuple(mutable),
               tuple(sorted(static.items())))
        if key not in _PROGRAMS:
            _PROGRAMS[key] = jax.jit(functools.partial(self.module.apply, method=method, mutable=mutable, **static))
        return _PROGRAMS[key](variables, *args, rngs=rngs or {}, **arrays)

    def _module_key(self) -> tuple:
        # Modules built from equal configs compute the same function: they share compiled programs
        # (which hold the module, never the parameters).
        settings = self.config.to_dict()
        for key in ("_name_or_path", "architectures", "transformers_version"):
            settings.pop(key, None)
        return type(self.module), json.dumps(settings, sort_keys=True, default=repr), jnp.dtype(self.dtype).name

    @staticmethod
    def _fill_missing(random_params, params, missing: set) -> dict:
        """``params`` completed with the freshly initialised values of the ``missing`` paths."""
        random_flat = flatten_dict(unfreeze(random_params))
        flat = flatten_dict(unfreeze(params))
        for path in missing:
            flat[path] = random_flat[path]
        return unflatten_dict(flat)

    # ---------------------------------------------------------------------------------------------
    # dtype casts (of a params pytree; the reference returns the cast copy and leaves the model alone)

    def _cast_floating(self, params, dtype, mask=None):
        params = self.params if params is None else params

        def cast(array, keep=True):
            return array.astype(dtype) if keep and _is_float(array.dtype) else array

        if mask is None:
            return jax.tree_util.tree_map(cast, params)
        return jax.tree_util.tree_map(cast, params, mask)

    def to_bf16(self, params=None, mask=None):
        """``params`` with every floating leaf cast to bfloat16 (``mask``: a pytree of booleans, False
        leaves keep their dtype)."""
        return self._cast_floating(params, jnp.bfloat16, mask)

    def to_fp16(self, params=None, mask=None):
        """``params`` with every floating leaf cast to float16 (``mask`` as in :meth:`to_bf16`)."""
        return self._cast_floating(params, jnp.float16, mask)

    def to_fp32(self, params=None, mask=None):
        """``params`` with every floating leaf cast to float32 (``mask`` as in :meth:`to_bf16`)."""
        return self._cast_floating(params, jnp.float32, mask)

    # ---------------------------------------------------------------------------------------------

    def can_generate(self) -> bool:
        return False

    def _flags(self, output_attentions, output_hidden_states, return_dict):
        return output_flags(self.config, output_attentions, output_hidden_states, return_dict)

    # ---------------------------------------------------------------------------------------------
    # names

    def checkpoint_keys(self) -> dict[str, tuple[Path, bool]]:
        """PyTorch key -> (pytree path, transposed?) for every parameter of the model.

        A bare model's keys carry no ``base_model_prefix``, as the PyTorch bare model saves them.
        """
        found = {}
        for path in self._expected:
            key, transpose = torch_key(path, self._checkpoint_exceptions)
            if key in found:
                raise RuntimeError(f"two parameters of {type(self).__name__} map to the checkpoint key {key!r}")
            found[key] = (path, transpose)
        return found

    # ---------------------------------------------------------------------------------------------
    # loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        dtype: Any = jnp.float32,
        *model_args,
        config: Optional[Union[PretrainedConfig, str, os.PathLike]] = None,
        ignore_mismatched_sizes: bool = False,
        **kwargs,
    ):
        """Build the model and read its weights: safetensors with PyTorch names (what every framework
        saves), ``pytorch_model.bin``, or a ``flax_model.msgpack`` written by the reference's Flax classes.

        ``from_pt`` is accepted and changes nothing: PyTorch names are the canonical ones. With
        ``_do_init=False`` returns ``(model, params)``. Other keyword arguments update the configuration
        or go to the model's constructor (``input_shape``, ``seed``).
        """
        cls.check_dtype(dtype)
        kwargs.pop("from_pt", None)
        if kwargs.pop("from_tf", False):
            raise ValueError("from_tf=True is not supported: save the TF model with save_pretrained (safetensors)")
        _do_init = kwargs.pop("_do_init", True)
        output_loading_info = kwargs.pop("output_loading_info", False)
        use_safetensors = kwargs.pop("use_safetensors", None)
        variant = kwargs.pop("variant", None)
        for accepted in ("_from_auto", "_from_pipeline", "trust_remote_code", "mirror", "safe_serialization"):
            kwargs.pop(accepted, None)
        hub = pop_hub_kwargs(kwargs)
        model_kwargs = {k: kwargs.pop(k) for k in ("input_shape", "seed") if k in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        config, unused = config_for_loading(cls.config_class, path, config, hub, kwargs)
        model_kwargs.update(unused)

        model = cls(config, *model_args, dtype=dtype, _do_init=False, **model_kwargs)
        flat, info = model._read_checkpoint(path, use_safetensors, variant, hub, ignore_mismatched_sizes)
        model._missing_keys = set(info.pop("_missing_paths"))
        params = unflatten_dict(flat)
        if _do_init:
            if model._missing_keys:
                params = jax.jit(lambda rng, loaded: model.init_weights(rng, model.input_shape, loaded))(model.key, params)
            model._params = unfreeze(params)
            model._is_initialized = True
            model._missing_keys = set()
        if model.can_generate():
            from ..generation_config import GENERATION_CONFIG_NAME, GenerationConfig

            generation_file = cached_file(path, GENERATION_CONFIG_NAME, missing_ok=True, **hub)
            if generation_file is not None:
                model.generation_config = GenerationConfig.from_pretrained(generation_file)
        result = model if _do_init else (model, params)
        if output_loading_info:
            return (*result, info) if not _do_init else (model, info)
        return result

    def _read_checkpoint(self, path, use_safetensors, variant, hub, ignore_mismatched_sizes):
        """Flat {pytree path: array} of the checkpoint's parameters, and the loading report."""
        try:
            reader = find_weights(path, variant=variant, use_safetensors=use_safetensors, **hub)
        except OSError:
            reader = None if use_safetensors else find_legacy_weights(
                path, "flax", exceptions=self._checkpoint_exceptions, **hub)
            if reader is None:
                raise
        with reader:
            if reader.metadata.get("format") == "flax":
                # The reference's Flax save_pretrained(safe_serialization=True): pytree paths, not PyTorch keys.
                state = {tuple(k.split(".")): reader.get(k, "np") for k in reader.keys()}
                return self._match_pytree(state, path, ignore_mismatched_sizes)
            return self._load_torch_keys(reader, path, ignore_mismatched_sizes)

    def _load_torch_keys(self, reader, source: str, ignore_mismatched_sizes: bool):
        ours = self.checkpoint_keys()
        keys = list(reader.keys())
        mapping, unexpected = bridge_prefix(self.base_model_prefix + "." if self.base_model_prefix else "", ours, keys)
        if not mapping:
            raise OSError(
                f"none of the {len(keys)} weights in {source!r} belong to {type(self).__name__}: it expects names "
                f"such as {list(ours)[:3]}, the checkpoint has {keys[:3]} (a checkpoint of another architecture?)"
            )
        flat, mismatched = {}, []
        for key, ckpt_key in mapping.items():
            path, transpose = ours[key]
            array = reader.get(ckpt_key, "np")
            if transpose:
                array = array.T
            expected = self._expected[path][0]
            if tuple(array.shape) != expected:
                if not ignore_mismatched_sizes:
                    raise ValueError(
                        f"shape mismatch for {key!r}: the checkpoint {source!r} has {tuple(reader.shape(ckpt_key))} "
                        f"(PyTorch layout), the model built from its config expects {expected}"
                        f"{' transposed' if transpose else ''}; pass ignore_mismatched_sizes=True to initialise it anew"
                    )
                mismatched.append((key, tuple(reader.shape(ckpt_key)), expected))
                continue
            flat[path] = jnp.asarray(np.ascontiguousarray(array))
        unexpected = [k for k in unexpected if not any(re.search(p, k) for p in self._keys_to_ignore_on_load_unexpected)]
        skipped = {k for k, _, _ in mismatched}
        missing = [k for k in ours if k not in mapping]
        missing_paths = [ours[k][0] for k in ours if k not in mapping or k in skipped]
        return flat, self._report(source, missing, unexpected, mismatched, missing_paths)

    def _match_pytree(self, state: dict, source: str, ignore_mismatched_sizes: bool):
        """Reference-written pytrees: the same paths as ours, up to the bare model's prefix."""
        prefix = self.base_model_prefix
        model_has = any(p[0] == prefix for p in self._expected)
        ckpt_has = any(p[0] == prefix for p in state)
        if ckpt_has and not model_has:
            state = {p[1:]: v for p, v in state.items() if p[0] == prefix}
        elif model_has and not ckpt_has:
            state = {(prefix, *p): v for p, v in state.items()}
        flat, mismatched = {}, []
        for path, array in state.items():
            if path not in self._expected:
                continue
            expected = self._expected[path][0]
            if tuple(np.shape(array)) != expected:
                if not ignore_mismatched_sizes:
                    raise ValueError(
                        f"shape mismatch for {'/'.join(path)}: {source!r} has {tuple(np.shape(array))}, the model "
                        f"built from its config expects {expected}; pass ignore_mismatched_sizes=True to initialise it anew"
                    )
                mismatched.append(("/".join(path), tuple(np.shape(array)), expected))
                continue
            flat[path] = jnp.asarray(array)
        if not flat:
            raise OSError(f"none of the weights in {source!r} belong to {type(self).__name__}")
        unexpected = ["/".join(p) for p in state if p not in self._expected]
        missing_paths = [p for p in self._expected if p not in flat]
        skipped = {m[0] for m in mismatched}
        missing = ["/".join(p) for p in missing_paths if "/".join(p) not in skipped]
        return flat, self._report(source, missing, unexpected, mismatched, missing_paths)

    def _report(self, source, missing, unexpected, mismatched, missing_paths) -> dict:
        warn_loading(type(self).__name__, source, missing, unexpected, mismatched)
        return {"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched,
                "_missing_paths": missing_paths}

    # ---------------------------------------------------------------------------------------------
    # saving

    def checkpoint_constants(self) -> dict[str, np.ndarray]:
        """Tensors the PyTorch checkpoint holds that are constants here, not parameters (a family's
        fixed position tables), written by :meth:`save_pretrained` so the PyTorch classes load a full
        checkpoint."""
        return {}

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        params=None,
        push_to_hub: bool = False,
        max_shard_size: Union[int, str] = "10GB",
        token: Optional[Union[str, bool]] = None,
        safe_serialization: bool = True,
        **kwargs,
    ) -> None:
        """Write config.json (and generation_config.json) and the weights as safetensors with PyTorch
        names and layouts, which the PyTorch, Keras and Flax classes all load. ``safe_serialization`` is
        accepted; the format is always safetensors."""
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a folder, got the file {save_directory!r}")
        params = self.params if params is None else params
        self._check_params(params)
        os.makedirs(save_directory, exist_ok=True)
        flat = flatten_dict(unfreeze(params))
        state = {}
        for key, (path, transpose) in self.checkpoint_keys().items():
            array = flat[path]
            if isinstance(array, jax.Array) and not array.is_fully_addressable:
                # Sharded across processes: every process gathers the whole array (a collective, so
                # every process must call save_pretrained).
                from jax.experimental import multihost_utils

                array = multihost_utils.process_allgather(array, tiled=True)
            array = np.asarray(jax.device_get(array))
            state[key] = np.ascontiguousarray(array.T if transpose else array)
        for key, array in self.checkpoint_constants().items():
            state.setdefault(key, array)
        save_weights(state, save_directory, max_shard_size=max_shard_size, metadata={"format": "pt"}, framework="np")
        config = copy.deepcopy(self.config)
        # The architecture is named as the PyTorch class, as the reference's Flax classes did.
        name = type(self).__name__
        config.architectures = [name[4:] if name.startswith("Flax") else name]
        config.save_pretrained(save_directory)
        if self.can_generate() and self.generation_config is not None:
            self.generation_config.save_pretrained(save_directory)
        if push_to_hub:
            push_folder(save_directory, token=token, **kwargs)
