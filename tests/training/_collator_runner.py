"""Run data-collator cases with one library and describe the results as JSON.

The same code runs with polyformers, with the installed reference (transformers 5) and, as a script in the
4.37 reference venv, with transformers 4.37:

    <python> _collator_runner.py {polyformers|transformers} ASSETS_DIR < cases.json > results.json

A case is a dict:
    tokenizer   {"kind": "electra"|"roberta"|"gpt2", "padding_side": ..., "pad_token": ..., "mask_token": ...}
    collator    a collator class name, or "default_data_collator"
    kwargs      collator constructor arguments (the tokenizer is passed first, except to default_data_collator)
    model       optional PegasusConfig arguments: a tiny PegasusForConditionalGeneration is passed as model=
    texts       texts to encode with the case's tokenizer (``encode`` kwargs), giving dict features, or
    features    the features themselves; values tagged {"__t__": "torch"|"np"|"np_scalar", "v": .., "dtype": ..}
                become tensors / arrays
    extra       per-example dicts merged into the features; "targets" texts become ``labels``
    ids_only    pass only the input_ids lists (not dicts)
    as_objects  pass the features as dataclass instances instead of dicts
    call        keyword arguments of the collator call
    seed        seeds Python's random, NumPy and torch before the calls
    calls       how many consecutive calls (default 1): checks that each draws the same amount of randomness
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import warnings
from pathlib import Path


def _library(name: str):
    import numpy as np
    import torch

    if name == "polyformers":
        import polyformers
        from polyformers import tokenizers as toks
        from polyformers.training import collators

        models = polyformers
    else:
        import transformers as toks

        collators = toks
        models = toks
    return {"np": np, "torch": torch, "toks": toks, "collators": collators, "models": models}


def _tokenizer(lib, assets: Path, spec: dict, cache: dict):
    key = json.dumps(spec, sort_keys=True)
    if key not in cache:
        toks = lib["toks"]
        kind = spec["kind"]
        if kind == "electra":
            tok = toks.ElectraTokenizer(str(assets / "minilm" / "vocab.txt"))
        elif kind == "roberta":
            tok = toks.RobertaTokenizer(str(assets / "gpt2" / "vocab.json"), str(assets / "gpt2" / "merges.txt"))
        elif kind == "gpt2":
            tok = toks.GPT2Tokenizer(str(assets / "gpt2" / "vocab.json"), str(assets / "gpt2" / "merges.txt"))
        else:
            raise ValueError(kind)
        for attr in ("padding_side", "pad_token", "mask_token"):
            if attr in spec:
                setattr(tok, attr, spec[attr])
        cache[key] = tok
    return cache[key]


def _untag(lib, value):
    if isinstance(value, dict) and "__t__" in value:
        np, torch = lib["np"], lib["torch"]
        if value["__t__"] == "torch":
            return torch.tensor(value["v"], dtype=getattr(torch, value["dtype"]))
        if value["__t__"] == "np":
            return np.array(value["v"], dtype=value["dtype"])
        if value["__t__"] == "np_scalar":
            return np.dtype(value["dtype"]).type(value["v"])
        raise ValueError(value)
    return value


def _features(lib, case: dict, tok):
    if "texts" in case:
        features = [dict(tok(text, **case.get("encode", {}))) for text in case["texts"]]
    else:
        features = [{k: _untag(lib, v) for k, v in f.items()} for f in case["features"]]
    for feature, extra in zip(features, case.get("extra", [])):
        for key, value in extra.items():
            if key == "targets":
                feature["labels"] = tok(value)["input_ids"]
            else:
                feature[key] = _untag(lib, value)
    if case.get("ids_only"):
        return [f["input_ids"] for f in features]
    if case.get("as_objects"):
        cls = dataclasses.make_dataclass("Example", list(features[0].keys()))
        return [cls(**f) for f in features]
    return features


def _describe(lib, value):
    np, torch = lib["np"], lib["torch"]
    if isinstance(value, torch.Tensor):
        return {"fw": "torch", "dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                "v": value.tolist()}
    if isinstance(value, np.ndarray):
        return {"fw": "np", "dtype": str(value.dtype), "shape": list(value.shape), "v": value.tolist()}
    return {"fw": type(value).__name__, "v": repr(value)}


def run_case(lib, assets: Path, case: dict, cache: dict) -> dict:
    np, torch = lib["np"], lib["torch"]
    try:
        tok = _tokenizer(lib, assets, case["tokenizer"], cache) if "tokenizer" in case else None
        name = case["collator"]
        factory = getattr(lib["collators"], name)
        kwargs = dict(case.get("kwargs", {}))
        if "model" in case:
            config = lib["models"].PegasusConfig(**case["model"])
            torch.manual_seed(0)
            kwargs["model"] = lib["models"].PegasusForConditionalGeneration(config)
        features = _features(lib, case, tok)
        if name == "default_data_collator":
            collate = lambda f, **kw: factory(f, **kw)  # noqa: E731
        else:
            collate = factory(tok, **kwargs)
        if "seed" in case:
            random.seed(case["seed"])
            np.random.seed(case["seed"])
            torch.manual_seed(case["seed"])
        outputs = []
        for _ in range(case.get("calls", 1)):
            batch = collate(features, **case.get("call", {}))
            outputs.append({"type": type(batch).__name__, "keys": list(batch.keys()),
                            "values": {k: _describe(lib, v) for k, v in batch.items()}})
        return {"outputs": outputs}
    except Exception as error:  # noqa: BLE001 - the error is the result
        return {"error": type(error).__name__, "mro": [c.__name__ for c in type(error).__mro__],
                "message": str(error)}


def run_cases(library: str, assets, cases: list) -> list:
    lib = _library(library)
    cache: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [run_case(lib, Path(assets), case, cache) for case in cases]


if __name__ == "__main__":
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.disable(logging.WARNING)
    cases = json.load(sys.stdin)
    json.dump(run_cases(sys.argv[1], sys.argv[2], cases), sys.stdout)
