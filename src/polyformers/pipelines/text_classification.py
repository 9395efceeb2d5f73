"""``text-classification`` (alias ``sentiment-analysis``): labels and scores for a text or a text pair."""

from __future__ import annotations

import numpy as np

from .base import Pipeline, PipelineError, check_text, sigmoid, softmax

FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET = object()


class TextClassificationPipeline(Pipeline):
    """Scores of the labels of ``config.id2label``.

    As in the reference: without ``top_k`` each text gives its best ``{"label", "score"}`` (a single text
    gives a one-element list); ``top_k=k`` gives the ``k`` best, sorted, per text; ``top_k=None`` all of them.
    ``function_to_apply`` ("softmax", "sigmoid", "none") defaults to sigmoid for one label or a
    multi-label problem and softmax otherwise. A text pair is given as ``{"text": ..., "text_pair": ...}``.
    """

    task = "text-classification"
    auto_model = "AutoModelForSequenceClassification"

    def _sanitize_parameters(self, top_k=_UNSET, function_to_apply=None, return_all_scores=None, **tokenizer_kwargs):
        post = {}
        if return_all_scores is not None:
            # The older spelling: all scores, unsorted, without the top_k shape change.
            post["top_k"] = None if return_all_scores else 1
            post["legacy"] = True
        if top_k is not _UNSET:
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise PipelineError(f"top_k must be a positive int or None, got {top_k!r}")
            post["top_k"] = top_k
            post["legacy"] = False
        if function_to_apply is not None:
            name = str(getattr(function_to_apply, "value", function_to_apply)).lower()
            if name not in FUNCTIONS:
                raise PipelineError(f"function_to_apply must be one of {list(FUNCTIONS)}, got {function_to_apply!r}")
            post["function_to_apply"] = name
        return tokenizer_kwargs, {}, post

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        legacy = "top_k" not in kwargs and "return_all_scores" not in kwargs and "top_k" not in self._defaults[2]
        # The reference wraps a lone string's result in a list, but not a lone text-pair dict's.
        if legacy and isinstance(inputs, str):
            return [result]
        return result

    def _split_inputs(self, inputs, *args):
        if args:
            raise TypeError(f"{type(self).__name__} takes one positional argument (the inputs)")
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for x in items:
            if isinstance(x, dict):
                if set(x) - {"text", "text_pair"} or "text" not in x:
                    raise PipelineError(f"inputs: a dict must have the keys 'text' and optionally 'text_pair', got {sorted(x)}")
                check_text(x["text"], "text")
            else:
                check_text(x, "inputs")
        return not isinstance(inputs, (list, tuple)), items

    def preprocess(self, inputs, **tokenizer_kwargs):
        if isinstance(inputs, dict):
            return [dict(self.tokenizer(inputs["text"], inputs.get("text_pair"), **tokenizer_kwargs))]
        return [dict(self.tokenizer(inputs, **tokenizer_kwargs))]

    def _default_function(self) -> str:
        config = self.model.config
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        if config.problem_type == "single_label_classification" or config.num_labels > 1:
            return "softmax"
        return "none"

    def postprocess(self, rows, top_k=1, function_to_apply=None, legacy=True):
        logits = rows[0]["outputs"]["logits"].astype(np.float64)
        function = function_to_apply or getattr(self.model.config, "function_to_apply", None) or self._default_function()
        if function == "sigmoid":
            scores = sigmoid(logits)
        elif function == "softmax":
            scores = softmax(logits)
        else:
            scores = logits
        id2label = self.model.config.id2label
        if top_k == 1 and legacy:
            best = int(scores.argmax())
            return {"label": id2label[best], "score": float(scores[best])}
        labelled = [{"label": id2label[i], "score": float(s)} for i, s in enumerate(scores)]
        if not legacy:
            labelled.sort(key=lambda d: d["score"], reverse=True)
            if top_k is not None:
                labelled = labelled[:top_k]
        return labelled
