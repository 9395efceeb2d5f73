"""Which collectives the gloo backend of this torch build runs on CPU tensors (those FSDP2 and DDP use).

Run under ``torchrun --nproc-per-node 2``. Rank 0 prints one JSON line per probe:
{"probe": name, "ok": bool, "error": "first line of the exception" | null, "result": [...] | null}.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    base = torch.arange(2 * world, dtype=torch.float32) + 10 * rank  # rank r holds [10r, 10r+1, ...]

    def all_reduce(op):
        t = base.clone()
        dist.all_reduce(t, op=op)
        return t

    def reduce_scatter_tensor(op):
        out = torch.empty(2)
        dist.reduce_scatter_tensor(out, base.clone(), op=op)
        return out

    def reduce_scatter_single(op):
        out = torch.empty(2)
        dist.reduce_scatter_single(output=out, input=base.clone(), op=op)
        return out

    def all_gather_into_tensor():
        out = torch.empty(2 * world)
        dist.all_gather_into_tensor(out, torch.full((2,), float(rank)))
        return out

    probes = {
        "all_reduce SUM": lambda: all_reduce(dist.ReduceOp.SUM),
        "all_reduce AVG": lambda: all_reduce(dist.ReduceOp.AVG),
        "reduce_scatter_tensor SUM": lambda: reduce_scatter_tensor(dist.ReduceOp.SUM),
        "reduce_scatter_tensor AVG": lambda: reduce_scatter_tensor(dist.ReduceOp.AVG),
        "reduce_scatter_tensor PREMUL_SUM(0.5)": lambda: reduce_scatter_tensor(
            dist._make_nccl_premul_sum(0.5)),
        "all_gather_into_tensor": all_gather_into_tensor,
    }
    if hasattr(dist, "reduce_scatter_single"):
        probes["reduce_scatter_single AVG"] = lambda: reduce_scatter_single(dist.ReduceOp.AVG)
    for name, probe in probes.items():
        try:
            result, error = probe().tolist(), None
        except Exception as exc:  # noqa: BLE001 - the point is to record what fails and how
            result, error = None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        dist.barrier()
        if rank == 0:
            print(json.dumps({"probe": name, "ok": error is None, "error": error, "result": result}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    from train_tiny import exit_now  # this script's folder is on sys.path

    main()
    exit_now(0)
