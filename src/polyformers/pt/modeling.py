"""PreTrainedModel: what every PyTorch model shares — loading, saving, dtype, embeddings, initialisation.

Loading never holds two copies of the weights: the model is built with its parameters on the ``meta``
device (no memory), then each tensor is read from the checkpoint, cast to the target dtype and put in
place, one at a time. Parameters the checkpoint lacks are materialised and initialised afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
from typing import Any, Optional, Union

import torch
from torch import nn

from ..checkpoints import find_weights, save_weights
from ..checkpoints.dtypes import canonical_dtype, to_torch_dtype
from ..checkpoints.files import cached_file, pop_hub_kwargs, push_folder
from ..configs import PretrainedConfig
from . import memory

logger = logging.getLogger("polyformers")

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))  # TF-era LayerNorm names in old checkpoints


@contextlib.contextmanager
def init_empty_weights():
    """Within this context, modules create their parameters (not their buffers) on the meta device:
    building a model allocates no weight memory, and loading then gives each parameter its storage.

    The same contract as accelerate's ``init_empty_weights()`` with its default ``include_buffers=False``.
    Buffers stay real because they are small and often computed in ``__init__`` (position ids); a
    buffer on meta would be lost if the checkpoint does not carry it.

    ``torch.nn.init``'s initialisers leave a meta tensor as it is: there are no values to set, and
    torch's meta ``normal_`` alone imports its compiler stack (about 70 MB of Python objects, the
    largest part of what a load held beyond the weights).
    """
    original = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    initialisers = {name: fn for name, fn in vars(nn.init).items()
                    if callable(fn) and name.endswith("_") and not name.startswith("_")}

    def skipping_meta(fn):
        def initialise(tensor, *args, **kwargs):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                return tensor
            return fn(tensor, *args, **kwargs)

        return initialise

    nn.Module.register_parameter = register_on_meta
    for name, fn in initialisers.items():
        setattr(nn.init, name, skipping_meta(fn))
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        for name, fn in initialisers.items():
            setattr(nn.init, name, fn)


def _resolve_dtype(dtype: Any, config: PretrainedConfig, reader) -> Optional[torch.dtype]:
    """``dtype``/``torch_dtype`` argument -> torch dtype to load floating tensors in (None: as stored).

    Like the reference, the default is float32 whatever the checkpoint holds; "auto" takes the config's
    ``torch_dtype``, or else the checkpoint's first floating dtype.
    """
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        declared = getattr(config, "torch_dtype", None)
        if declared:
            return to_torch_dtype(declared)
        for key in reader.keys():
            name = reader.dtype(key)
            if name.startswith(("float", "bfloat")):
                return to_torch_dtype(name)
        return torch.float32
    resolved = to_torch_dtype(dtype)
    if not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating point type or 'auto', got {dtype!r}")
    return resolved


def _module_at(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = getattr(root, name)
    return root


def _replace_module_at(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_module_at(root, parent) if parent else root, name, value)


class PreTrainedModel(nn.Module):
    """Base class of every PyTorch model: configuration, checkpoint I/O and the shared utilities.

    Subclasses set ``config_class``, ``base_model_prefix`` (the attribute holding the bare model inside
    a model with a head, which is also the key prefix in checkpoints) and implement ``_init_weights``.
    """

    config_class: type = PretrainedConfig
    base_model_prefix: str = ""
    main_input_name: str = "input_ids"
    _tied_weights_keys: Optional[list[str]] = None
    _keys_to_ignore_on_load_missing: Optional[list[str]] = None
    _keys_to_ignore_on_load_unexpected: Optional[list[str]] = None
    # Weights the forward pass copies into a buffer of its own (``layers.stacked_linear``): they load as
    # private copies, since a copy of a view of the mapped checkpoint would keep both resident.
    _keys_loaded_unmapped: Optional[list[str]] = None
    supports_gradient_checkpointing: bool = False
    # Where the token embedding and the output projection onto the vocabulary sit (dotted attribute paths),
    # for the accessors ``get_input_embeddings`` and friends; a model without its own token embedding
    # reaches its base model's.
    _input_embeddings: Optional[str] = None
    _output_embeddings: Optional[str] = None

    def __init__(self, config: PretrainedConfig, *inputs, **kwargs):
        super().__init__()
        if not isinstance(config, PretrainedConfig):
            raise TypeError(
                f"{type(self).__name__} expects a PretrainedConfig (e.g. {self.config_class.__name__}) as config, "
                f"got {type(config).__name__}; to load a checkpoint use {type(self).__name__}.from_pretrained(path)"
            )
        self.config = config
        self.name_or_path = getattr(config, "name_or_path", "")
        self.gradient_checkpointing = False

    # ---------------------------------------------------------------------------------------------
    # initialisation

    def _init_weights(self, module: nn.Module) -> None:  # pragma: no cover - every family overrides
        raise NotImplementedError(f"{type(self).__name__} does not define _init_weights")

    def post_init(self) -> None:
        """Initialise every weight as the family prescribes, then tie shared weights. Modules built with
        empty (meta) weights are left alone: loading gives them values, and ``_materialise_missing``
        initialises what it does not (initialising a meta tensor sets nothing but imports torch's
        compiler stack)."""

        def initialise(module):
            if not any(p.device.type == "meta" for p in module.parameters(recurse=False)):
                self._init_weights(module)

        self.apply(initialise)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output embedding matrix with the input one when the config asks for it."""
        output = self.get_output_embeddings()
        if output is not None and getattr(self.config, "tie_word_embeddings", True) \
                and not getattr(output, "quantized", False):  # a quantized head keeps its own copy
            output.weight = self.get_input_embeddings().weight

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Module:
        if self._input_embeddings is not None:
            return _module_at(self, self._input_embeddings)
        base = self.base_model
        if base is not self:
            return base.get_input_embeddings()
        raise NotImplementedError(f"{type(self).__name__} does not expose its input embeddings")

    def set_input_embeddings(self, value: nn.Module) -> None:
        if self._input_embeddings is not None:
            return _replace_module_at(self, self._input_embeddings, value)
        base = self.base_model
        if base is not self:
            return base.set_input_embeddings(value)
        raise NotImplementedError(f"{type(self).__name__} does not expose its input embeddings")

    def get_output_embeddings(self) -> Optional[nn.Module]:
        return None if self._output_embeddings is None else _module_at(self, self._output_embeddings)

    def set_output_embeddings(self, value: nn.Module) -> None:
        if self._output_embeddings is None:  # as for a missing method: a model without a head has none
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'set_output_embeddings'")
        _replace_module_at(self, self._output_embeddings, value)

    def resize_token_embeddings(
        self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary; new rows are initialised like fresh weights, old rows kept."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        new_num_tokens = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        if new_num_tokens <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}")
        new = nn.Embedding(
            new_num_tokens, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device,
            dtype=old.weight.dtype,
        )
        self._init_weights(new)
        keep = min(old.num_embeddings, new_num_tokens)
        with torch.no_grad():
            new.weight[:keep] = old.weight[:keep]
        self.set_input_embeddings(new)
        output = self.get_output_embeddings()
        if output is not None:
            if getattr(self.config, "tie_word_embeddings", True):
                output.weight = new.weight
            else:
                resized = nn.Linear(output.in_features, new_num_tokens, bias=False, dtype=output.weight.dtype)
                self._init_weights(resized)
                with torch.no_grad():
                    resized.weight[:keep] = output.weight[:keep]
                output.weight = resized.weight
            if getattr(output, "bias", None) is not None:
                bias = torch.zeros(new_num_tokens, dtype=output.bias.dtype, device=output.bias.device)
                bias[:keep] = output.bias.data[:keep]
                output.bias = nn.Parameter(bias)
            output.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        return new

    # ---------------------------------------------------------------------------------------------
    # properties and small utilities

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or id(p) in skip or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def can_generate(self) -> bool:
        return False

    @classmethod
    def from_config(cls, config: PretrainedConfig, torch_dtype=None, dtype=None, **kwargs):
        """A freshly initialised model for ``config`` (no checkpoint)."""
        model = cls(config, **kwargs)
        chosen = dtype if dtype is not None else torch_dtype
        if chosen is not None:
            model.to(to_torch_dtype(chosen))
        return model

    _from_config = from_config

    # ---------------------------------------------------------------------------------------------
    # loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        *model_args,
        config: Optional[Union[PretrainedConfig, str, os.PathLike]] = None,
        ignore_mismatched_sizes: bool = False,
        use_safetensors: Optional[bool] = None,
        output_loading_info: bool = False,
        torch_dtype: Any = None,
        dtype: Any = None,
        device_map: Any = None,
        variant: Optional[str] = None,
        **kwargs,
    ):
        """Build the model from a checkpoint folder or Hub id, reading weights straight into place.

        ``dtype`` (or its older name ``torch_dtype``) casts floating weights while they load; "auto" keeps
        the checkpoint's. Other keyword arguments update the configuration.
        """
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"got both dtype={dtype!r} and torch_dtype={torch_dtype!r}; pass only one")
        dtype = dtype if dtype is not None else torch_dtype
        for flag in ("from_tf", "from_flax"):
            if kwargs.pop(flag, False):
                raise ValueError(
                    f"{flag}=True is not supported: polyformers reads safetensors and pytorch_model.bin; "
                    "convert the checkpoint with `polyformers convert` first"
                )
        for accepted in ("low_cpu_mem_usage", "_fast_init", "attn_implementation", "trust_remote_code"):
            kwargs.pop(accepted, None)  # loading is always low-memory; attention picks its kernel itself
        device = _resolve_device_map(device_map)
        hub = pop_hub_kwargs(kwargs)
        path = os.fspath(pretrained_model_name_or_path)

        if config is None or isinstance(config, (str, os.PathLike)):
            config, model_kwargs = cls.config_class.from_pretrained(
                path if config is None else config, return_unused_kwargs=True, **hub, **kwargs
            )
        else:
            if not isinstance(config, PretrainedConfig):
                raise TypeError(f"config must be a PretrainedConfig or a path, got {type(config).__name__}")
            config = copy.deepcopy(config)
            model_kwargs = kwargs
        config.name_or_path = path

        reader = find_weights(path, variant=variant, **hub)
        if use_safetensors and not all(str(f).endswith(".safetensors") for f in reader.files):
            reader.close()
            raise OSError(f"use_safetensors=True but {path!r} holds no safetensors weights: {reader.files}")
        with reader:
            target_dtype = _resolve_dtype(dtype, config, reader)
            with init_empty_weights():
                model = cls(config, *model_args, **model_kwargs)
            # A folder saved by a model of quantize.quantize: its 4-bit layers are built, then loaded as stored.
            from . import quantize as _quantize

            quantization = _quantize._quantization_settings(config)
            if quantization is not None:
                _quantize.prepare_quantized(model, quantization)
            info = model._load_weights(reader, target_dtype, ignore_mismatched_sizes, path)
            if quantization is not None:
                _quantize.finish_quantized(model)
        if model.can_generate():
            # Generation settings live in generation_config.json when the checkpoint has one; otherwise the
            # model derives them from its config on first use.
            from ..generation_config import GENERATION_CONFIG_NAME, GenerationConfig

            generation_file = cached_file(path, GENERATION_CONFIG_NAME, missing_ok=True, **hub)
            if generation_file is not None:
                model.generation_config = GenerationConfig.from_pretrained(generation_file)
        if device is not None:
            model.to(device)
        model.eval()
        if output_loading_info:
            return model, info
        return model

    def _checkpoint_key_map(self, checkpoint_keys: list[str]) -> tuple[dict[str, str], list[str]]:
        """Map model state keys to checkpoint keys, bridging a bare-model checkpoint and a head model
        (or the reverse) through ``base_model_prefix``. Returns (model key -> checkpoint key, unused)."""
        prefix = self.base_model_prefix + "." if self.base_model_prefix else ""
        expected = set(self.state_dict().keys())
        # Older checkpoints saved buffers that are now non-persistent (position_ids); the model computes
        # them itself, so like the reference they are neither loaded nor reported as unexpected.
        buffers = {name for name, _ in self.named_buffers()}
        renamed = {}
        for key in checkpoint_keys:
            new = key
            for old_suffix, new_suffix in _LEGACY_SUFFIXES:
                if new.endswith(old_suffix):
                    new = new[: -len(old_suffix)] + new_suffix
            renamed[key] = new
        ckpt_has_prefix = bool(prefix) and any(k.startswith(prefix) for k in renamed.values())
        model_has_prefix = bool(prefix) and any(k.startswith(prefix) for k in expected)
        mapping, unused = {}, []
        for key, new in renamed.items():
            if prefix and ckpt_has_prefix and not model_has_prefix:
                if not new.startswith(prefix):
                    unused.append(key)  # a head's weight offered to the bare model
                    continue
                new = new[len(prefix):]
            elif prefix and model_has_prefix and not ckpt_has_prefix:
                new = prefix + new
            if new in expected:
                mapping[new] = key
            elif new not in buffers:
                unused.append(key)
        return mapping, unused

    @torch.no_grad()
    def _load_weights(self, reader, dtype: Optional[torch.dtype], ignore_mismatched_sizes: bool, source: str):
        state = dict(self.state_dict(keep_vars=True))
        mapping, unexpected = self._checkpoint_key_map(list(reader.keys()))
        mismatched, plan = [], []
        for model_key, ckpt_key in mapping.items():
            current = state[model_key]
            shape = tuple(reader.shape(ckpt_key))
            if shape != tuple(current.shape):
                if not ignore_mismatched_sizes:
                    raise ValueError(
                        f"shape mismatch for {model_key!r}: the checkpoint {source!r} has {shape}, the model "
                        f"built from its config expects {tuple(current.shape)}; pass ignore_mismatched_sizes=True "
                        "to initialise it anew"
                    )
                mismatched.append((model_key, shape, tuple(current.shape)))
                continue
            stored = to_torch_dtype(reader.dtype(ckpt_key))
            wanted = (dtype or stored) if stored.is_floating_point else current.dtype
            plan.append((model_key, ckpt_key, shape, stored, wanted))
        stacked = self._stacked_slices([(key, shape, wanted) for key, _, shape, _, wanted in plan
                                        if _matches(key, self._keys_loaded_unmapped)])
        for model_key, ckpt_key, shape, stored, wanted in plan:
            # Weights of 2 MiB or more are read into memory in huge pages (polyformers.pt.memory: decoding
            # streams them faster), and so are those that will be copied anyway (a cast, or a layer that
            # fuses them), because a mapped page once touched stays resident for as long as any weight of
            # its file lives, beside the copy. The small ones are then read too: mapped, each would keep
            # its page of the file resident, and the page cache may hold the file in pages of up to 2 MiB
            # (94 MB of file pages for the 2 GB ELECTRA of bench/load_memory.py, beside 2 MB of weights).
            # Without huge pages, the others are views of the mapped file: nothing is copied.
            if model_key in stacked:
                tensor = stacked[model_key]
                reader.read_into(ckpt_key, tensor)
            elif wanted == stored and memory.advised(shape, stored):
                tensor = memory.empty(shape, stored)
                reader.read_into(ckpt_key, tensor)
            else:
                tensor = reader.get(ckpt_key, framework="pt",
                                    mapped=wanted == stored and not memory.huge_pages_available())
                if tensor.dtype != wanted:
                    tensor = tensor.to(wanted)
            self._set_tensor(model_key, tensor)

        self.tie_weights()
        missing = self._materialise_missing(dtype)
        # As in the reference, a weight re-initialised for its shape is reported as mismatched only.
        skipped = {key for key, _, _ in mismatched}
        missing = [k for k in missing if k not in skipped and not _matches(k, self._keys_to_ignore_on_load_missing)]
        unexpected = [k for k in unexpected if not _matches(k, self._keys_to_ignore_on_load_unexpected)]
        name = type(self).__name__
        if unexpected:
            logger.warning(
                "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
                source, name, unexpected,
            )
        if missing:
            logger.warning(
                "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use "
                "it for predictions and inference.",
                name, source, missing,
            )
        if mismatched:
            lines = "\n".join(f"- {k}: found shape {a} in the checkpoint and {b} in the model" for k, a, b in mismatched)
            logger.warning(
                "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                "initialized because the shapes did not match:\n%s", name, source, lines,
            )
        return {
            "missing_keys": missing,
            "unexpected_keys": unexpected,
            "mismatched_keys": mismatched,
            "error_msgs": [],
        }

    def _stacked_slices(self, entries: list) -> dict:
        """Where the weights that ``layers.stacked_linear`` will stack load: ``entries`` are (key, shape,
        dtype) of ``_keys_loaded_unmapped`` weights; the answer maps each key to its rows of one buffer per
        module and leaf (weights and biases apart), the sibling layers' rows adjacent in the order the
        module's class stacks them (its ``stack_order``, else the order it defines them). The first forward
        then finds them stacked already and copies nothing: the model holds one copy of them from the start,
        and no freed copies are left behind in the allocator."""
        groups: dict = {}
        for key, shape, dtype in entries:
            layer, _, leaf = key.rpartition(".")
            owner, _, part = layer.rpartition(".")
            groups.setdefault((owner, leaf), []).append((part, key, shape, dtype))
        slices = {}
        for (owner, _), parts in groups.items():
            module = self.get_submodule(owner)
            order = list(getattr(type(module), "stack_order", None) or module._modules)
            if len(parts) < 2 or any(part not in order for part, *_ in parts):
                continue
            parts.sort(key=lambda entry: order.index(entry[0]))
            shape, dtype = parts[0][2], parts[0][3]
            if any(s[1:] != shape[1:] or d != dtype or not s for _, _, s, d in parts):
                continue
            buffer = memory.empty((sum(s[0] for _, _, s, _ in parts), *shape[1:]), dtype)
            start = 0
            for _, key, rows, _ in parts:
                slices[key] = buffer[start:start + rows[0]]
                start += rows[0]
        return slices

    def _set_tensor(self, key: str, tensor: torch.Tensor) -> None:
        module_name, _, leaf = key.rpartition(".")
        module = self.get_submodule(module_name)
        if leaf in module._parameters:
            old = module._parameters[leaf]
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            module._buffers[leaf] = tensor

    def _materialise_missing(self, dtype: Optional[torch.dtype]) -> list[str]:
        """Give every parameter still on meta real storage and the family's initialisation."""
        missing = []
        for module_name, module in self.named_modules():
            meta = [n for n, p in module.named_parameters(recurse=False) if p.device.type == "meta"]
            if not meta:
                continue
            missing += [f"{module_name}.{n}" if module_name else n for n in meta]
            loaded = {n: p.data for n, p in module.named_parameters(recurse=False) if p.device.type != "meta"}
            module.to_empty(device="cpu", recurse=False)
            self._init_weights(module)
            for n, data in loaded.items():
                getattr(module, n).data = data
            if dtype is not None:
                for n in meta:
                    param = getattr(module, n)
                    if param.is_floating_point():
                        param.data = param.data.to(dtype)
        return missing

    # ---------------------------------------------------------------------------------------------
    # saving

    def save_pretrained(
        self,
        save_directory: Union[str, os.PathLike],
        is_main_process: bool = True,
        state_dict: Optional[dict] = None,
        save_function=None,
        push_to_hub: bool = False,
        max_shard_size: Union[int, str] = "5GB",
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        token: Optional[Union[str, bool]] = None,
        **kwargs,
    ) -> None:
        """Write config.json and the weights (safetensors, sharded above ``max_shard_size``).

        Every file is written under a temporary name and renamed into place, so an interrupted save
        leaves the previous checkpoint in the folder loadable.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory must be a folder, got the file {save_directory!r}")
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        if state_dict is None:
            state_dict = self.state_dict()
        state_dict = self._without_tied_copies(state_dict)
        if safe_serialization:
            save_weights(state_dict, save_directory, max_shard_size=max_shard_size, metadata={"format": "pt"},
                         framework="pt", variant=variant)
        else:
            _save_bin(state_dict, save_directory, save_function or torch.save, variant)

        # The config goes last: a save that fails while writing weights must not pair the previous
        # weights with a new config (another head size would no longer load).
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        config.torch_dtype = canonical_dtype(self.dtype)
        config.save_pretrained(save_directory)
        generation_config = getattr(self, "generation_config", None)
        if generation_config is not None and self.can_generate():
            generation_config.save_pretrained(save_directory)
        if push_to_hub:
            push_folder(save_directory, token=token, **kwargs)

    def _without_tied_copies(self, state_dict: dict) -> dict:
        """safetensors cannot store two names for one storage: keep one name per tied tensor, preferring
        the one that is not declared as tied (the embedding, not the head)."""
        tied = set(self._tied_weights_keys or [])
        by_storage: dict[tuple, list[str]] = {}
        for key, tensor in state_dict.items():
            if tensor.device.type == "meta":
                raise ValueError(f"parameter {key!r} was never loaded or initialised (still on the meta device)")
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), []).append(key)
        result = {}
        for names in by_storage.values():
            keep = next((n for n in names if not any(n.endswith(t) or re.fullmatch(t, n) for t in tied)), names[0])
            result[keep] = state_dict[keep].contiguous()
        return {k: result[k] for k in state_dict if k in result}


def _matches(key: str, patterns: Optional[list[str]]) -> bool:
    return bool(patterns) and any(re.search(p, key) for p in patterns)


def _resolve_device_map(device_map) -> Optional[torch.device]:
    """Only single-device placement is meaningful on a CPU-only machine; other maps are refused clearly."""
    if device_map is None:
        return None
    if isinstance(device_map, (str, torch.device)):
        if str(device_map) == "auto":
            return None
        return torch.device(device_map)
    if isinstance(device_map, dict) and len(set(device_map.values())) == 1:
        return torch.device(next(iter(device_map.values())))
    raise ValueError(f"device_map must be None, 'auto', a device or a one-device dict, got {device_map!r}")


def _save_bin(state_dict: dict, folder: str, save_function, variant: Optional[str]) -> None:
    name = "pytorch_model.bin" if not variant else f"pytorch_model.{variant}.bin"
    target = os.path.join(folder, name)
    tmp = target + ".tmp"
    try:
        save_function(state_dict, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
