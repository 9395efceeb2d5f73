"""``polyformers train TASK``: fine-tune (or keep pre-training) a checkpoint on a local file with the Trainer.

Tasks and the files they read:

- ``text-classification``: a CSV/TSV file with a header, or JSON lines; a text column and a label column.
  String labels become ids in sorted order, saved as ``id2label`` / ``label2id`` in the model's config;
  integer labels are ids already.
- ``token-classification``: JSON lines, each with a list of words and a list of tags of the same length.
  A word's tag goes to its first sub-token; the other sub-tokens and the special tokens get -100, which
  the loss ignores (as the reference's example scripts do).
- ``masked-lm`` / ``causal-lm``: a plain text file (one example per non-empty line) or JSON lines with a
  text column; batches are made by ``DataCollatorForLanguageModeling`` (``mlm=True`` / ``mlm=False``).
- ``replaced-token-detection``: ELECTRA's discriminator (``ElectraForPreTraining``) on the same inputs:
  each batch replaces ~15% of the ordinary tokens with random vocabulary tokens, labelled 1 (others 0).

``--output DIR`` receives the ``checkpoint-N`` folders, then the final model and tokenizer and
``metrics.json``. Under ``torchrun`` every process runs this command; the Trainer shares the work and only
process 0 prints or writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..cli import UsageError, _positive_int, print_json, print_table

TASKS = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "replaced-token-detection": "ElectraForPreTraining",
}
# Column names tried, in order, when --text-column / --label-column are not given.
TEXT_COLUMNS = {"text-classification": ("text", "sentence"), "token-classification": ("tokens", "words")}
LABEL_COLUMNS = {"text-classification": ("label", "labels"),
                 "token-classification": ("ner_tags", "tags", "labels", "label")}
LM_TEXT_COLUMNS = ("text",)
TABLE_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
RTD_PROBABILITY = 0.15
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------- parser


def _non_negative_float(value: str) -> float:
    import argparse

    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not x >= 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {value!r}")
    return x


def _positive_float(value: str) -> float:
    import argparse

    x = _non_negative_float(value)
    if x == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return x


def _ratio(value: str) -> float:
    import argparse

    x = _non_negative_float(value)
    if x > 1:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 1], got {value!r}")
    return x


def add_train_parser(sub) -> None:
    """Register ``train`` on the ``polyformers`` subparsers."""
    p = sub.add_parser("train", help="fine-tune a checkpoint on a local file (classification, LM, ELECTRA RTD)",
                       description="Fine-tune (or keep pre-training) a checkpoint on a local file with the Trainer; "
                                   "checkpoints, the final model and metrics.json go to --output.")
    p.add_argument("task", choices=list(TASKS), help="what to train")
    p.add_argument("--model", "-m", metavar="M", required=True, help="checkpoint folder or Hub id to start from")
    p.add_argument("--train", required=True, metavar="FILE", help="training data (.csv/.tsv, .jsonl, or .txt for LM tasks)")
    p.add_argument("--eval", default=None, metavar="FILE", help="held-out data in the same format")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="checkpoints, final model and metrics.json")
    p.add_argument("--epochs", metavar="N", type=_positive_float, default=3.0, help="num_train_epochs (default: 3)")
    p.add_argument("--max-steps", metavar="N", type=_positive_int, default=None,
                   help="optimisation steps; overrides --epochs (default: train --epochs)")
    p.add_argument("--batch-size", metavar="N", type=_positive_int, default=8, help="examples per device per step (default: 8)")
    p.add_argument("--grad-accum", metavar="N", type=_positive_int, default=1, help="gradient_accumulation_steps (default: 1)")
    p.add_argument("--lr", metavar="X", type=_non_negative_float, default=5e-5, help="learning rate (default: 5e-5)")
    p.add_argument("--weight-decay", metavar="X", type=_non_negative_float, default=0.0, help="(default: 0)")
    p.add_argument("--warmup-ratio", metavar="X", type=_ratio, default=0.0, help="share of steps warming up (default: 0)")
    p.add_argument("--scheduler", metavar="NAME", choices=SCHEDULERS, default="linear", help="lr_scheduler_type (default: linear)")
    p.add_argument("--max-length", metavar="N", type=_positive_int, default=None,
                   help="tokens per example, longer ones are cut (default: 128, or the tokenizer's limit if lower)")
    p.add_argument("--seed", metavar="N", type=int, default=42, help="(default: 42)")
    p.add_argument("--eval-steps", metavar="N", type=_positive_int, default=None,
                   help="evaluate every N steps (default: only once, after training)")
    p.add_argument("--save-steps", metavar="N", type=_positive_int, default=500, help="checkpoint every N steps (default: 500)")
    p.add_argument("--logging-steps", metavar="N", type=_positive_int, default=50, help="log the loss every N steps (default: 50)")
    p.add_argument("--save-total-limit", metavar="N", type=_positive_int, default=None, help="keep at most N checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N in --output")
    p.add_argument("--eval-before", action="store_true",
                   help="also evaluate before training (the 'initial_eval_*' entries of metrics.json)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--text-column", metavar="NAME", default=None,
                   help="column of the texts (default: text or sentence; tokens or words for token-classification)")
    p.add_argument("--label-column", metavar="NAME", default=None,
                   help="column of the labels (default: label or labels; ner_tags, tags, labels or label for "
                        "token-classification)")
    p.add_argument("--num-labels", metavar="N", type=_positive_int, default=None,
                   help="size of the classification head (default: the labels found, or the checkpoint's head)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, log lines or notes")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- reading data


def _open_lines(path: str, flag: str) -> list[str]:
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder, expected a file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text") from None


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(TABLE_SUFFIXES):
        return "table"
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "text"


def read_records(path: str, flag: str, *, plain_text_ok: bool) -> tuple[list[dict], list[str], list[int]]:
    """Rows of a CSV/TSV (with a header), JSON lines or, when ``plain_text_ok``, a plain text file (one
    ``{"text": line}`` per non-empty line). Returns (rows, column names, source line number of each row)."""
    kind = _kind(path)
    lines = _open_lines(path, flag)
    if kind == "text":
        if not plain_text_ok:
            raise ValueError(f"{flag} {path}: expected a CSV/TSV file with a header or JSON lines "
                             f"({', '.join(TABLE_SUFFIXES + JSONL_SUFFIXES)})")
        rows = [(n, {"text": ln.strip()}) for n, ln in enumerate(lines, 1) if ln.strip()]
        if not rows:
            raise ValueError(f"{flag} {path}: empty (no non-empty line)")
        return [r for _, r in rows], ["text"], [n for n, _ in rows]
    if kind == "table":
        if not any(ln.strip() for ln in lines):
            raise ValueError(f"{flag} {path}: empty (no header and no rows)")
        reader = csv.DictReader(lines, delimiter="\t" if path.lower().endswith(".tsv") else ",")
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows, numbers = [], []
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue
            rows.append({k: v for k, v in row.items() if k is not None})
            numbers.append(reader.line_num)
        if not rows:
            raise ValueError(f"{flag} {path}: empty (a header but no rows)")
        return rows, columns, numbers
    rows, numbers, columns = [], [], {}
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError as err:
            raise ValueError(f"{flag} {path} line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{flag} {path} line {n}: expected a JSON object per line, got a {type(row).__name__}")
        rows.append(row)
        numbers.append(n)
        columns.update(dict.fromkeys(row))
    if not rows:
        raise ValueError(f"{flag} {path}: empty (no JSON line)")
    return rows, list(columns), numbers


def _pick_column(given: Optional[str], defaults: tuple, columns: list[str], path: str, flag: str, option: str) -> str:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{flag} {path} has no column {given!r} ({option}); its columns are: "
                             f"{', '.join(map(repr, columns)) or 'none'}")
        return given
    for name in defaults:
        if name in columns:
            return name
    raise ValueError(f"{flag} {path} has none of the columns {', '.join(map(repr, defaults))}; name one with "
                     f"{option} (its columns are: {', '.join(map(repr, columns)) or 'none'})")


def _values(rows, numbers, column: str, path: str, flag: str, option: str) -> list:
    out = []
    for row, n in zip(rows, numbers):
        if column not in row:
            raise ValueError(f"{flag} {path} line {n} has no {column!r} ({option}); it has "
                             f"{', '.join(map(repr, row)) or 'nothing'}")
        out.append(row[column])
    return out


def _texts(values, numbers, column: str, path: str, flag: str) -> list[str]:
    for v, n in zip(values, numbers):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{flag} {path} line {n}: column {column!r} must hold a non-empty text, got {v!r}")
    return values


def _label(value, n: int, column: str, path: str, flag: str):
    """An int id, or a label name (str). CSV cells are strings, so digit strings there are ids too."""
    if isinstance(value, bool) or value is None or not isinstance(value, (int, str)):
        raise ValueError(f"{flag} {path} line {n}: column {column!r} must hold a label name or an integer id, "
                         f"got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError(f"{flag} {path} line {n}: column {column!r} is empty")
    return value


# ----------------------------------------------------------------------------- labels


class LabelSpace:
    """How label values map to ids, and the ``id2label`` the config will carry."""

    def __init__(self, id2label: dict[int, str], by_name: bool):
        self.id2label = id2label
        self.label2id = {v: k for k, v in id2label.items()}
        self.by_name = by_name

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    def id_of(self, value, where: str) -> int:
        if self.by_name:
            key = str(value)
            if key not in self.label2id:
                raise ValueError(f"{where}: label {key!r} is not one of the model's {self.num_labels} labels "
                                 f"({', '.join(map(repr, self.label2id))}); give --num-labels to train a new head")
            return self.label2id[key]
        if not 0 <= value < self.num_labels:
            raise ValueError(f"{where}: label {value} does not fit a head of num_labels={self.num_labels} "
                             f"(ids 0..{self.num_labels - 1}); give a larger --num-labels")
        return value


def _is_id(value) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _default_label_names(config) -> bool:
    names = list((getattr(config, "id2label", None) or {}).values())
    return all(str(v) == f"LABEL_{i}" for i, v in enumerate(names))


def build_label_space(values: list, config, num_labels: Optional[int], head_trained: bool, where: str) -> LabelSpace:
    """Ids for ``values`` (train labels, flattened). Integer labels are ids; names are sorted. A checkpoint
    whose head is already trained keeps its labels unless --num-labels asks for a new head."""
    if head_trained and num_labels is None:
        if not _default_label_names(config):
            return LabelSpace({int(k): str(v) for k, v in config.id2label.items()}, by_name=True)
        num_labels = config.num_labels
        if all(_is_id(v) for v in values):
            return LabelSpace({i: f"LABEL_{i}" for i in range(num_labels)}, by_name=False)
    if all(_is_id(v) for v in values):
        top = max(int(v) for v in values)
        size = num_labels if num_labels is not None else top + 1
        if top >= size:
            raise ValueError(f"{where}: label {top} does not fit --num-labels {size} (ids 0..{size - 1})")
        return LabelSpace({i: f"LABEL_{i}" for i in range(size)}, by_name=False)
    names = sorted({str(v) for v in values})
    if num_labels is not None and len(names) > num_labels:
        raise ValueError(f"{where}: {len(names)} labels ({', '.join(map(repr, names[:10]))}"
                         f"{', ...' if len(names) > 10 else ''}) do not fit --num-labels {num_labels}")
    size = num_labels if num_labels is not None else len(names)
    id2label = {i: name for i, name in enumerate(names)}
    id2label.update({i: f"LABEL_{i}" for i in range(len(names), size)})
    return LabelSpace(id2label, by_name=True)


def _as_label(value, space: LabelSpace):
    return value if space.by_name else int(value)


# ----------------------------------------------------------------------------- collators


def pad_labelled(tokenizer, features):
    """Pad examples that carry their own per-token ``labels`` (a fixed evaluation set): inputs with the
    tokenizer, labels with -100 on the tokenizer's padding side."""
    import torch

    labels = [list(f["labels"]) for f in features]
    inputs = [{k: v for k, v in f.items() if k not in ("labels", "special_tokens_mask")} for f in features]
    batch = tokenizer.pad(inputs, return_tensors="pt")
    width = batch["input_ids"].shape[1]
    padded = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, row in enumerate(labels):
        if tokenizer.padding_side == "left":
            padded[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        else:
            padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    batch["labels"] = padded
    return batch


@dataclass
class _MaskedLMBatches:
    """``DataCollatorForLanguageModeling(mlm=True)`` for training, with two guards: a batch in which no token
    was chosen gets one (a loss over no token is NaN, and its NaN gradients would ruin the weights), and
    examples that already carry labels (the evaluation set, masked once) are only padded."""

    base: Any

    def __call__(self, features):
        import torch

        if "labels" in features[0]:
            return pad_labelled(self.base.tokenizer, features)
        batch = self.base(features)
        labels = batch["labels"]
        if not (labels != -100).any():
            ids = batch["input_ids"]
            special = torch.isin(ids, torch.tensor(self.base.tokenizer.all_special_ids, dtype=ids.dtype))
            if "attention_mask" in batch:
                special |= batch["attention_mask"] == 0
            where = (~special).nonzero()
            if len(where):
                row, col = where[torch.randint(len(where), ()).item()].tolist()
                labels[row, col] = ids[row, col]
                ids[row, col] = self.base.tokenizer.mask_token_id
        return batch


def mask_once(collator, features: list[dict], seed: int) -> None:
    """Mask an evaluation set in place, once, with a seed of its own (every evaluation then scores the same
    positions, and the training's random streams are untouched); each example predicts at least one token."""
    import torch

    tokenizer = collator.tokenizer
    special_ids = torch.tensor(tokenizer.all_special_ids, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for f in features:
            ids = torch.tensor([f["input_ids"]], dtype=torch.long)
            original = ids.clone()
            special = torch.isin(ids, special_ids)
            ids, labels = collator.torch_mask_tokens(ids, special)
            if not (labels != -100).any() and (~special).any():
                col = (~special[0]).nonzero()[torch.randint(int((~special).sum()), ()).item()].item()
                labels[0, col] = original[0, col]
                ids[0, col] = tokenizer.mask_token_id
            f["input_ids"], f["labels"] = ids[0].tolist(), labels[0].tolist()


# ----------------------------------------------------------------------------- replaced-token detection


@dataclass
class DataCollatorForReplacedTokenDetection:
    """Pads tokenizer outputs and corrupts them for ELECTRA's discriminator: each ordinary token (not
    special, not padding) is replaced with probability ``replace_probability`` by a random vocabulary token
    other than itself and the special tokens; ``labels`` are 1 there, 0 at the other real tokens and -100 at
    padding. Examples that already carry ``labels`` (a fixed, pre-corrupted evaluation set) are only padded.

    ELECTRA proper samples replacements from a small generator network; uniform random tokens are the
    cheap stand-in that fine-tuning an existing discriminator needs."""

    tokenizer: Any
    replace_probability: float = RTD_PROBABILITY
    generator: Any = None  # a torch.Generator; None draws from torch's global generator

    def __post_init__(self):
        import torch

        special = set(self.tokenizer.all_special_ids)
        self._special = torch.tensor(sorted(special), dtype=torch.long)
        self._candidates = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special], dtype=torch.long)
        if len(self._candidates) < 2:
            raise ValueError("replaced-token detection needs a vocabulary with at least two ordinary tokens")

    def corrupt(self, input_ids, attention_mask):
        """(corrupted input_ids, labels) for a padded batch."""
        import torch

        ids = input_ids.clone()
        real = attention_mask.bool() & ~torch.isin(ids, self._special)
        chosen = torch.bernoulli(torch.full(ids.shape, self.replace_probability), generator=self.generator).bool()
        chosen &= real
        picks = torch.randint(len(self._candidates), ids.shape, generator=self.generator)
        new = self._candidates[picks]
        same = new == ids  # a "replacement" by the same token would be a wrong label 1: take the next one
        new[same] = self._candidates[(picks[same] + 1) % len(self._candidates)]
        ids[chosen] = new[chosen]
        labels = chosen.long()
        labels[~attention_mask.bool()] = -100
        return ids, labels

    def __call__(self, features):
        import torch

        if "labels" in features[0]:
            return pad_labelled(self.tokenizer, features)
        inputs = [{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in features]
        batch = self.tokenizer.pad(inputs, return_tensors="pt")
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        batch["input_ids"], batch["labels"] = self.corrupt(batch["input_ids"], batch["attention_mask"])
        return batch


# ----------------------------------------------------------------------------- metrics


def _accuracy(prediction) -> dict:
    import numpy as np

    preds, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    keep = labels != -100
    return {"accuracy": float((preds[keep] == labels[keep]).mean()) if keep.any() else float("nan")}


def _rtd_metrics(prediction) -> dict:
    import numpy as np

    preds, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    keep = labels != -100
    p, y = preds[keep] == 1, labels[keep] == 1
    tp = int((p & y).sum())
    return {"accuracy": float((p == y).mean()) if keep.any() else float("nan"),
            "precision": tp / max(int(p.sum()), 1), "recall": tp / max(int(y.sum()), 1)}


def _argmax_logits(logits, labels):
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _rtd_decisions(logits, labels):
    return ((logits[0] if isinstance(logits, tuple) else logits) > 0).long()


# ----------------------------------------------------------------------------- the command


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _Run:
    """One ``polyformers train`` invocation: data, model, Trainer, results."""

    def __init__(self, args):
        self.args = args
        self.task = args.task
        self.main = _rank() == 0

    def note(self, message: str) -> None:
        if self.main and not self.args.quiet and sys.stderr.isatty():
            print(message, file=sys.stderr, flush=True)

    # -- data ---------------------------------------------------------------------------------------

    def load_split(self, path: str, flag: str) -> dict:
        """Columns of one file: texts (or word lists), label values and the line numbers, unencoded."""
        args, task = self.args, self.task
        lm = task not in ("text-classification", "token-classification")
        rows, columns, numbers = read_records(path, flag, plain_text_ok=lm)
        if lm:
            column = _pick_column(args.text_column, LM_TEXT_COLUMNS, columns, path, flag, "--text-column")
            return {"texts": _texts(_values(rows, numbers, column, path, flag, "--text-column"), numbers, column, path,
                                    flag), "numbers": numbers}
        text_col = _pick_column(args.text_column, TEXT_COLUMNS[task], columns, path, flag, "--text-column")
        label_col = _pick_column(args.label_column, LABEL_COLUMNS[task], columns, path, flag, "--label-column")
        texts = _values(rows, numbers, text_col, path, flag, "--text-column")
        raw = _values(rows, numbers, label_col, path, flag, "--label-column")
        if task == "text-classification":
            texts = _texts(texts, numbers, text_col, path, flag)
            labels = [_label(v, n, label_col, path, flag) for v, n in zip(raw, numbers)]
            return {"texts": texts, "labels": labels, "numbers": numbers}
        words, tags = [], []
        for w, t, n in zip(texts, raw, numbers):
            if not isinstance(w, list) or not w or not all(isinstance(x, str) for x in w):
                raise ValueError(f"{flag} {path} line {n}: column {text_col!r} must hold a non-empty list of words, "
                                 f"got {w!r:.80}")
            if not isinstance(t, list):
                raise ValueError(f"{flag} {path} line {n}: column {label_col!r} must hold a list of tags, got {t!r:.80}")
            if len(t) != len(w):
                raise ValueError(f"{flag} {path} line {n}: {len(w)} words in {text_col!r} but {len(t)} tags in "
                                 f"{label_col!r}; each word needs one tag")
            words.append(w)
            tags.append([_label(x, n, label_col, path, flag) for x in t])
        return {"texts": words, "labels": tags, "numbers": numbers}

    def max_length(self, tokenizer) -> int:
        limit = getattr(tokenizer, "model_max_length", None)
        limit = int(limit) if isinstance(limit, (int, float)) and 0 < limit < 1_000_000 else None
        if self.args.max_length is None:
            return min(128, limit) if limit else 128
        if limit and self.args.max_length > limit:
            raise ValueError(f"--max-length {self.args.max_length} exceeds the tokenizer's model_max_length "
                             f"({limit}) of {self.args.model}")
        return self.args.max_length

    def encode(self, tokenizer, split: dict, space: Optional[LabelSpace], path: str, flag: str) -> list[dict]:
        length = self.max_length(tokenizer)
        texts = split["texts"]
        if self.task == "token-classification":
            enc = tokenizer(texts, is_split_into_words=True, truncation=True, max_length=length)
        else:
            enc = tokenizer(texts, truncation=True, max_length=length)
        keys = [k for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
        features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        numbers = split["numbers"]
        if self.task == "text-classification":
            for f, value, n in zip(features, split["labels"], numbers):
                f["labels"] = space.id_of(_as_label(value, space), f"{flag} {path} line {n}")
        elif self.task == "token-classification":
            for i, (f, tags, n) in enumerate(zip(features, split["labels"], numbers)):
                where = f"{flag} {path} line {n}"
                ids = [space.id_of(_as_label(t, space), where) for t in tags]
                labels, previous = [], None
                for word in enc.word_ids(i):
                    # The first sub-token of a word carries its tag; the rest and the special tokens are ignored.
                    labels.append(-100 if word is None or word == previous else ids[word])
                    previous = word
                f["labels"] = labels
        return features

    def predictable(self, features: list[dict], path: str, flag: str) -> list[dict]:
        """Causal LM examples with a next token to predict: a one-token line has none (its loss is NaN)."""
        kept = [f for f in features if len(f["input_ids"]) >= 2]
        if not kept:
            raise ValueError(f"{flag} {path}: every example is a single token; causal-lm needs at least two "
                             "tokens per example")
        if len(kept) < len(features):
            self.note(f"{flag}: skipped {len(features) - len(kept)} single-token example(s)")
        return kept

    # -- model --------------------------------------------------------------------------------------

    def load_tokenizer(self, config):
        import polyformers

        kwargs = {}
        if self.task == "token-classification" and config.model_type in ("roberta", "gptj", "mpt"):
            kwargs["add_prefix_space"] = True  # byte-level BPE encodes pre-split words only with it
        tokenizer = polyformers.AutoTokenizer.from_pretrained(self.args.model, **kwargs)
        if self.task in ("causal-lm",) and tokenizer.special_tokens_map.get("pad_token") is None:
            # Batches of lines need padding; the padded positions get label -100, so any token will do.
            if tokenizer.special_tokens_map.get("eos_token") is None:
                raise ValueError(f"--model {self.args.model}: the tokenizer has neither a pad token nor an end-of-text "
                                 "token to pad batches with")
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(self, config, space: Optional[LabelSpace]):
        import polyformers

        kwargs: dict = {}
        if self.task == "replaced-token-detection":
            if config.model_type != "electra":
                raise ValueError(f"replaced-token detection trains ELECTRA's discriminator; --model {self.args.model} "
                                 f"is a {config.model_type!r} checkpoint, not an 'electra' one")
            cls = polyformers.ElectraForPreTraining
        else:
            cls = getattr(polyformers, TASKS[self.task])
        if space is not None:
            kwargs.update(id2label=dict(space.id2label), label2id=dict(space.label2id))
            if self._head_trained(config) and space.num_labels != config.num_labels:
                kwargs["ignore_mismatched_sizes"] = True  # a new head of the size asked for with --num-labels
        if self.task == "causal-lm" and config.model_type in ("electra", "roberta"):
            kwargs["is_decoder"] = True  # encoder families predict left to right only with causal attention
        return cls.from_pretrained(self.args.model, **kwargs)

    def _head_trained(self, config) -> bool:
        head = "ForSequenceClassification" if self.task == "text-classification" else "ForTokenClassification"
        return any(str(a).endswith(head) for a in (getattr(config, "architectures", None) or []))

    # -- run ----------------------------------------------------------------------------------------

    def check_output(self) -> None:
        from .trainer import get_last_checkpoint

        out = self.args.output
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--output {out}: exists and is not a folder")
        last = get_last_checkpoint(out)
        if self.args.resume and last is None:
            raise ValueError(f"--resume: --output {out} holds no checkpoint-N folder to continue from")
        if not self.args.resume and last is not None:
            raise ValueError(f"--output {out} already holds checkpoints ({os.path.basename(last)}); pass --resume "
                             "to continue from the last one, or choose another folder")

    def training_arguments(self, has_eval: bool):
        from .arguments import TrainingArguments

        a = self.args
        return TrainingArguments(
            output_dir=a.output,
            num_train_epochs=a.epochs,
            max_steps=a.max_steps if a.max_steps is not None else -1,
            per_device_train_batch_size=a.batch_size,
            per_device_eval_batch_size=a.batch_size,
            gradient_accumulation_steps=a.grad_accum,
            learning_rate=a.lr,
            weight_decay=a.weight_decay,
            warmup_ratio=a.warmup_ratio,
            lr_scheduler_type=a.scheduler,
            seed=a.seed,
            evaluation_strategy="steps" if (has_eval and a.eval_steps) else "no",
            eval_steps=a.eval_steps if has_eval else None,
            save_strategy="steps",
            save_steps=a.save_steps,
            save_total_limit=a.save_total_limit,
            logging_steps=a.logging_steps,
            bf16=a.bf16,
            gradient_checkpointing=a.gradient_checkpointing,
            disable_tqdm=True if a.quiet else None,
        )

    def run(self) -> dict:
        import polyformers

        from .callbacks import PrinterCallback, ProgressCallback
        from .collators import DataCollatorForLanguageModeling, DataCollatorForTokenClassification, DataCollatorWithPadding
        from .trainer import Trainer, set_seed

        a, task = self.args, self.task
        if a.num_labels is not None and task not in ("text-classification", "token-classification"):
            raise UsageError(f"--num-labels applies to text-classification and token-classification, not {task}")
        if a.label_column is not None and task not in ("text-classification", "token-classification"):
            raise UsageError(f"--label-column applies to text-classification and token-classification, not {task}")
        for flag, given in (("--eval-steps", a.eval_steps is not None), ("--eval-before", a.eval_before)):
            if given and not a.eval:
                raise UsageError(f"{flag} needs --eval FILE: there is nothing to evaluate on")
        self.check_output()
        train_split = self.load_split(a.train, "--train")
        eval_split = self.load_split(a.eval, "--eval") if a.eval else None

        set_seed(a.seed)  # before the model exists: a new head's initial weights follow --seed
        start = time.monotonic()
        self.note(f"loading {a.model} ...")
        config = polyformers.AutoConfig.from_pretrained(a.model)
        space = None
        if task in ("text-classification", "token-classification"):
            values = train_split["labels"]
            flat = values if task == "text-classification" else [t for tags in values for t in tags]
            space = build_label_space(flat, config, a.num_labels, self._head_trained(config),
                                      f"--train {a.train} (--label-column)")
        tokenizer = self.load_tokenizer(config)
        model = self.load_model(config, space)
        self.note(f"loaded {type(model).__name__} in {time.monotonic() - start:.1f} s")

        train_set = self.encode(tokenizer, train_split, space, a.train, "--train")
        eval_set = self.encode(tokenizer, eval_split, space, a.eval, "--eval") if eval_split else None
        if task == "causal-lm":
            train_set = self.predictable(train_set, a.train, "--train")
            eval_set = self.predictable(eval_set, a.eval, "--eval") if eval_set is not None else None

        compute_metrics = preprocess = None
        if task == "text-classification":
            collator = DataCollatorWithPadding(tokenizer)
            compute_metrics, preprocess = _accuracy, _argmax_logits
        elif task == "token-classification":
            collator = DataCollatorForTokenClassification(tokenizer)
            compute_metrics, preprocess = _accuracy, _argmax_logits
        elif task == "masked-lm":
            collator = _MaskedLMBatches(DataCollatorForLanguageModeling(tokenizer, mlm=True))
            if eval_set is not None:
                mask_once(collator.base, eval_set, a.seed)
        elif task == "causal-lm":
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        else:
            import torch

            collator = DataCollatorForReplacedTokenDetection(tokenizer)
            compute_metrics, preprocess = _rtd_metrics, _rtd_decisions
            if eval_set is not None:
                # Corrupted once, with a generator of its own: every evaluation scores the same replacements.
                fixed = DataCollatorForReplacedTokenDetection(tokenizer, generator=torch.Generator().manual_seed(a.seed))
                for f in eval_set:
                    ids, labels = fixed.corrupt(torch.tensor([f["input_ids"]]), torch.ones(1, len(f["input_ids"]),
                                                                                           dtype=torch.long))
                    f["input_ids"], f["labels"] = ids[0].tolist(), labels[0].tolist()

        training_args = self.training_arguments(eval_set is not None)
        trainer = Trainer(model=model, args=training_args, data_collator=collator, train_dataset=train_set,
                          eval_dataset=eval_set, tokenizer=tokenizer, compute_metrics=compute_metrics,
                          preprocess_logits_for_metrics=preprocess)
        if a.quiet:
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        self.note(f"{len(train_set)} training examples" + (f", {len(eval_set)} evaluation examples" if eval_set else "")
                  + f"; writing to {a.output}")

        metrics: dict = {}
        if a.eval_before and eval_set is not None:
            metrics.update(self._with_perplexity(trainer.evaluate(metric_key_prefix="initial_eval"), "initial_eval"))
        result = trainer.train(resume_from_checkpoint=True if a.resume else None)
        trainer.save_model(a.output)
        trainer.save_state()
        metrics.update(result.metrics)
        metrics["train_samples"] = len(train_set)
        metrics["global_step"] = result.global_step
        if eval_set is not None:
            metrics.update(self._with_perplexity(trainer.evaluate(), "eval"))
            metrics["eval_samples"] = len(eval_set)
        metrics = {"task": task, "model": a.model, **metrics}
        if self.main:
            path = os.path.join(a.output, METRICS_FILE)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2, sort_keys=False)
                f.write("\n")
            os.replace(path + ".tmp", path)
        return metrics

    def _with_perplexity(self, metrics: dict, prefix: str) -> dict:
        if self.task in ("masked-lm", "causal-lm") and f"{prefix}_loss" in metrics:
            loss = metrics[f"{prefix}_loss"]
            try:
                metrics[f"{prefix}_perplexity"] = math.exp(loss)
            except OverflowError:
                metrics[f"{prefix}_perplexity"] = float("inf")
        return metrics


def cmd_train(args) -> int:
    main = _rank() == 0
    if not main:
        # Every process of a torchrun job runs this command; one voice is enough. Problems in the data are
        # the same on every process and are reported by process 0.
        logging.getLogger("polyformers").setLevel(logging.ERROR)
    try:
        metrics = _Run(args).run()
    except (UsageError, ValueError, OSError, KeyError) as err:
        if main or os.environ.get("POLYFORMERS_DEBUG") not in (None, "", "0"):
            raise
        return 2 if isinstance(err, UsageError) else 1
    if not main:
        return 0
    if args.json:
        print_json(metrics)
    else:
        rows = [(k, v) for k, v in metrics.items()]
        print_table(rows, ["metric", "value"])
        if not args.quiet:
            print(f"model, tokenizer and {METRICS_FILE} saved to {args.output}", file=sys.stderr)
    return 0
