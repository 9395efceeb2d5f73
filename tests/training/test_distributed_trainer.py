"""The Trainer in several processes and on two hosts, launched as users launch it: ``torchrun``,
``accelerate launch``, and ``torchrun --nnodes 2`` in two network namespaces joined by a veth pair.

Every run trains the same tiny GPT-J on the same global batches (6 examples a step); each must log the
losses of one process taking the whole batch.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from safetensors.torch import load_file

from tests.training.hosts import two_hosts

SCRIPT = Path(__file__).with_name("trainer_script.py")
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GLOBAL_BATCH = 6


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT / "src"), **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _job(tmp: Path, name: str, processes: int, **extra) -> Path:
    args = dict(output_dir=str(tmp / name), per_device_train_batch_size=GLOBAL_BATCH // processes,
                num_train_epochs=2, logging_steps=1, learning_rate=2e-3, weight_decay=0.01, report_to="none",
                disable_tqdm=True, save_strategy="no", use_cpu=True)
    args.update(extra.pop("args", {}))
    job = dict(family="gptj", examples=24, args=args, save_model=str(tmp / f"{name}-final"), **extra)
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(job))
    return path


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _losses(result: dict) -> list:
    return [(h["step"], h["loss"]) for h in result["log_history"] if "loss" in h]


def _torchrun(n: int, job: Path, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", str(n), str(SCRIPT), str(job)],
                          capture_output=True, text=True, env=_env(), timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(_job(tmp, "single", 1))], capture_output=True,
                          text=True, env=_env(), timeout=240)
    result = _result(proc)
    assert len(_losses(result)) == 8  # 2 epochs of 24 / 6
    return result, tmp / "single-final"


def _same_losses(got: list, want: list) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) <= 1e-4, (got, want)


def test_ddp_and_fsdp_give_the_losses_of_one_process(tmp_path, one_process):
    single, single_final = one_process
    report = tmp_path / "ddp-exit"
    ddp = _result(_torchrun(2, _job(tmp_path, "ddp", 2, state_bytes=True, exit_report=str(report),
                                    keep_trainer=True)))
    _same_losses(_losses(ddp), _losses(single))
    # The script never destroys its process group and still holds its trainer at exit; the Trainer drops
    # its DDP wrapper and destroys the group before Python finalises (a group left to finalisation, or
    # destroyed under a live wrapper, can abort a run that succeeded).
    for rank in (0, 1):
        assert json.loads(Path(f"{report}.{rank}").read_text()) == {"process_group_alive": False,
                                                                    "ddp_wrappers_alive": 0}
    fsdp = _result(_torchrun(2, _job(tmp_path, "fsdp", 2, state_bytes=True, args=dict(fsdp="full_shard auto_wrap"))))
    _same_losses(_losses(fsdp), _losses(single))
    # Each process holds half the parameters and optimizer state under FSDP, all of them under DDP.
    assert len(fsdp["state_bytes"]) == 2 and max(fsdp["state_bytes"]) <= 0.6 * min(ddp["state_bytes"])
    # save_model gathers the shards into one ordinary folder, equal to what one process trained
    ours, want = load_file(str(tmp_path / "fsdp-final" / "model.safetensors")), load_file(str(single_final / "model.safetensors"))
    assert sorted(ours) == sorted(want)
    assert max((ours[k] - want[k]).abs().max().item() for k in ours) <= 1e-5
    reference = transformers.GPTJForCausalLM.from_pretrained(tmp_path / "fsdp-final")
    assert reference.transformer.h[0].attn.q_proj.weight.shape == (32, 32)


def test_fsdp_checkpoint_resumes_on_another_number_of_processes(tmp_path, one_process):
    single, _ = one_process
    sharded = dict(fsdp="full_shard auto_wrap", save_strategy="steps", save_steps=3, output_dir=str(tmp_path / "run"))
    killed = _torchrun(2, _job(tmp_path, "two", 2, args=sharded, kill_at_step=5))
    assert killed.returncode != 0 and "Signal 9" in killed.stderr
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    resumed = _result(_torchrun(3, _job(tmp_path, "three", 3, args=sharded, resume=True)))
    _same_losses(_losses(resumed), _losses(single))


def test_accelerate_launch_runs_the_same_script(tmp_path, one_process):
    single, _ = one_process
    proc = subprocess.run(
        # --multi_gpu is the option that runs torchrun, also without GPUs (--cpu would start one process);
        # the Trainer's Accelerator then runs on the CPU over gloo.
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
         str(SCRIPT), str(_job(tmp_path, "acc", 2))],
        capture_output=True, text=True, env=_env(), timeout=240)
    _same_losses(_losses(_result(proc)), _losses(single))


def test_two_hosts(tmp_path, one_process):
    # Two machines: each host is a network namespace with its own address; torchrun's c10d rendezvous
    # on host 0's address joins them, and gloo talks over the veth pair.
    single, single_final = one_process
    job = _job(tmp_path, "hosts", 2)
    port = 29400 + os.getpid() % 500
    with two_hosts() as hosts:
        procs = []
        for rank in (0, 1):
            argv = [str(BIN / "torchrun"), *hosts.torchrun_args(rank, port, rdzv_id=f"trainer-{os.getpid()}"),
                    "--nproc-per-node", "1", str(SCRIPT), str(job)]
            procs.append(hosts.run(rank, argv, env=hosts.env(rank, _env()), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-4000:]
    result = json.loads(outs[0][0].strip().splitlines()[-1])
    _same_losses(_losses(result), _losses(single))
    ours, want = load_file(str(tmp_path / "hosts-final" / "model.safetensors")), load_file(str(single_final / "model.safetensors"))
    assert max((ours[k] - want[k]).abs().max().item() for k in want) <= 1e-5
