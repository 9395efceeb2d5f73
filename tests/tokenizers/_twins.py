"""Slow twins: where 4.37's fast tokenizer drifts from its slow one, polyformers' fast tokenizer gives the slow
one's answer. A twin is 4.37's slow tokenizer built as a fast one of a ``_fast_runner`` spec, answering the same
calls in the same order, without offsets or probes (slow tokenizers give neither)."""

from __future__ import annotations

from typing import Any, Callable


def add_slow_twins(tokenizers: dict, calls: list, names, slow_cls: str,
                   wanted: Callable[[dict], bool] = lambda call: True) -> None:
    """Add a twin tokenizer ``slow-twin:NAME`` for each of ``names`` and a call ``ID|slow`` for each of their
    calls that ``wanted`` picks (calls already twinned are left as they are); only the reference answers them."""
    for name in names:
        tokenizers.setdefault(f"slow-twin:{name}", {**tokenizers[name], "cls": slow_cls, "side": "oracle"})
    ids = {call["id"] for call in calls}
    for call in list(calls):
        if (call["tok"] in names and call.get("side", "both") == "both" and call["id"] + "|slow" not in ids
                and call.get("op") != "train_new_from_iterator" and wanted(call)):
            kwargs = {key: value for key, value in call.get("kwargs", {}).items() if key != "return_offsets_mapping"}
            calls.append({**call, "id": call["id"] + "|slow", "tok": f"slow-twin:{call['tok']}", "kwargs": kwargs,
                          "probes": [], "side": "oracle"})


def strip(answer: Any) -> Any:
    return answer["data"] if isinstance(answer, dict) and "data" in answer else answer


def follows_slow_twin(ours: Any, fast: Any, slow: Any) -> bool:
    """Whether our answer differs from 4.37's fast one and is its slow twin's: every field the slow tokenizer
    gives (a BatchEncoding's data, one text's ``length`` as a number where a fast tokenizer gives a list);
    tokens without the space that an lstrip/rstrip token took (slow tokenizers give the content)."""
    if slow is None or ours == fast:
        return False
    ours, slow = strip(ours), strip(slow)
    if isinstance(slow, list) and slow and all(isinstance(token, str) for token in slow):
        return isinstance(ours, list) and [str(token).strip() for token in ours] == [token.strip() for token in slow]
    if isinstance(slow, dict) and isinstance(ours, dict) and "input_ids" in slow:
        return all(ours.get(key) in (value, [value]) if key == "length" else ours.get(key) == value
                   for key, value in slow.items())
    return ours == slow
