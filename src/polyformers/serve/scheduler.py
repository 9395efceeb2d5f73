"""Continuous batching: one scheduler thread per generative model.

The scheduler owns the model. Each request is split into sequences (one per prompt and choice) that
wait in a queue, take a free slot of a preallocated key/value cache when one frees up, have their prompt
prefilled (in chunks, so a long prompt does not stall the others for long), and then join the running
batch, which advances by one token per step. A sequence leaves the batch the step it finishes (end of
sequence, ``max_tokens``, a stop string, the context full, or its client gone), and its slot is reused
at once. Each iteration of the loop prefills up to ``prefill_chunk`` prompt tokens of newcomers, then
runs one decoding step for every running sequence: newcomers join at token boundaries without waiting
for the batch to drain.

Batching must not change what a request gets: every slot has its own positions (no left padding), so
a row computes what it would compute alone and the batch only changes the shape of the matrix products.
Greedy decoding therefore gives the tokens ``generate`` gives for the prompt alone.

The loop runs in a plain thread (torch releases the GIL in its kernels); results go back to the
caller through a callback that the HTTP layer turns into events on its event loop.
"""

from __future__ import annotations

import collections
import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..pt.cache import StaticCache
from ..pt.generation import TopPLogitsWarper
from ..pt.quantize import decoding_weights
from .protocol import SamplingParams

logger = logging.getLogger("polyformers.serve")


IMPOSSIBLE_LOGPROB = -9999.0  # the log-probability reported for a token of probability 0


class QueueFull(Exception):
    """Raised by :meth:`Scheduler.submit` when ``max_queue`` requests already wait."""


class ShuttingDown(Exception):
    """Raised by :meth:`Scheduler.submit` once the scheduler is stopping."""


# ----------------------------------------------------------------------------------------------------
# The slot cache


class SlotCache(StaticCache):
    """A :class:`StaticCache` whose rows are independent slots, each holding one sequence at its own length.

    The stock cache writes every row at the same ``cache_position``; here the scheduler routes each
    forward call first (:meth:`route_prefill` for one slot's prompt chunk, :meth:`route_decode` for one
    new token in each of the first ``n`` slots at per-slot positions) and the ``cache_position`` the model
    passes is only used by the model itself, for its masks (the batch's furthest position). The model's
    attention mask then hides, row by row, the slots beyond each sequence's own length.
    """

    def __init__(self, config, max_batch_size: int, max_cache_len: int, device=None, dtype=None):
        super().__init__(config, max_batch_size=max_batch_size, max_cache_len=max_cache_len, device=device,
                         dtype=dtype)
        self._rows: Optional[int] = None
        self._start = 0
        self._positions: Optional[torch.Tensor] = None
        self._length_hint = 0

    def route_prefill(self, slot: int, start: int, length: int) -> None:
        self._rows, self._start, self._positions = slot, start, None
        self._length_hint = start + length

    def route_decode(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """One token per row of the first ``len(positions)`` slots; only ``rows`` (the slots decoding) are
        written, so a slot in between whose prompt is still being prefilled keeps its states."""
        self._rows, self._positions = rows, positions
        self._length_hint = int(positions.max()) + 1

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if not self.key_cache:
            self._allocate(key_states.dtype, key_states.device)
        keys, values = self.key_cache[layer_idx], self.value_cache[layer_idx]
        key_states, value_states = key_states.to(keys.dtype), value_states.to(values.dtype)  # a bfloat16 cache
        if self._positions is None:
            slot, start = self._rows, self._start
            end = start + key_states.shape[-2]
            keys[slot, :, start:end] = key_states[0]
            values[slot, :, start:end] = value_states[0]
            return keys[slot: slot + 1], values[slot: slot + 1]
        n, rows = self._positions.shape[0], self._rows
        where = self._positions[rows]
        keys[rows, :, where] = key_states[rows, :, 0]
        values[rows, :, where] = value_states[rows, :, 0]
        return keys[:n], values[:n]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length_hint

    def copy_slot(self, source: int, target: int, length: int) -> None:
        for tensor in (*self.key_cache, *self.value_cache):
            tensor[target, :, :length] = tensor[source, :, :length]


# ----------------------------------------------------------------------------------------------------
# Requests, sequences and what flows back


@dataclass
class LogprobEntry:
    text: str
    logprob: Optional[float]
    top: Optional[dict]
    offset: int  # characters of output text before this token


@dataclass
class Event:
    """What one step produced for one choice: new text (possibly empty), the tokens it came from, and,
    when it ended, why (``stop``, ``length``) or the error that ended it."""

    index: int
    text: str = ""
    token_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: Optional[list] = None
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    completion_tokens: int = 0


class GenerationRequest:
    """One API request: ``prompts`` (token ids) x ``n`` choices, numbered prompt-major as OpenAI does.
    ``on_event`` is called from the scheduler thread for every :class:`Event`."""

    def __init__(self, prompts: list, params: SamplingParams, n: int, on_event: Callable[[Event], None],
                 max_tokens: Optional[list] = None):
        self.params = params
        self.on_event = on_event
        self.cancelled = False
        self.submitted = time.monotonic()
        self.sequences = []
        for p, ids in enumerate(prompts):
            budget = max_tokens[p] if max_tokens is not None else params.max_tokens
            group = object()
            for j in range(n):
                self.sequences.append(Sequence(self, p * n + j, list(ids), params, budget, group))

    def cancel(self) -> None:
        """Stop generating for this request; its slots are freed at the next token boundary."""
        self.cancelled = True


class Sequence:
    """One choice being generated: its prompt, the tokens so far, the text released so far."""

    def __init__(self, request: GenerationRequest, index: int, prompt_ids: list, params: SamplingParams,
                 max_tokens: int, group: object):
        self.request = request
        self.index = index
        self.group = group
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.output_ids: list = []
        self.slot: Optional[int] = None
        self.state = None  # runner-specific (encoder-decoder caches)
        self.prefilled = 0  # prompt tokens in the cache
        self.text = ""
        self.sent = 0
        self.finished = False
        self.counts: Optional[torch.Tensor] = None  # token counts, for presence/frequency penalties
        self.prompt_entries: Optional[list] = [] if params.prompt_logprobs else None
        self.generator: Optional[torch.Generator] = None

    @property
    def position(self) -> int:
        """The cache slot the last chosen token is written to when it is fed."""
        return len(self.prompt_ids) + len(self.output_ids) - 1


# ----------------------------------------------------------------------------------------------------
# Model runners: how one kind of model prefills and decodes


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(config).__name__} declares no maximum length (max_position_embeddings)")


