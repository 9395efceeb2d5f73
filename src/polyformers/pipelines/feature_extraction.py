"""Token features (``feature-extraction``) and sentence embeddings (``sentence-similarity``)."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .base import Pipeline, PipelineError, check_text


class FeatureExtractionPipeline(Pipeline):
    """The last hidden state of the bare model for each text: ``[1, tokens, hidden]`` as nested lists
    (or a tensor with ``return_tensors=True``). ``truncation`` and ``tokenize_kwargs`` go to the tokenizer."""

    task = "feature-extraction"
    auto_model = "AutoModel"

    def _sanitize_parameters(self, truncation=None, tokenize_kwargs=None, return_tensors=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        pre = dict(tokenize_kwargs or {})
        if truncation is not None:
            if "truncation" in pre:
                raise PipelineError("truncation given both directly and in tokenize_kwargs; give it once")
            pre["truncation"] = truncation
        post = {} if return_tensors is None else {"return_tensors": return_tensors}
        return pre, {}, post

    def preprocess(self, inputs, **tokenize_kwargs):
        return [dict(self.tokenizer(inputs, **tokenize_kwargs))]

    def postprocess(self, rows, return_tensors: bool = False):
        hidden = rows[0]["outputs"]["last_hidden_state"][None]
        if not return_tensors:
            return hidden.tolist()
        if self.framework == "pt":
            import torch

            return torch.from_numpy(hidden)
        return hidden


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path} is not valid JSON: {err}") from None


POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


def sentence_transformers_settings(folder: Optional[str]) -> dict:
    """Pooling, normalisation and length limit as a sentence-transformers folder declares them.

    Without those files (a plain checkpoint) it is mean pooling and unit length, the recipe of
    all-mpnet-base-v2 and most sentence-transformers models.
    """
    settings = {"pooling": "mean", "normalize": True, "max_seq_length": None}
    if not folder or not os.path.isdir(folder):
        return settings
    modules = _read_json(os.path.join(folder, "modules.json"))
    if modules is not None:
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        settings["normalize"] = "Normalize" in kinds
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pooling = _read_json(os.path.join(folder, m.get("path", ""), "config.json")) or {}
                for mode in POOLING_MODES:
                    key = "pooling_mode_cls_token" if mode == "cls" else (
                        "pooling_mode_max_tokens" if mode == "max" else f"pooling_mode_{mode}_tokens")
                    if pooling.get(key):
                        settings["pooling"] = mode
                        break
    bert = _read_json(os.path.join(folder, "sentence_bert_config.json")) or {}
    if bert.get("max_seq_length"):
        settings["max_seq_length"] = int(bert["max_seq_length"])
    settings["lowercase"] = bool(bert.get("do_lower_case", False))
    return settings


def pool(hidden: np.ndarray, mode: str) -> np.ndarray:
    """One vector from the token vectors of one unpadded sequence (special tokens included, as in
    sentence-transformers, whose attention mask covers them)."""
    if mode == "mean":
        return hidden.mean(axis=0)
    if mode == "cls":
        return hidden[0]
    if mode == "max":
        return hidden.max(axis=0)
    if mode == "mean_sqrt_len":
        return hidden.sum(axis=0) / np.sqrt(hidden.shape[0])
    raise PipelineError(f"pooling must be one of {list(POOLING_MODES)}, got {mode!r}")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    # The clamp keeps an all-zero vector at zero instead of NaN, as torch.nn.functional.normalize does.
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SentenceSimilarityPipeline(Pipeline):
    """Sentence embeddings and their cosine similarities, computed as sentence-transformers does.

    ``pipe(source_sentence, sentences)`` (or ``pipe({"source_sentence": ..., "sentences": [...]})``, the
    Hub's format) returns one cosine similarity per sentence. ``pipe.encode(texts)`` returns the embeddings,
    ``[len(texts), hidden]`` float32, pooled (``pooling``) and unit length (``normalize``) as the model
    folder's sentence-transformers files say (mean and unit length when it has none); texts longer than
    ``max_seq_length`` tokens are truncated.
    """

    task = "sentence-similarity"
    auto_model = "AutoModel"

    def __init__(self, model, tokenizer=None, *, pooling: Optional[str] = None, normalize: Optional[bool] = None,
                 max_seq_length: Optional[int] = None, **kwargs):
        folder = os.fspath(model) if isinstance(model, (str, os.PathLike)) else getattr(
            getattr(model, "config", None), "_name_or_path", None)
        settings = sentence_transformers_settings(folder)
        super().__init__(model, tokenizer, **kwargs)
        self.pooling = pooling or settings["pooling"]
        if self.pooling not in POOLING_MODES:
            raise PipelineError(f"pooling must be one of {list(POOLING_MODES)}, got {self.pooling!r}")
        self.normalize = settings["normalize"] if normalize is None else bool(normalize)
        self.lowercase = settings.get("lowercase", False)
        limit = max_seq_length or settings["max_seq_length"]
        model_limit = getattr(self.model.config, "max_position_embeddings", None)
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        candidates = [x for x in (limit, tok_limit if tok_limit and tok_limit < 10**6 else None) if x]
        if not candidates and model_limit:
            # Learned positions reserve room for the padding offset in RoBERTa-style families.
            candidates = [model_limit - 2 if self.model.config.model_type in ("roberta", "mpnet") else model_limit]
        self.max_seq_length = min(candidates) if candidates else None

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, inputs, **_):
        text = inputs.lower() if self.lowercase else inputs
        kwargs = {"truncation": True, "max_length": self.max_seq_length} if self.max_seq_length else {}
        return [dict(self.tokenizer(text, **kwargs))]

    def postprocess(self, rows, **_):
        vec = pool(rows[0]["outputs"]["last_hidden_state"], self.pooling)
        return normalize_rows(vec) if self.normalize else vec

    def encode(self, texts: Sequence[str], desc: str = "embedding", unit: str = "text") -> np.ndarray:
        """Embeddings of ``texts`` as one ``[n, hidden]`` float32 array, in the order given."""
        if isinstance(texts, str):
            raise PipelineError("texts must be a list of str, got a single str; wrap it in a list")
        rows = []
        for i, t in enumerate(texts):
            check_text(t, f"texts[{i}]")
            rows.extend(self.preprocess(t))
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        self.run_rows(rows, desc=desc, unit=unit)
        return np.stack([self.postprocess([r]) for r in rows]).astype(np.float32)

    def __call__(self, inputs, sentences: Optional[List[str]] = None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        if isinstance(inputs, dict):
            if sentences is not None or set(inputs) != {"source_sentence", "sentences"}:
                raise PipelineError(
                    "inputs as a dict must have exactly the keys 'source_sentence' and 'sentences', got "
                    f"{sorted(inputs)}")
            inputs, sentences = inputs["source_sentence"], inputs["sentences"]
        check_text(inputs, "source_sentence")
        if sentences is None:
            raise PipelineError("sentences: give the sentences to compare the source sentence with")
        if isinstance(sentences, str):
            sentences = [sentences]
        if not sentences:
            raise PipelineError("sentences is an empty list; give at least one sentence")
        vectors = self.encode([inputs, *sentences])
        return cosine(vectors[:1], vectors[1:])[0].tolist()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    return normalize_rows(a) @ normalize_rows(b).T
