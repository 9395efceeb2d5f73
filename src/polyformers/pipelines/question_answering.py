"""``question-answering``: the span of the context that answers the question.

A context longer than ``max_seq_len`` is cut into overlapping windows (``doc_stride`` tokens of overlap);
every window is scored and the best spans over all windows win. Spans are chosen as the reference does:
start and end probabilities (softmax over the context tokens of a window), their product over every
start <= end within ``max_answer_len`` tokens, then the span is widened to whole words.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .base import Pipeline, PipelineError, check_text, given

# A probability product above any real one: the "no answer" score starts here and can only go down.
_NO_NULL_SCORE = 1000000.0


def best_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_answer_len: int):
    """The ``top_k`` (start, end, score) of a window whose tokens ``allowed`` marks (1 = context)."""
    outer = start[:, None] * end[None, :]
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.ravel()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[:top_k]
        order = part[np.argsort(-flat[part])]
    starts, ends = np.unravel_index(order, candidates.shape)
    ok = allowed.nonzero()[0]
    keep = np.isin(starts, ok) & np.isin(ends, ok)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[starts, ends]


class QuestionAnsweringPipeline(Pipeline):
    """``qa(question=..., context=...)`` -> ``{"score", "start", "end", "answer"}`` (a list with ``top_k``
    > 1 or several inputs). ``doc_stride`` (overlap of context windows), ``max_seq_len`` (window length,
    default min(384, the tokenizer's limit)), ``max_answer_len`` (in tokens), ``handle_impossible_answer``
    (allow the empty answer, scored by the first token of each window), ``align_to_words``."""

    task = "question-answering"
    auto_model = "AutoModelForQuestionAnswering"

    def _sanitize_parameters(self, top_k=None, doc_stride=None, max_answer_len=None, max_seq_len=None,
                             max_question_len=None, handle_impossible_answer=None, align_to_words=None,
                             padding=None, topk=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        if topk is not None and top_k is None:
            top_k = topk
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len), ("doc_stride", doc_stride),
                            ("max_seq_len", max_seq_len)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PipelineError(f"{name} must be a positive int, got {value!r}")
        pre = given(doc_stride=doc_stride, max_seq_len=max_seq_len)
        post = given(top_k=top_k, max_answer_len=max_answer_len)
        switches = given(handle_impossible_answer=handle_impossible_answer, align_to_words=align_to_words)
        post.update({name: bool(value) for name, value in switches.items()})
        return pre, {}, post

    def __call__(self, *args, **kwargs):
        question = kwargs.pop("question", None)
        context = kwargs.pop("context", None)
        if args:
            if question is not None or len(args) > 1:
                raise TypeError("give the inputs either as question=..., context=... or as one dict / list of dicts")
            inputs = args[0]
        elif question is not None or context is not None:
            if isinstance(question, list) and isinstance(context, list):
                if len(question) != len(context):
                    raise PipelineError(f"question and context lists differ in length: {len(question)} vs {len(context)}")
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            elif isinstance(question, list):
                inputs = [{"question": q, "context": context} for q in question]
            else:
                inputs = {"question": question, "context": context}
        else:
            raise PipelineError("give question=... and context=...")
        return super().__call__(inputs, **kwargs)

    def _split_inputs(self, inputs, *args):
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        for x in items:
            if not isinstance(x, dict) or set(x) != {"question", "context"}:
                raise PipelineError(f"inputs: expected dicts with the keys 'question' and 'context', got {x!r:.80}")
            check_text(x["question"], "question")
            check_text(x["context"], "context")
        return not isinstance(inputs, (list, tuple)), items

    def preprocess(self, example, doc_stride=None, max_seq_len=None):
        if not self.tokenizer.is_fast:
            raise PipelineError(f"question-answering needs a fast tokenizer (offsets); {type(self.tokenizer).__name__} is slow")
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise PipelineError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        question, context = example["question"], example["context"]
        question_first = self.tokenizer.padding_side == "right"
        q_len = len(self.tokenizer(question, add_special_tokens=False, verbose=False)["input_ids"])
        room = max_seq_len - self.tokenizer.num_special_tokens_to_add(pair=True)
        # Every window repeats the question; the context part of a window must exceed the overlap.
        if doc_stride >= room - 1:
            raise PipelineError(f"doc_stride ({doc_stride}) leaves no room for the context in windows of "
                                f"max_seq_len={max_seq_len}; use a doc_stride below {room - 1}")
        if q_len + doc_stride >= room:
            raise PipelineError(
                f"question is {q_len} tokens, too long for this model: with max_seq_len={max_seq_len} and "
                f"doc_stride={doc_stride} a question may have at most {room - doc_stride - 1} tokens")
        first, second = (question, context) if question_first else (context, question)
        enc = self.tokenizer(first, second, truncation="only_second" if question_first else "only_first",
                             max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
                             return_overflowing_tokens=True, return_offsets_mapping=True,
                             return_special_tokens_mask=True)
        context_id = 1 if question_first else 0
        rows = []
        for span in range(len(enc["input_ids"])):
            seq_ids = enc.sequence_ids(span)
            allowed = np.array([1 if s == context_id else 0 for s in seq_ids], dtype=np.int64)
            ids = enc["input_ids"][span]
            if self.tokenizer.cls_token_id is not None:
                # The CLS token stands for "no answer" and stays selectable.
                allowed[np.asarray(ids) == self.tokenizer.cls_token_id] = 1
            row = {k: enc[k][span] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            row.update(allowed=allowed, encoding=enc.encodings[span], context=context, context_id=context_id)
            rows.append(row)
        return rows

    def postprocess(self, rows, top_k=1, handle_impossible_answer=False, max_answer_len=15, align_to_words=True):
        null_score = _NO_NULL_SCORE
        answers = []
        for row in rows:
            allowed = row["allowed"]
            start = self._probabilities(row["outputs"]["start_logits"], allowed)
            end = self._probabilities(row["outputs"]["end_logits"], allowed)
            if handle_impossible_answer:
                null_score = min(null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0
            enc = row["encoding"]
            for s, e, score in zip(*best_spans(start, end, allowed, top_k, max_answer_len)):
                a, b = self._char_span(enc, int(s), int(e), row["context_id"], align_to_words)
                answers.append({"score": float(score), "start": a, "end": b, "answer": row["context"][a:b]})
        if handle_impossible_answer:
            answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers

    @staticmethod
    def _probabilities(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        masked = np.where(allowed == 0, -10000.0, logits.astype(np.float32))
        e = np.exp(masked - masked.max())
        return e / e.sum()

    @staticmethod
    def _char_span(enc, s: int, e: int, sequence_index: int, align_to_words: bool):
        if align_to_words:
            try:
                a = enc.word_to_chars(enc.token_to_word(s), sequence_index=sequence_index)[0]
                b = enc.word_to_chars(enc.token_to_word(e), sequence_index=sequence_index)[1]
                return a, b
            except Exception:  # tokenizers without words (e.g. no pre-tokenizer): keep token offsets
                pass
        return enc.offsets[s][0], enc.offsets[e][1]
