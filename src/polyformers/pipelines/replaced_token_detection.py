"""``replaced-token-detection``: which tokens an ELECTRA discriminator thinks a generator replaced."""

from __future__ import annotations

from .base import Pipeline, PipelineError, sigmoid


class ReplacedTokenDetectionPipeline(Pipeline):
    """For each text, its tokens (special tokens left out) as dicts of ``token``, ``score`` (the
    probability that the token was replaced), ``replaced`` (``score > threshold``; at the default 0.5 this
    is the spec example's ``round((sign(logits) + 1) / 2)``), ``index``, ``start`` and ``end``."""

    task = "replaced-token-detection"
    auto_model = "AutoModelForPreTraining"
    families = ("electra",)

    def _sanitize_parameters(self, threshold=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        post = {}
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise PipelineError(f"threshold must be a probability between 0 and 1, got {threshold!r}")
            post["threshold"] = float(threshold)
        return {}, {}, post

    def preprocess(self, text):
        enc = self.tokenizer(text, return_special_tokens_mask=True, return_offsets_mapping=self.tokenizer.is_fast,
                             truncation=True)
        return [dict(enc)]

    def postprocess(self, rows, threshold=0.5):
        row = rows[0]
        probs = sigmoid(row["outputs"]["logits"].astype("float64"))
        offsets = row.get("offset_mapping")
        out = []
        for i, (token_id, special) in enumerate(zip(row["input_ids"], row["special_tokens_mask"])):
            if special:
                continue
            start, end = offsets[i] if offsets is not None else (None, None)
            out.append({"token": self.tokenizer.convert_ids_to_tokens(int(token_id)), "score": float(probs[i]),
                        "replaced": bool(probs[i] > threshold), "index": i, "start": start, "end": end})
        if not out:
            raise PipelineError("inputs: the text produced no tokens to judge")
        return out
