"""``fill-mask``: the most likely tokens at each mask token."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .base import Pipeline, PipelineError, softmax


class FillMaskPipeline(Pipeline):
    """For each text, the ``top_k`` candidates of its mask token as dicts of ``score``, ``token``,
    ``token_str`` and ``sequence`` (the text with the candidate in place); a text with several masks gives
    one such list per mask. ``targets`` restricts the candidates to the given words (a word the vocabulary
    lacks is replaced by its first token)."""

    task = "fill-mask"
    auto_model = "AutoModelForMaskedLM"

    def _sanitize_parameters(self, top_k=None, targets=None, tokenizer_kwargs=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        post = {}
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise PipelineError(f"top_k must be a positive int, got {top_k!r}")
            post["top_k"] = top_k
        if targets is not None:
            post["target_ids"] = self._target_ids(targets)
        return dict(tokenizer_kwargs or {}), {}, post

    def _target_ids(self, targets) -> List[int]:
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer(target, add_special_tokens=False, return_attention_mask=False,
                                        return_token_type_ids=False, max_length=1, truncation=True)["input_ids"]
                if not pieces:
                    continue  # a target that tokenizes to nothing cannot be scored
                id_ = pieces[0]
            ids.append(id_)
        ids = sorted(set(ids))
        if not ids:
            raise PipelineError(f"targets: none of {list(targets)} maps to a token of the vocabulary")
        return ids

    def preprocess(self, inputs, **tokenizer_kwargs):
        enc = dict(self.tokenizer(inputs, **tokenizer_kwargs))
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None or mask_id not in enc["input_ids"]:
            raise PipelineError(
                f"inputs: no mask token ({self.tokenizer.mask_token}) found in {inputs!r}; put one where a word "
                "should be predicted")
        return [enc]

    def postprocess(self, rows, top_k: int = 5, target_ids: Optional[List[int]] = None):
        row = rows[0]
        ids = np.asarray(row["input_ids"])
        logits = row["outputs"]["logits"]
        positions = np.nonzero(ids == self.tokenizer.mask_token_id)[0]
        single = len(positions) == 1
        if target_ids is not None:
            top_k = min(top_k, len(target_ids))
        results = []
        for pos in positions:
            probs = softmax(logits[pos].astype(np.float64)).astype(np.float32)
            candidates = np.asarray(target_ids) if target_ids is not None else np.arange(len(probs))
            scores = probs[candidates]
            best = np.argsort(-scores, kind="stable")[:top_k]
            found = []
            for j in best:
                token = int(candidates[j])
                filled = ids.copy()
                filled[pos] = token
                if self.tokenizer.pad_token_id is not None:
                    filled = filled[filled != self.tokenizer.pad_token_id]
                found.append({
                    "score": float(scores[j]),
                    "token": token,
                    "token_str": self.tokenizer.decode([token]),
                    # With one mask the sequence reads as text; with several the other masks stay visible.
                    "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=single),
                })
            results.append(found)
        return results[0] if single else results
