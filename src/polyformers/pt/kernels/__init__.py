"""polyformers' compiled CPU kernels for decoding: products of a few rows with a weight matrix read once
(``rows.cpp``), one query's attention over a key/value cache (``attention.cpp``), GELU and the greedy
argmax (``pointwise.cpp``), and a whole decoding step of MPT's or GPT-J's blocks in one call
(``blocks.cpp``, see ``polyformers.pt.fused``).

Decoding a token multiplies one row (or, batched, a few) by every weight matrix of the model, so its
speed is the rate at which the weights are read. Two of torch's kernels fall short of it: its bfloat16
matrix product of 2-8 rows (a batch of decoding steps) reads the weights at half the rate of one row,
and its 4-bit kernel (one row only: more rows dequantize the whole weight) is bound by its arithmetic at
about half the machine's bandwidth. The kernels of ``rows.cpp`` stream each weight row once for up to
eight input rows with AVX-512: float32 weights and bfloat16 ones widened in registers (float32 inputs
and sums; oneDNN's float32 product of 2-8 rows reads 812 MB of matrices at 16-20 GB/s against 43 for one
row, this one at 19-34), and 4-bit and int8 weights multiplied as integers with inputs rounded to 8 bits
per row (VNNI), as llama.cpp's quantized paths do (``bench/decode_speed.py`` prints them beside torch's). The int8 one
replaces fbgemm's, which it matches or beats at every row count. The int8 and 4-bit kernels prefetch the
weights non-temporally, out of the caches the rest of a decoding step uses, unless the packed weights
alive in the process (:func:`hold`), or those of the model a ``generate`` call decodes with
(:func:`begin_reading`), fit in half the last-level cache: then into the caches, where the next token
finds them (a CPU with hundreds of megabytes of L3 holds a small model's weights whole). On Intel CPUs they
always prefetch into the caches: there the non-temporal prefetches read even weights that come from memory at
half the rate (a 707 MB int8 MPT decodes 16 tokens/s with them, 30 without).

What is left of a step once the weights stream fast is a dozen small operations per layer, and torch's
attention, GELU and argmax carry fixed costs per call (buffers, thread splits, generic element-wise
machinery, a scalar reduction) of 10-60 us where their arithmetic takes a few: ``layers.attend``,
``layers.gelu`` and greedy decoding's ``greedy_choice`` take this library's versions for float32
inference on the CPU (the same function within 1e-6; the same indices) once they are built (:func:`ready`).

It is a PyTorch C++ extension (operators registered with ``TORCH_LIBRARY`` as ``torch.ops.polyformers``)
compiled on first use with the machine's C++ compiler for its own CPU (``-march=native``) and cached, per
source, torch version and CPU, under ``$POLYFORMERS_KERNEL_CACHE`` (default ``~/.cache/polyformers/
kernels``); ``python -m polyformers.pt.kernels`` builds it ahead (the project's set-up does). Where it
cannot be built (no compiler, a CPU without AVX-512 VNNI) or is switched off (``POLYFORMERS_KERNELS=0``),
:func:`available` is False and the layers use torch's kernels (``quantize.py`` says how their results
differ).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Optional

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("rows.cpp", "attention.cpp", "pointwise.cpp", "blocks.cpp"))
HEADERS = (Path(__file__).with_name("vector_math.h"),)
_REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")

MAX_ROWS = 8
"""The layers take the kernels for at most this many input rows (one pass over the weights); more rows
(prompts, encoder batches) go to torch's matrix products, which reuse each weight from the caches."""

_lock = threading.Lock()
_loaded: Optional[bool] = None  # None until the first call of available()
_why_not: Optional[str] = None
_off = 0  # depth of switched_off() blocks
_tiles = False  # whether linear_i8 takes 2+ rows on the tile unit: what rows.cpp's set_int8_tiles answered last
_looked = False  # whether ready() has looked for a build


class UnsupportedCPU(RuntimeError):
    """This CPU lacks the instructions the kernels are written with."""