def _last_tokens(seqs: list, positions: list) -> tuple:
    """The decoding step's inputs by slot, up to the highest slot in ``seqs``: each sequence's last chosen token,
    (slots, 1), and its position from ``positions``, (slots,); rows of other slots hold zeros."""
    n = max(s.slot for s in seqs) + 1
    tokens = torch.zeros((n, 1), dtype=torch.long)
    by_slot = torch.zeros(n, dtype=torch.long)
    for s, position in zip(seqs, positions):
        tokens[s.slot, 0] = s.output_ids[-1]
        by_slot[s.slot] = position
    return tokens, by_slot


class _SlotRunner:
    """What both runners share: the model, the context they fit, and the pool of free batch slots."""

    def __init__(self, model, max_batch: int, max_len: Optional[int] = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.max_len = min(max_len or context_length(model.config), context_length(model.config))
        self._free = list(range(max_batch))  # a heap: the lowest free slot first keeps the batch compact
        heapq.heapify(self._free)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self, seq: Sequence) -> None:
        seq.slot = heapq.heappop(self._free)

    def release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            heapq.heappush(self._free, seq.slot)
            seq.slot = None


class CausalRunner(_SlotRunner):
    """A decoder-only model on a :class:`SlotCache` of ``max_batch`` slots by ``max_len`` positions, in the
    model's dtype or in ``cache_dtype`` (bfloat16 for a float32 model: see :class:`StaticCache`)."""

    chunked_prefill = True

    def __init__(self, model, max_batch: int, max_len: Optional[int] = None,
                 cache_dtype: Optional[torch.dtype] = None):
        super().__init__(model, max_batch, max_len)
        self.cache = SlotCache(model.config, max_batch, self.max_len, device=self.device if cache_dtype else None,
                               dtype=cache_dtype)
        self._extra = {"logits_to_keep": 1}

    def prefill(self, seq: Sequence, start: int, end: int, all_logits: bool) -> torch.Tensor:
        """Feed prompt tokens ``start:end`` of ``seq``; the logits of every fed position, or of the last."""
        ids = torch.tensor([seq.prompt_ids[start:end]], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)
        self.cache.route_prefill(seq.slot, start, end - start)
        # The mask covers every slot seen so far (earlier chunks included), all of them the prompt's own.
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, past_key_values=self.cache, attention_mask=mask,
                         position_ids=positions[None], cache_position=positions, use_cache=True, return_dict=True,
                         logits_to_keep=0 if all_logits else 1)
        return out.logits[0].float()

    def fork(self, source: Sequence, target: Sequence) -> None:
        self.cache.copy_slot(source.slot, target.slot, len(source.prompt_ids))

    def full(self, seq: Sequence) -> bool:
        """Whether the context has no room to feed the sequence's last token."""
        return seq.position + 1 >= self.max_len

    def decode(self, seqs: list) -> torch.Tensor:
        """One token for each sequence (its last chosen one, at its own position); (len(seqs), vocab) logits."""
        tokens, positions = _last_tokens(seqs, [s.position for s in seqs])
        longest = int(positions.max()) + 1
        # Row i sees its own slots 0..position. A row in between that is not decoding (free, or still
        # prefilling) computes a throwaway token over its slot 0 and writes nothing.
        mask = (torch.arange(longest)[None, :] <= positions[:, None]).long()
        tokens, positions, mask = tokens.to(self.device), positions.to(self.device), mask.to(self.device)
        rows = torch.tensor([s.slot for s in seqs], device=self.device)
        self.cache.route_decode(positions, rows)
        out = self.model(input_ids=tokens, past_key_values=self.cache, attention_mask=mask,
                         position_ids=positions[:, None], cache_position=positions.max()[None], use_cache=True,
                         return_dict=True, logits_to_keep=1)
        return out.logits[rows, -1].float()


