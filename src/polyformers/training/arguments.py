"""``TrainingArguments``: every knob of a training run, with the reference's 4.37 names and defaults.

Framework-free: building the arguments imports no torch, so a script can parse them before choosing a
device. Values are checked here, once, with errors naming the argument; the Trainer reads them as data.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from datetime import datetime
from typing import Any, Optional, Union


class IntervalStrategy(str, enum.Enum):
    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SchedulerType(str, enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"
    REDUCE_ON_PLATEAU = "reduce_lr_on_plateau"


class OptimizerNames(str, enum.Enum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_HF = "adamw_hf"  # the reference's own AdamW; the same update as torch's, so torch's runs it
    ADAMW_TORCH_FUSED = "adamw_torch_fused"
    SGD = "sgd"
    ADAGRAD = "adagrad"


class FSDPOption(str, enum.Enum):
    FULL_SHARD = "full_shard"
    SHARD_GRAD_OP = "shard_grad_op"
    NO_SHARD = "no_shard"
    HYBRID_SHARD = "hybrid_shard"
    OFFLOAD = "offload"
    AUTO_WRAP = "auto_wrap"


# Integrations ``report_to`` may name. "jsonl" appends every log entry to <logging_dir>/log_history.jsonl.
REPORTERS = ("jsonl",)

# Arguments of the reference that polyformers accepts only at their default: setting one raises, rather
# than being silently ignored.
_UNSUPPORTED = {
    "deepspeed": None,
    "push_to_hub": False,
    "use_ipex": False,
    "jit_mode_eval": False,
    "torch_compile": False,
    "fp16": False,
    "fp16_full_eval": False,
    "tpu_num_cores": None,
    "neftune_noise_alpha": None,
    "group_by_length": False,
    "adafactor": False,
    "use_legacy_prediction_loop": False,
}


def _enum(kind: type[enum.Enum], name: str, value: Any) -> enum.Enum:
    try:
        return kind(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


def _positive_count_or_ratio(name: str, value: float) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive number of steps (or a ratio in (0, 1)), got {value!r}")
    if value > 1 and value != int(value):
        raise ValueError(f"{name} above 1 must be a whole number of steps, got {value!r}")


@dataclasses.dataclass
class TrainingArguments:
    """The arguments of a :class:`~polyformers.Trainer` run, named and defaulted as in the reference.

    Steps given as a float in (0, 1) (``logging_steps``, ``eval_steps``, ``save_steps``) are a fraction of
    the total number of optimisation steps. ``eval_strategy`` is the newer name of ``evaluation_strategy``;
    either may be given.
    """

    output_dir: str
    overwrite_output_dir: bool = False
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    evaluation_strategy: Union[IntervalStrategy, str] = "no"
    eval_strategy: Optional[Union[IntervalStrategy, str]] = None
    prediction_loss_only: bool = False
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    eval_accumulation_steps: Optional[int] = None
    eval_delay: Optional[float] = 0
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 3.0
    max_steps: int = -1
    lr_scheduler_type: Union[SchedulerType, str] = "linear"
    lr_scheduler_kwargs: Optional[dict] = dataclasses.field(default_factory=dict)
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    log_level: Optional[str] = "passive"
    log_level_replica: Optional[str] = "warning"
    log_on_each_node: bool = True
    logging_dir: Optional[str] = None
    logging_strategy: Union[IntervalStrategy, str] = "steps"
    logging_first_step: bool = False
    logging_steps: float = 500
    logging_nan_inf_filter: bool = True
    save_strategy: Union[IntervalStrategy, str] = "steps"
    save_steps: float = 500
    save_total_limit: Optional[int] = None
    save_safetensors: Optional[bool] = True
    save_on_each_node: bool = False
    save_only_model: bool = False
    no_cuda: bool = False
    use_cpu: bool = False
    seed: int = 42
    data_seed: Optional[int] = None
    bf16: bool = False
    bf16_full_eval: bool = False
    fp16: bool = False
    fp16_full_eval: bool = False
    tf32: Optional[bool] = None
    local_rank: int = -1
    ddp_backend: Optional[str] = None
    tpu_num_cores: Optional[int] = None
    dataloader_drop_last: bool = False
    eval_steps: Optional[float] = None
    dataloader_num_workers: int = 0
    dataloader_prefetch_factor: Optional[int] = None
    past_index: int = -1
    run_name: Optional[str] = None
    disable_tqdm: Optional[bool] = None
    remove_unused_columns: Optional[bool] = True
    label_names: Optional[list[str]] = None
    load_best_model_at_end: Optional[bool] = False
    metric_for_best_model: Optional[str] = None
    greater_is_better: Optional[bool] = None
    ignore_data_skip: bool = False
    fsdp: Optional[Union[list, str]] = ""
    fsdp_min_num_params: int = 0
    fsdp_config: Optional[Union[dict, str]] = None
    fsdp_transformer_layer_cls_to_wrap: Optional[str] = None
    deepspeed: Optional[Union[str, dict]] = None
    label_smoothing_factor: float = 0.0
    optim: Union[OptimizerNames, str] = "adamw_torch"
    optim_args: Optional[str] = None
    adafactor: bool = False
    group_by_length: bool = False
    length_column_name: Optional[str] = "length"
    report_to: Optional[Union[list[str], str]] = None
    ddp_find_unused_parameters: Optional[bool] = None
    ddp_bucket_cap_mb: Optional[int] = None
    ddp_broadcast_buffers: Optional[bool] = None
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    skip_memory_metrics: bool = True
    use_legacy_prediction_loop: bool = False
    push_to_hub: bool = False
    resume_from_checkpoint: Optional[str] = None
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: Optional[dict] = None
    include_inputs_for_metrics: bool = False
    full_determinism: bool = False
    ddp_timeout: Optional[int] = 1800
    torch_compile: bool = False
    include_tokens_per_second: Optional[bool] = False
    include_num_input_tokens_seen: Optional[bool] = False
    neftune_noise_alpha: Optional[float] = None
    use_ipex: bool = False
    jit_mode_eval: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(f"output_dir must be a folder path, got {self.output_dir!r}")
        self.output_dir = os.fspath(self.output_dir)
        for name, default in _UNSUPPORTED.items():
            if getattr(self, name) != default:
                raise NotImplementedError(
                    f"{name}={getattr(self, name)!r} is not supported by polyformers' Trainer "
                    f"(only the default {default!r})"
                )
        if self.eval_strategy is not None:
            if self.evaluation_strategy not in ("no", IntervalStrategy.NO) and \
                    _enum(IntervalStrategy, "evaluation_strategy", self.evaluation_strategy) != \
                    _enum(IntervalStrategy, "eval_strategy", self.eval_strategy):
                raise ValueError(
                    f"evaluation_strategy={self.evaluation_strategy!r} and eval_strategy={self.eval_strategy!r} "
                    "disagree; eval_strategy is the newer name of the same argument, give one"
                )
            self.evaluation_strategy = self.eval_strategy
        self.evaluation_strategy = _enum(IntervalStrategy, "evaluation_strategy", self.evaluation_strategy)
        self.eval_strategy = self.evaluation_strategy
        self.logging_strategy = _enum(IntervalStrategy, "logging_strategy", self.logging_strategy)
        self.save_strategy = _enum(IntervalStrategy, "save_strategy", self.save_strategy)
        self.lr_scheduler_type = _enum(SchedulerType, "lr_scheduler_type", self.lr_scheduler_type)
        self.optim = _enum(OptimizerNames, "optim", self.optim)

        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool):
            raise ValueError(f"max_steps must be an integer (-1 to train num_train_epochs), got {self.max_steps!r}")
        if self.max_steps == 0:
            raise ValueError("max_steps=0 would train nothing; give a positive number of steps, or -1 to "
                             "train for num_train_epochs")
        if self.max_steps < 0 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be positive when max_steps is not set, got {self.num_train_epochs!r}")
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers!r}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be None or at least 1, got {self.save_total_limit!r}")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor!r}")

        if self.evaluation_strategy == IntervalStrategy.STEPS and self.eval_steps is None:
            if self.logging_steps <= 0:
                raise ValueError("evaluation_strategy='steps' needs eval_steps (or a positive logging_steps)")
            self.eval_steps = self.logging_steps
        if self.logging_strategy == IntervalStrategy.STEPS:
            _positive_count_or_ratio("logging_steps", self.logging_steps)
        if self.save_strategy == IntervalStrategy.STEPS:
            _positive_count_or_ratio("save_steps", self.save_steps)
        if self.evaluation_strategy == IntervalStrategy.STEPS:
            _positive_count_or_ratio("eval_steps", self.eval_steps)

        if self.load_best_model_at_end:
            if self.evaluation_strategy != self.save_strategy:
                raise ValueError(
                    "load_best_model_at_end needs save_strategy to equal evaluation_strategy, got "
                    f"save_strategy={self.save_strategy.value!r} and evaluation_strategy={self.evaluation_strategy.value!r}"
                )
            if self.evaluation_strategy == IntervalStrategy.STEPS and self.save_steps % self.eval_steps != 0:
                raise ValueError(
                    f"load_best_model_at_end needs save_steps to be a multiple of eval_steps, got "
                    f"save_steps={self.save_steps} and eval_steps={self.eval_steps}"
                )
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")

        if self.logging_dir is None:
            stamp = datetime.now().strftime("%b%d_%H-%M-%S")
            self.logging_dir = os.path.join(self.output_dir, "runs", stamp)
        if self.run_name is None:
            self.run_name = self.output_dir
        self.report_to = self._reporters(self.report_to)

        if self.ddp_backend not in (None, "gloo", "nccl", "mpi", "ccl", "hccl"):
            raise ValueError(f"ddp_backend must be one of 'gloo', 'nccl', 'mpi', 'ccl', 'hccl', got {self.ddp_backend!r}")
        self.fsdp = self._fsdp_options(self.fsdp)
        self.fsdp_config = self._fsdp_config(self.fsdp_config)
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 cannot both be set")

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _reporters(value) -> list[str]:
        if value is None or value == "all":
            return list(REPORTERS)
        if value == "none":
            return []
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            if name not in REPORTERS and name != "none":
                raise ValueError(f"report_to names an integration polyformers does not have: {name!r} "
                                 f"(available: 'none', 'all', {', '.join(map(repr, REPORTERS))})")
        return [n for n in names if n != "none"]

    @staticmethod
    def _fsdp_options(value) -> list[FSDPOption]:
        if value in (None, "", False):
            return []
        if value is True:
            value = "full_shard auto_wrap"
        words = value.split() if isinstance(value, str) else list(value)
        options = [_enum(FSDPOption, "fsdp", w) for w in words]
        modes = [o for o in options if o not in (FSDPOption.OFFLOAD, FSDPOption.AUTO_WRAP)]
        if len(modes) > 1:
            raise ValueError(f"fsdp may name one sharding mode, got {[m.value for m in modes]}")
        if not modes:
            options.insert(0, FSDPOption.FULL_SHARD)
        return options

    def _fsdp_config(self, value) -> dict:
        if value is None:
            config = {}
        elif isinstance(value, (str, os.PathLike)):
            try:
                with open(value, encoding="utf-8") as f:
                    config = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"fsdp_config must be a dict or a JSON file, could not read {value!r}: {e}") from None
        elif isinstance(value, dict):
            config = dict(value)
        else:
            raise ValueError(f"fsdp_config must be a dict or a JSON file path, got {type(value).__name__}")
        config = {k[5:] if k.startswith("fsdp_") else k: v for k, v in config.items()}
        if self.fsdp_transformer_layer_cls_to_wrap is not None:
            config.setdefault("transformer_layer_cls_to_wrap", self.fsdp_transformer_layer_cls_to_wrap)
        wrap = config.get("transformer_layer_cls_to_wrap")
        if isinstance(wrap, str):
            config["transformer_layer_cls_to_wrap"] = [wrap]
        if self.fsdp_min_num_params:
            config.setdefault("min_num_params", self.fsdp_min_num_params)
        version = config.setdefault("version", 2)
        if version != 2:
            raise ValueError(f"fsdp_config['version'] must be 2 (FSDP2, torch's fully_shard), got {version!r}")
        return config

    # ---------------------------------------------------------------------------------------------
    # derived values, as the reference names them

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def process_index(self) -> int:
        return int(os.environ.get("RANK", "0"))

    @property
    def local_process_index(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def should_log(self) -> bool:
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        return (self.local_process_index if self.save_on_each_node else self.process_index) == 0

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """``warmup_steps`` when set, else ``ceil(warmup_ratio * num_training_steps)``."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(num_training_steps * self.warmup_ratio)

    def to_dict(self) -> dict:
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, list):
                value = [v.value if isinstance(v, enum.Enum) else v for v in value]
            out[field.name] = value
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def __str__(self) -> str:
        fields = ",\n".join(f"{k}={v!r}" for k, v in sorted(self.to_dict().items()))
        return f"{type(self).__name__}(\n{fields}\n)"

    __repr__ = __str__
