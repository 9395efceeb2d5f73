"""``Trainer``: the reference's 4.37 training and evaluation loop for PyTorch models, on ``accelerate``.

``accelerate`` places the model and batches, wraps the model for DDP, applies bf16 autocast and shards
batches across processes; FSDP2 is torch's own ``fully_shard``, applied per transformer block, with
``torch.distributed.checkpoint`` for sharded checkpoints. Nothing here communicates by itself.

Differences from 4.37, each deliberate:
- at the end of an epoch, micro-batches left over from gradient accumulation make one last (smaller)
  optimisation step, instead of leaking their gradients into the next epoch, so an epoch is a fixed
  number of steps and a resumed run is exact (later releases of the reference do the same);
- the training arguments are saved as ``training_args.json``, not pickled as ``training_args.bin``;
- random states in checkpoints hold tensors and numbers only, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .arguments import OptimizerNames, TrainingArguments
from .callbacks import (
    TRAINER_STATE_NAME,
    CallbackHandler,
    DefaultFlowCallback,
    JsonlLoggerCallback,
    PrinterCallback,
    ProgressCallback,
    TrainerControl,
    TrainerState,
    steps_of,
)
from .schedules import get_scheduler

PREFIX_CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
TRAINING_ARGS_NAME = "training_args.json"
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
FSDP_OPTIMIZER_DIR = "optimizer_0"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


# -------------------------------------------------------------------------------------------------
# small public helpers and result types


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EvalPrediction:
    """What ``compute_metrics`` receives: ``predictions`` and ``label_ids`` (numpy), and ``inputs`` when
    ``include_inputs_for_metrics`` is set. Unpacks as ``predictions, label_ids``."""

    def __init__(self, predictions, label_ids, inputs=None):
        self.predictions, self.label_ids, self.inputs = predictions, label_ids, inputs

    def __iter__(self):
        items = (self.predictions, self.label_ids) if self.inputs is None else \
            (self.predictions, self.label_ids, self.inputs)
        return iter(items)

    def __getitem__(self, index):
        return tuple(self)[index]


_TRAINING_IN_FLIGHT = 0
_RELEASE_REGISTERED = False
_LIVE_TRAINERS: "weakref.WeakSet[Trainer]" = weakref.WeakSet()  # trainers in a multi-process group


def _release_process_group_at_exit() -> None:
    """Destroy the process group before the interpreter finalises, as torch asks scripts to do.

    A script written for the reference never calls ``destroy_process_group``; left alive until Python tears
    down, the group (and the DDP wrapper holding it) is destroyed with no interpreter left, and the process
    can abort (SIGABRT, "terminate called without an active exception") after a run that succeeded.
    Destroying the group while a DDP wrapper still holds it aborts the same way once the wrapper goes, so
    the wrappers go first: those of trainers the script still holds (a module-level ``trainer``) are
    dropped, and those of trainers it no longer holds (reference cycles keep them until a collection) are
    collected. After a failed ``train`` the group is left alone: destroying it while other processes may
    still wait in a collective can hang.
    """
    global _RELEASE_REGISTERED
    if _RELEASE_REGISTERED:
        return
    _RELEASE_REGISTERED = True

    def release() -> None:
        if _TRAINING_IN_FLIGHT == 0 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for trainer in list(_LIVE_TRAINERS):
                trainer._release_wrappers()
            gc.collect()
            torch.distributed.destroy_process_group()
            gc.collect()

    atexit.register(release)


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[dict]


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[dict]
    num_samples: Optional[int]


def get_last_checkpoint(folder: str) -> Optional[str]:
    """The ``checkpoint-N`` sub-folder of ``folder`` with the largest N (complete checkpoints only:
    one still being written has another name until it is renamed into place)."""
    if not os.path.isdir(folder):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(folder, name))]
    return os.path.join(folder, max(found)[1]) if found else None


def _speed_metrics(split: str, start: float, num_samples: Optional[int] = None,
                   num_steps: Optional[int] = None) -> dict:
    runtime = time.time() - start
    out = {f"{split}_runtime": round(runtime, 4)}
    if runtime > 0:
        if num_samples is not None:
            out[f"{split}_samples_per_second"] = round(num_samples / runtime, 3)
        if num_steps is not None:
            out[f"{split}_steps_per_second"] = round(num_steps / runtime, 3)
    return out


def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_to_numpy(v) for v in value)
    return value


def _pad_concat(a: Optional[torch.Tensor], b: torch.Tensor, pad: int = -100) -> torch.Tensor:
    """Concatenate along the batch axis, padding the second axis (sequence length) to the longer one."""
    if a is None:
        return b
    if a.dim() < 2 or a.shape[1:] == b.shape[1:]:
        return torch.cat([a, b])
    shape = (a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1])) + tuple(a.shape[2:])
    out = a.new_full(shape, pad)
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0]:, : b.shape[1]] = b
    return out


def _nested_concat(a, b, pad: int = -100):
    if isinstance(b, (tuple, list)):
        if a is None:
            a = [None] * len(b)
        return type(b)(_nested_concat(x, y, pad) for x, y in zip(a, b))
    return _pad_concat(a, b, pad)


def _tensors_only(value):
    """Tensors and (nested) tuples of tensors of a model output; caches and other objects dropped."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        kept = [v for v in (_tensors_only(x) for x in value) if v is not None]
        return tuple(kept) if kept else None
    return None


# -------------------------------------------------------------------------------------------------