def _cpuinfo(field: str) -> str:
    """The value of ``field`` for the first CPU in /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_vendor() -> str:
    return _cpuinfo("vendor_id")


def _cpu_flags() -> set:
    return set(_cpuinfo("flags").split())


def cache_dir() -> Path:
    root = os.environ.get("POLYFORMERS_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "polyformers" / "kernels"


def _compile_command(output: Path) -> list:
    import torch
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    includes.append(f"-I{sysconfig.get_paths()['include']}")
    return [
        os.environ.get("CXX", "g++"), "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *includes,
        *map(str, SOURCES), "-o", str(output),
        f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}",
    ]


def library_path() -> Path:
    """Where the build for this source, torch version, compiler and CPU lies (or will)."""
    import torch

    key = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        key.update(source.read_bytes())
    key.update(torch.__version__.encode())
    key.update(" ".join(sorted(_cpu_flags())).encode())
    key.update(os.environ.get("CXX", "g++").encode())
    return cache_dir() / f"polyformers_rows_{key.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Compile the sources into one library unless this machine's build is cached; return the library's path. The build
    is written under a temporary name and renamed, so a concurrent or interrupted one leaves no partial file."""
    missing = [flag for flag in _REQUIRED_FLAGS if flag not in _cpu_flags()]
    if missing:
        raise UnsupportedCPU(f"polyformers kernels: this CPU lacks {', '.join(missing)} (expected {_REQUIRED_FLAGS})")
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    command = _compile_command(Path(tmp))
    if verbose:
        print(" ".join(command), file=sys.stderr)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            names = ", ".join(source.name for source in SOURCES)
            raise RuntimeError(f"polyformers kernels: compiling {names} failed ({command[0]} exited "
                               f"{done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def available() -> bool:
    """Whether ``torch.ops.polyformers`` holds the kernels (built and loaded on the first call). False
    where ``POLYFORMERS_KERNELS=0`` or the build failed; :func:`why_not` says why, and a warning says it
    once when the failure is unexpected."""
    global _loaded, _why_not, _tiles
    if _off:
        return False
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        if os.environ.get("POLYFORMERS_KERNELS", "1") == "0":
            _why_not, _loaded = "switched off by POLYFORMERS_KERNELS=0", False
            return False
        try:
            import torch

            torch.ops.load_library(str(build()))
            _register_fakes()
            torch.ops.polyformers.set_intel_prefetch(_cpu_vendor() == "GenuineIntel")  # see rows.cpp
            _tiles = bool(torch.ops.polyformers.set_int8_tiles(True))  # where the CPU and Linux allow them
            _loaded = True
        except UnsupportedCPU as error:
            _why_not, _loaded = str(error), False
        except Exception as error:  # noqa: BLE001 - any failure means: use torch's kernels
            _why_not, _loaded = str(error), False
            warnings.warn(f"polyformers kernels unavailable, using torch's: {error}", RuntimeWarning, stacklevel=2)
        return _loaded


def _register_fakes() -> None:
    """Output shapes of the operators without running them, which torch.compile and torch.export trace
    with (without them a ``fullgraph`` compile of a model that calls the kernels fails)."""
    import torch

    fake = torch.library.register_fake
    fake("polyformers::linear_i4")(lambda x, weight, scale_offset, bias, in_features, out_features:
                                   x.new_empty((x.shape[0], out_features)))
    fake("polyformers::linear_i8")(lambda x, weight, scales, sums, bias, in_features, out_features:
                                   x.new_empty((x.shape[0], out_features)))
    fake("polyformers::linear_bf16")(lambda x, weight, bias: x.new_empty((x.shape[0], weight.shape[0])))
    fake("polyformers::linear_f32")(lambda x, weight, bias: x.new_empty((x.shape[0], weight.shape[0])))
    fake("polyformers::attend_one")(lambda query, key, value, bias, scale: query.new_empty(query.shape))
    fake("polyformers::attend_one_storing")(lambda query, key, value, new_key, new_value, slot, bias, scale:
                                            query.new_empty(query.shape))
    fake("polyformers::gelu")(lambda x, approximate: x.new_empty(x.shape))
    fake("polyformers::argmax_rows")(lambda x: x.new_empty((x.shape[0],), dtype=torch.long))
    fake("polyformers::alibi_blocks")(lambda hidden, tensors, layout, keys, values, written, slot, bias, scale, eps,
                                      heads: hidden.new_empty(hidden.shape))
    fake("polyformers::rotary_blocks")(lambda hidden, tensors, layout, keys, values, written, slot, rotation, bias,
                                       scale, eps, heads, rotary_dim, approximate: hidden.new_empty(hidden.shape))


def ready() -> bool:
    """Whether the kernels are loaded, or built on this machine and loadable now, without building them.

    The float32 paths (``layers.attend``, ``layers.gelu``) ask this, so that a model's first forward never
    waits for a compiler: they take the kernels once the set-up, ``python -m polyformers.pt.kernels`` or
    a quantized layer (which asks :func:`available`) has built them, and torch's functions until then."""
    global _looked
    if _off:
        return False
    if _loaded is not None:
        return _loaded
    if _looked:
        return False
    _looked = True
    try:
        built = (os.environ.get("POLYFORMERS_KERNELS", "1") != "0"
                 and all(flag in _cpu_flags() for flag in _REQUIRED_FLAGS) and library_path().exists())
    except Exception:  # noqa: BLE001 - torch missing or the sources unreadable: no kernels
        built = False
    return available() if built else False


@contextlib.contextmanager
def switched_off():
    """Within the block, :func:`available` is False: layers built or packed there use torch's kernels
    (to compare both paths in one process)."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def why_not() -> Optional[str]:
    """Why :func:`available` is False (None when it is True or not yet asked)."""
    return _why_not


def ops():
    """``torch.ops.polyformers`` once :func:`available` is True."""
    import torch

    return torch.ops.polyformers


def int8_tiles(on: Optional[bool] = None) -> bool:
    """Whether ``linear_i8`` multiplies two or more input rows with the CPU's tile unit (AMX: Intel Xeon
    from Sapphire Rapids on, where Linux grants its state) instead of AVX-512 VNNI; the integer sums and so
    the outputs are the same bits either way, the tiles only take far fewer instructions (a batch of 8
    decoding sequences reads the weights about as fast as one). ``on`` switches them on or off (they are on
    by default where available); the return value is whether they are now used. False without the kernels."""
    if not available():
        return False
    global _tiles
    if on is not None:
        _tiles = bool(ops().set_int8_tiles(bool(on)))
    return _tiles


# ------------------------------------------------------------------------------------------------------
# Whether the int8 and 4-bit kernels keep the weights in the caches (rows.cpp's set_keep_weights)

KEEP_FRACTION = 0.5
"""The packed weights alive are prefetched into the caches while they take at most this part of the
last-level cache (the rest holds the key/value cache, activations and other processes' data); on Intel CPUs,
whatever their size (see :func:`keeping_weights`)."""

_held = 0  # bytes of the packed weights alive (hold)
_held_lock = threading.RLock()  # (reentrant: a finalizer may run in the middle of hold, at a collection)
_keeping = False  # what set_keep_weights was told last
_cache_bytes: Optional[int] = None


def last_level_cache_bytes() -> int:
    """The size of this CPU's last-level cache as Linux reports it for CPU 0 (0 where it does not)."""
    global _cache_bytes
    if _cache_bytes is None:
        _cache_bytes = 0
        best_level = 0
        for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            try:
                level = int((index / "level").read_text())
                kind = (index / "type").read_text().strip()
                size = (index / "size").read_text().strip()
            except (OSError, ValueError):
                continue
            if kind in ("Unified", "Data") and level > best_level and size:
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
                try:
                    _cache_bytes, best_level = int(size.rstrip("KMG")) * scale, level
                except ValueError:
                    continue
    return _cache_bytes


def hold(*tensors) -> None:
    """Count ``tensors`` (packed weights of the int8 and 4-bit kernels) as alive until they are freed, and
    tell the kernels whether all such weights fit in :data:`KEEP_FRACTION` of the last-level cache, so that
    their prefetches keep them there (see ``rows.cpp``)."""
    global _held
    with _held_lock:
        for tensor in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            _held += nbytes
            weakref.finalize(tensor, _release, nbytes).atexit = False
        _update()


def _release(nbytes: int) -> None:
    global _held
    with _held_lock:
        _held -= nbytes
        try:
            _update()
        except Exception:  # noqa: BLE001 - a collection at the interpreter's exit, torch already torn down
            pass


_in_use = 0  # bytes of the weights that open reading loops read (begin_reading)
_loops = 0  # how many such loops are open, in any thread


def begin_reading(nbytes: int) -> None:
    """A loop starts that reads ``nbytes`` of packed weights again and again (a ``generate`` call's model, a
    server's decoding loop: ``quantize.decoding_weights``). While any is open, the weights that count are
    those of the open loops, in place of all the packed weights alive: models of the process that no loop
    reads do not keep these out of the caches. :func:`end_reading` closes it."""
    global _in_use, _loops
    with _held_lock:
        _in_use += nbytes
        _loops += 1
        _update()


def end_reading(nbytes: int) -> None:
    """Close a loop that :func:`begin_reading` opened with the same ``nbytes``."""
    global _in_use, _loops
    with _held_lock:
        _in_use -= nbytes
        _loops -= 1
        _update()


def keeping_weights() -> bool:
    """Whether the packed weights that count fit in :data:`KEEP_FRACTION` of the last-level cache (see
    :func:`hold`), so that the int8 and 4-bit kernels prefetch them into the caches. On Intel CPUs the kernels
    do so either way: there non-temporal prefetches halve the rate at which weights stream even from memory
    (``rows.cpp``; ``ops().weights_into_caches()`` says what the kernels do now)."""
    return _keeping


def _update() -> None:
    global _keeping
    held = _in_use if _loops else _held
    keep = 0 < held <= KEEP_FRACTION * last_level_cache_bytes()
    if keep != _keeping and _loaded:
        ops().set_keep_weights(keep)
        _keeping = keep


# ------------------------------------------------------------------------------------------------------
# The packed 4-bit layout of rows.cpp: panels of 16 output rows (padded with zero rows), each one stream of
# blocks of 32 columns.

PANEL_I4 = 16


def pack_i4(q, scales, offsets):
    """4-bit integers ``q`` (out, in) in 0..15 and their (out, in / group) ``scales`` and ``offsets`` ->
    (packed weight, packed scale-offset pairs), the arguments of ``linear_i4``. The weight: per panel of
    16 rows and block of 32 columns, four vectors of 16 rows' four bytes, vector v's bytes holding
    columns 8v..8v+3 in their low nibbles and 8v+4..8v+7 in their high ones: shape (panels, in / 32, 4, 16,
    4). The pairs: per panel and group, the 16 rows' scales, then their offsets, in bfloat16: shape
    (panels, groups, 2, 16). ``in`` is a multiple of the group size, itself a multiple of 32."""
    import torch

    out_features, in_features = q.shape
    groups = scales.shape[1]
    if in_features % 32 or in_features % groups or (in_features // groups) % 32:
        raise ValueError(f"pack_i4: expected in_features a multiple of a group size that is a multiple of 32, "
                         f"given {in_features} features in {groups} groups")
    panels = -(-out_features // PANEL_I4)
    rows = panels * PANEL_I4
    wide = torch.zeros(rows, in_features, dtype=torch.uint8)
    wide[:out_features] = q.to(torch.uint8)
    # (panels, row, block, vector, low|high, byte)
    parts = wide.view(panels, PANEL_I4, in_features // 32, 4, 2, 4)
    nibbles = parts[:, :, :, :, 0] | (parts[:, :, :, :, 1] << 4)  # (panels, row, block, vector, byte)
    packed = nibbles.permute(0, 2, 3, 1, 4).contiguous()
    both = torch.zeros(rows, 2, groups, dtype=torch.bfloat16)
    both[:out_features, 0], both[:out_features, 1] = scales, offsets
    pairs = both.view(panels, PANEL_I4, 2, groups).permute(0, 3, 2, 1).contiguous()
    return packed, pairs


PANEL_I8 = 32

MAX_INT8_FEATURES = 65536
"""The most input features ``linear_i8`` takes (its int32 sums cannot overflow below it); wider int8 layers
use fbgemm's kernel."""


def pack_i8(q):
    """int8 weights ``q`` (out, in) -> (packed weight, row sums as float32), the ``weight`` and ``sums``
    arguments of ``linear_i8``: panels of 32 rows (padded with zero rows), the columns padded with zero
    weights to a multiple of 16; within a panel, for each four neighbouring columns, the 32 rows' four
    weights: shape (panels, padded in / 4, 32, 4)."""
    import torch

    out_features, in_features = q.shape
    quads = -(-in_features // 16) * 4
    panels = -(-out_features // PANEL_I8)
    wide = torch.zeros(panels * PANEL_I8, quads * 4, dtype=torch.int8)
    wide[:out_features, :in_features] = q
    packed = wide.view(panels, PANEL_I8, quads, 4).transpose(1, 2).contiguous()
    return packed, q.sum(1, dtype=torch.int64).float()


def unpack_i8(packed, out_features: int, in_features: int):
    """The int8 weights (out, in) that :func:`pack_i8` packed."""
    panels, quads = packed.shape[:2]
    rows = packed.transpose(1, 2).reshape(panels * PANEL_I8, quads * 4)
    return rows[:out_features, :in_features].contiguous()
