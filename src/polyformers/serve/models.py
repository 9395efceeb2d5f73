"""The models a server holds: loading, what each can do, and the embedding worker.

A checkpoint is served by what it is: a decoder-only language model (GPT-J, MPT) gets completions and,
when its tokenizer has a chat template, chat completions, through a continuous-batching
:class:`~polyformers.serve.scheduler.Scheduler`; an encoder-decoder (Pegasus) gets completions through
the same scheduler; an encoder (MPNet, RoBERTa, ELECTRA) gets embeddings, pooled and normalised as the
sentence-similarity pipeline does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .scheduler import CausalRunner, Scheduler, Seq2SeqRunner, context_length

logger = logging.getLogger("polyformers.serve")

# model_type -> what the server does with it; anything else is an encoder, served for embeddings.
GENERATIVE = {"gptj": "causal", "mpt": "causal", "pegasus": "seq2seq"}


@dataclass
class ServedModel:
    name: str
    path: str
    kind: str  # "causal", "seq2seq" or "encoder"
    tokenizer: object
    model: object
    context: int
    created: int = field(default_factory=lambda: int(time.time()))
    scheduler: Optional[Scheduler] = None
    embedder: Optional["Embedder"] = None

    @property
    def generative(self) -> bool:
        return self.kind in ("causal", "seq2seq")

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)


class Embedder:
    """Sentence embeddings of an encoder, one batch at a time (forward passes hold a lock: the model is
    shared by every request)."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        from ..pipelines.feature_extraction import SentenceSimilarityPipeline

        self.pipe = SentenceSimilarityPipeline(model, tokenizer, batch_size=batch_size)
        self.lock = threading.Lock()

    @property
    def max_tokens(self) -> Optional[int]:
        return self.pipe.max_seq_length

    def rows(self, inputs: list) -> list:
        """Model rows for strings (tokenized and truncated as the pipeline does) or token-id lists."""
        rows = []
        for item in inputs:
            if isinstance(item, str):
                rows.extend(self.pipe.preprocess(item))
            else:
                row = {"input_ids": list(item), "attention_mask": [1] * len(item)}
                if "token_type_ids" in self.pipe._input_names():
                    row["token_type_ids"] = [0] * len(item)
                rows.append(row)
        return rows

    def embed(self, rows: list) -> np.ndarray:
        with self.lock:
            self.pipe.run_rows(rows)
        return np.stack([self.pipe.postprocess([r]) for r in rows]).astype(np.float32)


def parse_model_arg(value: str) -> tuple:
    """``--model PATH_OR_ID`` or ``--model NAME=PATH``: (name, path). A bare path is served under its
    folder name (or the Hub id as written)."""
    if "=" in value and not os.path.exists(value):
        name, path = value.split("=", 1)
        if not name or not path:
            raise ValueError(f"--model {value!r}: expected NAME=PATH or a path")
        return name, path
    path = value
    name = os.path.basename(os.path.normpath(value)) if os.path.isdir(value) else value
    return name, path


def load_served_model(name: str, path: str, *, dtype: Optional[str] = None, int8: bool = False,
                      kv_cache_dtype: str = "auto", max_batch: int = 8, max_queue: int = 64,
                      max_model_len: Optional[int] = None, prefill_chunk: int = 512, device: Optional[str] = None,
                      logprobs_mode: str = "raw") -> ServedModel:
    """``kv_cache_dtype``: ``"auto"`` (slots in the model's dtype) or ``"bfloat16"``: a decoder-only model's
    slots hold bfloat16 keys and values (see :class:`polyformers.pt.cache.StaticCache`); encoders keep no
    cache, and Pegasus' decoder keeps its own in the model's dtype."""
    from ..auto import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if kv_cache_dtype not in ("auto", "bfloat16"):
        raise ValueError(f"kv_cache_dtype: expected 'auto' or 'bfloat16', given {kv_cache_dtype!r}")
    config = AutoConfig.from_pretrained(path)
    kind = GENERATIVE.get(config.model_type, "encoder")
    loader = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
    kwargs = {"dtype": dtype} if dtype else {}
    model = loader.from_pretrained(path, **kwargs).eval()
    if device:
        model.to(device)
    if int8:
        from ..pt.quantize import OUTLIER_THRESHOLD, quantize_int8

        if kind == "encoder":
            quantize_int8(model, OUTLIER_THRESHOLD)
        else:  # each request decodes as it would alone, whatever shares its batch
            quantize_int8(model, per_row=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    served = ServedModel(name=name, path=path, kind=kind, tokenizer=tokenizer, model=model,
                         context=context_length(config))
    if kind == "encoder":
        served.embedder = Embedder(model, tokenizer)
        if served.embedder.max_tokens:
            served.context = served.embedder.max_tokens
        return served
    if kind == "causal":
        cache_dtype = None
        if kv_cache_dtype == "bfloat16":
            weights = next(model.parameters()).dtype
            if weights not in (torch.float32, torch.bfloat16):
                raise ValueError(f"{name}: kv_cache_dtype 'bfloat16' needs float32 or bfloat16 states, the model "
                                 f"computes in {weights}")
            cache_dtype = torch.bfloat16
        runner = CausalRunner(model, max_batch, max_model_len, cache_dtype=cache_dtype)
    else:
        if kv_cache_dtype != "auto":
            logger.warning("%s: a %s model keeps its decoder's cache in the model's dtype (kv_cache_dtype %r "
                           "applies to decoder-only models)", name, config.model_type, kv_cache_dtype)
        runner = Seq2SeqRunner(model, max_batch, max_model_len)
    served.context = runner.max_len
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    eos.append(tokenizer.eos_token_id)
    served.scheduler = Scheduler(runner, tokenizer, eos_token_ids=eos, max_queue=max_queue,
                                 prefill_chunk=prefill_chunk, name=name, logprobs_mode=logprobs_mode).start()
    logger.info("serving %s (%s, %s) from %s: context %d, %d slots", name, type(model).__name__, kind, path,
                served.context, max_batch)
    return served
