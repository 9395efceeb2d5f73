"""The ``polyformers`` command: one subcommand per task, plus ``search``, ``info`` and ``convert``.

Texts come from the arguments, from ``--file`` (one text per non-empty line) or, when neither is given
and stdin is not a terminal, from stdin (one text per line). Results print as a table, or as JSON with
``--json``. Problems the user can fix (a missing file, a model of the wrong family, empty input) print one
line on stderr and exit 1; a malformed command line exits 2. ``POLYFORMERS_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

PROG = "polyformers"


class UsageError(Exception):
    """A command line that cannot be run as given (exit code 2)."""


# ----------------------------------------------------------------------------- input and output


def read_texts(args, *, what: str = "text") -> List[str]:
    texts = list(getattr(args, "texts", None) or [])
    from_stdin = texts == ["-"]
    if from_stdin:
        texts = []
    for path in getattr(args, "file", None) or []:
        try:
            with open(path, encoding="utf-8") as f:
                texts.extend(ln.strip() for ln in f if ln.strip())
        except UnicodeDecodeError:
            raise ValueError(f"--file {path}: not UTF-8 text") from None
    if from_stdin or (not texts and not getattr(args, "file", None)):
        if sys.stdin is None or (sys.stdin.isatty() and not from_stdin):
            raise UsageError(f"no input: give a {what} as an argument, --file PATH, or pipe text into stdin")
        texts.extend(ln.strip() for ln in sys.stdin.read().splitlines() if ln.strip())
    if not texts:
        raise ValueError(f"empty input: no non-empty {what} was given")
    return texts


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: max(width - 1, 1)] + "…"


def print_table(rows: Sequence[Sequence], headers: Sequence[str], out=None) -> None:
    """Columns aligned; the last column takes what the terminal width leaves."""
    out = out or sys.stdout
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers[:-1])]
    room = max(shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths), 30)
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)) + ("  " if widths else "")
    print(line(headers) + headers[-1], file=out)
    print(line(["-" * w for w in widths]) + "-" * min(room, max([len(headers[-1])] + [len(r[-1]) for r in cells])),
          file=out)
    for r in cells:
        print(line(r) + _one_line(r[-1], room), file=out)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def status(args, message: str) -> None:
    """A progress note on stderr, only for a person watching a terminal."""
    if not args.quiet and sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pipelines


def quiet_start(framework: str) -> None:
    """Import and start TensorFlow or JAX with the process' stderr closed: their native runtimes log
    start-up notes (CUDA probing, CPU features) that no setting silences and that would bury the one
    line a user error prints. Python exceptions still surface; POLYFORMERS_DEBUG=1 keeps everything."""
    if framework not in ("tf", "flax") or os.environ.get("POLYFORMERS_DEBUG") not in (None, "", "0"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            if framework == "tf":
                import tensorflow as tf

                tf.constant(0) + 0  # the runtime starts (and logs) on the first op
            else:
                import jax.numpy as jnp

                jnp.zeros(1) + 0
    except ImportError:
        pass  # reported where the framework is needed, with the stderr back
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def build(args, task: str, model: Optional[str] = None, **kwargs):
    from .pipelines import pipeline

    model = model or args.model
    if model is None:
        raise UsageError(f"--model is required for {args.command}: a checkpoint folder or a Hub id")
    start = time.monotonic()
    status(args, f"loading {model} ...")
    quiet_start(args.framework)
    pipe = pipeline(task, model=model, framework=args.framework, device=args.device,
                    batch_size=args.batch_size, progress=not args.quiet, **kwargs)
    status(args, f"loaded {type(pipe.model).__name__} in {time.monotonic() - start:.1f} s")
    return pipe


def embedding_model(args) -> str:
    from .pipelines import default_embedding_model

    return args.model or default_embedding_model()


def cmd_embed(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "sentence-similarity", embedding_model(args))
    vectors = pipe.encode(texts)
    if args.json:
        print_json([{"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(texts, vectors)])
    else:
        import numpy as np

        rows = [(i, len(v), float(np.linalg.norm(v)), " ".join(f"{x:+.3f}" for x in v[:4]) + " …", t)
                for i, (t, v) in enumerate(zip(texts, vectors))]
        print_table(rows, ["#", "dim", "norm", "first values", "text"])
    return 0


def cmd_similarity(args) -> int:
    texts = read_texts(args)
    if len(texts) < 2:
        raise UsageError("similarity needs a source sentence and at least one sentence to compare it with")
    pipe = build(args, "sentence-similarity", embedding_model(args))
    scores = pipe(texts[0], texts[1:])
    if args.json:
        print_json({"source_sentence": texts[0],
                    "results": [{"sentence": s, "score": float(x)} for s, x in zip(texts[1:], scores)]})
    else:
        print(f"source: {texts[0]}")
        ranked = sorted(zip(scores, texts[1:]), key=lambda p: -p[0])
        print_table([(i + 1, float(x), s) for i, (x, s) in enumerate(ranked)], ["rank", "score", "sentence"])
    return 0


def cmd_search(args) -> int:
    from .search import SearchIndex, collect_files

    query = args.query
    if query == "-":
        query = sys.stdin.read().strip()
    if not query.strip():
        raise ValueError("empty input: the query is empty")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    files = collect_files(args.paths)
    model = embedding_model(args)
    start = time.monotonic()
    index = SearchIndex(model, lambda: build(args, "sentence-similarity", model), cache_dir=args.cache_dir,
                        split=args.split, use_cache=not args.no_cache)
    results = index.search(query, files, top_k=args.top_k)
    took = time.monotonic() - start
    if args.json:
        print_json({"query": query, "model": model, "results": results, "embedded_files": index.stats["embedded"],
                    "cached_files": index.stats["cached"], "seconds": round(took, 3)})
        return 0
    here = os.getcwd()
    rows = []
    for i, r in enumerate(results):
        where = os.path.relpath(r["file"], here) if r["file"].startswith(here) else r["file"]
        rows.append((i + 1, r["score"], f"{where}:{r['line']}", r["text"]))
    print(f"query: {query}")
    print_table(rows, ["rank", "score", "where", "passage"])
    if not args.quiet:
        sys.stdout.flush()
        e, c = len(index.stats["embedded"]), len(index.stats["cached"])
        print(f"{len(files)} file(s): {e} embedded, {c} from cache; {took:.1f} s", file=sys.stderr)
    return 0


def cmd_fill_mask(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "fill-mask")
    kwargs = {"top_k": args.top_k}
    if args.targets:
        kwargs["targets"] = args.targets
    results = pipe(texts, **kwargs)
    # One mask gives a list of candidates per text, several masks a list per mask.
    if args.json:
        print_json([{"text": t, "predictions": r} for t, r in zip(texts, results)])
        return 0
    rows = []
    for t, r in zip(texts, results):
        groups = r if r and isinstance(r[0], list) else [r]
        for m, cands in enumerate(groups):
            for c in cands:
                rows.append((m, c["token_str"], c["score"], c["sequence"]))
    print_table(rows, ["mask", "token", "score", "sequence"])
    return 0


def cmd_classify(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "text-classification")
    kwargs = {"top_k": None if args.top_k == 0 else args.top_k}
    if args.function:
        kwargs["function_to_apply"] = args.function
    results = pipe(texts, **kwargs)
    if args.json:
        print_json([{"text": t, "labels": r if isinstance(r, list) else [r]} for t, r in zip(texts, results)])
        return 0
    rows = [(lab["label"], lab["score"], t) for t, r in zip(texts, results)
            for lab in (r if isinstance(r, list) else [r])]
    print_table(rows, ["label", "score", "text"])
    return 0


def cmd_ner(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "token-classification", aggregation_strategy=args.aggregation)
    results = pipe(texts)
    if args.json:
        print_json([{"text": t, "entities": _jsonable(r)} for t, r in zip(texts, results)])
        return 0
    rows = []
    for n, r in enumerate(results):
        for e in r:
            label = e.get("entity_group", e.get("entity"))
            rows.append((n, label, float(e["score"]), f"{e['start']}-{e['end']}", e["word"]))
    print_table(rows, ["text", "entity", "score", "span", "word"])
    return 0


def cmd_qa(args) -> int:
    if args.context_file:
        from .search import read_text_file
        from pathlib import Path

        context = read_text_file(Path(args.context_file))
    elif args.context is not None:
        context = args.context
    else:
        context = sys.stdin.read() if not sys.stdin.isatty() else ""
        if not context.strip() and sys.stdin.isatty():
            raise UsageError("qa needs a context: --context TEXT, --context-file PATH or text on stdin")
    if not context.strip():
        raise ValueError("empty input: the context is empty")
    if not args.question.strip():
        raise ValueError("empty input: the question is empty")
    pipe = build(args, "question-answering")
    answers = pipe(question=args.question, context=context, top_k=args.top_k, doc_stride=args.doc_stride,
                   max_answer_len=args.max_answer_len, handle_impossible_answer=args.handle_impossible_answer)
    answers = answers if isinstance(answers, list) else [answers]
    if args.json:
        print_json({"question": args.question, "answers": _jsonable(answers)})
        return 0
    print_table([(i + 1, float(a["score"]), f"{a['start']}-{a['end']}", a["answer"]) for i, a in enumerate(answers)],
                ["rank", "score", "span", "answer"])
    return 0


def _generation_kwargs(args) -> dict:
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample, "num_beams": args.num_beams}
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    return kwargs


def cmd_generate(args) -> int:
    texts = read_texts(args, what="prompt")
    pipe = build(args, "text-generation")
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    results = pipe(texts, return_full_text=not args.new_text_only, **_generation_kwargs(args))
    if args.json:
        print_json([{"prompt": t, "generated": r} for t, r in zip(texts, results)])
        return 0
    print_table([(i, r[0]["generated_text"]) for i, r in enumerate(results)], ["#", "generated_text"])
    return 0


def cmd_summarize(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "summarization")
    kwargs = {"num_beams": args.num_beams, "truncation": args.truncation}
    for name in ("max_new_tokens", "max_length", "min_length", "no_repeat_ngram_size"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    # A list of texts with one summary each comes back flat: one dict per text.
    summaries = [r if isinstance(r, dict) else r[0] for r in pipe(texts, **kwargs)]
    if args.json:
        print_json([{"text": t, "summary": r["summary_text"]} for t, r in zip(texts, summaries)])
        return 0
    print_table([(i, r["summary_text"]) for i, r in enumerate(summaries)], ["#", "summary_text"])
    return 0


def cmd_detect(args) -> int:
    texts = read_texts(args)
    pipe = build(args, "replaced-token-detection")
    results = pipe(texts, threshold=args.threshold)
    if args.json:
        print_json([{"text": t, "tokens": _jsonable(r)} for t, r in zip(texts, results)])
        return 0
    rows = [(n, tok["token"], float(tok["score"]), "REPLACED" if tok["replaced"] else "")
            for n, r in enumerate(results) for tok in r]
    print_table(rows, ["text", "token", "p(replaced)", "verdict"])
    return 0


def cmd_info(args) -> int:
    info = model_info(args.path)
    if args.json:
        print_json(info)
        return 0
    rows = [(k, v) for k, v in info.items() if k != "files"]
    rows += [(f"file {f['name']}", f"{f['size_human']}") for f in info["files"]]
    print_table(rows, ["field", "value"])
    return 0


def cmd_convert(args) -> int:
    report = convert(args.source, args.dest, dtype=args.dtype, max_shard_size=args.max_shard_size,
                     verify=not args.no_verify, quiet=args.quiet)
    if args.json:
        print_json(report)
    else:
        print_table([(k, v) for k, v in report.items() if not isinstance(v, (list, dict))], ["field", "value"])
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def model_info(path: str) -> dict:
    """Family, classes, parameter count, dtypes, size and files of a checkpoint folder, read from the
    config and the weight headers only (no framework is imported)."""
    from collections import Counter

    from .auto import AutoConfig
    from .checkpoints import find_weights

    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a checkpoint folder")
    config = AutoConfig.from_pretrained(path)
    reader = find_weights(path)
    params, dtypes = 0, Counter()
    for key in reader.keys():
        count = 1
        for d in reader.shape(key):
            count *= d
        params += count
        dtypes[reader.dtype(key)] += count
    files = []
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            files.append({"name": os.path.relpath(full, path), "size": size, "size_human": _human(size)})
    total = sum(f["size"] for f in files)
    return {
        "family": config.model_type,
        "architectures": ", ".join(getattr(config, "architectures", None) or []) or "-",
        "parameters": params,
        "parameters_human": f"{params / 1e6:.1f} M",
        "dtypes": ", ".join(f"{k} ({v / params:.0%})" for k, v in dtypes.most_common()) if params else "-",
        "tensors": len(list(reader.keys())),
        "size": total,
        "size_human": _human(total),
        "files": files,
    }


# Other frameworks' class names, as the reference prefixed them.
_PREFIX = {"tf": "TF", "flax": "Flax"}
VERIFY_ATOL = 1e-4  # PyTorch vs the framework that wrote a legacy file: same weights, other kernels


def convert(source: str, dest: str, dtype=None, max_shard_size="5GB", verify: bool = True, quiet: bool = False) -> dict:
    """Re-save a checkpoint as safetensors with PyTorch names: from ``model.safetensors``,
    ``pytorch_model.bin``, or the reference's legacy ``tf_model.h5`` / ``flax_model.msgpack``, optionally
    in another dtype and shard size.

    Verification, unless ``verify=False``: a legacy file's weights, read into the PyTorch class, must give
    the outputs of the TF (or Flax) class that reads the source (within 1e-4), and the written folder,
    reloaded, must reproduce the converted model exactly. A failed check raises ValueError.
    """
    from .checkpoints import find_weights
    from .checkpoints.legacy import find_legacy_weights

    if os.path.abspath(source) == os.path.abspath(dest):
        raise ValueError("dest must differ from source: converting in place could lose the only copy")
    if not os.path.isdir(source):
        raise ValueError(f"source: expected a checkpoint folder, got {source!r}")
    target_dtype = None
    if dtype is not None:
        from .checkpoints.dtypes import to_torch_dtype

        try:
            target_dtype = to_torch_dtype(dtype)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"--dtype: expected a floating dtype such as float16 or bfloat16, got {dtype!r} "
                             f"({err})") from None
        if not target_dtype.is_floating_point:
            raise ValueError(f"--dtype: expected a floating dtype such as float16 or bfloat16, got {dtype!r}")
    try:
        reader, origin = find_weights(source), "pt"
    except OSError:
        reader, origin = find_legacy_weights(source), None
        if reader is None:
            raise OSError(f"{source}: no weights found (model.safetensors, pytorch_model.bin, tf_model.h5 or "
                          "flax_model.msgpack)") from None
        origin = reader.source_format
    with reader:
        model, config = _pytorch_model(source, reader)
    probe = _probe_inputs(config)
    source_out = _outputs(model, probe)
    report = {"source": source, "dest": dest, "source_format": origin, "class": type(model).__name__,
              "dtype": str(dtype or "unchanged")}
    if origin != "pt" and verify:
        # The legacy file decides what right is: its own framework's class on the source folder.
        other = _legacy_class(type(model).__name__, origin)
        quiet_start(origin)
        diff = float(np.abs(_outputs(other.from_pretrained(source), probe) - source_out).max())
        report[f"max_abs_diff_vs_{origin}"] = diff
        if not diff <= VERIFY_ATOL:
            raise ValueError(f"verification failed: the weights read from {source!r} give outputs that differ by "
                             f"{diff:.3g} (more than {VERIFY_ATOL}) from {other.__name__}'s; nothing was written")
    if target_dtype is not None:
        model = model.to(target_dtype)
    # What the written files must reproduce exactly: the source model in the target dtype.
    expected = _outputs(model, probe)
    report["max_abs_diff_from_source"] = float(np.abs(expected - source_out).max())
    with _Note(quiet, "saving"):
        model.save_pretrained(dest, max_shard_size=max_shard_size)
    for name in os.listdir(source):
        # Tokenizer and sentence-transformers files travel along; weights were just written anew.
        src = os.path.join(source, name)
        if name.endswith((".bin", ".safetensors", ".h5", ".msgpack", ".index.json")) or name == "config.json":
            continue
        target = os.path.join(dest, name)
        if os.path.isdir(src):
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
    if verify:
        after = _outputs(type(model).from_pretrained(dest, dtype="auto"), probe)
        diff = float(np.abs(after - expected).max())
        report["max_abs_diff_after_reload"] = diff
        report["verified"] = diff <= 1e-6 * max(float(np.abs(expected).max()), 1.0)
        if not report["verified"]:
            raise ValueError(f"verification failed: the written checkpoint's outputs differ by {diff:.3g} from the "
                             f"converted model's; {dest} is kept for inspection")
    report["files"] = sorted(os.listdir(dest))
    return report


def _pytorch_model(source: str, reader):
    """The PyTorch class the config's ``architectures`` names (else the family's bare model), with the
    reader's weights; a head missing from the weights (a bare encoder saved by a head class) falls back
    to the bare model."""
    import polyformers
    from .auto import AutoConfig, AutoModel
    from .pt.modeling import init_empty_weights

    config = AutoConfig.from_pretrained(source)
    names = [n for n in getattr(config, "architectures", None) or [] if n in dir(polyformers)]
    candidates = [getattr(polyformers, n) for n in names[:1]] + [AutoModel._model_class(config)]
    for cls in candidates:
        with init_empty_weights():
            model = cls(config)
        info = model._load_weights(reader, None, False, source)
        # Missing body weights are ones the family computes (Pegasus' sinusoidal tables); a missing head
        # means the weights are a bare model's.
        prefix = (model.base_model_prefix or "") + "."
        if not any(not k.startswith(prefix) for k in info["missing_keys"]) or cls is candidates[-1]:
            break
    return model.eval(), config


def _legacy_class(pt_name: str, framework: str):
    import polyformers

    name = _PREFIX[framework] + pt_name
    if name not in dir(polyformers):
        raise ValueError(f"cannot verify: polyformers has no {name} to run the source's {framework!r} weights "
                         f"with; pass --no-verify to convert without the check")
    return getattr(polyformers, name)


def _probe_inputs(config) -> dict:
    """A few token ids every family accepts (and decoder ids for an encoder-decoder)."""
    vocab = config.vocab_size
    ids = np.arange(3, 3 + min(12, vocab - 3), dtype=np.int64)[None] % vocab
    probe = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        probe["decoder_input_ids"] = np.concatenate([[[start]], ids[:, :4]], axis=1)
    return probe


def _outputs(model, probe: dict) -> np.ndarray:
    """The first tensor output (logits or last hidden state) of a PyTorch, Keras or Flax model, float32."""
    name = type(model).__name__
    if name.startswith(("TF", "Flax")):
        arrays = {k: v.astype(np.int32) for k, v in probe.items()}
        out = model(**arrays, return_dict=True)
        return np.asarray(next(v for v in out.values() if hasattr(v, "shape")), dtype=np.float32)
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.as_tensor(v) for k, v in probe.items()}, return_dict=True)
    return next(v for v in out.values() if isinstance(v, torch.Tensor)).float().numpy()


class _Note:
    """A note while a long step runs, for a person at a terminal."""

    def __init__(self, quiet: bool, what: str):
        self.show = not quiet and sys.stderr.isatty()
        self.what = what

    def __enter__(self):
        if self.show:
            print(f"{self.what} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        return False


def _jsonable(obj):
    """Numpy scalars (scores, indices) as plain numbers."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like argparse but without the full usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser, *, model_help: str, texts: bool = True) -> None:
    p.add_argument("--model", "-m", help=model_help)
    p.add_argument("--framework", choices=["pt", "tf", "flax"], default="pt", help="framework (default: pt)")
    p.add_argument("--device", default=None, help="PyTorch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="texts per forward pass (default: 16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or notes on stderr")
    if texts:
        p.add_argument("texts", nargs="*", metavar="TEXT", help="input texts ('-' or none: read stdin)")
        p.add_argument("--file", "-f", action="append", metavar="PATH", help="read texts from a file, one per line")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Transformers 4.37-compatible models from the command line.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    default_st = "model folder or Hub id (default: all-mpnet-base-v2 fetched by the set-up)"
    need = "model folder or Hub id (required)"

    p = sub.add_parser("embed", help="sentence embeddings (mean pooled, unit length)")
    _common(p, model_help=default_st)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("similarity", help="cosine similarity of the first text with each of the others")
    _common(p, model_help=default_st)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("search", help="semantic search over text files, embeddings cached on disk")
    _common(p, model_help=default_st, texts=False)
    p.add_argument("query", help="what to look for ('-' reads it from stdin)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="text files, folders of .txt files, or glob patterns ('plays/*.txt', 'docs/**/*.txt')")
    p.add_argument("--top-k", "-k", type=int, default=5, help="passages to show (default: 5)")
    p.add_argument("--split", choices=["paragraphs", "lines"], default="paragraphs",
                   help="passage unit (default: paragraphs, i.e. blank-line separated blocks)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache (default: $POLYFORMERS_CACHE/search or ~/.cache/polyformers/search)")
    p.add_argument("--no-cache", action="store_true", help="embed everything again and write no cache")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("fill-mask", help="predict the masked token(s)")
    _common(p, model_help=need)
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--targets", nargs="+", default=None, help="score only these candidate words")
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser("classify", help="text classification")
    _common(p, model_help=need)
    p.add_argument("--top-k", type=int, default=1, help="labels per text, 0 for all (default: 1)")
    p.add_argument("--function", choices=["softmax", "sigmoid", "none"], default=None,
                   help="function_to_apply (default: from the model's problem_type)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("ner", help="token classification (named entities)")
    _common(p, model_help=need)
    p.add_argument("--aggregation", choices=["none", "simple", "first", "average", "max"], default="simple",
                   help="aggregation_strategy (default: simple)")
    p.set_defaults(func=cmd_ner)

    p = sub.add_parser("qa", help="extractive question answering")
    _common(p, model_help=need, texts=False)
    p.add_argument("question")
    p.add_argument("--context", "-c", default=None, help="the context text")
    p.add_argument("--context-file", default=None, help="read the context from a file")
    p.add_argument("--top-k", type=_positive_int, default=1)
    p.add_argument("--doc-stride", type=_positive_int, default=None, help="default: min(128, window / 2)")
    p.add_argument("--max-answer-len", type=_positive_int, default=15)
    p.add_argument("--handle-impossible-answer", action="store_true")
    p.set_defaults(func=cmd_qa)

    p = sub.add_parser("generate", help="text generation from a prompt")
    _common(p, model_help=need)
    p.add_argument("--max-new-tokens", type=_positive_int, default=20)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--num-beams", type=_positive_int, default=1)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--new-text-only", action="store_true", help="return_full_text=False")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("summarize", help="summarization with an encoder-decoder (Pegasus)")
    _common(p, model_help=need)
    p.add_argument("--max-new-tokens", type=_positive_int, default=None)
    p.add_argument("--max-length", type=_positive_int, default=None, help="summary length limit, in tokens")
    p.add_argument("--min-length", type=_positive_int, default=None)
    p.add_argument("--no-repeat-ngram-size", type=_positive_int, default=None)
    p.add_argument("--num-beams", type=_positive_int, default=1)
    p.add_argument("--truncation", action="store_true", help="cut texts longer than the model takes")
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("detect", help="ELECTRA replaced-token detection")
    _common(p, model_help=need)
    p.add_argument("--threshold", type=float, default=0.5, help="p(replaced) above which a token is flagged")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("info", help="family, parameter count, dtypes, size and files of a checkpoint")
    p.add_argument("path", help="checkpoint folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="legacy weights to safetensors, dtype change, re-sharding, verified")
    p.add_argument("source", help="checkpoint folder")
    p.add_argument("dest", help="output folder")
    p.add_argument("--dtype", default=None, help="cast floating weights, e.g. float16, bfloat16")
    p.add_argument("--max-shard-size", default="5GB", help="e.g. 500MB (default: 5GB)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing outputs before and after")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_convert)

    from .training.cli_train import add_train_parser

    add_train_parser(sub)

    from .serve.cli import add_serve_parser

    add_serve_parser(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("POLYFORMERS_DEBUG") not in (None, "", "0")
    from .pipelines.base import PipelineError

    try:
        return args.func(args)
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (PipelineError, ValueError, OSError, KeyError, ImportError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