class Seq2SeqRunner(_SlotRunner):
    """An encoder-decoder (Pegasus) on preallocated per-slot storage, decoding every running sequence in
    one forward per step.

    Prefill runs the encoder on the prompt and the decoder on ``decoder_start_token_id`` (the model's own
    forward, as ``generate``'s first step), then copies what that step cached into the sequence's slot:
    the decoder's self-attention keys/values of position 0, and the cross-attention keys/values of the
    encoder states, projected once per request. Each slot then holds its decoder keys/values at its own
    length and its encoder keys/values at its own source length (the storage is as long as the longest
    source the context allows; the tail is masked row by row).

    A decoding step feeds the last chosen token of each sequence at its own position through the
    decoder's layers over the first ``n`` slots (``n`` past the highest slot decoding): the self-attention
    mask hides, per row, the positions past its own, and the cross-attention mask the encoder positions
    past its own source. The step is the model's own decoder forward (with per-row ``position_ids``) on a
    cache of views into the storage: its self-attention appends the new keys after them, its
    cross-attention takes the stored ones. The new keys/values then go back into each row's slot at its
    own position. So a row computes what it computes alone; only the shapes of the matrix products
    change.
    """

    chunked_prefill = False

    def __init__(self, model, max_batch: int, max_len: Optional[int] = None):
        super().__init__(model, max_batch, max_len)
        config = model.config
        start = config.decoder_start_token_id
        if start is None:
            start = model.generation_config.decoder_start_token_id
        if start is None:
            start = config.bos_token_id
        if start is None:
            raise ValueError("the model config has no decoder_start_token_id (nor bos_token_id)")
        self.start_token = int(start)
        self.decoder = model.get_decoder()
        self._source = torch.zeros(max_batch, dtype=torch.long)  # encoder length held by each slot
        # Per layer, (slots, heads, positions, head_dim): allocated on the first prefill, in the dtype and
        # on the device of the states the model produces.
        self.self_keys: list = []
        self.self_values: list = []
        self.cross_keys: list = []
        self.cross_values: list = []

    def release(self, seq: Sequence) -> None:
        if seq.slot is not None:
            seq.state = None
        super().release(seq)

    def _allocate(self, like: torch.Tensor) -> None:
        _, heads, _, head_dim = like.shape
        layers = len(self.decoder.layers)

        def storage():
            return [torch.zeros((self.max_batch, heads, self.max_len, head_dim), dtype=like.dtype, device=like.device)
                    for _ in range(layers)]

        self.self_keys, self.self_values = storage(), storage()
        self.cross_keys, self.cross_values = storage(), storage()

    def prefill(self, seq: Sequence, start: int, end: int, all_logits: bool) -> torch.Tensor:
        length = len(seq.prompt_ids)
        if length > self.max_len:
            raise ValueError(f"prompt of {length} tokens: the encoder takes at most {self.max_len} (max_len)")
        ids = torch.tensor([seq.prompt_ids], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        encoder_outputs = self.model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True)
        first = torch.tensor([[self.start_token]], dtype=torch.long, device=self.device)
        out = self.model(attention_mask=mask, encoder_outputs=encoder_outputs, decoder_input_ids=first,
                         use_cache=True, return_dict=True)
        past = out.past_key_values
        if not self.self_keys:
            self._allocate(past[0][0])
        slot = seq.slot
        for i, (key, value, cross_key, cross_value) in enumerate(past):
            self.self_keys[i][slot, :, :1] = key[0]
            self.self_values[i][slot, :, :1] = value[0]
            self.cross_keys[i][slot, :, :length] = cross_key[0]
            self.cross_values[i][slot, :, :length] = cross_value[0]
        self._source[slot] = length
        logits = out.logits[0, -1:].float()
        if all_logits:  # no language-model scores exist for an encoder's input: NaN rows, then the real one
            unknown = torch.full((length - 1, logits.shape[-1]), float("nan"), device=logits.device)
            return torch.cat([unknown, logits])
        return logits

    def fork(self, source: Sequence, target: Sequence) -> None:
        a, b, length = source.slot, target.slot, int(self._source[source.slot])
        for tensors in (self.self_keys, self.self_values):
            for tensor in tensors:
                tensor[b, :, :1] = tensor[a, :, :1]
        for tensors in (self.cross_keys, self.cross_values):
            for tensor in tensors:
                tensor[b, :, :length] = tensor[a, :, :length]
        self._source[b] = length

    def full(self, seq: Sequence) -> bool:
        # The decoder's own length (its start token and the outputs) is what its positions limit.
        return 1 + len(seq.output_ids) >= self.max_len

    def decode(self, seqs: list) -> torch.Tensor:
        """One token for each sequence, all in one decoder forward; (len(seqs), vocab) logits."""
        tokens, positions = _last_tokens(seqs, [len(s.output_ids) for s in seqs])  # the start token sits at 0
        n = len(positions)
        rows = torch.tensor([s.slot for s in seqs])
        sources = self._source[:n]
        # Row i has positions 0..positions[i]-1 in its slot. The decoder is given the first ``past`` of
        # every slot and appends the new token's keys after them, as in ``generate``; the masks hide, per
        # row, the stored positions past its own and the encoder positions past its own source. A row in
        # between that is not decoding (free, or since released) computes a throwaway token.
        past = int(positions.max())
        longest_source = int(sources[rows].max())
        self_mask = torch.cat([torch.arange(past)[None, :] < positions[:, None], torch.ones(n, 1, dtype=torch.bool)], 1)
        cross_mask = torch.arange(longest_source)[None, :] < sources[:, None]
        device = self.device
        tokens, positions, rows = tokens.to(device), positions.to(device), rows.to(device)
        cache = tuple((self.self_keys[i][:n, :, :past], self.self_values[i][:n, :, :past],
                       self.cross_keys[i][:n, :, :longest_source], self.cross_values[i][:n, :, :longest_source])
                      for i in range(len(self.self_keys)))
        # The layers take their cross-attention keys and values from the cache when its length is the
        # encoder states'; these stand for states of that shape without holding any.
        width = self.model.config.d_model
        encoder_states = self.cross_keys[0].new_zeros(()).expand(n, longest_source, width)
        out = self.decoder(input_ids=tokens, attention_mask=self_mask.long().to(device),
                           encoder_hidden_states=encoder_states, encoder_attention_mask=cross_mask.long().to(device),
                           past_key_values=cache, use_cache=True, return_dict=True, position_ids=positions[:, None])
        where = positions[rows]
        for i, (key, value, *_) in enumerate(out.past_key_values):
            self.self_keys[i][rows, :, where] = key[rows, :, -1]
            self.self_values[i][rows, :, where] = value[rows, :, -1]
        hidden = out.last_hidden_state[rows]
        logits = self.model.lm_head(hidden) + self.model.final_logits_bias.to(hidden.dtype)
        return logits[:, -1].float()


