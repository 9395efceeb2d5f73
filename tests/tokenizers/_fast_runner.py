"""Runs a JSON description of tokenizer calls against one library and returns JSON-able results.

The same code drives the reference (in its own interpreter, through _fast_oracle.py) and
polyformers (in-process), so both sides are asked exactly the same questions.

Spec: {"tokenizers": {name: {"cls", "how": "init"|"from_pretrained", "args", "kwargs",
       "add_tokens": [[tokens, special]], "add_special_tokens": {...}, "save": folder}},
       "calls": [{"id", "tok", "op", "args", "kwargs", "probes": [[method, args], ...]}]}
An entry's "side" (default "both") says in which runs it is built or made.
A {"__added__": {...}} value anywhere in args becomes the library's AddedToken.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _decode_value(value: Any, lib: Any) -> Any:
    if isinstance(value, dict):
        if "__added__" in value:
            return lib.AddedToken(**value["__added__"])
        if "__tuple__" in value:
            return tuple(_decode_value(item, lib) for item in value["__tuple__"])
        return {key: _decode_value(item, lib) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_value(item, lib) for item in value]
    return value


def _tensor_kind(value: Any) -> str | None:
    module = type(value).__module__
    if module.startswith("torch"):
        return "pt"
    if module.startswith("numpy"):
        return "np"
    if module.startswith("tensorflow"):
        return "tf"
    if module.startswith("jax") or module.startswith("jaxlib"):
        return "jax"
    return None


def encode_value(value: Any) -> Any:
    """Plain JSON for results: tensors keep their kind, dtype and shape so both sides can be compared."""
    kind = _tensor_kind(value)
    if kind is not None and hasattr(value, "shape"):
        if kind == "tf":
            dtype, data = value.dtype.name, value.numpy().tolist()
        elif kind == "pt":
            dtype, data = str(value.dtype).replace("torch.", ""), value.tolist()
        else:
            dtype, data = str(value.dtype), value.tolist()
        return {"__tensor__": kind, "dtype": dtype, "shape": list(value.shape), "value": data}
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(key): encode_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_value(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "content") and hasattr(value, "special"):
        return {
            "content": value.content,
            "lstrip": value.lstrip,
            "rstrip": value.rstrip,
            "single_word": value.single_word,
            "normalized": value.normalized,
            "special": value.special,
        }
    return value


def _batch_encoding(result: Any, probes: list) -> dict:
    out: dict[str, Any] = {"data": encode_value(dict(result.items()))}
    encodings = getattr(result, "encodings", None) or getattr(result, "_encodings", None)
    if encodings:
        out["tokens"] = [result.tokens(i) for i in range(len(encodings))]
        out["word_ids"] = [result.word_ids(i) for i in range(len(encodings))]
        out["sequence_ids"] = [result.sequence_ids(i) for i in range(len(encodings))]
        out["n_sequences"] = result.n_sequences
    out["is_fast"] = result.is_fast
    out["probes"] = []
    for method, args in probes:
        try:
            value = getattr(result, method)(*args)
            out["probes"].append(encode_value(tuple(value) if isinstance(value, tuple) else value))
        except Exception as error:  # the error's kind is part of the behaviour under test
            out["probes"].append({"__error__": type(error).__name__})
    return out


def build(spec: dict, lib: Any) -> Any:
    cls = getattr(lib, spec["cls"])
    args = _decode_value(spec.get("args", []), lib)
    kwargs = _decode_value(spec.get("kwargs", {}), lib)
    if spec.get("how", "init") == "from_pretrained":
        tokenizer = cls.from_pretrained(*args, **kwargs)
    else:
        tokenizer = cls(*args, **kwargs)
    for tokens, special in spec.get("add_tokens", []):
        tokenizer.add_tokens(_decode_value(tokens, lib), special_tokens=special)
    if "add_special_tokens" in spec:
        tokenizer.add_special_tokens(_decode_value(spec["add_special_tokens"], lib))
    if "save" in spec:
        tokenizer.save_pretrained(spec["save"], **spec.get("save_kwargs", {}))
    return tokenizer


def describe(tokenizer: Any) -> dict:
    """The state that a loaded or constructed tokenizer should agree on."""
    return {
        "len": len(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "special_tokens_map": encode_value(tokenizer.special_tokens_map),
        "all_special_ids": tokenizer.all_special_ids,
        "added_tokens_decoder": encode_value(tokenizer.added_tokens_decoder),
        "model_max_length": tokenizer.model_max_length,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "is_fast": tokenizer.is_fast,
    }


def run(spec: dict, lib: Any, sides: Iterable[str]) -> dict:
    """Build the tokenizers and make the calls whose "side" (default "both") is one of `sides`."""
    sides = set(sides)
    tokenizers = {}
    results: dict[str, Any] = {"tokenizers": {}, "calls": {}, "messages": {}}
    for name, tok_spec in spec.get("tokenizers", {}).items():
        if tok_spec.get("side", "both") not in sides:
            continue
        try:
            tokenizers[name] = build(tok_spec, lib)
            results["tokenizers"][name] = describe(tokenizers[name])
        except Exception as error:
            results["tokenizers"][name] = {"__error__": type(error).__name__, "message": str(error)}
    for call in spec.get("calls", []):
        if call.get("side", "both") not in sides:
            continue
        tokenizer = tokenizers.get(call["tok"])
        if tokenizer is None:
            results["calls"][call["id"]] = {"__error__": "NoTokenizer"}
            continue
        op = call.get("op", "__call__")
        args = _decode_value(call.get("args", []), lib)
        kwargs = _decode_value(call.get("kwargs", {}), lib)
        try:
            target = tokenizer if op == "__call__" else getattr(tokenizer, op)
            value = target(*args, **kwargs)
        except BaseException as error:  # the backend's panics are BaseExceptions
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            # Error types and messages are free to differ (ours name the argument); that it fails is compared.
            results["calls"][call["id"]] = {"__error__": True}
            results["messages"][call["id"]] = f"{type(error).__name__}: {error}"
            continue
        if hasattr(value, "backend_tokenizer"):
            # A new tokenizer (training): trained ids may be numbered differently from run to run, even in
            # the reference, so it is compared through its vocabulary and the tokens it produces.
            texts = call.get("check_texts", [])
            encoded = value(texts, texts[::-1])["input_ids"] if texts else []
            results["calls"][call["id"]] = {
                "state": describe(value),
                "vocab": sorted(value.get_vocab()),
                "tokens": [value.convert_ids_to_tokens(ids) for ids in encoded],
                "special_ids": [[token, value.convert_tokens_to_ids(token)] for token in value.all_special_tokens],
            }
        elif type(value).__name__ == "BatchEncoding":
            results["calls"][call["id"]] = _batch_encoding(value, call.get("probes", []))
        else:
            results["calls"][call["id"]] = encode_value(value)
    return results


def run_as_data(spec: dict, lib: Any, sides: Iterable[str]) -> dict:
    """``run`` with warnings silenced, through a JSON round trip: both sides' answers then compare as plain
    data (tuples become lists)."""
    import json
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return json.loads(json.dumps(run(spec, lib, sides=sides)))


def run_reference(legacy_python, script, spec: dict) -> dict:
    """The JSON ``script`` prints when the 4.37 venv's interpreter runs it with ``spec`` on stdin."""
    import json
    import os
    import subprocess

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(legacy_python), str(script)], input=json.dumps(spec), capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"reference run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
