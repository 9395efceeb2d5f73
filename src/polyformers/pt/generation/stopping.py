"""Stopping criteria: (input_ids, scores) -> one bool per sequence ("this one is done"), or one bool for all."""

from __future__ import annotations

import logging
import time
from typing import Optional, Union

import torch

from .processors import _as_list

logger = logging.getLogger("polyformers")


class StoppingCriteria:
    """Base class. ``__call__`` returns a bool tensor of shape (batch,), or a plain bool for every sequence."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(input_ids, scores)")


def _every_row(input_ids: torch.Tensor, done: bool) -> torch.Tensor:
    return torch.full((input_ids.shape[0],), bool(done), dtype=torch.bool, device=input_ids.device)


class MaxLengthCriteria(StoppingCriteria):
    """Done when sequences (prompt included) reach ``max_length`` tokens."""

    def __init__(self, max_length: int, max_position_embeddings: Optional[int] = None):
        self.max_length = max_length
        self.max_position_embeddings = max_position_embeddings
        self._warned = False

    def __call__(self, input_ids, scores, **kwargs):
        return _every_row(input_ids, self.reached(input_ids))

    def reached(self, input_ids) -> bool:
        """Whether every sequence is done (they all have the same length)."""
        length = input_ids.shape[-1]
        done = length >= self.max_length
        limit = self.max_position_embeddings
        if limit is not None and not done and length >= limit and not self._warned:
            self._warned = True
            logger.warning(
                "generation goes past the model's max_position_embeddings (%d); the model may fail or degrade", limit
            )
        return done


class MaxTimeCriteria(StoppingCriteria):
    """Done when ``max_time`` seconds have passed since ``initial_timestamp`` (default: creation)."""

    def __init__(self, max_time: float, initial_timestamp: Optional[float] = None):
        self.max_time = max_time
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids, scores, **kwargs):
        return _every_row(input_ids, time.time() - self.initial_timestamp > self.max_time)


class EosTokenCriteria(StoppingCriteria):
    """A sequence is done once its last token is one of ``eos_token_id``."""

    def __init__(self, eos_token_id: Union[int, list[int]]):
        self.eos_token_id = torch.tensor(_as_list(eos_token_id))

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, -1], self.eos_token_id.to(input_ids.device))


class StopStringCriteria(StoppingCriteria):
    """A sequence is done when its text ends with one of ``stop_strings``: the string may start in the middle
    of an earlier token and end in the middle of the last token, but it must end inside the last token.

    The text of each token is measured once, by decoding it after a fixed prefix with the tokenizer, so
    tokenizers that mark word starts (``Ġ``, ``▁``) or continuations (``##``) are handled alike.
    """

    _PREFIX = "abcdef"

    def __init__(self, tokenizer, stop_strings: Union[str, list[str]]):
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"stop_strings: expected a non-empty string or list of them, given {stop_strings!r}")
        self.stop_strings = tuple(stop_strings)
        self.token_text = self._token_texts(tokenizer)
        self.window = max(len(s) for s in self.stop_strings)

    @classmethod
    def _token_texts(cls, tokenizer) -> dict[int, str]:
        prefix_ids = tokenizer(cls._PREFIX, add_special_tokens=False)["input_ids"]
        prefix = tokenizer.convert_ids_to_tokens(prefix_ids)
        texts = {}
        for token, index in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string(prefix + [token])
            start = text.find(cls._PREFIX)
            texts[index] = text[start + len(cls._PREFIX):] if start >= 0 else text
        return texts

    def __call__(self, input_ids, scores, **kwargs):
        done = []
        for tokens in input_ids[:, -self.window:].tolist():
            pieces = [self.token_text.get(t, "") for t in tokens]
            text = "".join(pieces)
            # The stop string must end within the last token's text: after its first character.
            first_end = len(text) - len(pieces[-1]) + 1
            done.append(any(
                text.find(stop, 0, end) >= 0 and text[:end].endswith(stop)
                for stop in self.stop_strings
                for end in range(max(first_end, len(stop)), len(text) + 1)
            ))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class StoppingCriteriaList(list):
    """Criteria combined: a sequence is done when any criterion says so."""

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        done = self.rows_done(input_ids, scores, **kwargs)
        return _every_row(input_ids, False) if done is None else done

    def rows_done(self, input_ids, scores, **kwargs) -> Optional[torch.Tensor]:
        """What calling the list returns, or None where that would say no sequence is done: the decoding
        loop's check, which asks the maximum length without building a tensor (a step of a small model
        spends tens of microseconds on each tensor operation). Every criterion is asked, as a call asks."""
        done, every = None, False
        for criterion in self:
            if type(criterion) is MaxLengthCriteria:
                every = criterion.reached(input_ids) or every
                continue
            result = criterion(input_ids, scores, **kwargs)
            if isinstance(result, torch.Tensor) and result.dim() > 0:
                result = result.to(device=input_ids.device, dtype=torch.bool)
            else:
                result = _every_row(input_ids, bool(result))
            done = result if done is None else done | result
        return _every_row(input_ids, True) if every else done

    @property
    def max_length(self) -> Optional[int]:
        for criterion in self:
            if isinstance(criterion, MaxLengthCriteria):
                return criterion.max_length
        return None
