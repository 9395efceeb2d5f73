"""Learning-rate schedules by name, as multipliers of the optimizer's initial rate (``LambdaLR``).

Each multiplier is a picklable ``functools.partial`` of a module-level function, so a scheduler's
``state_dict`` holds numbers only and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from .arguments import SchedulerType, _enum


def _constant(step: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, *, warmup: int) -> float:
    return step / max(1.0, warmup) if step < warmup else 1.0


def _linear(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _cosine(step: int, *, warmup: int, total: int, num_cycles: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def _cosine_with_restarts(step: int, *, warmup: int, total: int, num_cycles: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def _polynomial(step: int, *, warmup: int, total: int, lr_end: float, power: float, lr_init: float) -> float:
    if step < warmup:
        return step / max(1, warmup)
    if step > total:
        return lr_end / lr_init
    remaining = 1 - (step - warmup) / (total - warmup)
    return ((lr_init - lr_end) * remaining**power + lr_end) / lr_init


def _inverse_sqrt(step: int, *, warmup: int, timescale: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    shift = timescale - warmup
    return 1.0 / math.sqrt((step + shift) / timescale)


def get_constant_schedule(optimizer, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, _constant, last_epoch=last_epoch)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps: int, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, functools.partial(_constant_with_warmup, warmup=num_warmup_steps), last_epoch=last_epoch)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                    last_epoch: int = -1) -> LambdaLR:
    rule = functools.partial(_linear, warmup=num_warmup_steps, total=num_training_steps)
    return LambdaLR(optimizer, rule, last_epoch=last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    rule = functools.partial(_cosine, warmup=num_warmup_steps, total=num_training_steps, num_cycles=num_cycles)
    return LambdaLR(optimizer, rule, last_epoch=last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                                       num_cycles: int = 1, last_epoch: int = -1) -> LambdaLR:
    rule = functools.partial(_cosine_with_restarts, warmup=num_warmup_steps, total=num_training_steps,
                             num_cycles=num_cycles)
    return LambdaLR(optimizer, rule, last_epoch=last_epoch)


def get_polynomial_decay_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int,
                                              lr_end: float = 1e-7, power: float = 1.0,
                                              last_epoch: int = -1) -> LambdaLR:
    lr_init = optimizer.defaults["lr"]
    if not lr_init > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be smaller than the initial learning rate ({lr_init})")
    rule = functools.partial(_polynomial, warmup=num_warmup_steps, total=num_training_steps, lr_end=lr_end,
                             power=power, lr_init=lr_init)
    return LambdaLR(optimizer, rule, last_epoch=last_epoch)


def get_inverse_sqrt_schedule(optimizer, num_warmup_steps: int, timescale: Optional[int] = None,
                              last_epoch: int = -1) -> LambdaLR:
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    rule = functools.partial(_inverse_sqrt, warmup=num_warmup_steps, timescale=timescale)
    return LambdaLR(optimizer, rule, last_epoch=last_epoch)


def get_scheduler(
    name: Union[str, SchedulerType],
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: Optional[int] = None,
    num_training_steps: Optional[int] = None,
    scheduler_specific_kwargs: Optional[dict] = None,
):
    """The schedule called ``name`` (see :class:`SchedulerType`) over ``optimizer``."""
    name = _enum(SchedulerType, "lr_scheduler_type", name)
    extra = dict(scheduler_specific_kwargs or {})
    if name == SchedulerType.CONSTANT:
        return get_constant_schedule(optimizer)
    if name == SchedulerType.REDUCE_ON_PLATEAU:
        return ReduceLROnPlateau(optimizer, **extra)
    if num_warmup_steps is None:
        raise ValueError(f"lr_scheduler_type={name.value!r} needs num_warmup_steps")
    if name == SchedulerType.CONSTANT_WITH_WARMUP:
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps)
    if name == SchedulerType.INVERSE_SQRT:
        return get_inverse_sqrt_schedule(optimizer, num_warmup_steps, **extra)
    if num_training_steps is None:
        raise ValueError(f"lr_scheduler_type={name.value!r} needs num_training_steps")
    build = {
        SchedulerType.LINEAR: get_linear_schedule_with_warmup,
        SchedulerType.COSINE: get_cosine_schedule_with_warmup,
        SchedulerType.COSINE_WITH_RESTARTS: get_cosine_with_hard_restarts_schedule_with_warmup,
        SchedulerType.POLYNOMIAL: get_polynomial_decay_schedule_with_warmup,
    }[name]
    return build(optimizer, num_warmup_steps, num_training_steps, **extra)
