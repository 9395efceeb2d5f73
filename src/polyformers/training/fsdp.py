"""FSDP2 for the Trainer: torch's ``fully_shard`` per transformer block, then on the whole model, and
sharded checkpoints through ``torch.distributed.checkpoint`` (which re-shards on load, so a run saved
on N processes resumes on M).

The blocks are the repeated modules of the model (the members of its ``nn.ModuleList`` s: GPT-J's
``h``, the BERT stack's ``layer``, Pegasus' encoder and decoder ``layers``), or the classes that
``fsdp_config["transformer_layer_cls_to_wrap"]`` names. Embeddings and heads stay in the root group,
so weights tied between them stay one parameter.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .arguments import FSDPOption, TrainingArguments


def _blocks(model: nn.Module, names: Optional[list[str]]) -> list[nn.Module]:
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names]
        if not found:
            present = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(
                f"fsdp_config['transformer_layer_cls_to_wrap']={names} names no module of "
                f"{type(model).__name__}; its module classes are {present}"
            )
        return found
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1 \
                and any(True for _ in module[0].parameters()):
            blocks.extend(module)
    return blocks


def shard_model(model: nn.Module, args: TrainingArguments) -> nn.Module:
    """Apply ``fully_shard`` in place as ``args.fsdp`` and ``args.fsdp_config`` ask."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"fsdp={[o.value for o in args.fsdp]} needs torch.distributed: launch the script with "
                         "torchrun or accelerate launch")
    options = set(args.fsdp)
    if FSDPOption.NO_SHARD in options:
        raise ValueError("fsdp='no_shard' replicates every parameter: that is DDP, which the Trainer runs "
                         "when fsdp is not set")
    if FSDPOption.HYBRID_SHARD in options:
        raise ValueError("fsdp='hybrid_shard' is not supported; use 'full_shard' or 'shard_grad_op'")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError(f"fsdp cannot shard {type(model).__name__}: some parameters are on the meta device")
    if any(not p.is_floating_point() for p in model.parameters()):
        raise ValueError(f"fsdp cannot shard {type(model).__name__}: it has integer parameters (a quantized model?)")

    device_type = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": FSDPOption.SHARD_GRAD_OP not in options}
    if FSDPOption.OFFLOAD in options:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if args.bf16 and args.fsdp_config.get("mixed_precision", False):
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

    blocks = _blocks(model, args.fsdp_config.get("transformer_layer_cls_to_wrap"))
    if not blocks and FSDPOption.AUTO_WRAP in options:
        raise ValueError(f"fsdp auto_wrap found no repeated blocks in {type(model).__name__} to wrap; name them "
                         "in fsdp_config['transformer_layer_cls_to_wrap']")
    min_params = int(args.fsdp_config.get("min_num_params", 0) or 0)
    for block in blocks:
        if sum(p.numel() for p in block.parameters()) >= min_params:
            fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def save_sharded_model(model: nn.Module, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    dcp.save({"model": get_model_state_dict(model, options=_options())}, checkpoint_id=folder)


def save_sharded_optimizer(model: nn.Module, optimizer, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, _unwrap_optimizer(optimizer), options=_options())},
             checkpoint_id=folder)


def load_sharded(model: nn.Module, optimizer, model_folder: str, optimizer_folder: Optional[str]) -> None:
    """Load a sharded checkpoint written by any number of processes into this run's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not os.path.isdir(model_folder):
        raise ValueError(f"resume_from_checkpoint: {os.path.dirname(model_folder)!r} holds no sharded model "
                         f"({os.path.basename(model_folder)}/); was it saved by a run without fsdp?")
    state = {"model": get_model_state_dict(model, options=_options())}
    dcp.load(state, checkpoint_id=model_folder)
    set_model_state_dict(model, state["model"], options=_options())
    if optimizer is not None and optimizer_folder is not None and os.path.isdir(optimizer_folder):
        inner = _unwrap_optimizer(optimizer)
        state = {"optimizer": get_optimizer_state_dict(model, inner, options=_options())}
        dcp.load(state, checkpoint_id=optimizer_folder)
        set_optimizer_state_dict(model, inner, state["optimizer"], options=_options())


def full_state_dict(model: nn.Module) -> dict:
    """Every parameter gathered whole onto process 0's CPU (empty on the other processes)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full=True))


def local_state_bytes(model: nn.Module, optimizer=None) -> int:
    """Bytes this process holds for parameters, gradients and optimizer state (its shards only)."""
    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    total = 0
    for p in model.parameters():
        total += local(p)
        if p.grad is not None:
            total += local(p.grad)
    if optimizer is not None:
        for state in _unwrap_optimizer(optimizer).state.values():
            total += sum(local(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total


def _unwrap_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's
