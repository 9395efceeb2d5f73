"""Runs a list of tokenizer cases against any ElectraTokenizer-like class and returns JSON-able results.

The same code runs in the 4.37 reference venv (through ``_slow_oracle.py``) and in-process with
polyformers, so both sides see identical calls. A case is a dict:

    {"init": {...constructor kwargs...} | {"from_pretrained": folder, ...kwargs},
     "setup": [[method, args, kwargs], ...],      # applied once per distinct (init, setup)
     "call": method name, "args": [...], "kwargs": {...}}
or  {"init": ..., "attr": name} to read an attribute.

``{"__added__": {...}}`` anywhere in args stands for ``AddedToken(**...)``. Results are
``{"ok": value}`` or ``{"error": exception class name}``.
"""

from __future__ import annotations

import json


def _decode_arg(x):
    if isinstance(x, dict):
        if "__added__" in x:
            from tokenizers import AddedToken

            return AddedToken(**x["__added__"])
        return {k: _decode_arg(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_arg(v) for v in x]
    return x


def to_jsonable(x):
    """Tensors and arrays become {"array": values, "shape": [...], "dtype": kind}; mappings become dicts."""
    if hasattr(x, "items") and hasattr(x, "keys"):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if type(x).__module__.startswith("numpy") and hasattr(x, "tolist"):
        if getattr(x, "ndim", 0) == 0:
            return to_jsonable(x.item())
        return {"array": to_jsonable(x.tolist()), "shape": list(x.shape), "dtype": x.dtype.kind}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if type(x).__name__ == "AddedToken":
        return {"added_token": x.__getstate__()}
    return repr(x)


def run_cases(cls, vocab_file: str, cases: list) -> list:
    cache = {}
    results = []
    for case in cases:
        init = case.get("init", {})
        setup = case.get("setup", [])
        key = json.dumps([init, setup], sort_keys=True)
        try:
            if key not in cache:
                kwargs = _decode_arg(dict(init))
                if "from_pretrained" in kwargs:
                    tok = cls.from_pretrained(kwargs.pop("from_pretrained"), **kwargs)
                else:
                    tok = cls(kwargs.pop("vocab_file", vocab_file), **kwargs)
                for method, args, kw in setup:
                    getattr(tok, method)(*_decode_arg(args), **_decode_arg(kw))
                cache[key] = tok
            tok = cache[key]
            if "attr" in case:
                value = getattr(tok, case["attr"])
            else:
                value = getattr(tok, case["call"])(*_decode_arg(case.get("args", [])), **_decode_arg(case.get("kwargs", {})))
            results.append({"ok": to_jsonable(value)})
        except Exception as err:  # the type of failure is part of what is compared
            results.append({"error": type(err).__name__})
    return results
