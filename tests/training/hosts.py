"""Two "machines" on one box: two network namespaces joined by a veth pair, for multi-node tests.

    with two_hosts() as hosts:
        procs = [hosts.run(r, ["torchrun", *hosts.torchrun_args(r), "--nproc-per-node", "1", "train.py"],
                           env=hosts.env(r)) for r in (0, 1)]
        # hosts.torchrun_args(r): --nnodes 2 --rdzv-backend c10d --rdzv-endpoint 10.77.X.1:29400
        #   --rdzv-conf is_host=<r == 0> --local-addr 10.77.X.<r + 1>   (is_host and local-addr are needed)
        # hosts.env(r): GLOO_SOCKET_IFNAME=<host r's veth>               (needed, see env())

Each namespace holds only its loopback and its end of the veth pair, addressed 10.77.X.1/24 and
10.77.X.2/24: the two hosts reach each other and nothing else. Processes run there with
``ip netns exec``, so they share the filesystem (the venv, the checkout, temporary folders) but not the
network. The namespaces' names carry this process's pid and a counter, so concurrent test runs do not
collide; everything is torn down on exit, also when the body fails: processes still running in either
namespace are killed, then the namespaces are deleted (which deletes the veth pair with them).

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2's ``ip``; without them it raises with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from typing import Iterator, Optional, Sequence

_counter = itertools.count()


class HostsError(RuntimeError):
    """Setting up (or tearing down) the two network namespaces failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise HostsError(
            f"two_hosts: `ip {' '.join(args)}` failed with exit code {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()} (needs root with CAP_SYS_ADMIN/CAP_NET_ADMIN and iproute2)"
        )
    return proc


class TwoHosts:
    """Handle yielded by :func:`two_hosts`: ``ns``, ``ifname`` and ``addr`` are indexed by host (0 or 1)."""

    def __init__(self, ns: Sequence[str], ifname: Sequence[str], addr: Sequence[str], prefix: int):
        self.ns = tuple(ns)
        self.ifname = tuple(ifname)
        self.addr = tuple(addr)
        self.prefix = prefix
        self.procs: list[subprocess.Popen] = []

    def run(self, rank: int, argv: Sequence[str], env: Optional[dict] = None, **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` on host ``rank`` (``ip netns exec NS argv``) in a new session, and return its Popen.

        ``env`` defaults to this process's environment; other keywords go to ``subprocess.Popen``."""
        if rank not in (0, 1):
            raise ValueError(f"two_hosts has hosts 0 and 1, not {rank}")
        popen_kwargs.setdefault("start_new_session", True)  # its own process group, killed as one at teardown
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[rank], *map(str, argv)],
                                env=os.environ.copy() if env is None else env, **popen_kwargs)
        self.procs.append(proc)
        return proc

    def torchrun_args(self, rank: int, port: int = 29400, rdzv_id: str = "two-hosts") -> list[str]:
        """torchrun's multi-node options for host ``rank`` (one node per host; add ``--nproc-per-node``).

        The rendezvous endpoint is host 0's address, which is not the machine's hostname, so torchrun
        cannot guess which node hosts the store: ``is_host`` says so, or both nodes wait as clients until
        "The client socket has timed out after 60000ms while trying to connect to (10.77.X.1, PORT)".
        ``--local-addr`` is the address the other node reaches this one by."""
        return [
            "--nnodes", "2", "--node-rank", str(rank), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{self.addr[0]}:{port}", "--rdzv-id", rdzv_id,
            "--rdzv-conf", f"is_host={int(rank == 0)}", "--local-addr", self.addr[rank],
        ]

    def env(self, rank: int, base: Optional[dict] = None) -> dict:
        """``base`` (default: this process's environment) with GLOO_SOCKET_IFNAME set to host ``rank``'s
        veth: without it gloo binds to the address of the hostname (127.0.0.1 here), which the other
        host cannot reach ("Gloo connectFullMesh failed ... Connection refused")."""
        env = dict(os.environ if base is None else base)
        env["GLOO_SOCKET_IFNAME"] = self.ifname[rank]
        return env

    def pids(self, rank: int) -> list[int]:
        """Processes now running in host ``rank``'s namespace."""
        out = _ip("netns", "pids", self.ns[rank], check=False).stdout
        return [int(p) for p in out.split()]

    def _kill_everything(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if proc.pid == os.getpgid(proc.pid):  # started with start_new_session: its group is its own
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # Anything else still inside the namespaces (daemonised children) was started there by us.
        for _ in range(3):
            left = [pid for rank in (0, 1) for pid in self.pids(rank)]
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


@contextlib.contextmanager
def two_hosts(subnet: Optional[int] = None) -> Iterator[TwoHosts]:
    """Create two network namespaces joined by a veth pair (10.77.``subnet``.1/24 and .2/24), yield a
    :class:`TwoHosts`, and tear everything down afterwards."""
    if os.geteuid() != 0:
        raise HostsError(f"two_hosts needs root to create network namespaces (running as uid {os.geteuid()})")
    if shutil.which("ip") is None:
        raise HostsError("two_hosts needs iproute2's `ip` on PATH")
    pid, n = os.getpid(), next(_counter)
    if subnet is None:  # addresses live only inside the namespaces; varying them just eases reading logs
        subnet = (pid + n) % 250 + 1
    if not 0 <= subnet <= 255:
        raise ValueError(f"subnet must be 0..255, got {subnet}")
    ns = [f"pf{pid}-{n}-h{i}" for i in (0, 1)]
    ifname = [f"pv{pid}n{n}{'ab'[i]}"[:15] for i in (0, 1)]  # interface names hold at most 15 characters
    if ifname[0] == ifname[1]:
        raise HostsError(f"two_hosts: interface names collide after truncation: {ifname}")
    addr = [f"10.77.{subnet}.{i + 1}" for i in (0, 1)]
    hosts = TwoHosts(ns, ifname, addr, 24)
    created: list[str] = []
    try:
        for name in ns:
            _ip("netns", "add", name)
            created.append(name)
        # Both ends are created straight inside their namespaces: nothing touches the host's own network.
        _ip("link", "add", ifname[0], "netns", ns[0], "type", "veth", "peer", "name", ifname[1], "netns", ns[1])
        for i in (0, 1):
            _ip("-n", ns[i], "link", "set", "lo", "up")
            _ip("-n", ns[i], "addr", "add", f"{addr[i]}/24", "dev", ifname[i])
            _ip("-n", ns[i], "link", "set", ifname[i], "up")
        yield hosts
    finally:
        errors = []
        try:
            if created:
                hosts._kill_everything()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            errors.append(f"killing processes: {exc}")
        for name in created:
            proc = _ip("netns", "del", name, check=False)
            if proc.returncode != 0:
                errors.append(f"`ip netns del {name}`: {proc.stderr.strip()}")
        if errors:
            raise HostsError("two_hosts teardown failed: " + "; ".join(errors))
