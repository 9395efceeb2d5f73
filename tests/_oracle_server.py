"""A fork server for the 4.37 reference environment: it imports numpy, torch and transformers once, then runs
each oracle script of the suite in a forked child, as ``python script ...`` or ``python -c code ...`` would.

    <4.37 venv>/bin/python _oracle_server.py SOCKET      (writes SOCKET.env.json, then prints "ready")

The tests start one per pytest process (``legacy_python`` in tests/conftest.py) and reach it through
``_oracle_client.py``, which falls back to running the real interpreter for anything this server cannot
reproduce exactly. A request is the three standard streams (passed as file descriptors) and a JSON header
{"argv": [...], "cwd": ..., "env": {...}}; the reply is the child's exit status (4 bytes, signed: minus
the signal's number if a signal ended it). If the client goes away (a test's timeout killed it), the child
is killed too.

Nothing runs before the fork but imports: no framework's runtime or thread pool is started here (the BLAS
libraries' own pools survive a fork), so each child starts as a fresh interpreter that had already
imported these modules would.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
import warnings

# The filters of an interpreter started without -W or PYTHONWARNINGS (the server is), before any import,
# and its environment, which the clients compare theirs with.
START_FILTERS = list(warnings.filters)
START_ENV = dict(os.environ)
SET_BY_IMPORTS: dict = {}  # what importing PRELOADED added to the environment (TensorFlow sets a few)
# transformers.pipelines brings TensorFlow (with Keras 2), JAX and Flax: importing them starts no runtime.
PRELOADED = ("numpy", "torch", "transformers", "transformers.modeling_utils", "transformers.generation",
             "transformers.pipelines")


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection mid-request")
        data += chunk
    return data


def _run_child(request: dict, fds: list) -> None:
    """In the forked child: become the requested interpreter run, then leave with its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in SET_BY_IMPORTS.items():  # as the imports would have, where the run leaves them unset
        os.environ.setdefault(key, value)
    # what the interpreter does with PYTHONWARNINGS and -W at start-up
    sys.warnoptions[:] = [o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o] + request["warnings"]
    warnings.filters[:] = START_FILTERS
    warnings._filters_mutated()
    warnings._processoptions(sys.warnoptions)
    if "TRANSFORMERS_VERBOSITY" in os.environ:  # read once, when transformers was imported
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(hf_logging.log_levels[os.environ["TRANSFORMERS_VERBOSITY"]])
    code = 0
    try:
        import runpy
        import types

        if request["command"] is not None:
            sys.argv = ["-c", *request["args"]]
            sys.path.insert(0, "")
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(request["command"], "<string>", "exec"), main.__dict__)
        else:
            script = request["args"][0]
            sys.argv = list(request["args"])
            sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        if done.code is None:
            code = 0
        elif isinstance(done.code, int):
            code = done.code
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, with its exit status
        traceback.print_exc()
        code = 1
    try:  # as the interpreter ends: wait for the run's own threads, then its exit functions
        import atexit
        import threading

        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def main() -> None:
    path = sys.argv[1]
    del sys.path[0]  # this file's folder (tests/, whose packages would shadow the libraries); each child sets its own
    for name in PRELOADED:
        __import__(name)
    global SET_BY_IMPORTS
    SET_BY_IMPORTS = {key: value for key, value in os.environ.items() if START_ENV.get(key) != value}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    with open(f"{path}.env.json", "w") as handle:  # what the clients compare their environment with
        json.dump(START_ENV, handle)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                conn, _ = server.accept()
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
                    (size,) = struct.unpack("!I", _read_exactly(conn, 4))
                    request = json.loads(_read_exactly(conn, size))
                except (ConnectionError, OSError, ValueError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                # The child holds the write end of a pipe until it ends: the read end then reports the end
                # (a pipe, not a pidfd, so that no kernel feature or seccomp rule stands in the way).
                ended, holding = os.pipe()
                pid = os.fork()
                if pid == 0:  # the listening socket, the other requests' sockets and pipes are not the child's
                    for other in list(selector.get_map().values()):
                        if isinstance(other.fileobj, socket.socket):
                            other.fileobj.close()
                        else:
                            os.close(other.fileobj)
                    os.close(ended)
                    conn.close()
                    _run_child(request, fds)
                os.close(holding)
                for fd in fds:
                    os.close(fd)
                selector.register(ended, selectors.EVENT_READ, ("child", pid, conn))
                selector.register(conn, selectors.EVENT_READ, ("client", pid, None))
                continue
            role, pid, conn = key.data
            if role == "client":  # the client went away before its child ended: end the child
                selector.unregister(key.fileobj)
                os.kill(pid, signal.SIGKILL)
                continue  # its pipe reports the end
            _, status = os.waitpid(pid, 0)
            selector.unregister(key.fileobj)
            os.close(key.fileobj)
            if conn.fileno() in selector.get_map():
                selector.unregister(conn)
                try:
                    conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
            conn.close()


if __name__ == "__main__":
    main()
