"""Streamers: receive tokens from ``generate`` as they are produced and turn them into text.

``generate`` calls ``put(token_ids)`` with the prompt, then with each new token, and ``end()`` when done.
Text is released word by word (up to the last space), so a word split into several tokens is never shown
half-decoded; a newline or a CJK character releases everything at once. Framework-free: ``put`` takes any
array with ``tolist()`` (or a list).
"""

from __future__ import annotations

from queue import Queue
from typing import Optional


class BaseStreamer:
    """The interface ``generate`` drives."""

    def put(self, value) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement put(value)")

    def end(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement end()")


def _is_cjk(char: str) -> bool:
    """CJK ideographs are written without spaces, so each one is a word of its own."""
    cp = ord(char)
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


class TextStreamer(BaseStreamer):
    """Prints generated text to stdout as soon as whole words are available.

    ``skip_prompt`` leaves out the prompt; other keyword arguments go to ``tokenizer.decode``
    (``skip_special_tokens=True``, ...). Works with a batch of one sequence.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False, **decode_kwargs):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value) -> None:
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) > 1 and shape[0] > 1:
            raise ValueError(f"value: {type(self).__name__} streams one sequence, given a batch of {shape[0]}")
        if len(shape) > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist() if hasattr(value, "tolist") else list(value))
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            printable = text[self.print_len:]
            self.token_cache, self.print_len = [], 0
        elif text and _is_cjk(text[-1]):
            printable = text[self.print_len:]
            self.print_len += len(printable)
        else:
            # Hold back the last word: the next token may still extend it.
            printable = text[self.print_len : text.rfind(" ") + 1]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        printable = ""
        if self.token_cache:
            printable = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len:]
            self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Where released text goes; subclasses override it (this one prints)."""
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Queues released text for another thread to iterate over (``for text in streamer``), e.g. while
    ``generate`` runs in a background thread. ``timeout`` (seconds) bounds each wait for text."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: Optional[float] = None, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


__all__ = ["BaseStreamer", "TextStreamer", "TextIteratorStreamer"]
