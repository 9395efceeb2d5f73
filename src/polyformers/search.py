"""Semantic search over text files, with the passage embeddings cached on disk.

The cache folder holds one ``manifest.json`` and, per (model, file content, splitting) triple, the
passages (``<key>.json``) and their embeddings (``<key>.npy``). Entries are keyed by the file's content
hash, not its path, so a renamed file costs nothing and an edited file is re-embedded alone. The
manifest also remembers each path's size and modification time: when both are unchanged the file is
not even re-read, which with a cached query embedding makes a repeated search load no model at all.

A first run spends nearly all its time embedding, so by default (``fast=True``) a PyTorch model is run the
fastest way that keeps the answers (:func:`speed_up`): padding skipped and batches of similar lengths, which
give float32's embeddings up to rounding, and lower-precision weights in the linear layers, nearly all of the
work, on CPUs that multiply bfloat16 natively (AVX512-BF16, AMX):

- With polyformers' kernels built (:data:`USE_INT8`): int8 weights and inputs but in the feed-forward output
  layers, which are bfloat16, and bfloat16 throughout for batches holding a passage of at most
  :data:`SHORT_TOKENS` tokens (:func:`polyformers.pt.mixed.int8_with_bf16`, whose docstring gives the
  figures). Over all 1086 passages of Macbeth, all-mpnet-base-v2's embeddings keep a cosine of at least 0.995
  to float32's (``tests/cli/test_search_fast.py`` checks the passages around the dagger speech and the 128
  shortest, with the same top results), and the play embeds in 14.9 s against bfloat16's 17.9 s and float32's
  29.4 s on this project's 2-core machine (``bench/search_embedding.py``). int8 in every layer is no faster
  (15.0 s) and falls to 0.9912 (fbgemm's int8, without polyformers' kernels: 0.9870), so it is not used.
- Otherwise bfloat16 weights (:class:`polyformers.pt.quantize.Bf16Linear`, :data:`USE_BF16`): a cosine of
  0.9999 over the 50 passages around the dagger speech with the same top results, 0.9950 at worst over all
  1086 (mean 0.99998).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .pipelines.base import PipelineError

FORMAT = 1
SPLITS = ("paragraphs", "lines")
# Paragraphs longer than this are cut at line boundaries. A mean-pooled embedding of a long speech is
# an average of many topics and matches no query well; a few verse lines or sentences match sharply.
MAX_PASSAGE_WORDS = 40
# Rows per forward pass on the fast path. Rows are sorted by length, so a batch pads little, and skipped
# padding costs nothing in the linear layers; larger batches amortise the per-call overhead.
FAST_BATCH_SIZE = 32
# Whether the fast path uses int8 (with bfloat16 where int8 would move the answers; see the module docstring):
# only if that keeps a cosine >= 0.995 to float32 on the real model; the test recomputes it and must agree.
USE_INT8 = True
# Batches holding a passage of at most this many tokens (stage directions) run in bfloat16 on the int8 path:
# int8's error grows past 0.005 below about 10 tokens, where a mean over a few tokens averages nothing away.
SHORT_TOKENS = 12
# Whether the fast path multiplies with bfloat16 weights where the CPU has native bfloat16 arithmetic: only if
# that keeps a cosine >= 0.9999 to float32 and the same top results on the real model, which the test checks.
USE_BF16 = True


def speed_up(pipe) -> None:
    """Make a sentence-similarity pipeline embed faster without changing its answers (see the module docstring).

    A PyTorch model's encoder skips padding (:func:`polyformers.pt.unpad.skip_padding`: padded positions are
    not computed, and mean pooling over the mask never read them), and the pipeline, which already sorts its
    rows by length, gets batches of at least :data:`FAST_BATCH_SIZE`. A float32 model on a CPU with native
    bfloat16 arithmetic then gets int8 and bfloat16 weights (:data:`USE_INT8`, where polyformers' kernels are
    built) or bfloat16 weights (:data:`USE_BF16`). Other frameworks are left as they are.
    """
    if getattr(pipe, "framework", None) != "pt":
        return
    import torch

    from .pt import kernels
    from .pt.mixed import int8_with_bf16
    from .pt.quantize import has_native_bf16, quantize
    from .pt.unpad import skip_padding

    try:
        skip_padding(pipe.model)
    except ValueError:  # a family whose encoder cannot skip padding: the padded path, same results
        return
    pipe.batch_size = max(pipe.batch_size, FAST_BATCH_SIZE)
    linears = [m for m in pipe.model.modules() if isinstance(m, torch.nn.Linear)]
    if not (linears and has_native_bf16() and all(
            m.weight.dtype == torch.float32 and m.weight.device.type == "cpu" for m in linears)):
        return
    if USE_INT8 and kernels.ready() and isinstance(getattr(pipe.model.config, "intermediate_size", None), int):
        pipe.model = int8_with_bf16(pipe.model, SHORT_TOKENS)
    elif USE_BF16:
        quantize(pipe.model, bits=16)


@dataclass
class Passage:
    file: str
    line: int  # 1-based line where the passage starts
    text: str


def default_cache_dir() -> Path:
    root = os.environ.get("POLYFORMERS_CACHE")
    if root:
        return Path(root) / "search"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polyformers" / "search"


def read_text_file(path: Path) -> str:
    """The file as text; a clear error for a binary or non-UTF-8 file rather than garbage passages."""
    data = path.read_bytes()
    if b"\0" in data[:65536]:
        raise PipelineError(f"{path} is a binary file, not text; search reads UTF-8 text files")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path} is not UTF-8 text (invalid byte at offset {err.start}); convert it first") from None


def split_passages(text: str, split: str = "paragraphs", max_words: int = MAX_PASSAGE_WORDS) -> List[Tuple[int, str]]:
    """``(first line number, passage)`` pairs: blank-line separated paragraphs, or non-empty lines."""
    if split not in SPLITS:
        raise PipelineError(f"split must be one of {list(SPLITS)}, got {split!r}")
    lines = text.splitlines()
    out: List[Tuple[int, str]] = []
    if split == "lines":
        return [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]
    block: List[Tuple[int, str]] = []

    def flush():
        words = 0
        start = 0
        for j, (_, ln) in enumerate(block):
            n = len(ln.split())
            if words and words + n > max_words:
                out.append((block[start][0], "\n".join(x for _, x in block[start:j])))
                start, words = j, 0
            words += n
        if block[start:]:
            out.append((block[start][0], "\n".join(x for _, x in block[start:])))
        block.clear()

    for i, ln in enumerate(lines):
        if ln.strip():
            block.append((i + 1, ln.strip()))
        elif block:
            flush()
    if block:
        flush()
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(model: str) -> str:
    """Identifies a model's weights cheaply: config, tokenizer files and each weight file's size plus its
    first and last MiB (hashing 440 MB on every query would cost more than the search)."""
    h = hashlib.sha256()
    folder = Path(model)
    if not folder.is_dir():
        h.update(f"hub:{model}".encode())
        return h.hexdigest()[:32]
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 2 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:32]


def _atomic_write(path: Path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


GLOB_CHARS = set("*?[")


def collect_files(paths: Sequence[str]) -> List[Path]:
    """The files named, with folders expanded to the ``*.txt`` files under them and glob patterns
    (``plays/*_gut.txt``, ``corpus/**/*.txt``) to the regular files they match; sorted within each
    argument, each file once."""
    files: List[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(q for q in path.rglob("*.txt") if q.is_file())
            if not found:
                raise PipelineError(f"folder {p} holds no .txt files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise PipelineError(f"{p} is not a regular file")
        elif GLOB_CHARS & set(str(p)):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
            if not found:
                raise PipelineError(f"pattern {p} matches no file")
            files.extend(found)
        else:
            raise PipelineError(f"{p}: no such file or folder")
    if not files:
        raise PipelineError("no files to search: give one or more text files, folders or glob patterns")
    seen: set = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


class SearchIndex:
    """Embeddings of the passages of text files under one model, cached in ``cache_dir``.

    ``embedder`` builds the sentence-similarity pipeline on first need (``lambda: pipeline(...)``), so a
    search that finds everything cached never loads the model.
    """

    def __init__(self, model: str, embedder: Callable, cache_dir: Optional[os.PathLike] = None,
                 split: str = "paragraphs", use_cache: bool = True, fast: bool = True):
        if split not in SPLITS:
            raise PipelineError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.model = model
        self.split = split
        self._embedder = embedder
        self._pipe = None
        self.use_cache = use_cache
        self.fast = fast
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.fingerprint = model_fingerprint(model)
        self._manifest_text: Optional[str] = None
        self.manifest = self._load_manifest() if use_cache else {"format": FORMAT, "files": {}, "entries": {}}
        self.stats: Dict[str, List[str]] = {"embedded": [], "cached": []}

    # ------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / "manifest.json"

    def _load_manifest(self) -> dict:
        self._manifest_text = None
        try:
            self._manifest_text = self.manifest_path.read_text("utf-8")
            data = json.loads(self._manifest_text)
            if data.get("format") == FORMAT:
                data.setdefault("files", {})
                data.setdefault("entries", {})
                return data
        except (OSError, ValueError):
            pass
        return {"format": FORMAT, "files": {}, "entries": {}}

    def _save_manifest(self) -> None:
        if not self.use_cache:
            return
        # Entries no path points at any more (an edited file's old version) are deleted with their arrays.
        live = {k for rec in self.manifest["files"].values() for k in rec.get("entries", {}).values()}
        for key in [k for k in self.manifest["entries"] if k not in live]:
            del self.manifest["entries"][key]
            for suffix in (".npy", ".json"):
                (self.cache_dir / f"{key}{suffix}").unlink(missing_ok=True)
        text = json.dumps(self.manifest, indent=1, sort_keys=True) + "\n"
        if text != self._manifest_text:  # a search that found everything cached writes nothing
            _atomic_write(self.manifest_path, lambda f: f.write(text.encode("utf-8")))
            self._manifest_text = text

    def _settings_id(self) -> str:
        # The fast path gives float32's embeddings, so it shares the cache entries of the plain one.
        return f"{self.fingerprint}:{self.split}:{MAX_PASSAGE_WORDS}"

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = self._embedder()
            if self.fast:
                speed_up(self._pipe)
        return self._pipe

    # ------------------------------------------------------------------ embedding

    def file_embeddings(self, path: Path) -> Tuple[List[Passage], np.ndarray]:
        """The passages of one file and their embeddings, from the cache when the content is known."""
        file, pieces, vectors = self.embed_files([path])[0]
        return [Passage(file, line, text) for line, text in pieces], vectors

    def embed_files(self, paths: Sequence[Path]) -> List[Tuple[str, list, np.ndarray]]:
        """``(resolved path, [(line, passage), ...], embeddings)`` of each file, in order. Files whose content
        is cached are read from the cache; the passages of all the others are embedded in one pass, so rows
        of every file share length-sorted batches and one progress bar counts them all."""
        results: List[Optional[Tuple[str, list, np.ndarray]]] = []
        pending = []  # (position in results, path, manifest record, sha256, pieces)
        for path in paths:
            path = Path(path).resolve()
            loaded, rec, sha = self._cached(path)
            results.append(loaded)
            if loaded is None:
                pieces = split_passages(read_text_file(path), self.split)
                if not pieces:
                    raise PipelineError(f"{path} holds no text to search")
                pending.append((len(results) - 1, path, rec, sha, pieces))
        if pending:
            texts = [t for *_, pieces in pending for _, t in pieces]
            what = pending[0][1].name if len(pending) == 1 else f"{len(pending)} files"
            vectors = self.pipe.encode(texts, desc=f"embedding {what}", unit="passage")
            start = 0
            for pos, path, rec, sha, pieces in pending:
                block = vectors[start: start + len(pieces)]
                start += len(pieces)
                self._store(path, rec, sha, pieces, block)
                results[pos] = (str(path), pieces, block)
        return results

    def _cached(self, path: Path):
        """(passages and embeddings or None, the path's manifest record, its content hash)."""
        st = path.stat()
        rec = self.manifest["files"].get(str(path))
        settings = self._settings_id()
        key = None
        if rec and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
            key = rec.get("entries", {}).get(settings)
            sha = rec["sha256"]
        else:
            sha = _sha256_file(path)
            rec = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "entries": {}}
            # The same content under another path (a copy, a rename) is already embedded.
            key = next((k for k, e in self.manifest["entries"].items()
                        if e["sha256"] == sha and e["settings"] == settings), None)
        if key is not None:
            loaded = self._load_entry(key, str(path))
            if loaded is not None:
                rec.setdefault("entries", {})[settings] = key
                self.manifest["files"][str(path)] = rec
                self.stats["cached"].append(str(path))
                return loaded, rec, sha
        return None, rec, sha

    def _store(self, path: Path, rec: dict, sha: str, pieces, vectors: np.ndarray) -> None:
        settings = self._settings_id()
        key = hashlib.sha256(f"{settings}:{sha}".encode()).hexdigest()[:32]
        if self.use_cache:
            payload = json.dumps([[line, t] for line, t in pieces], ensure_ascii=False).encode("utf-8")
            _atomic_write(self.cache_dir / f"{key}.json", lambda f: f.write(payload))
            _atomic_write(self.cache_dir / f"{key}.npy", lambda f: np.save(f, vectors))
            self.manifest["entries"][key] = {"sha256": sha, "settings": settings, "model": self.model,
                                             "passages": len(pieces)}
            rec.setdefault("entries", {})[settings] = key
            self.manifest["files"][str(path)] = rec
        self.stats["embedded"].append(str(path))

    def _load_entry(self, key: str, path: str) -> Optional[Tuple[str, list, np.ndarray]]:
        try:
            pieces = json.loads((self.cache_dir / f"{key}.json").read_text("utf-8"))
            vectors = np.load(self.cache_dir / f"{key}.npy")
        except (OSError, ValueError):
            return None  # a damaged or deleted entry is simply embedded again
        if vectors.ndim != 2 or len(vectors) != len(pieces):
            return None
        return path, pieces, vectors

    def query_embedding(self, query: str) -> np.ndarray:
        key = hashlib.sha256(f"{self.fingerprint}\0{query}".encode("utf-8")).hexdigest()[:32]
        path = self.cache_dir / "queries" / f"{key}.npy"
        if self.use_cache:
            try:
                return np.load(path)
            except (OSError, ValueError):
                pass
        vec = self.pipe.encode([query], desc="query")[0]
        if self.use_cache:
            _atomic_write(path, lambda f: np.save(f, vec))
        return vec

    def search(self, query: str, files: Sequence[os.PathLike], top_k: int = 5) -> List[dict]:
        """The ``top_k`` passages of ``files`` closest to ``query``: dicts of score, file, line, text."""
        if not isinstance(query, str) or not query.strip():
            raise PipelineError("query is empty; give some text to search for")
        if not isinstance(top_k, int) or top_k < 1:
            raise PipelineError(f"top_k must be a positive int, got {top_k!r}")
        embedded = []
        try:
            embedded = self.embed_files([Path(f) for f in files])
        finally:
            self._save_manifest()
        q = self.query_embedding(query)
        matrix = np.concatenate([vectors for _, _, vectors in embedded])
        norms = np.maximum(np.linalg.norm(matrix, axis=1) * np.linalg.norm(q), 1e-12)
        scores = matrix @ q / norms
        # The top_k without sorting every score; ties go to the earlier passage, as in a stable sort.
        k = min(top_k, len(scores))
        kth = -np.partition(-scores, k - 1)[k - 1]
        above = np.flatnonzero(scores > kth)
        top = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
        best = top[np.lexsort((top, -scores[top]))]
        starts = np.cumsum([0] + [len(pieces) for _, pieces, _ in embedded])
        out = []
        for i in best:
            f = int(np.searchsorted(starts, i, side="right")) - 1
            file, pieces, _ = embedded[f]
            line, text = pieces[i - starts[f]]
            out.append({"score": float(scores[i]), "file": file, "line": line, "text": text})
        return out
