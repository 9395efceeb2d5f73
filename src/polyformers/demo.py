"""Demo: ELECTRA replaced-token detection on a real encoder, end to end on a local checkpoint.

No registry ships ELECTRA weights, so the demo makes a discriminator the way ELECTRA's recipe would
fine-tune one: it loads the real all-MiniLM-L6-v2 encoder (a BERT encoder, which is an ELECTRA encoder
with ``embedding_size == hidden_size``) into ``ElectraForPreTraining``, trains it for a few hundred steps
to spot tokens replaced by words sampled from the corpus, and saves it as an ordinary checkpoint folder.
Then it runs the spec's example unchanged but for the import and the folder, and scores held-out text.

Run with ``./run demo`` (or ``python -m polyformers.demo``). The trained folder is cached, so a second
run only loads and predicts.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(os.environ.get("POLYFORMERS_CACHE", Path.cwd() / ".cache"))
SPEC_SENTENCE = "The quick brown fox jumps over the lazy dog"
SPEC_FAKE = "The quick brown fox fake over the lazy dog"


def _lines(path: Path, min_words: int = 6) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [" ".join(line.split()) for line in text.splitlines() if len(line.split()) >= min_words]


def _corrupt(ids: list[int], vocab_sampler, rng: random.Random, rate: float, special: set[int]):
    """Replace ~rate of the ordinary tokens with a different corpus token; labels mark replacements."""
    out, labels = list(ids), [0] * len(ids)
    for i, tok in enumerate(ids):
        if tok in special or rng.random() >= rate:
            continue
        new = vocab_sampler()
        while new == tok:
            new = vocab_sampler()
        out[i], labels[i] = new, 1
    return out, labels


def _replacement_vocabulary(tokenizer, encoded):
    """Whole words of the corpus, weighted by the square root of their frequency: plausible replacements
    (as a generator would propose) rather than word pieces or only the commonest function words."""
    counts = Counter(t for ids in encoded for t in ids[1:-1])
    words = [(t, c**0.5) for t, c in counts.items() if tokenizer.convert_ids_to_tokens(t).isalpha()]
    population, weights = zip(*words)
    return population, weights


def _batches(encoded, sampler, rng, special, batch_size, rate):
    import torch

    order = list(range(len(encoded)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [_corrupt(encoded[i], sampler, rng, rate, special) for i in order[start : start + batch_size]]
            width = max(len(r[0]) for r in rows)
            ids = torch.zeros(batch_size, width, dtype=torch.long)
            mask = torch.zeros(batch_size, width, dtype=torch.long)
            labels = torch.zeros(batch_size, width, dtype=torch.long)
            for j, (row, lab) in enumerate(rows):
                ids[j, : len(row)] = torch.tensor(row)
                mask[j, : len(row)] = 1
                labels[j, : len(lab)] = torch.tensor(lab)
            yield ids, mask, labels


def train(assets: Path, out: Path, steps: int, seed: int) -> None:
    import torch

    from polyformers import ElectraConfig, ElectraForPreTraining, ElectraTokenizerFast

    torch.manual_seed(seed)
    rng = random.Random(seed)
    minilm = assets / "minilm"
    print(f"[1/3] loading the real MiniLM encoder from {minilm} into ElectraForPreTraining")
    config = ElectraConfig(
        vocab_size=30522, embedding_size=384, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12,
    )
    model, info = ElectraForPreTraining.from_pretrained(minilm, config=config, output_loading_info=True)
    print(f"      new (trained below): {info['missing_keys']}; unused: {info['unexpected_keys']}")
    tokenizer = ElectraTokenizerFast(vocab_file=str(minilm / "vocab.txt"))

    corpus = _lines(assets / "corpora" / "fortunes.txt") + _lines(assets / "corpora" / "shakespeare.txt")
    rng.shuffle(corpus)
    held_out, train_lines = corpus[:300], corpus[300:]
    encoded = tokenizer(train_lines, truncation=True, max_length=40)["input_ids"]
    population, weights = _replacement_vocabulary(tokenizer, encoded)
    sampler_rng = random.Random(seed + 1)

    def sampler():
        return sampler_rng.choices(population, weights)[0]

    special = set(tokenizer.all_special_ids)
    print(f"[2/3] training replaced-token detection on {len(train_lines)} real lines for {steps} steps")
    # Only the top two encoder layers and the new head learn: the lower layers' features are already
    # good, and backpropagating through them would triple the cost of a step on a CPU.
    trained_layers = tuple(f"electra.encoder.layer.{i}." for i in range(config.num_hidden_layers - 2, config.num_hidden_layers))
    head, body = [], []
    for name, param in model.named_parameters():
        if name.startswith("discriminator_predictions"):
            head.append(param)
        elif name.startswith(trained_layers):
            body.append(param)
        else:
            param.requires_grad_(False)
    optimizer = torch.optim.AdamW([{"params": body, "lr": 3e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01)
    model.train()
    batches = _batches(encoded, sampler, rng, special, batch_size=16, rate=0.15)
    start, running = time.time(), None
    for step in range(1, steps + 1):
        ids, mask, labels = next(batches)
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 25 == 0 or step == steps:
            rate = step / (time.time() - start)
            print(f"      step {step:4d}/{steps}  loss {running:.3f}  ({rate:.1f} steps/s)", flush=True)
    model.eval()
    tmp = out.with_name(out.name + ".partial")  # renamed into place only once complete
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "held_out.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def evaluate(folder: Path, seed: int) -> None:
    import torch

    # The spec's example, unchanged but for the import and the local folder.
    from polyformers import AutoTokenizer, ElectraForPreTraining

    print(f"[3/3] the spec's example on {folder}")
    discriminator = ElectraForPreTraining.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fake_tokens = tokenizer.tokenize(SPEC_FAKE, add_special_tokens=True)
    fake_inputs = tokenizer.encode(SPEC_FAKE, return_tensors="pt")
    discriminator_outputs = discriminator(fake_inputs)
    predictions = torch.round((torch.sign(discriminator_outputs[0]) + 1) / 2)
    print(f"      {fake_tokens}")
    print(f"      {predictions.squeeze().tolist()}")
    flagged = [t for t, p in zip(fake_tokens, predictions.squeeze().tolist()) if p == 1.0]
    print(f"      flagged as replaced: {flagged}")

    lines = (folder / "held_out.txt").read_text(encoding="utf-8").splitlines()
    encoded = tokenizer(lines, truncation=True, max_length=40)["input_ids"]
    population, weights = _replacement_vocabulary(tokenizer, encoded)
    rng = random.Random(seed + 7)
    tp = fp = fn = tn = 0
    special = set(tokenizer.all_special_ids)
    with torch.no_grad():
        for ids in encoded:
            corrupted, labels = _corrupt(ids, lambda: rng.choices(population, weights)[0], rng, 0.15, special)
            logits = discriminator(torch.tensor([corrupted])).logits[0]
            for pred, label, tok in zip((logits > 0).tolist(), labels, corrupted):
                if tok in special:
                    continue
                tp += pred and label
                fp += pred and not label
                fn += (not pred) and label
                tn += (not pred) and not label
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    accuracy = (tp + tn) / max(tp + tn + fp + fn, 1)
    print(f"      held-out lines: {len(lines)}, tokens: {tp + tn + fp + fn}, replaced: {tp + fn}")
    print(f"      token accuracy {accuracy:.3f}   replaced-token precision {precision:.3f}   recall {recall:.3f}")
    print(f"      (always answering 'original' would score accuracy {(tn + fp) / max(tp + tn + fp + fn, 1):.3f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyformers.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, default=ROOT / "assets", help="folder made by scripts/fetch_assets.py")
    parser.add_argument("--out", type=Path, default=ROOT / "demo" / "electra-rtd", help="checkpoint folder to make/reuse")
    parser.add_argument("--steps", type=int, default=300, help="training steps when the folder does not exist yet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="train again even if the folder exists")
    args = parser.parse_args(argv)
    if not (args.assets / "minilm" / "model.safetensors").exists():
        print(f"error: real assets not found in {args.assets}; run `python scripts/fetch_assets.py`", file=sys.stderr)
        return 1
    if args.retrain or not (args.out / "config.json").exists():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        train(args.assets, args.out, args.steps, args.seed)
    else:
        print(f"[1-2/3] reusing the trained discriminator in {args.out} (--retrain to train again)")
    evaluate(args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
