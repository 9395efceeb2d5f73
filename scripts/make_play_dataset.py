#!/usr/bin/env python3
"""Build a small "which play is this line from?" dataset from the Shakespeare corpora, for `polyformers train`.

    python scripts/make_play_dataset.py --out DIR [--train-per-play 200] [--eval-per-play 50] [--seed 0]
                                        [--lines-per-example 1] [--min-words 6] [--minilm-electra DIR]

Reads Hamlet (corpora/shakespeare.txt) and Macbeth (corpora/macbeth.txt) from the assets folder, keeps the
spoken verse and prose (no speaker headings, stage directions, act or scene titles), cuts each speech into
examples of --lines-per-example consecutive lines, keeps those of at least --min-words words, drops any
found in both plays, and writes DIR/train.csv and DIR/eval.csv
(columns: text,label). The split is deterministic: each play's lines are shuffled with --seed, and the
first --eval-per-play go to eval.csv, the next --train-per-play to train.csv, so no line is in both.

--minilm-electra DIR also writes an ELECTRA view of the real all-MiniLM-L6-v2 checkpoint: MiniLM is a BERT
encoder, which is an ELECTRA encoder with embedding_size == hidden_size and the same weight names, so a
config.json with model_type "electra" beside links to the original weights and tokenizer files is all
polyformers needs to load it with the Auto classes (as src/polyformers/demo.py does with a config object).

Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAYS = {"hamlet": "shakespeare.txt", "macbeth": "macbeth.txt"}
# "Ber." / "Queen." in Hamlet, "FIRST WITCH." / "LADY MACBETH." in Macbeth: a short line ending in a period
# that opens a block of speech.
SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")
TITLE = re.compile(r"^(ACT|Act|SCENE|Scene)\b")
MINILM_FILES = ("model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def speeches(text: str) -> list[list[str]]:
    """The speeches of a play, each a list of its text lines: blocks that start with a speaker heading,
    without the heading and the bracketed stage directions."""
    start = text.find("\nACT I.")
    if start < 0:
        raise ValueError("no 'ACT I.' heading: not one of the expected play texts")
    found, in_direction = [], False
    for block in re.split(r"\n\s*\n", text[start:]):
        rows = [r.strip() for r in block.strip().splitlines()]
        if len(rows) < 2 or not SPEAKER.match(rows[0]) or TITLE.match(rows[0]):
            continue
        lines = []
        for row in rows[1:]:
            if row.startswith("["):
                in_direction = True
            if in_direction:
                in_direction = not row.endswith("]")
                continue
            row = " ".join(re.sub(r"\[.*?\]", "", row).split())
            if row:
                lines.append(row)
        if lines:
            found.append(lines)
    return found


def examples(text: str, lines_per_example: int, min_words: int) -> list[str]:
    """Consecutive lines of one speech, ``lines_per_example`` at a time, of at least ``min_words`` words."""
    out = []
    for speech in speeches(text):
        for i in range(0, len(speech), lines_per_example):
            chunk = " ".join(speech[i: i + lines_per_example])
            if len(chunk.split()) >= min_words:
                out.append(chunk)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("POLYFORMERS_ASSETS", ROOT / ".cache" / "assets")))
    parser.add_argument("--out", type=Path, required=True, help="folder for train.csv and eval.csv")
    parser.add_argument("--train-per-play", type=int, default=200)
    parser.add_argument("--eval-per-play", type=int, default=50)
    parser.add_argument("--min-words", type=int, default=6, help="shortest example kept, in words (default: 6)")
    parser.add_argument("--lines-per-example", type=int, default=1,
                        help="consecutive lines of one speech per example (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm-electra", type=Path, default=None, help="also write MiniLM's ELECTRA view here")
    args = parser.parse_args(argv)

    per_play = {}
    for play, name in PLAYS.items():
        path = args.assets / "corpora" / name
        if not path.exists():
            print(f"error: {path} not found; run `python scripts/fetch_assets.py`", file=sys.stderr)
            return 1
        text = path.read_text(encoding="utf-8")
        per_play[play] = list(dict.fromkeys(examples(text, args.lines_per_example, args.min_words)))
    shared = set(per_play["hamlet"]) & set(per_play["macbeth"])
    train, evaluation = [], []
    for play, lines in per_play.items():
        lines = [ln for ln in lines if ln not in shared]
        random.Random(f"{args.seed}-{play}").shuffle(lines)
        need = args.eval_per_play + args.train_per_play
        if len(lines) < need:
            print(f"error: {play} has {len(lines)} usable examples, fewer than the {need} asked for", file=sys.stderr)
            return 1
        evaluation += [(ln, play) for ln in lines[: args.eval_per_play]]
        train += [(ln, play) for ln in lines[args.eval_per_play: need]]
        print(f"{play}: {len(lines)} usable examples; {args.train_per_play} train, {args.eval_per_play} eval")
    random.Random(args.seed).shuffle(train)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("eval.csv", evaluation)):
        with open(args.out / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        print(f"wrote {args.out / name} ({len(rows)} rows)")

    if args.minilm_electra is not None:
        source = args.assets / "minilm"
        bert = json.loads((source / "config.json").read_text(encoding="utf-8"))
        config = {
            "model_type": "electra", "architectures": ["ElectraModel"], "vocab_size": bert["vocab_size"],
            "embedding_size": bert["hidden_size"], "hidden_size": bert["hidden_size"],
            "num_hidden_layers": bert["num_hidden_layers"], "num_attention_heads": bert["num_attention_heads"],
            "intermediate_size": bert["intermediate_size"], "hidden_act": bert["hidden_act"],
            "hidden_dropout_prob": bert["hidden_dropout_prob"],
            "attention_probs_dropout_prob": bert["attention_probs_dropout_prob"],
            "max_position_embeddings": bert["max_position_embeddings"], "type_vocab_size": bert["type_vocab_size"],
            "initializer_range": bert["initializer_range"], "layer_norm_eps": bert["layer_norm_eps"],
            "pad_token_id": bert["pad_token_id"],
        }
        out = args.minilm_electra
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in MINILM_FILES:
            link = out / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((source / name).resolve())
        print(f"wrote {out}: MiniLM's weights and tokenizer under an ELECTRA config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
