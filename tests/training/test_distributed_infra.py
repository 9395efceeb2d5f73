"""Multi-process and multi-machine training on CPU with gloo, launched the way users launch it.

Every run is a real launcher in a subprocess (``torchrun``, ``accelerate launch``, or ``torchrun`` on two
"machines": network namespaces joined by a veth pair, see ``hosts.py``), training a tiny polyformers
model with a plain torch loop (``dist_scripts/train_tiny.py``). All modes see the same global batches,
so their per-step losses must agree:

* DDP on 2 processes, the global batch split between them, == one process on the whole batch;
* FSDP2 (``fully_shard`` per block, then the root) == DDP, with at most 0.6x DDP's local bytes of
  parameters + gradients + optimizer state per process;
* an FSDP2 run saved with torch.distributed.checkpoint on 2 processes and resumed on 1 (FSDP2 and a
  plain model) or 2 continues exactly as the uninterrupted run; restoring the model but not the
  optimizer does not (the control that shows the comparison can tell);
* 2 nodes x 1 process (c10d rendezvous across the veth pair) == one process;
* ``accelerate launch --multi_gpu --num_processes 2`` (on a CPU-only machine: torchrun under the hood,
  Accelerator(cpu=True) -> MULTI_CPU + DDP over gloo) == one process.

Environment each launch gets: OMP_NUM_THREADS=1 (two processes on a small machine), GLOO_SOCKET_IFNAME
(lo here, the veth in a namespace: gloo otherwise resolves the hostname to pick its interface), and
torchrun ``--local-addr`` (the address the other node reaches this one's store by).

What this torch (2.13.0+cpu) and accelerate (1.15.0) do on CPU with gloo, found while writing these:
* gloo runs all_reduce SUM/AVG, reduce_scatter_tensor/reduce_scatter_single SUM/AVG and
  all_gather_into_tensor (``dist_scripts/probe_gloo.py``), so FSDP2 works as is on a CPU mesh
  (``init_device_mesh("cpu", (world,))``), also with reshard_after_forward=False and a bf16
  MixedPrecisionPolicy. Not PREMUL_SUM: ``set_gradient_divide_factor(f)`` with f != world size fails
  in backward with "RuntimeError: Cannot use ReduceOp.PREMUL_SUM with Gloo"; adding
  ``set_force_sum_reduction_for_comms(True)`` makes it reduce with SUM and divide after, which works.
* FSDP2 warns "FSDP2-wrapped module (FSDPRobertaForMaskedLM) returned a view tensor ..." because the
  logits are a view; harmless unless something edits them in place.
* ``accelerate launch --cpu --num_processes 2`` (or a MULTI_CPU config) starts ONE process: its CPU
  launcher needs mpirun and a hostfile for more. Under torchrun, ``Accelerator()`` without
  ``cpu=True`` (or ACCELERATE_USE_CPU=true) on a machine without GPUs is DistributedType.NO with
  num_processes 1 on every rank: each trains alone, silently. Its FSDP plugin (``--use_fsdp
  --fsdp_version 2`` or ``FullyShardedDataParallelPlugin(fsdp_version=2)``) is ignored on CPU: the model
  comes back wrapped in DistributedDataParallel (MULTI_CPU).
* Two nodes: with the rendezvous endpoint on an address that is not the hostname's, torchrun needs
  ``--rdzv-conf is_host=1`` on the node that hosts the store (else both wait as clients: "The client
  socket has timed out after 60000ms while trying to connect to (10.77.X.1, 29400)"), and gloo needs
  GLOO_SOCKET_IFNAME (else it binds to the hostname's 127.0.0.1: "Gloo connectFullMesh failed with
  ... timed out connecting: SO_ERROR: Connection refused, remote=[127.0.0.1]:PORT").
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.hosts import HostsError, two_hosts

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "dist_scripts" / "train_tiny.py"
BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
ACCELERATE = BIN / "accelerate"
TOL = 1e-5
STEPS = 6
TIMEOUT = 150  # per launch; a launch takes 5-15 s on two cores, more while other work shares them


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.update(extra)
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def _parse(stdout: str, what: str) -> dict:
    result = {"losses": {}, "rank_losses": {}, "rows": {}, "state": None, "config": None, "saved": []}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        kind = record.get("kind")
        if kind == "loss":
            result["losses"][record["step"]] = record["loss"]
            result["rank_losses"][record["step"]] = record["rank_losses"]
            result["rows"][record["step"]] = record["local_rows"]
        elif kind == "state_bytes":
            result["state"] = record["per_rank"]
        elif kind == "config":
            result["config"] = record
        elif kind == "saved":
            result["saved"].append(record["step"])
    if result["state"] is None:
        raise AssertionError(f"{what}: no final state_bytes record in its output:\n{stdout[-4000:]}")
    return result


def _launch(argv: list, what: str, env: dict | None = None) -> dict:
    start = time.monotonic()
    try:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT,
                              env=env or _env(), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what}: timed out after {TIMEOUT} s\n{exc.stdout}\n{exc.stderr}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{what}: exit code {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    result = _parse(proc.stdout, what)
    result["seconds"] = time.monotonic() - start
    result["stderr"] = proc.stderr
    return result


def _torchrun(nproc: int, *args) -> list:
    return [TORCHRUN, "--nproc-per-node", nproc, "--standalone", "--local-addr", "127.0.0.1", SCRIPT, *args]


@functools.lru_cache(maxsize=None)
def _train(mode: str, nproc: int = 1, model: str = "roberta") -> dict:
    """One uninterrupted run of STEPS steps, shared by the tests that compare against it."""
    args = ["--mode", mode, "--model", model, "--steps", STEPS]
    argv = [sys.executable, SCRIPT, *args] if mode == "single" else _torchrun(nproc, *args)
    return _launch(argv, f"{mode} x{nproc} {model}")


def _assert_losses_match(got: dict, want: dict, what: str, steps=range(STEPS)) -> None:
    assert sorted(got["losses"]) == list(steps), f"{what}: steps {sorted(got['losses'])}, expected {list(steps)}"
    diffs = {s: abs(got["losses"][s] - want["losses"][s]) for s in steps}
    assert max(diffs.values()) <= TOL, (
        f"{what}: per-step losses differ by up to {max(diffs.values()):.3g} (tolerance {TOL}):\n"
        + "\n".join(f"  step {s}: {got['losses'][s]:.8f} vs {want['losses'][s]:.8f}" for s in steps)
    )


def _assert_split(run: dict, world: int, global_batch: int = 8) -> None:
    """Each rank trained on its own slice: rows = global / world, and the ranks' losses differ."""
    assert run["config"]["world_size"] == world, run["config"]
    assert set(run["rows"].values()) == {global_batch // world}, run["rows"]
    for step, ranks in run["rank_losses"].items():
        assert len(ranks) == world
        if world > 1:
            assert max(ranks) - min(ranks) > 1e-4, f"step {step}: every rank saw the same data? {ranks}"


def _assert_trains(run: dict) -> None:
    losses = [run["losses"][s] for s in sorted(run["losses"])]
    # Three batches cycled: the second pass over them must score clearly better than the first.
    assert sum(losses[3:6]) < sum(losses[0:3]) - 0.3, f"the loss does not fall: {losses}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tests -----------------------------------------------------------------------------------------------

def test_ddp_two_processes_match_one_process():
    single, ddp = _train("single"), _train("ddp", 2)
    _assert_trains(single)
    _assert_split(single, 1)
    _assert_split(ddp, 2)
    _assert_losses_match(ddp, single, "DDP x2 vs one process")
    # DDP replicates everything: each rank holds the single process's full state.
    assert [r["total"] for r in ddp["state"]] == [single["state"][0]["total"]] * 2, ddp["state"]


def test_fsdp2_matches_ddp_and_shards_the_training_state():
    ddp, fsdp = _train("ddp", 2), _train("fsdp", 2)
    _assert_split(fsdp, 2)
    _assert_losses_match(fsdp, ddp, "FSDP2 x2 vs DDP x2")
    full = ddp["state"][0]
    for shard in fsdp["state"]:
        assert shard["total"] <= 0.6 * full["total"], f"FSDP2 rank state {shard} vs DDP {full}"
        assert shard["params"] < full["params"] and shard["grads"] < full["grads"], (shard, full)
    # The shards cover the model once: their parameter and gradient bytes add up to the full model's.
    assert sum(s["params"] for s in fsdp["state"]) == full["params"], (fsdp["state"], full)
    assert sum(s["grads"] for s in fsdp["state"]) == full["grads"], (fsdp["state"], full)


def test_fsdp2_gptj_matches_one_process():
    single, fsdp = _train("single", model="gptj"), _train("fsdp", 2, model="gptj")
    _assert_trains(single)
    _assert_losses_match(fsdp, single, "GPT-J FSDP2 x2 vs one process")
    assert all(s["total"] <= 0.6 * single["state"][0]["total"] for s in fsdp["state"]), fsdp["state"]


@pytest.fixture(scope="module")
def fsdp_checkpoint(tmp_path_factory) -> Path:
    """A DCP checkpoint of model and optimizer written by FSDP2 on 2 processes after step 2."""
    ckpt = tmp_path_factory.mktemp("dcp") / "ckpt"
    saved = _launch(_torchrun(2, "--mode", "fsdp", "--steps", 3, "--save", ckpt, "--save-after", 2),
                    "FSDP2 x2, save after step 2")
    assert saved["saved"] == [2] and (ckpt / ".metadata").exists(), (saved["saved"], sorted(os.listdir(ckpt)))
    _assert_losses_match(saved, _train("fsdp", 2), "FSDP2 x2 before the checkpoint", steps=range(3))
    assert len(list(ckpt.glob("*.distcp"))) == 2, sorted(os.listdir(ckpt))  # one file per saving rank
    return ckpt


def _resume(ckpt: Path) -> list:
    return ["--steps", STEPS, "--start-step", 3, "--load", ckpt]


def test_fsdp2_dcp_checkpoint_resumes_on_one_process(fsdp_checkpoint):
    full = _train("fsdp", 2)
    runs = {
        "FSDP2 x1": _torchrun(1, "--mode", "fsdp", *_resume(fsdp_checkpoint)),
        "a plain model, one process": [sys.executable, SCRIPT, "--mode", "single", *_resume(fsdp_checkpoint)],
    }
    for what, argv in runs.items():
        resumed = _launch(argv, f"resume on {what}")
        _assert_losses_match(resumed, full, f"resumed on {what} vs uninterrupted FSDP2 x2", steps=range(3, STEPS))


def test_fsdp2_dcp_checkpoint_resumes_on_two_processes(fsdp_checkpoint):
    resumed = _launch(_torchrun(2, "--mode", "fsdp", *_resume(fsdp_checkpoint)), "resume on FSDP2 x2")
    _assert_losses_match(resumed, _train("fsdp", 2), "resumed on FSDP2 x2 vs uninterrupted", steps=range(3, STEPS))


def test_dcp_resume_without_optimizer_state_diverges(fsdp_checkpoint):
    """The control: the model alone, with a fresh AdamW, must not reproduce the run (Adam's moments and
    step count matter), so the resume tests above do check that the optimizer state came back."""
    full = _train("fsdp", 2)
    control = _launch([sys.executable, SCRIPT, "--mode", "single", *_resume(fsdp_checkpoint), "--load-model-only"],
                      "resume model only")
    assert abs(control["losses"][3] - full["losses"][3]) <= TOL  # same weights: the same first loss
    assert max(abs(control["losses"][s] - full["losses"][s]) for s in (4, 5)) > 1e-3, (control["losses"], full)


def test_two_hosts_torchrun_matches_one_process(tmp_path):
    single = _train("single")
    port = 29400  # the namespaces are fresh: nothing else listens there
    procs, logs = [], []
    with two_hosts() as hosts:
        for rank in (0, 1):
            argv = [TORCHRUN, *hosts.torchrun_args(rank, port, rdzv_id=f"infra-{os.getpid()}"),
                    "--nproc-per-node", "1", SCRIPT, "--mode", "ddp", "--steps", STEPS]
            log = tmp_path / f"host{rank}.log"
            logs.append(log)
            with open(log, "w") as out:
                procs.append(hosts.run(rank, argv, env=hosts.env(rank, _env()), cwd=ROOT,
                                       stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT
        for rank, proc in enumerate(procs):
            try:
                proc.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [p.poll() for p in procs]
        names = hosts.ns
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(f"--- host {i}\n{t[-5000:]}" for i, t in
                                                                 enumerate(texts))
    # The c10d rendezvous gives out ranks by order of arrival, not by --node-rank: find global rank 0.
    chief = [t for t in texts if '"kind": "config"' in t]
    assert len(chief) == 1, "expected one host to print rank 0's records:\n" + "\n".join(texts)
    two = _parse(chief[0], "rank 0")
    _assert_split(two, 2)
    _assert_losses_match(two, single, "2 hosts x 1 process vs one process")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), f"namespaces left behind: {listed}"


def test_accelerate_launch_matches_one_process(tmp_path):
    single = _train("single")
    # `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU launcher runs the script
    # once unless given an mpirun hostfile). `--multi_gpu` is the option that runs torchrun, also on a
    # machine without GPUs; the script's Accelerator(cpu=True) then picks MULTI_CPU over gloo.
    argv = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", 2, "--num_machines", 1,
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", _free_port(),
            SCRIPT, "--mode", "accelerate", "--steps", STEPS]
    run = _launch(argv, "accelerate launch --multi_gpu x2", env=_env(HF_HOME=str(tmp_path / "hf")))
    assert run["config"]["distributed_type"] == "DistributedType.MULTI_CPU", run["config"]
    assert run["config"]["wrapper"] == "DistributedDataParallel", run["config"]
    _assert_split(run, 2)
    _assert_losses_match(run, single, "accelerate launch x2 vs one process")


def test_two_hosts_tears_down_after_a_failure():
    listen = ("import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 5000)); s.listen(); "
              "c, _ = s.accept(); c.sendall(b'hi'); time.sleep(300)")
    with pytest.raises(ZeroDivisionError):
        with two_hosts() as hosts:
            names = hosts.ns
            server = hosts.run(1, [sys.executable, "-c", listen])
            connect = ("import socket, sys, time\n"
                       "for _ in range(100):\n"
                       "    try: c = socket.create_connection((sys.argv[1], 5000), timeout=5); break\n"
                       "    except ConnectionRefusedError: time.sleep(0.05)\n"
                       "print(c.recv(2).decode())")
            reply = subprocess.run(["ip", "netns", "exec", hosts.ns[0], sys.executable, "-c", connect, hosts.addr[1]],
                                   capture_output=True, text=True, timeout=30)
            assert reply.stdout.strip() == "hi", reply.stdout + reply.stderr  # host 0 reaches host 1
            assert server.pid in hosts.pids(1), "the server should run in host 1's namespace"
            1 / 0
    assert server.poll() is not None, "a process started on a host survived the teardown"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), listed


def test_two_hosts_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostsError, match="needs root"):
        with two_hosts():
            pass