class Trainer:
    """Trains and evaluates a polyformers (or any ``torch.nn.Module``) model, as the reference's Trainer.

    Arguments as in 4.37: ``model``, ``args`` (:class:`TrainingArguments`; a default one writing to
    ``tmp_trainer`` when omitted), ``data_collator`` (``DataCollatorWithPadding(tokenizer)`` when a tokenizer
    is given, else ``default_data_collator``), ``train_dataset`` / ``eval_dataset`` (a ``torch`` Dataset, a
    list of dicts, or a ``datasets.Dataset``; ``eval_dataset`` may be a dict of them), ``tokenizer`` (saved
    beside the model), ``model_init``, ``compute_metrics`` (``EvalPrediction`` -> dict), ``callbacks``,
    ``optimizers`` (an ``(optimizer, scheduler)`` pair replacing the defaults) and
    ``preprocess_logits_for_metrics``.
    """

    def __init__(
        self,
        model: Optional[nn.Module] = None,
        args: Optional[TrainingArguments] = None,
        data_collator: Optional[Callable] = None,
        train_dataset=None,
        eval_dataset=None,
        tokenizer=None,
        model_init: Optional[Callable[[], nn.Module]] = None,
        compute_metrics: Optional[Callable[[EvalPrediction], dict]] = None,
        callbacks: Optional[list] = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Optional[Callable] = None,
    ):
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
        self.args = args
        set_seed(args.seed)  # before the model is built, as the reference does
        self.accelerator = self._create_accelerator()

        if model is None:
            if model_init is None:
                raise ValueError("Trainer needs a model, or a model_init that builds one")
            model = model_init()
        elif model_init is not None:
            raise ValueError("give Trainer either model or model_init, not both")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model_init = model_init
        self.model = model
        self.tokenizer = tokenizer
        if data_collator is None:
            from .collators import DataCollatorWithPadding, default_data_collator

            data_collator = DataCollatorWithPadding(tokenizer) if tokenizer is not None else default_data_collator
        self.data_collator = data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        optimizer, scheduler = optimizers if optimizers is not None else (None, None)
        if scheduler is not None and optimizer is None:
            raise ValueError("optimizers=(None, scheduler): a scheduler needs the optimizer it drives")
        self.optimizer, self.lr_scheduler = optimizer, scheduler
        self.label_names = list(args.label_names) if args.label_names is not None else self._default_label_names()
        self._signature_columns: Optional[list[str]] = None
        self._fsdp = bool(args.fsdp)
        self._wrapped: Optional[nn.Module] = None  # the model as prepared for training
        self._flos_per_token: Optional[int] = None

        if self._fsdp and self.args.world_size < 1:
            raise ValueError("fsdp needs torch.distributed: launch with torchrun or accelerate launch")

        reporters = [JsonlLoggerCallback] if "jsonl" in args.report_to else []
        disable_tqdm = args.disable_tqdm
        if disable_tqdm is None:
            disable_tqdm = not (hasattr(os.sys.stderr, "isatty") and os.sys.stderr.isatty())
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback, *reporters, PrinterCallback if disable_tqdm else ProgressCallback,
             *(callbacks or [])],
            self.model, self.tokenizer, self.optimizer, self.lr_scheduler,
        )
        self.state = TrainerState(is_local_process_zero=self.is_local_process_zero(),
                                  is_world_process_zero=self.is_world_process_zero())
        self.control = TrainerControl()
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # ---------------------------------------------------------------------------------------------
    # set-up

    def _create_accelerator(self):
        try:
            from accelerate import Accelerator, PartialState
            from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
        except ImportError as e:  # pragma: no cover - accelerate ships with polyformers[torch]
            raise ImportError("Trainer needs the accelerate package: pip install 'polyformers[torch]'") from e
        from datetime import timedelta

        args = self.args
        # accelerate runs a CPU job under torchrun only when told it is one
        cpu = args.use_cpu or args.no_cuda or not torch.cuda.is_available()
        if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            # The process group is torch's (gloo on CPU unless ddp_backend says otherwise).
            PartialState(cpu=cpu, backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout or 1800))
            _release_process_group_at_exit()
            _LIVE_TRAINERS.add(self)
        # accelerate keeps one process-wide state that refuses a second Accelerator with another precision;
        # each Trainer sets its own (the process group, which is PartialState's, stays).
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state:
            AcceleratorState._reset_state(reset_partial_state=False)
        handlers = [
            DistributedDataParallelKwargs(
                find_unused_parameters=bool(args.ddp_find_unused_parameters),
                broadcast_buffers=True if args.ddp_broadcast_buffers is None else args.ddp_broadcast_buffers,
                **({"bucket_cap_mb": args.ddp_bucket_cap_mb} if args.ddp_bucket_cap_mb else {}),
            ),
            InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout or 1800)),
        ]
        return Accelerator(
            mixed_precision="bf16" if args.bf16 else "no",
            cpu=cpu,
            # Accumulation is counted here (see _train_epoch); accelerate sees one micro-batch per step.
            gradient_accumulation_steps=1,
            step_scheduler_with_optimizer=False,
            dataloader_config=DataLoaderConfiguration(
                use_seedable_sampler=True, data_seed=args.data_seed if args.data_seed is not None else args.seed,
            ),
            kwargs_handlers=handlers,
        )

    def _default_label_names(self) -> list[str]:
        model = self.model
        name = type(model).__name__
        if "QuestionAnswering" in name:
            return ["start_positions", "end_positions"]
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return ["labels"]
        found = [p for p in params if "label" in p]
        return found or ["labels"]

    def add_callback(self, callback) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback):
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback) -> None:
        self.callback_handler.remove_callback(callback)

    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    # ---------------------------------------------------------------------------------------------
    # data

    def _signature(self) -> list[str]:
        if self._signature_columns is None:
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "get_base_model"):  # peft.PeftModel: its forward passes **kwargs to the base model
                model = model.get_base_model()
            names = list(inspect.signature(model.forward).parameters)
            self._signature_columns = list(dict.fromkeys(names + ["label", "label_ids"] + self.label_names))
        return self._signature_columns

    def _remove_unused_columns(self, dataset, description: str):
        if not self.args.remove_unused_columns:
            return dataset
        # A datasets.Dataset exists only once its module is imported: no need to import it (0.45 s) to know.
        hf_datasets = sys.modules.get("datasets")
        if hf_datasets is not None and isinstance(dataset, hf_datasets.Dataset):
            keep = self._signature()
            ignored = [c for c in dataset.column_names if c not in keep]
            if len(ignored) == len(dataset.column_names):
                raise ValueError(
                    f"{description}: none of the dataset's columns {dataset.column_names} is an argument of "
                    f"{type(self.accelerator.unwrap_model(self.model)).__name__}.forward; check the column names "
                    "or pass remove_unused_columns=False"
                )
            return dataset.remove_columns(ignored) if ignored else dataset
        return dataset

    def _collator(self, description: str) -> Callable:
        """The data collator; with remove_unused_columns, keys the model does not take are dropped first."""
        collate = self.data_collator
        if not self.args.remove_unused_columns:
            return collate
        keep = set(self._signature())
        model_name = type(self.accelerator.unwrap_model(self.model)).__name__

        def collate_used(features):
            if features and isinstance(features[0], Mapping):
                trimmed = [{k: v for k, v in f.items() if k in keep} for f in features]
                if not trimmed[0]:
                    raise ValueError(
                        f"{description}: none of the keys {sorted(features[0])} is an argument of "
                        f"{model_name}.forward; check the names or pass remove_unused_columns=False"
                    )
                features = trimmed
            return collate(features)

        return collate_used

    def _dataloader(self, dataset, batch_size: int, shuffle: bool, description: str) -> DataLoader:
        dataset = self._remove_unused_columns(dataset, description)
        loader_kwargs = dict(
            batch_size=batch_size, collate_fn=self._collator(description),
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory
            and torch.cuda.is_available(), persistent_workers=self.args.dataloader_persistent_workers
            and self.args.dataloader_num_workers > 0,
        )
        if self.args.dataloader_num_workers > 0 and self.args.dataloader_prefetch_factor is not None:
            loader_kwargs["prefetch_factor"] = self.args.dataloader_prefetch_factor
        if not isinstance(dataset, IterableDataset):
            loader_kwargs["shuffle"] = shuffle
            loader_kwargs["drop_last"] = self.args.dataloader_drop_last
        return self.accelerator.prepare(DataLoader(dataset, **loader_kwargs))

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset")
        return self._dataloader(self.train_dataset, self.args.per_device_train_batch_size, True, "train_dataset")

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset")
        return self._dataloader(dataset, self.args.per_device_eval_batch_size, False, "eval_dataset")

    def get_test_dataloader(self, test_dataset) -> DataLoader:
        return self._dataloader(test_dataset, self.args.per_device_eval_batch_size, False, "test_dataset")

    # ---------------------------------------------------------------------------------------------
    # optimizer and schedule

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Parameters that weight decay applies to: all but biases and normalisation weights."""
        norm_params = set()
        for module_name, module in model.named_modules():
            kind = type(module).__name__
            if isinstance(module, nn.LayerNorm) or "LayerNorm" in kind or "RMSNorm" in kind:
                norm_params.update(f"{module_name}.{n}" if module_name else n
                                   for n, _ in module.named_parameters(recurse=False))
        return [n for n, _ in model.named_parameters() if n not in norm_params and "bias" not in n]

    def create_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        model = self._wrapped if self._wrapped is not None else self.model
        model = self.accelerator.unwrap_model(model)
        decay = set(self.get_decay_parameter_names(model))
        groups = [
            {"params": [p for n, p in model.named_parameters() if n in decay and p.requires_grad],
             "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in model.named_parameters() if n not in decay and p.requires_grad],
             "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
        self.optimizer = self._optimizer_class()(groups)
        return self.optimizer

    def _optimizer_class(self):
        args = self.args
        extra = {}
        if args.optim_args:
            for item in args.optim_args.replace(" ", "").split(","):
                key, _, value = item.partition("=")
                if not key or not value:
                    raise ValueError(f"optim_args must read 'name=value,...', got {args.optim_args!r}")
                try:
                    extra[key] = json.loads(value)
                except json.JSONDecodeError:
                    extra[key] = value
        if args.optim in (OptimizerNames.ADAMW_TORCH, OptimizerNames.ADAMW_HF, OptimizerNames.ADAMW_TORCH_FUSED):
            kwargs = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
            if args.optim == OptimizerNames.ADAMW_TORCH_FUSED:
                kwargs["fused"] = True
            return lambda groups: torch.optim.AdamW(groups, **kwargs, **extra)
        if args.optim == OptimizerNames.SGD:
            return lambda groups: torch.optim.SGD(groups, lr=args.learning_rate, **extra)
        return lambda groups: torch.optim.Adagrad(groups, lr=args.learning_rate, **extra)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type, optimizer or self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps, scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps, self.optimizer)

    def _get_learning_rate(self) -> float:
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return self.optimizer.param_groups[0]["lr"]
        return self.lr_scheduler.get_last_lr()[0]

    # ---------------------------------------------------------------------------------------------
    # model wrapping

    def _prepare_model_for_training(self) -> nn.Module:
        if self._wrapped is not None:
            return self._wrapped
        if self.args.gradient_checkpointing:
            enable = getattr(self.model, "gradient_checkpointing_enable", None)
            if enable is None:
                raise ValueError(f"gradient_checkpointing=True but {type(self.model).__name__} has no "
                                 "gradient_checkpointing_enable()")
            enable(gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
        if self._fsdp:
            from .fsdp import shard_model

            self.model = self.model.to(self.accelerator.device)
            shard_model(self.model, self.args)
            self._wrapped = self.model
            if self.args.bf16:
                self._wrapped.forward = self.accelerator.autocast()(self._wrapped.forward)
        else:
            self._wrapped = self.accelerator.prepare_model(self.model)
        return self._wrapped

    def _release_wrappers(self) -> None:
        """Let go of the DDP wrapper (and accelerate's references to it) before the group is destroyed.

        Only for the exit handler: the trainer is not used after it. An FSDP2 model is sharded in place and
        has no wrapper to drop.
        """
        if self._wrapped is not None and self._wrapped is not self.model:
            self._wrapped = None
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None:
            accelerator.free_memory()

    def _model_for_eval(self) -> nn.Module:
        if self._wrapped is not None:
            return self._wrapped
        return self.accelerator.prepare_model(self.model, evaluation_mode=True)

    # ---------------------------------------------------------------------------------------------
    # one step

    def _prepare_inputs(self, inputs: dict) -> dict:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"the data collator must return a dict of tensors, got {type(inputs).__name__}")
        device = self.accelerator.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def _check_labels(self, inputs: dict) -> None:
        """Labels the model's loss cannot take raise here, naming the bound, not deep in cross-entropy."""
        labels = inputs.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.numel() == 0:
            return
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        if config is None:
            return
        name = type(model).__name__
        if name.endswith(("ForSequenceClassification", "ForTokenClassification")):
            bound, what = getattr(config, "num_labels", None), "num_labels"
            if bound == 1:  # regression
                return
        elif name.endswith(("ForMaskedLM", "ForCausalLM", "ForConditionalGeneration")):
            bound, what = getattr(config, "vocab_size", None), "vocab_size"
        else:
            return
        if bound is None:
            return
        valid = labels[labels != -100]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= bound):
            bad = int(valid.max()) if int(valid.max()) >= bound else int(valid.min())
            raise ValueError(
                f"labels must lie in [0, {bound}) ({what} of {name}; -100 marks ignored positions), "
                f"got a label {bad}"
            )

    def compute_loss(self, model, inputs: dict, return_outputs: bool = False):
        """The model's loss on ``inputs`` (with ``label_smoothing_factor``, a smoothed cross-entropy)."""
        labels = None
        if self.args.label_smoothing_factor > 0 and "labels" in inputs:
            labels = inputs.pop("labels")
        outputs = model(**inputs)
        if labels is not None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            loss = _label_smoothed_loss(logits, labels, self.args.label_smoothing_factor,
                                        shift="ForCausalLM" in type(self.accelerator.unwrap_model(model)).__name__)
        else:
            if isinstance(outputs, dict):
                loss = outputs.get("loss")
            else:
                loss = outputs[0] if isinstance(outputs, (tuple, list)) and len(outputs) else None
            if loss is None:
                keys = list(outputs.keys()) if isinstance(outputs, dict) else f"a {type(outputs).__name__}"
                raise ValueError(
                    f"the model returned no loss; its outputs are {keys} and its inputs were {sorted(inputs)}. "
                    f"Training needs the label columns {self.label_names} in every batch (label_names names them)"
                )
        return (loss, outputs) if return_outputs else loss

    def _count_work(self, inputs: dict) -> None:
        """``total_flos`` (6 x tokens x non-embedding parameters, forward and backward, as the reference
        estimates) and, with ``include_num_input_tokens_seen``, the input tokens of every process."""
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            return
        if self._flos_per_token is None:
            model = self.accelerator.unwrap_model(self.model)
            counter = getattr(model, "num_parameters", None)
            self._flos_per_token = 6 * counter(exclude_embeddings=True) if counter is not None else 0
        self.state.total_flos += float(self._flos_per_token * ids.numel() * self.accelerator.num_processes)
        if self.args.include_num_input_tokens_seen:
            self.state.num_input_tokens_seen += int(ids.numel()) * self.accelerator.num_processes

    def training_step(self, model, inputs: dict) -> torch.Tensor:
        """Forward and backward on one micro-batch; returns the detached loss divided by the accumulation."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        self._check_labels(inputs)
        self._count_work(inputs)
        loss = self.compute_loss(model, inputs)
        loss = loss / self.args.gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    # ---------------------------------------------------------------------------------------------
    # training

    def train(self, resume_from_checkpoint: Optional[Union[str, bool]] = None, trial=None,
              ignore_keys_for_eval: Optional[list[str]] = None, **kwargs) -> TrainOutput:
        """Train; ``resume_from_checkpoint`` is a checkpoint folder, or True for the latest in output_dir."""
        if kwargs:
            raise TypeError(f"train() got unexpected keyword arguments {sorted(kwargs)}")
        if trial is not None:
            raise NotImplementedError("hyper-parameter search (trial) is not supported")
        global _TRAINING_IN_FLIGHT
        _TRAINING_IN_FLIGHT += 1  # stays raised if this raises: see _release_process_group_at_exit
        output = self._train(resume_from_checkpoint, ignore_keys_for_eval)
        _TRAINING_IN_FLIGHT -= 1
        return output

    def _train(self, resume_from_checkpoint, ignore_keys_for_eval) -> TrainOutput:
        args = self.args
        if resume_from_checkpoint is None and args.resume_from_checkpoint is not None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but output_dir {args.output_dir!r} holds no "
                                 f"{PREFIX_CHECKPOINT_DIR}-N folder")
        if resume_from_checkpoint is not None:
            resume_from_checkpoint = os.fspath(resume_from_checkpoint)
            if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):
                raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint!r} is not a Trainer checkpoint "
                                 f"(no {TRAINER_STATE_NAME} in it)")
            if not self._fsdp:
                self._load_model_weights(resume_from_checkpoint)
        return self._inner_training_loop(resume_from_checkpoint, ignore_keys_for_eval)

    def _step_counts(self, train_dataloader) -> tuple[int, int, int, Optional[int]]:
        """(max_steps, num_train_epochs, update steps per epoch, micro-batches per epoch or None)."""
        args = self.args
        gas = args.gradient_accumulation_steps
        try:
            length = len(train_dataloader)
        except TypeError:
            length = None
        if length is None:
            if args.max_steps <= 0:
                raise ValueError("train_dataset has no length: set max_steps to say how long to train")
            return args.max_steps, 1 << 30, args.max_steps, None
        if length == 0:
            raise ValueError(
                f"train_dataset gives no batch: {len(self.train_dataset) if hasattr(self.train_dataset, '__len__') else 0} "
                f"examples for a per_device_train_batch_size of {args.per_device_train_batch_size} on "
                f"{self.accelerator.num_processes} process(es) with dataloader_drop_last={args.dataloader_drop_last}"
            )
        per_epoch = max(math.ceil(length / gas), 1)
        if args.max_steps > 0:
            max_steps = args.max_steps
            epochs = max_steps // per_epoch + int(max_steps % per_epoch > 0)
        else:
            max_steps = math.ceil(args.num_train_epochs * per_epoch)
            epochs = math.ceil(args.num_train_epochs)
        return max_steps, epochs, per_epoch, length

    def _inner_training_loop(self, resume_from_checkpoint: Optional[str], ignore_keys_for_eval) -> TrainOutput:
        args = self.args
        train_dataloader = self.get_train_dataloader()
        max_steps, num_epochs, per_epoch, length = self._step_counts(train_dataloader)

        model = self._prepare_model_for_training()
        self.create_optimizer()
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)
        self.create_scheduler(max_steps, self.optimizer)

        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero(),
            max_steps=max_steps, num_train_epochs=num_epochs, train_batch_size=args.per_device_train_batch_size,
            logging_steps=steps_of(args.logging_steps, max_steps) or 500,
            eval_steps=steps_of(args.eval_steps, max_steps) or 500,
            save_steps=steps_of(args.save_steps, max_steps) or 500,
        )
        epochs_trained, steps_to_skip = 0, 0
        if resume_from_checkpoint is not None:
            self._load_checkpoint_state(resume_from_checkpoint)
            epochs_trained = self.state.global_step // per_epoch
            steps_to_skip = (self.state.global_step % per_epoch) * args.gradient_accumulation_steps
            if args.ignore_data_skip:
                steps_to_skip = 0

        for obj in (self.callback_handler,):
            obj.model, obj.optimizer, obj.lr_scheduler = self.model, self.optimizer, self.lr_scheduler
            obj.train_dataloader = train_dataloader

        start = time.time()
        self._total_loss = 0.0
        self._logged_loss = torch.zeros((), device=self.accelerator.device)
        self._last_logged_step = self._first_step = self.state.global_step
        self.optimizer.zero_grad()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        # a run resumed from its last checkpoint has nothing left to do
        for epoch in range(epochs_trained, num_epochs if self.state.global_step < max_steps else epochs_trained):
            if hasattr(train_dataloader, "set_epoch"):
                train_dataloader.set_epoch(epoch)
            skip = steps_to_skip if epoch == epochs_trained else 0
            if resume_from_checkpoint is not None and epoch == epochs_trained and skip == 0:
                self._load_rng_state(resume_from_checkpoint)
            epoch_loader = train_dataloader
            if skip:
                epoch_loader = self.accelerator.skip_first_batches(train_dataloader, skip)
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            steps_in_epoch = length if length is not None else max_steps * args.gradient_accumulation_steps
            self._train_epoch(model, epoch, epoch_loader, steps_in_epoch, skip,
                              resume_from_checkpoint if skip else None, ignore_keys_for_eval)
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            self._maybe_log_save_evaluate(model, ignore_keys_for_eval)
            if self.control.should_training_stop:
                break

        if args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            self.accelerator.wait_for_everyone()
            self._load_best_model()

        self._total_loss += self._reduce_loss(self._logged_loss)
        train_loss = self._total_loss / max(self.state.global_step - self._first_step, 1)
        num_samples = (args.per_device_train_batch_size * self.accelerator.num_processes
                       * args.gradient_accumulation_steps * max_steps)
        metrics = _speed_metrics("train", start, num_samples=num_samples, num_steps=max_steps)
        metrics["total_flos"] = float(self.state.total_flos)
        metrics["train_loss"] = train_loss
        self.log(metrics)
        self._rotate_checkpoints()
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _train_epoch(self, model, epoch: int, loader, steps_in_epoch: int, skipped: int,
                     rng_checkpoint: Optional[str], ignore_keys_for_eval) -> None:
        args = self.args
        gas = args.gradient_accumulation_steps
        for offset, inputs in enumerate(loader):
            if rng_checkpoint is not None:  # resumed mid-epoch: random state as when the checkpoint was taken
                self._load_rng_state(rng_checkpoint)
                rng_checkpoint = None
            step = skipped + offset
            if step % gas == 0:
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            last_micro = (step + 1) % gas == 0 or step + 1 == steps_in_epoch
            sync = contextlib.nullcontext() if last_micro else self.accelerator.no_sync(model)
            with sync:
                loss = self.training_step(model, inputs)
            if args.logging_nan_inf_filter and not torch.isfinite(loss):
                loss = self._logged_loss / (1 + self.state.global_step - self._last_logged_step)
            self._logged_loss = self._logged_loss + loss
            if not last_micro:
                self.control = self.callback_handler.on_substep_end(args, self.state, self.control)
            else:
                if args.max_grad_norm is not None and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                if not isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.lr_scheduler.step()
                self.optimizer.zero_grad()
                self.state.global_step += 1
                self.state.epoch = epoch + (step + 1) / steps_in_epoch
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                self._maybe_log_save_evaluate(model, ignore_keys_for_eval)
            if self.control.should_epoch_stop or self.control.should_training_stop:
                break

    def _reduce_loss(self, loss: torch.Tensor) -> float:
        return self.accelerator.reduce(loss.detach().clone(), reduction="mean").item()

    def _maybe_log_save_evaluate(self, model, ignore_keys_for_eval) -> None:
        if self.control.should_log and self.state.global_step > self._last_logged_step:
            value = self._reduce_loss(self._logged_loss)
            self._logged_loss.zero_()
            steps = self.state.global_step - self._last_logged_step
            self._total_loss += value
            self.log({"loss": round(value / steps, 4), "learning_rate": self._get_learning_rate()})
            self._last_logged_step = self.state.global_step
        metrics = None
        if self.control.should_evaluate:
            metrics = self.evaluate(ignore_keys=ignore_keys_for_eval)
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                name = self.args.metric_for_best_model or "loss"
                self.lr_scheduler.step(metrics[name if name.startswith("eval_") else f"eval_{name}"])
        if self.control.should_save:
            self._save_checkpoint(metrics)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def log(self, logs: dict) -> None:
        """Record ``logs`` (with the epoch and step) in ``state.log_history`` and pass them to callbacks."""
        if self.state.epoch is not None:
            logs["epoch"] = round(self.state.epoch, 2)
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # ---------------------------------------------------------------------------------------------
    # checkpoints

    def _save_checkpoint(self, metrics: Optional[dict]) -> None:
        args = self.args
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(args.output_dir, name)
        # Written under a temporary name and renamed when complete: a run killed mid-save leaves no
        # checkpoint-N folder that resuming could pick up half-written.
        tmp = os.path.join(args.output_dir, f".{name}.partial")
        if self.is_world_process_zero():
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        self.accelerator.wait_for_everyone()

        self._save_weights(tmp)
        if not args.save_only_model:
            self._save_optimizer_and_scheduler(tmp)
            self._save_rng_state(tmp)

        if metrics is not None and args.metric_for_best_model is not None:
            key = args.metric_for_best_model
            key = key if key.startswith("eval_") else f"eval_{key}"
            if key not in metrics:
                raise KeyError(f"metric_for_best_model={args.metric_for_best_model!r}: no {key!r} among the "
                               f"evaluation metrics {sorted(metrics)}")
            value = metrics[key]
            better = np.greater if args.greater_is_better else np.less
            if self.state.best_metric is None or better(value, self.state.best_metric):
                self.state.best_metric = float(value)
                self.state.best_model_checkpoint = final
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            self.state.save_to_json(os.path.join(tmp, TRAINER_STATE_NAME))
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()

    def _save_weights(self, folder: str) -> None:
        if self._fsdp:
            from .fsdp import save_sharded_model

            save_sharded_model(self.model, os.path.join(folder, FSDP_MODEL_DIR))
        elif self.is_world_process_zero():
            self._save_pretrained(folder)

    def _save_pretrained(self, folder: str, state_dict: Optional[dict] = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder, state_dict=state_dict, safe_serialization=bool(self.args.save_safetensors))
        else:
            from safetensors.torch import save_file

            weights = state_dict if state_dict is not None else model.state_dict()
            path = os.path.join(folder, "model.safetensors")
            save_file({k: v.contiguous() for k, v in weights.items()}, path + ".tmp", metadata={"format": "pt"})
            os.replace(path + ".tmp", path)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(folder)
        _write_text(os.path.join(folder, TRAINING_ARGS_NAME), self.args.to_json_string())

    def _save_optimizer_and_scheduler(self, folder: str) -> None:
        if self._fsdp:
            from .fsdp import save_sharded_optimizer

            save_sharded_optimizer(self.model, self.optimizer, os.path.join(folder, FSDP_OPTIMIZER_DIR))
        elif self.is_world_process_zero():
            _atomic_torch_save(self.optimizer.state_dict(), os.path.join(folder, OPTIMIZER_NAME))
        if self.is_world_process_zero():
            _atomic_torch_save(self.lr_scheduler.state_dict(), os.path.join(folder, SCHEDULER_NAME))

    def _save_rng_state(self, folder: str) -> None:
        state = {
            "python": _python_rng_to_tensors(random.getstate()),
            "numpy": _numpy_rng_to_tensors(np.random.get_state()),
            "cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        name = "rng_state.pth" if self.accelerator.num_processes == 1 else f"rng_state_{self.accelerator.process_index}.pth"
        _atomic_torch_save(state, os.path.join(folder, name))

    def _load_rng_state(self, folder: str) -> None:
        name = "rng_state.pth" if self.accelerator.num_processes == 1 else f"rng_state_{self.accelerator.process_index}.pth"
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return  # saved by another number of processes, or save_only_model: random streams start anew
        state = torch.load(path, weights_only=True)
        random.setstate(_python_rng_from_tensors(state["python"]))
        np.random.set_state(_numpy_rng_from_tensors(state["numpy"]))
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _load_model_weights(self, folder: str) -> None:
        from ..checkpoints import find_weights

        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "load_adapter") and hasattr(model, "active_adapter") and any(
                os.path.isfile(os.path.join(folder, n)) for n in ("adapter_model.safetensors", "adapter_model.bin")):
            # a peft.PeftModel saves (and so resumes from) its adapter only, as in 4.37
            model.load_adapter(folder, model.active_adapter, is_trainable=True)
            return
        with find_weights(folder) as reader:
            weights = {key: reader.get(key) for key in reader.keys()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = set()
        if hasattr(model, "_without_tied_copies"):
            full = model.state_dict()
            tied = set(full) - set(model._without_tied_copies(full))
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise ValueError(f"checkpoint {folder!r} does not fit {type(model).__name__}: missing {missing[:8]}, "
                             f"unexpected {unexpected[:8]}")

    def _load_checkpoint_state(self, folder: str) -> None:
        saved = TrainerState.load_from_json(os.path.join(folder, TRAINER_STATE_NAME))
        for field in ("global_step", "log_history", "best_metric", "best_model_checkpoint", "total_flos",
                      "num_input_tokens_seen", "epoch"):
            setattr(self.state, field, getattr(saved, field))
        if self._fsdp:
            from .fsdp import load_sharded

            load_sharded(self.model, self.optimizer, os.path.join(folder, FSDP_MODEL_DIR),
                         os.path.join(folder, FSDP_OPTIMIZER_DIR))
        else:
            path = os.path.join(folder, OPTIMIZER_NAME)
            if os.path.isfile(path):
                self.optimizer.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        path = os.path.join(folder, SCHEDULER_NAME)
        if os.path.isfile(path):
            self.lr_scheduler.load_state_dict(torch.load(path, weights_only=True))

    def _load_best_model(self) -> None:
        folder = self.state.best_model_checkpoint
        if self._fsdp:
            from .fsdp import load_sharded

            load_sharded(self.model, None, os.path.join(folder, FSDP_MODEL_DIR), None)
        else:
            self._load_model_weights(folder)

    def _sorted_checkpoints(self) -> list[str]:
        found = []
        if os.path.isdir(self.args.output_dir):
            for name in os.listdir(self.args.output_dir):
                m = _CHECKPOINT_RE.match(name)
                if m:
                    found.append((int(m.group(1)), os.path.join(self.args.output_dir, name)))
        return [path for _, path in sorted(found)]

    def _rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit or not self.is_world_process_zero():
            return
        checkpoints = self._sorted_checkpoints()
        best = self.state.best_model_checkpoint
        keep = limit
        if best is not None and best in checkpoints:
            if limit == 1 and checkpoints[-1] != best:
                keep = 2  # the best and the most recent, so that resuming stays possible
            # the best checkpoint is kept: it moves to the end of the deletion order
            checkpoints.remove(best)
            checkpoints.append(best)
        for path in checkpoints[: max(0, len(checkpoints) - keep)]:
            shutil.rmtree(path, ignore_errors=True)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Write the model (one ordinary safetensors folder, gathered from every shard under FSDP) and the
        tokenizer to ``output_dir`` (default: ``args.output_dir``)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        state_dict = None
        if self._fsdp:
            from .fsdp import full_state_dict

            state_dict = full_state_dict(self.model)
        if self.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            self._save_pretrained(output_dir, state_dict=state_dict)
        self.accelerator.wait_for_everyone()

    def save_state(self) -> None:
        """Write ``trainer_state.json`` to ``output_dir``."""
        if self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self.args.output_dir, TRAINER_STATE_NAME))

    # ---------------------------------------------------------------------------------------------
    # evaluation and prediction

    def evaluate(self, eval_dataset=None, ignore_keys: Optional[list[str]] = None,
                 metric_key_prefix: str = "eval") -> dict:
        """Loss (and ``compute_metrics``) over the evaluation set; logged and returned with ``eval_`` keys."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        loader = self.get_eval_dataloader(dataset)
        start = time.time()
        output = self.evaluation_loop(loader, "Evaluation", prediction_loss_only=True if self.compute_metrics is None else None,
                                      ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        output.metrics.update(_speed_metrics(metric_key_prefix, start, num_samples=output.num_samples,
                                             num_steps=math.ceil(output.num_samples / (self.args.per_device_eval_batch_size
                                                                                       * self.accelerator.num_processes))))
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, output.metrics)
        return output.metrics

    def predict(self, test_dataset, ignore_keys: Optional[list[str]] = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """Predictions (numpy), labels when the dataset has them, and metrics with ``test_`` keys."""
        loader = self.get_test_dataloader(test_dataset)
        start = time.time()
        output = self.evaluation_loop(loader, "Prediction", ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        output.metrics.update(_speed_metrics(metric_key_prefix, start, num_samples=output.num_samples))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, output.metrics)
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def prediction_step(self, model, inputs: dict, prediction_loss_only: bool,
                        ignore_keys: Optional[list[str]] = None):
        """(loss, logits, labels) for one batch, without gradients."""
        inputs = self._prepare_inputs(inputs)
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        if ignore_keys is None:
            config = getattr(self.accelerator.unwrap_model(model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", []) or [])
        labels = None
        if has_labels:
            labels = tuple(inputs[k].detach() for k in self.label_names)
            labels = labels[0] if len(labels) == 1 else labels
        with torch.no_grad():
            if has_labels:
                self._check_labels(inputs)
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.mean().detach()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, dict):
            logits = tuple(v for k, v in outputs.items() if k not in ignore_keys and k != "loss")
        else:
            logits = tuple(outputs[1:] if has_labels else outputs)
        logits = _tensors_only(logits)
        if logits is not None and len(logits) == 1:
            logits = logits[0]
        return loss, logits, labels

    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: Optional[bool] = None,
                        ignore_keys: Optional[list[str]] = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        args = self.args
        prediction_loss_only = prediction_loss_only if prediction_loss_only is not None else args.prediction_loss_only
        model = self._model_for_eval()
        model.eval()
        self.callback_handler.eval_dataloader = dataloader
        losses = preds = labels = inputs_seen = None
        num_samples = 0
        for inputs in dataloader:
            batch = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor)), 0)
            loss, logits, label = self.prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            if loss is not None:
                gathered = self.accelerator.gather_for_metrics(loss.repeat(batch))
                losses = gathered if losses is None else torch.cat([losses, gathered])
                num_samples += gathered.shape[0]
            else:
                num_samples += self.accelerator.gather_for_metrics(torch.zeros(batch, device=self.accelerator.device)).shape[0]
            if label is not None:
                label = self._pad_and_gather(label)
                labels = _nested_concat(labels, label)
            if logits is not None:
                if self.preprocess_logits_for_metrics is not None:
                    logits = self.preprocess_logits_for_metrics(logits, label)
                logits = self._pad_and_gather(logits)
                preds = _nested_concat(preds, logits)
            if args.include_inputs_for_metrics and "input_ids" in inputs:
                inputs_seen = _nested_concat(inputs_seen, self._pad_and_gather(inputs["input_ids"].to(self.accelerator.device)))
            self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
        self.callback_handler.eval_dataloader = None

        preds, labels, inputs_seen = _to_numpy(preds), _to_numpy(labels), _to_numpy(inputs_seen)
        metrics = {}
        if self.compute_metrics is not None and preds is not None and labels is not None:
            prediction = EvalPrediction(preds, labels, inputs_seen if args.include_inputs_for_metrics else None)
            metrics = dict(self.compute_metrics(prediction) or {})
        metrics = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}
        if losses is not None:
            metrics["loss"] = losses.float().mean().item()
        metrics = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v
                   for k, v in metrics.items()}
        return EvalLoopOutput(preds, labels, metrics, num_samples)

    def _pad_and_gather(self, value):
        if isinstance(value, (tuple, list)):
            return type(value)(self._pad_and_gather(v) for v in value)
        if value.dim() >= 2 and self.accelerator.num_processes > 1:
            value = self.accelerator.pad_across_processes(value, dim=1, pad_index=-100)
        return self.accelerator.gather_for_metrics(value)

    def hyperparameter_search(self, *args, **kwargs):
        raise NotImplementedError("hyperparameter_search is not supported by polyformers' Trainer")