# ----------------------------------------------------------------------------------------------------
# The scheduler


class Scheduler:
    """Continuous batching over one model runner (see the module docstring).

    ``tokenizer`` turns tokens into text (for stop strings and streaming); ``eos_token_ids`` end a
    sequence. ``max_queue`` bounds the requests waiting for a slot (:class:`QueueFull` beyond it);
    ``prefill_chunk`` bounds the prompt tokens prefilled between two decoding steps. Whoever else uses
    the tokenizer holds :attr:`tokenizer_lock` meanwhile: a fast tokenizer reconfigures its backend on
    each encoding call, which must not overlap a decoding call from this thread.

    ``logprobs_mode`` says which distribution the reported log-probabilities of generated tokens are of:
    ``"raw"`` (default, as vLLM's default), the model's own (log-softmax of its logits); ``"processed"``,
    the one the token was chosen from: after ``logit_bias`` and the presence and frequency penalties, and
    for a sampled request after the temperature and ``top_p`` too (tokens ``top_p`` removes have
    probability 0, reported as -9999.0 as JSON has no infinity). Prompt tokens (``echo``) are always scored
    raw: no request setting applies to them.
    """

    LOGPROBS_MODES = ("raw", "processed")

    def __init__(self, runner, tokenizer, *, eos_token_ids=(), max_queue: int = 64, prefill_chunk: int = 512,
                 name: str = "model", logprobs_mode: str = "raw"):
        if logprobs_mode not in self.LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode: expected one of {', '.join(self.LOGPROBS_MODES)}, got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos = set(int(t) for t in eos_token_ids if t is not None)
        self.max_queue = max_queue
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.name = name
        self.max_len = runner.max_len
        self.tokenizer_lock = threading.Lock()
        self._cond = threading.Condition()
        self._waiting: collections.deque = collections.deque()  # sequences without a slot
        self._waiting_requests: dict = {}  # request -> sequences of it still waiting
        self._prefilling: list = []  # sequences with a slot whose prompt is not fully in the cache
        self._running: list = []  # sequences decoding
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._top_p: dict = {}
        self.steps = 0
        self.max_running = 0
        self.generated_tokens = 0
        self.cancelled = 0  # sequences whose slot (or place in the queue) was freed because their client left

    # -- the caller's side (any thread) ---------------------------------------------------------------

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._loop, name=f"scheduler-{self.name}", daemon=True)
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting_requests) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting_requests)} requests are already waiting for {self.name} "
                                f"(--max-queue {self.max_queue}); retry later")
            self._waiting.extend(request.sequences)
            self._waiting_requests[request] = len(request.sequences)
            self._cond.notify()

    def wake(self) -> None:
        """Look at the requests again now (a cancellation while the loop sleeps)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is still queued or running and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def load(self) -> dict:
        return {"waiting": len(self._waiting), "running": len(self._running) + len(self._prefilling),
                "generated_tokens": self.generated_tokens, "cancelled": self.cancelled}

    # -- the loop (scheduler thread) -------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        # (the served model's packed weights stay in the caches where they fit, whatever else is loaded)
        with torch.inference_mode(), decoding_weights(self.runner.model):
            while True:
                with self._cond:
                    while not (self._stopping or self._waiting or self._running or self._prefilling):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._admit()
                try:
                    self._drop_cancelled()
                    self._prefill_some()
                    if self._running:
                        self._decode_step()
                except Exception as err:  # a model error fails the sequences involved, not the server
                    logger.exception("scheduler %s: step failed", self.name)
                    for seq in self._prefilling + self._running:
                        self._fail(seq, f"generation failed: {type(err).__name__}: {err}")
                    self._prefilling, self._running = [], []
        with self._cond:
            leftovers = list(self._waiting) + self._prefilling + self._running
            self._waiting.clear()
            self._waiting_requests.clear()
        for seq in leftovers:
            self._fail(seq, "the server shut down before this request finished")

    def _admit(self) -> None:
        """Give free slots to waiting sequences, in arrival order (called holding the lock)."""
        while self._waiting and self.runner.free_slots:
            seq = self._waiting.popleft()
            left = self._waiting_requests.get(seq.request, 1) - 1
            if left:
                self._waiting_requests[seq.request] = left
            else:
                self._waiting_requests.pop(seq.request, None)
            if seq.request.cancelled:
                continue
            self.runner.acquire(seq)
            self._prefilling.append(seq)

    def _drop_cancelled(self) -> None:
        for group in (self._prefilling, self._running):
            for seq in [s for s in group if s.request.cancelled]:
                group.remove(seq)
                self.runner.release(seq)
                self.cancelled += 1
        with self._cond:  # the queue is shared with submit()
            if any(s.request.cancelled for s in self._waiting):
                kept = collections.deque(s for s in self._waiting if not s.request.cancelled)
                for seq in self._waiting:
                    if seq.request.cancelled:
                        self._waiting_requests.pop(seq.request, None)
                        self.cancelled += 1
                self._waiting = kept

    def _prefill_some(self) -> None:
        budget = self.prefill_chunk
        for seq in list(self._prefilling):
            if seq not in self._prefilling:  # forked from a sibling during this loop
                continue
            if budget <= 0:
                break
            length = len(seq.prompt_ids)
            end = length if not self.runner.chunked_prefill else min(length, seq.prefilled + budget)
            logits = self.runner.prefill(seq, seq.prefilled, end, seq.prompt_entries is not None)
            budget -= end - seq.prefilled
            if seq.prompt_entries is not None:
                self._prompt_logprobs(seq, logits, seq.prefilled)
            seq.prefilled = end
            if end < length:
                continue
            last = logits[-1]
            self._prefilling.remove(seq)
            self._start(seq, last)
            # Other choices of the same prompt that got a slot now share the prefill.
            for sibling in [s for s in self._prefilling if s.group is seq.group and s.prefilled == 0]:
                self.runner.fork(seq, sibling)
                sibling.prefilled = length
                if seq.prompt_entries is not None:
                    sibling.prompt_entries = list(seq.prompt_entries)
                self._prefilling.remove(sibling)
                self._start(sibling, last)

    def _start(self, seq: Sequence, logits: torch.Tensor) -> None:
        """The prompt is in the cache: choose the first token and join the running batch."""
        if seq.max_tokens == 0:  # echo-only scoring: nothing to generate
            self._emit(seq, [], [], "length")
            self._finish(seq)
            return
        self._running.append(seq)
        self.max_running = max(self.max_running, len(self._running))
        self._advance([seq], logits[None])

    def _decode_step(self) -> None:
        running = list(self._running)
        logits = self.runner.decode(running)
        self.steps += 1
        self._advance(running, logits)

    def _advance(self, seqs: list, logits: torch.Tensor) -> None:
        tokens, processed = self._choose(seqs, logits)
        rows = processed if self.logprobs_mode == "processed" else logits
        for seq, token, row in zip(seqs, tokens, rows):
            entry = None
            if seq.params.logprobs is not None:
                entry = self._entry(row, token, seq.params.logprobs, len(seq.text))
            seq.output_ids.append(token)
            self.generated_tokens += 1
            if seq.counts is not None:
                seq.counts[token] += 1
            self._after_token(seq, token, entry)

    def _choose(self, seqs: list, logits: torch.Tensor) -> tuple:
        """Next tokens: argmax for greedy rows, a draw for the others, each with its own settings; and the
        scores each was chosen from (a list of rows; ``logits``' own rows where nothing changed them)."""
        scores = logits
        adjusted = [i for i, s in enumerate(seqs) if s.params.logit_bias or s.params.presence_penalty
                    or s.params.frequency_penalty]
        if adjusted:
            scores = logits.clone()
            for i in adjusted:
                seq, params = seqs[i], seqs[i].params
                for token, bias in params.logit_bias.items():
                    if 0 <= token < scores.shape[-1]:
                        scores[i, token] += bias
                if params.presence_penalty or params.frequency_penalty:
                    if seq.counts is None:
                        seq.counts = torch.zeros(scores.shape[-1], device=scores.device)
                    scores[i] -= params.frequency_penalty * seq.counts + params.presence_penalty * (seq.counts > 0)
        chosen = torch.argmax(scores, dim=-1).tolist()
        processed = list(scores)
        for i, seq in enumerate(seqs):
            params = seq.params
            if params.greedy:
                continue
            row = scores[i: i + 1] / params.temperature
            if params.top_p < 1.0:
                warper = self._top_p.get(params.top_p) or self._top_p.setdefault(params.top_p,
                                                                                 TopPLogitsWarper(params.top_p))
                row = warper(None, row)
            if seq.generator is None:
                seq.generator = torch.Generator(device=row.device)
                if params.seed is not None:
                    seq.generator.manual_seed((params.seed + seq.index) % (2**63))
                else:
                    seq.generator.seed()
            probs = torch.softmax(row, dim=-1)
            chosen[i] = int(torch.multinomial(probs, 1, generator=seq.generator)[0, 0])
            processed[i] = row[0]
        return chosen, processed

    def _entry(self, row: torch.Tensor, token: int, top: int, offset: int) -> LogprobEntry:
        # A token the processing ruled out has probability 0: -9999.0 stands for its -inf (not JSON).
        logprobs = torch.log_softmax(row, dim=-1).clamp_min(IMPOSSIBLE_LOGPROB)
        alternatives = None
        if top:
            values, ids = torch.topk(logprobs, top)
            alternatives = {}
            for value, i in zip(values.tolist(), ids.tolist()):
                alternatives.setdefault(self._piece(i), value)
        return LogprobEntry(self._piece(token), float(logprobs[token]), alternatives, offset)

    def _piece(self, token: int) -> str:
        return self._decode([token], skip_special_tokens=False)

    def _decode(self, ids: list, skip_special_tokens: bool) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                         clean_up_tokenization_spaces=False)

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor, start: int) -> None:
        """Log-probabilities of the prompt tokens from the logits of positions ``start:``: token i is
        scored by position i - 1, the first token by nothing."""
        top = seq.params.logprobs or 0
        ids = seq.prompt_ids
        offset = sum(len(e.text) for e in seq.prompt_entries)
        for k in range(logits.shape[0]):
            i = start + k
            if i == 0:
                text = self._piece(ids[0])
                seq.prompt_entries.append(LogprobEntry(text, None, None, 0))
                offset += len(text)
            if i + 1 < len(ids):
                row = logits[k]
                if torch.isnan(row).any():
                    entry = LogprobEntry(self._piece(ids[i + 1]), None, None, offset)
                else:
                    entry = self._entry(row, ids[i + 1], top, offset)
                seq.prompt_entries.append(entry)
                offset += len(entry.text)

    def _after_token(self, seq: Sequence, token: int, entry: Optional[LogprobEntry]) -> None:
        """Release the text the new token completes; finish the sequence when it should end."""
        finish = None
        ids = seq.output_ids
        if token in self.eos:
            finish = "stop"
            ids = ids[:-1]
        elif len(ids) >= seq.max_tokens or self.runner.full(seq):
            finish = "length"
        text = self._decode(ids, skip_special_tokens=True)
        seq.text = text
        release = len(text)
        stops = seq.params.stop
        if stops:
            search_from = max(0, seq.sent - max(len(s) for s in stops) + 1)
            hits = [(text.find(s, search_from), s) for s in stops]
            hits = [h for h in hits if h[0] >= 0]
            if hits:
                release = min(h[0] for h in hits)
                seq.text = text = text[:release]
                finish = "stop"
            elif finish is None:
                release -= _held_back(text, stops)
        if finish is None:
            # A trailing replacement character is an incomplete UTF-8 sequence that the next token ends.
            while release > seq.sent and text[release - 1] == "\ufffd":
                release -= 1
        delta = text[seq.sent: release] if release > seq.sent else ""
        seq.sent = max(seq.sent, release)
        self._emit(seq, [token], [entry] if entry is not None else [], finish, delta)
        if finish is not None:
            self._finish(seq)

    def _emit(self, seq: Sequence, token_ids: list, entries: list, finish: Optional[str], text: str = "",
              error: Optional[str] = None) -> None:
        event = Event(seq.index, text=text, token_ids=token_ids, logprobs=entries, finish_reason=finish,
                      error=error, completion_tokens=len(seq.output_ids))
        if seq.prompt_entries is not None and len(seq.output_ids) <= 1:
            event.prompt_logprobs = seq.prompt_entries
        try:
            seq.request.on_event(event)
        except Exception:  # the receiving side is gone (shutdown); nothing to deliver to
            logger.debug("dropping an event for a closed request", exc_info=True)

    def _finish(self, seq: Sequence) -> None:
        seq.finished = True
        if seq in self._running:
            self._running.remove(seq)
        self.runner.release(seq)

    def _fail(self, seq: Sequence, message: str) -> None:
        self.runner.release(seq)
        if not seq.request.cancelled and not seq.finished:
            seq.finished = True
            self._emit(seq, [], [], None, error=message)


def _held_back(text: str, stops: list) -> int:
    """How many trailing characters might begin a stop string, and so cannot be sent yet."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest

