"""The training loop's state, its control flags, and the callbacks that read and set them.

As in the reference: the Trainer calls ``on_<event>(args, state, control, **kwargs)`` on every callback
at fixed points of the loop; callbacks observe ``state`` and steer the loop by setting flags of
``control`` (log, evaluate, save, stop). :class:`DefaultFlowCallback` turns the logging, evaluation and
saving strategies of the arguments into those flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Optional

from .arguments import IntervalStrategy, TrainingArguments

TRAINER_STATE_NAME = "trainer_state.json"


@dataclasses.dataclass
class TrainerState:
    """Where training stands; saved as ``trainer_state.json`` in every checkpoint."""

    epoch: Optional[float] = None
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: Optional[int] = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list = dataclasses.field(default_factory=list)
    best_metric: Optional[float] = None
    best_model_checkpoint: Optional[str] = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: Optional[str] = None
    trial_params: Optional[dict] = None

    def save_to_json(self, json_path: str) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        tmp = f"{json_path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, json_path)

    @classmethod
    def load_from_json(cls, json_path: str) -> "TrainerState":
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class TrainerControl:
    """Flags callbacks set to steer the loop; the Trainer resets each once acted on."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False


class TrainerCallback:
    """Base class: override the events you need. Each receives ``args``, ``state``, ``control`` and, as
    keyword arguments, ``model``, ``tokenizer``, ``optimizer``, ``lr_scheduler``, ``train_dataloader``,
    ``eval_dataloader`` (and ``metrics`` / ``logs`` for the events that have them)."""

    def on_init_end(self, args, state, control, **kwargs): pass
    def on_train_begin(self, args, state, control, **kwargs): pass
    def on_train_end(self, args, state, control, **kwargs): pass
    def on_epoch_begin(self, args, state, control, **kwargs): pass
    def on_epoch_end(self, args, state, control, **kwargs): pass
    def on_step_begin(self, args, state, control, **kwargs): pass
    def on_substep_end(self, args, state, control, **kwargs): pass
    def on_step_end(self, args, state, control, **kwargs): pass
    def on_evaluate(self, args, state, control, **kwargs): pass
    def on_predict(self, args, state, control, metrics, **kwargs): pass
    def on_save(self, args, state, control, **kwargs): pass
    def on_log(self, args, state, control, **kwargs): pass
    def on_prediction_step(self, args, state, control, **kwargs): pass


class CallbackHandler(TrainerCallback):
    """Calls every registered callback in order; what a callback returns as control replaces it."""

    def __init__(self, callbacks, model, tokenizer, optimizer, lr_scheduler):
        self.callbacks: list[TrainerCallback] = []
        for cb in callbacks:
            self.add_callback(cb)
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.train_dataloader = None
        self.eval_dataloader = None

    def add_callback(self, callback) -> None:
        cb = callback() if isinstance(callback, type) else callback
        if not isinstance(cb, TrainerCallback):
            raise TypeError(f"callbacks must be TrainerCallback instances or classes, got {type(cb).__name__}")
        self.callbacks.append(cb)

    def pop_callback(self, callback):
        for cb in self.callbacks:
            if (isinstance(callback, type) and isinstance(cb, callback)) or cb is callback:
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback) -> None:
        self.pop_callback(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def _call(self, event: str, args, state, control, **kwargs):
        for cb in self.callbacks:
            result = getattr(cb, event)(
                args, state, control, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler, train_dataloader=self.train_dataloader,
                eval_dataloader=self.eval_dataloader, **kwargs,
            )
            if result is not None:
                control = result
        return control

    def on_init_end(self, args, state, control): return self._call("on_init_end", args, state, control)

    def on_train_begin(self, args, state, control):
        control.should_training_stop = False
        return self._call("on_train_begin", args, state, control)

    def on_train_end(self, args, state, control): return self._call("on_train_end", args, state, control)

    def on_epoch_begin(self, args, state, control):
        control.should_epoch_stop = False
        return self._call("on_epoch_begin", args, state, control)

    def on_epoch_end(self, args, state, control): return self._call("on_epoch_end", args, state, control)

    def on_step_begin(self, args, state, control):
        control.should_log = control.should_evaluate = control.should_save = False
        return self._call("on_step_begin", args, state, control)

    def on_substep_end(self, args, state, control): return self._call("on_substep_end", args, state, control)
    def on_step_end(self, args, state, control): return self._call("on_step_end", args, state, control)

    def on_evaluate(self, args, state, control, metrics):
        control.should_evaluate = False
        return self._call("on_evaluate", args, state, control, metrics=metrics)

    def on_predict(self, args, state, control, metrics):
        return self._call("on_predict", args, state, control, metrics=metrics)

    def on_save(self, args, state, control):
        control.should_save = False
        return self._call("on_save", args, state, control)

    def on_log(self, args, state, control, logs):
        control.should_log = False
        return self._call("on_log", args, state, control, logs=logs)

    def on_prediction_step(self, args, state, control):
        return self._call("on_prediction_step", args, state, control)


class DefaultFlowCallback(TrainerCallback):
    """Sets the log / evaluate / save / stop flags from the strategies in the arguments."""

    def on_step_end(self, args: TrainingArguments, state, control, **kwargs):
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == IntervalStrategy.STEPS and step % state.logging_steps == 0:
            control.should_log = True
        if (args.evaluation_strategy == IntervalStrategy.STEPS and step % state.eval_steps == 0
                and (args.eval_delay or 0) <= step):
            control.should_evaluate = True
        if args.save_strategy == IntervalStrategy.STEPS and state.save_steps > 0 and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args: TrainingArguments, state, control, **kwargs):
        if args.logging_strategy == IntervalStrategy.EPOCH:
            control.should_log = True
        if args.evaluation_strategy == IntervalStrategy.EPOCH and (args.eval_delay or 0) <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == IntervalStrategy.EPOCH:
            control.should_save = True
        return control