# -------------------------------------------------------------------------------------------------
# helpers: loss, files, random states


def _label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float, shift: bool) -> torch.Tensor:
    """(1 - epsilon) * NLL + epsilon * mean NLL over the vocabulary, over positions whose label is not -100."""
    if shift:
        logits, labels = logits[..., :-1, :].contiguous(), labels[..., 1:].contiguous()
    log_probs = -nn.functional.log_softmax(logits.float(), dim=-1)
    if labels.dim() == log_probs.dim() - 1:
        labels = labels.unsqueeze(-1)
    padding = labels.eq(-100)
    safe = labels.clamp(min=0)
    nll = log_probs.gather(dim=-1, index=safe).masked_fill(padding, 0.0)
    smoothed = log_probs.sum(dim=-1, keepdim=True, dtype=torch.float32).masked_fill(padding, 0.0)
    active = padding.numel() - padding.long().sum()
    return (1 - epsilon) * nll.sum() / active + epsilon * smoothed.sum() / (active * log_probs.shape[-1])


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _python_rng_to_tensors(state) -> dict:
    version, internal, gauss = state
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss if gauss is not None else float("nan")}


def _python_rng_from_tensors(saved: dict):
    gauss = saved["gauss"]
    return saved["version"], tuple(int(x) for x in saved["state"].tolist()), None if math.isnan(gauss) else gauss


def _numpy_rng_to_tensors(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_rng_from_tensors(saved: dict):
    keys = saved["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached"]


__all__ = ["Trainer", "TrainOutput", "PredictionOutput", "EvalPrediction", "EvalLoopOutput", "set_seed",
           "get_last_checkpoint"]
