"""``token-classification`` (alias ``ner``): a label per token, optionally merged into words and entities."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .base import Pipeline, PipelineError, softmax

STRATEGIES = ("none", "simple", "first", "average", "max")


def split_tag(label: str):
    """``B-PER`` -> (B, PER); ``I-PER`` -> (I, PER); a label outside the IOB scheme continues (I)."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


class TokenClassificationPipeline(Pipeline):
    """Per-token labels with character offsets.

    ``aggregation_strategy``: "none" gives every token (``entity``, ``score``, ``index``, ``word``, ``start``,
    ``end``); "simple" merges adjacent tokens of one entity (B-/I- tags) into ``entity_group``s; "first",
    "average" and "max" first decide one label per word (from its first token, the average of its tokens'
    scores, or its most confident token), then group. Labels in ``ignore_labels`` (default ``["O"]``) are
    dropped. Word-level strategies need a fast tokenizer (offsets).
    """

    task = "token-classification"
    auto_model = "AutoModelForTokenClassification"

    def _sanitize_parameters(self, ignore_labels=None, aggregation_strategy=None, offset_mapping=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        pre, post = {}, {}
        if offset_mapping is not None:
            pre["offset_mapping"] = offset_mapping
        if aggregation_strategy is not None:
            name = str(getattr(aggregation_strategy, "value", aggregation_strategy)).lower()
            if name not in STRATEGIES:
                raise PipelineError(f"aggregation_strategy must be one of {list(STRATEGIES)}, got {aggregation_strategy!r}")
            if name in ("first", "average", "max") and not self.tokenizer.is_fast:
                raise PipelineError(f"aggregation_strategy={name!r} needs a fast tokenizer (word offsets); "
                                    f"{type(self.tokenizer).__name__} is slow")
            post["aggregation_strategy"] = name
        if ignore_labels is not None:
            post["ignore_labels"] = list(ignore_labels)
        return pre, {}, post

    def preprocess(self, sentence, offset_mapping=None):
        enc = self.tokenizer(sentence, return_special_tokens_mask=True, return_offsets_mapping=self.tokenizer.is_fast)
        row = {k: list(v) for k, v in enc.items()}
        if offset_mapping is not None:
            row["offset_mapping"] = offset_mapping
        row["sentence"] = sentence
        return [row]

    def postprocess(self, rows, aggregation_strategy="none", ignore_labels=None):
        row = rows[0]
        scores = softmax(row["outputs"]["logits"].astype(np.float32))
        pre = self._pre_entities(row, scores, aggregation_strategy)
        entities = self._aggregate(pre, aggregation_strategy)
        ignore = ["O"] if ignore_labels is None else ignore_labels
        return [e for e in entities if e.get("entity") not in ignore and e.get("entity_group") not in ignore]

    def _continuing_prefix(self) -> Optional[str]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None) or getattr(self.tokenizer, "_tokenizer", None)
        model = getattr(backend, "model", None)
        return getattr(model, "continuing_subword_prefix", None)

    def _pre_entities(self, row, scores, strategy) -> List[dict]:
        sentence = row["sentence"]
        offsets = row.get("offset_mapping")
        prefix = self._continuing_prefix()
        out = []
        for idx, token_scores in enumerate(scores):
            if row["special_tokens_mask"][idx]:
                continue
            token_id = int(row["input_ids"][idx])
            word = self.tokenizer.convert_ids_to_tokens(token_id)
            if offsets is not None:
                start, end = (int(x) for x in offsets[idx])
                original = sentence[start:end]
                if prefix:
                    # WordPiece marks continuations, so a token shorter/longer than its text is a piece.
                    is_subword = len(word) != len(original)
                else:
                    # Byte-level BPE marks word starts instead: a piece follows a non-space character.
                    is_subword = start > 0 and " " not in sentence[start - 1: start + 1]
                if token_id == self.tokenizer.unk_token_id:
                    word, is_subword = original, False
            else:
                start = end = None
                is_subword = False
            out.append({"word": word, "scores": token_scores, "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return out

    def _aggregate(self, pre: List[dict], strategy: str) -> List[dict]:
        id2label = self.model.config.id2label
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": id2label[best], "score": p["scores"][best], "index": p["index"],
                                 "word": p["word"], "start": p["start"], "end": p["end"]})
        else:
            entities = [self._aggregate_word(group, strategy) for group in self._words(pre)]
        return entities if strategy == "none" else self._group(entities)

    @staticmethod
    def _words(pre: List[dict]) -> List[List[dict]]:
        words: List[List[dict]] = []
        for p in pre:
            if words and p["is_subword"]:
                words[-1].append(p)
            else:
                words.append([p])
        return words

    def _aggregate_word(self, pieces: List[dict], strategy: str) -> dict:
        id2label = self.model.config.id2label
        word = self.tokenizer.convert_tokens_to_string([p["word"] for p in pieces])
        if strategy == "first":
            scores = pieces[0]["scores"]
        elif strategy == "max":
            scores = max(pieces, key=lambda p: p["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([p["scores"] for p in pieces]), axis=0)
        best = int(scores.argmax())
        return {"entity": id2label[best], "score": scores[best], "word": word, "start": pieces[0]["start"],
                "end": pieces[-1]["end"]}

    def _group(self, entities: List[dict]) -> List[dict]:
        groups: List[List[dict]] = []
        for e in entities:
            if groups:
                bi, tag = split_tag(e["entity"])
                _, last_tag = split_tag(groups[-1][-1]["entity"])
                if tag == last_tag and bi != "B":
                    groups[-1].append(e)
                    continue
            groups.append([e])
        return [self._group_entry(g) for g in groups]

    def _group_entry(self, group: List[dict]) -> dict:
        return {
            "entity_group": group[0]["entity"].split("-", 1)[-1],
            "score": np.nanmean([e["score"] for e in group]),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }
