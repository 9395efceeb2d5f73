"""The 4.37 reference interpreter as the tests call it: hands the run to the fork server
(``_oracle_server.py``) when it can reproduce it exactly, else runs the real interpreter.

    python -SE _oracle_client.py SOCKET REAL_PYTHON [interpreter arguments...]

The server reproduces ``script args...`` and ``-c code args...``, each after any ``-W`` options, in an
environment that differs from the server's own only in variables read after start-up (or emulated:
``PYTHONWARNINGS``, ``TRANSFORMERS_VERBOSITY``). Anything else (another option, ``-m``, a variable
such as ``PYTHONPATH`` or ``USE_TF`` that the preloaded modules read when they were imported) runs the
real interpreter, as does a server that is not there.
"""

import json
import os
import socket
import struct
import sys

# Read by the child's own code, or when a runtime starts (after the fork), or emulated there. (The
# level of TensorFlow's C++ log lines was read at its import: it changes only what they print on stderr.)
SAFE = {"PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "OMP_NUM_THREADS",
        "MKL_NUM_THREADS", "TF_CPP_MIN_LOG_LEVEL", "TOKENIZERS_PARALLELISM", "PYTHONWARNINGS",
        "TRANSFORMERS_VERBOSITY", "XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "POLYFORMERS_ORACLE_LOG"}


def _plan(args, server_env):
    """(command, arguments, warning options) for the server, or the reason to run the real interpreter."""
    warning_options = []
    while len(args) >= 2 and args[0] == "-W":
        warning_options.append(args[1])
        args = args[2:]
    if not args or args[0] == "-" or (args[0] == "-c" and len(args) < 2):
        return "no script or command"
    if args[0] == "-c":
        command, rest = args[1], args[2:]
    elif args[0].startswith("-"):
        return f"the option {args[0]}"
    else:
        command, rest = None, args
    env = dict(os.environ)
    for key in sorted(set(env) | set(server_env)):
        if env.get(key) != server_env.get(key) and key not in SAFE and not key.startswith("PYTEST_"):
            return f"the variable {key}"
    return command, rest, warning_options


def _log(line):
    """With POLYFORMERS_ORACLE_LOG=FILE, one line a run: where it ran, and why."""
    if os.environ.get("POLYFORMERS_ORACLE_LOG"):
        with open(os.environ["POLYFORMERS_ORACLE_LOG"], "a") as handle:
            handle.write(f"{line} | {' '.join(sys.argv[3:])[:120]!r}\n")


def main():
    sock_path, real = sys.argv[1:3]
    args = sys.argv[3:]
    try:
        with open(f"{sock_path}.env.json") as handle:
            plan = _plan(args, json.load(handle))
    except OSError as error:
        plan = f"no server environment ({error})"
    if not isinstance(plan, str):
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(sock_path)
        except OSError as error:
            plan = f"no server ({error})"
    if isinstance(plan, str):
        _log(f"interpreter: {plan}")
        os.execv(real, [real, *args])
    _log("served")
    command, rest, warning_options = plan
    header = json.dumps({"command": command, "args": rest, "warnings": warning_options, "cwd": os.getcwd(),
                         "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [b"F"], [0, 1, 2])
    conn.sendall(struct.pack("!I", len(header)) + header)
    reply = b""
    while len(reply) < 4:
        chunk = conn.recv(4 - len(reply))
        if not chunk:
            sys.stderr.write("the reference environment's fork server ended during the run\n")
            os._exit(1)
        reply += chunk
    (code,) = struct.unpack("!i", reply)
    if code < 0:  # ended by a signal: end the same way
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main()