def _strict_json(logs: dict) -> dict:
    """Non-finite numbers as strings ("nan", "inf"): JSON has no NaN, and strict readers reject it."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in logs.items()}


def _format_logs(logs: dict) -> dict:
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}


class ProgressCallback(TrainerCallback):
    """A tqdm bar over the optimisation steps (loss and learning rate beside it), one for evaluation."""

    def __init__(self):
        self.training_bar = None
        self.prediction_bar = None
        self._last = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step",
                                     dynamic_ncols=True)
            self._last = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self._last)
            self._last = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and eval_dataloader is not None and hasattr(eval_dataloader, "__len__"):
            if self.prediction_bar is None:
                from tqdm.auto import tqdm

                self.prediction_bar = tqdm(total=len(eval_dataloader), leave=self.training_bar is None,
                                           unit="batch", dynamic_ncols=True, desc="evaluating")
            self.prediction_bar.update(1)

    def _close_prediction(self):
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_prediction()

    def on_predict(self, args, state, control, **kwargs):
        self._close_prediction()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs:
            return
        shown = {k: logs[k] for k in ("loss", "learning_rate", "eval_loss") if k in logs}
        if shown:
            self.training_bar.set_postfix(_format_logs(shown), refresh=False)
        if "train_runtime" in logs or any(k.startswith("eval_") for k in logs):
            self.training_bar.write(str(_format_logs(logs)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class PrinterCallback(TrainerCallback):
    """Prints each log entry as one line: the progress display when there is no terminal."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = {k: v for k, v in logs.items() if k != "total_flos"}
            print(json.dumps(_strict_json(shown)), file=sys.stderr, flush=True)


class JsonlLoggerCallback(TrainerCallback):
    """``report_to="jsonl"``: appends every log entry, with its step, to ``<logging_dir>/log_history.jsonl``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(args.logging_dir, exist_ok=True)
        line = json.dumps(_strict_json(dict(logs, step=state.global_step)), sort_keys=True)
        with open(os.path.join(args.logging_dir, "log_history.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")


class EarlyStoppingCallback(TrainerCallback):
    """Stops training when ``metric_for_best_model`` has not improved (by more than
    ``early_stopping_threshold``) for ``early_stopping_patience`` evaluations in a row."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: Optional[float] = 0.0):
        if early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1, got {early_stopping_patience!r}")
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold or 0.0
        self.early_stopping_patience_counter = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.load_best_model_at_end:
            raise ValueError("EarlyStoppingCallback needs load_best_model_at_end=True in the TrainingArguments")
        if args.metric_for_best_model is None:
            raise ValueError("EarlyStoppingCallback needs metric_for_best_model in the TrainingArguments")
        if args.evaluation_strategy == IntervalStrategy.NO:
            raise ValueError("EarlyStoppingCallback needs an evaluation_strategy other than 'no'")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        key = name if name.startswith("eval_") else f"eval_{name}"
        value = (metrics or {}).get(key)
        if value is None:
            raise KeyError(f"EarlyStoppingCallback: metric_for_best_model {name!r} is not among the evaluation "
                           f"metrics {sorted(metrics or {})}")
        better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
        best = state.best_metric
        if best is None or (better(value, best) and abs(value - best) > self.early_stopping_threshold):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True


def steps_of(value: float, max_steps: int) -> int:
    """A count of steps given as a number, or as a fraction (< 1) of ``max_steps``."""
    if value is None:
        return 0
    return math.ceil(max_steps * value) if value < 1 else int(value)


__all__ = [
    "TrainerState", "TrainerControl", "TrainerCallback", "CallbackHandler", "DefaultFlowCallback",
    "ProgressCallback", "PrinterCallback", "JsonlLoggerCallback", "EarlyStoppingCallback",
]
