"""Constrained beam search: beams that must contain given words or phrases (PyTorch).

A :class:`Constraint` is a small state machine over generated tokens: ``advance()`` names the token(s) that
would bring it one step closer to being met, ``update(token)`` feeds it the token actually generated. A
:class:`PhrasalConstraint` asks for a fixed run of tokens; a :class:`DisjunctiveConstraint` for any one of
several runs (kept in a :class:`DisjunctiveTrie`). A :class:`ConstraintListState` follows one beam through
all the constraints of a generation: at most one constraint is "in progress" at a time, the others are
pending or complete.

Constrained beam search (Hokamp & Liu 2017, in the "banked" form of Post & Vilar 2018) runs ordinary beam
search, but at each step it also offers every beam the tokens that advance its constraints, whatever
their probability. Candidates are then grouped in banks by how much of the constraints they have met, and
the beams are filled round-robin over the banks (best score first within each bank), so beams that made
progress are not crowded out by likelier ones that did not. A hypothesis may only finish (with an
end-of-sequence token or at the end) once it meets every constraint.

``generate`` builds the constraints from ``force_words_ids`` (a list of token-id lists, each a phrase; a
list of lists of lists is a disjunction) and ``constraints`` (Constraint objects) and runs
:func:`constrained_beam_search`.
"""

from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import nn

from .hypotheses import _assemble, _BeamScorer, follow_beams
from .processors import _as_list
from .records import _Recorder


def _check_token(name: str, token_id) -> None:
    if not isinstance(token_id, int) or isinstance(token_id, bool):
        raise ValueError(f"{name}: expected an int token id, given {token_id!r} of type {type(token_id).__name__}")


def _is_id_list(value) -> bool:
    return (
        isinstance(value, list) and len(value) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


# ===================================================================================================
# Constraints


def _twin(cls, constraint, stateful: bool, progress: tuple):
    """A new ``cls`` of ``constraint``'s tokens; with ``stateful`` it also takes the attributes named in
    ``progress`` (the same objects, not copies)."""
    twin = cls(constraint.token_ids)
    if stateful:
        for name in progress:
            setattr(twin, name, getattr(constraint, name))
    return twin


class Constraint(abc.ABC):
    """Base class of the constraints a beam search can be made to satisfy.

    A subclass defines ``advance``, ``does_advance``, ``update``, ``reset``, ``remaining`` and ``copy``, so
    that feeding ``advance()`` back through ``update`` always ends in completion. Calling this base
    ``__init__`` checks exactly that (:meth:`test`).
    """

    def __init__(self):
        self.test()

    def test(self) -> None:
        """Drive the constraint with its own ``advance()`` tokens until it completes; raise if it never does,
        if ``does_advance`` disowns a token ``advance`` proposed, or if ``remaining()`` is not 0 at the end."""
        steps = 0
        completed = False
        while not completed:
            if steps == 1:
                self.reset()  # the second round starts from a reset, which must also lead to completion
            token = self.advance()
            if not self.does_advance(token):
                raise Exception(
                    f"{type(self).__name__} is not defined correctly: does_advance(advance()) must be true, "
                    f"given advance() = {token!r}"
                )
            _, completed, _ = self.update(token)
            steps += 1
            if steps > 10000:
                raise Exception(f"{type(self).__name__}.update() never completes the constraint")
        if self.remaining() != 0:
            raise Exception(
                f"{type(self).__name__} is not defined correctly: remaining() must be 0 once complete, "
                f"given {self.remaining()}"
            )

    @abc.abstractmethod
    def advance(self):
        """The token id (or list of ids) that would bring the constraint one step closer; None when met."""

    @abc.abstractmethod
    def does_advance(self, token_id: int) -> bool:
        """Whether generating ``token_id`` now would make progress (the state is not changed)."""

    @abc.abstractmethod
    def update(self, token_id: int):
        """Take ``token_id`` as generated; return ``(stepped, completed, reset)``: whether it made progress,
        whether the constraint is now met, whether the progress so far was lost."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the progress made so far."""

    @abc.abstractmethod
    def remaining(self) -> int:
        """How many more steps of ``advance()`` complete the constraint."""

    @abc.abstractmethod
    def copy(self, stateful: bool = False) -> "Constraint":
        """A new constraint of the same tokens; with ``stateful`` also at the same progress."""


class PhrasalConstraint(Constraint):
    """The output must contain ``token_ids`` (a non-empty list of token ids), in order and contiguous."""

    def __init__(self, token_ids: list[int]):
        # The base __init__ (the self-test) is skipped: this class is known to be well formed.
        if not isinstance(token_ids, list) or len(token_ids) == 0:
            raise ValueError(f"token_ids: expected a non-empty list of token ids, given {token_ids!r}")
        if not _is_id_list(token_ids):
            raise ValueError(f"token_ids: expected a list of token ids (ints >= 0), given {token_ids!r}")
        self.token_ids = token_ids
        self.seqlen = len(token_ids)
        self.fulfilled_idx = -1  # index of the last token of the phrase matched so far
        self.completed = False

    def advance(self):
        return None if self.completed else self.token_ids[self.fulfilled_idx + 1]

    def does_advance(self, token_id: int) -> bool:
        _check_token("token_id", token_id)
        return not self.completed and token_id == self.token_ids[self.fulfilled_idx + 1]

    def update(self, token_id: int):
        _check_token("token_id", token_id)
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.fulfilled_idx += 1
        self.completed = self.fulfilled_idx == self.seqlen - 1
        return True, self.completed, False

    def reset(self) -> None:
        self.completed = False
        self.fulfilled_idx = -1

    def remaining(self) -> int:
        return self.seqlen - (self.fulfilled_idx + 1)

    def copy(self, stateful: bool = False) -> "PhrasalConstraint":
        return _twin(PhrasalConstraint, self, stateful, ("fulfilled_idx", "completed"))


class DisjunctiveTrie:
    """A prefix tree of several token-id sequences; with ``no_subsets`` (the default) no sequence may be a
    prefix of another, since the shorter would always end the match first."""

    def __init__(self, nested_token_ids: list[list[int]], no_subsets: bool = True):
        self.max_height = max(len(ids) for ids in nested_token_ids)
        root: dict = {}
        for ids in nested_token_ids:
            node = root
            for token in ids:
                node = node.setdefault(token, {})
        if no_subsets and self.has_subsets(root, nested_token_ids):
            raise ValueError(
                f"nested_token_ids: no list may be a prefix of (or equal to) another, given {nested_token_ids!r}"
            )
        self.trie = root

    def next_tokens(self, current_seq) -> list[int]:
        """The tokens that may follow ``current_seq`` (a path from the root)."""
        node = self.trie
        for token in current_seq:
            node = node[token]
        return list(node.keys())

    def reached_leaf(self, current_seq) -> bool:
        return len(self.next_tokens(current_seq)) == 0

    def count_leaves(self, root) -> int:
        children = list(root.values())
        return 1 if not children else sum(self.count_leaves(child) for child in children)

    def has_subsets(self, trie, nested_token_ids) -> bool:
        """True when some sequence ends inside another (fewer leaves than sequences)."""
        return len(nested_token_ids) != self.count_leaves(trie)


class DisjunctiveConstraint(Constraint):
    """The output must contain one of ``nested_token_ids`` (a list of token-id lists), whichever comes."""

    def __init__(self, nested_token_ids: list[list[int]]):
        if not isinstance(nested_token_ids, list) or len(nested_token_ids) == 0:
            raise ValueError(f"nested_token_ids: expected a non-empty list of lists, given {nested_token_ids!r}")
        if any(not isinstance(ids, list) for ids in nested_token_ids):
            raise ValueError(f"nested_token_ids: expected a list of lists of token ids, given {nested_token_ids!r}")
        if not all(_is_id_list(ids) for ids in nested_token_ids):
            raise ValueError(
                f"nested_token_ids: expected non-empty lists of token ids (ints >= 0), given {nested_token_ids!r}"
            )
        self.trie = DisjunctiveTrie(nested_token_ids)
        self.token_ids = nested_token_ids
        self.seqlen = self.trie.max_height
        self.current_seq: list[int] = []
        self.completed = False

    def advance(self):
        tokens = self.trie.next_tokens(self.current_seq)
        return tokens if tokens else None

    def does_advance(self, token_id: int) -> bool:
        _check_token("token_id", token_id)
        return token_id in self.trie.next_tokens(self.current_seq)

    def update(self, token_id: int):
        _check_token("token_id", token_id)
        stepped = self.does_advance(token_id)
        if stepped:
            self.current_seq.append(token_id)
        else:
            self.reset()
        self.completed = self.trie.reached_leaf(self.current_seq)
        return stepped, self.completed, not stepped

    def reset(self) -> None:
        self.completed = False
        self.current_seq = []

    def remaining(self) -> int:
        return 0 if self.completed else self.seqlen - len(self.current_seq)

    def copy(self, stateful: bool = False) -> "DisjunctiveConstraint":
        # The reference's copy shares the progress list with the original rather than copying it, so
        # advancing one copy also advances its siblings (observable when a trie branches after a
        # matched prefix). Kept as is: the beams chosen depend on it.
        return _twin(DisjunctiveConstraint, self, stateful, ("current_seq", "completed"))


class ConstraintListState:
    """One beam's progress through a list of constraints: the ``complete`` ones, at most one
    ``inprogress`` one and the ``pending`` rest."""

    def __init__(self, constraints: list[Constraint]):
        self.constraints = constraints
        self.max_seqlen = max(c.seqlen for c in constraints)
        self.n_constraints = len(constraints)
        self.completed = False
        self.init_state()

    def init_state(self) -> None:
        self.complete_constraints: list[Constraint] = []
        self.inprogress_constraint: Optional[Constraint] = None
        self.pending_constraints = [c.copy(stateful=False) for c in self.constraints]

    def get_bank(self) -> int:
        """How much of the constraints is met: ``max_seqlen`` per complete constraint plus the steps made in
        the one in progress. Beams are grouped by this number."""
        partial = 0
        if self.inprogress_constraint:
            partial = self.max_seqlen - self.inprogress_constraint.remaining()
        return len(self.complete_constraints) * self.max_seqlen + partial

    def advance(self) -> Optional[list[int]]:
        """The tokens that make progress: the next tokens of the constraint in progress if there is one,
        otherwise the first tokens of every pending constraint; None when there is nothing left."""
        sources = [self.inprogress_constraint] if self.inprogress_constraint is not None else self.pending_constraints
        tokens: list[int] = []
        for constraint in sources:
            step = constraint.advance()
            if isinstance(step, int):
                tokens.append(step)
            elif isinstance(step, list):
                tokens.extend(step)
        return tokens or None

    def reset(self, token_ids: Optional[list[int]]) -> None:
        """Start over and replay ``token_ids`` (the tokens so far)."""
        self.init_state()
        for token in token_ids or ():
            self.add(token)
            if self.completed:
                break

    def add(self, token_id: int):
        """Take ``token_id`` as generated; return ``(complete, stepped)`` for the constraint it touched."""
        if not isinstance(token_id, int):
            raise ValueError(f"token_id: expected an int, given {token_id!r}")
        if self.completed:
            return True, False
        complete = stepped = False
        current = self.inprogress_constraint
        if current is not None:
            stepped, complete, reset = current.update(token_id)
            if reset:
                # The phrase was broken off: it goes back to the pending ones, from its start.
                self.pending_constraints.append(current.copy(stateful=False))
                self.inprogress_constraint = None
            if complete:
                self.complete_constraints.append(current)
                self.inprogress_constraint = None
                if not self.pending_constraints:
                    self.completed = True
            return complete, stepped
        for position, pending in enumerate(self.pending_constraints):
            if not pending.does_advance(token_id):
                continue
            stepped, complete, _ = pending.update(token_id)
            if not stepped:
                raise Exception(
                    f"{type(pending).__name__}.update(token_id) made no progress although does_advance(token_id) "
                    "was true"
                )
            if complete:
                self.complete_constraints.append(pending)
                self.inprogress_constraint = None
            else:
                self.inprogress_constraint = pending
            del self.pending_constraints[position]
            if not self.pending_constraints and self.inprogress_constraint is None:
                self.completed = True
            break  # one token advances one constraint only
        return complete, stepped

    def copy(self, stateful: bool = True) -> "ConstraintListState":
        twin = ConstraintListState(self.constraints)
        if stateful:
            twin.complete_constraints = [c.copy(stateful=True) for c in self.complete_constraints]
            if self.inprogress_constraint is not None:
                twin.inprogress_constraint = self.inprogress_constraint.copy(stateful=True)
            twin.pending_constraints = [c.copy() for c in self.pending_constraints]
        return twin


# ===================================================================================================
# Building the constraints of a generation


def constraints_from_config(config) -> list[Constraint]:
    """``config.constraints`` followed by one constraint per entry of ``config.force_words_ids``: a list of
    ids is a :class:`PhrasalConstraint`, a list of lists a :class:`DisjunctiveConstraint`."""
    constraints = list(config.constraints or ())
    words = config.force_words_ids
    if words is not None:
        expected = ("a non-empty list whose entries are non-empty lists of token ids (ints >= 0), or non-empty lists "
                    "of them (one of several words)")
        if not isinstance(words, list) or not words:
            raise ValueError(f"force_words_ids: expected {expected}, given {words!r}")
        for entry in words:
            if isinstance(entry, list) and entry and all(isinstance(w, list) for w in entry):
                if not all(_is_id_list(w) for w in entry):
                    raise ValueError(f"force_words_ids: expected {expected}, given {words!r}")
                try:
                    constraints.append(DisjunctiveConstraint(entry))
                except ValueError as err:
                    raise ValueError(f"force_words_ids: {err}") from None
            elif _is_id_list(entry):
                constraints.append(PhrasalConstraint(entry))
            else:
                raise ValueError(f"force_words_ids: expected {expected}, given {words!r}")
    if not constraints:
        raise ValueError("constraints: constrained beam search needs at least one constraint, given an empty list")
    return constraints


def _check_vocabulary(constraints: list[Constraint], vocab_size: int) -> None:
    for constraint in constraints:
        if isinstance(constraint, PhrasalConstraint):
            ids = constraint.token_ids
        elif isinstance(constraint, DisjunctiveConstraint):
            ids = [t for word in constraint.token_ids for t in word]
        else:
            continue
        outside = sorted({t for t in ids if t >= vocab_size})
        if outside:
            raise ValueError(
                f"force_words_ids / constraints: token ids {outside} are outside the model's vocabulary of "
                f"{vocab_size}, given {type(constraint).__name__}({ids})"
            )


# ===================================================================================================
# The scorer


class ConstrainedBeamSearchScorer(_BeamScorer):
    """Beam bookkeeping of constrained beam search, for ``batch_size`` prompts of ``num_beams`` beams."""

    def __init__(self, batch_size: int, num_beams: int, constraints: list[Constraint], length_penalty=1.0,
                 early_stopping=False, num_return_sequences: int = 1, max_length: Optional[int] = None):
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams <= 1:
            raise ValueError(
                f"num_beams: constrained beam search (force_words_ids / constraints) needs an int > 1, given "
                f"{num_beams!r}"
            )
        super().__init__(batch_size, num_beams, length_penalty, early_stopping, num_return_sequences, max_length)
        self.constraints = constraints

    def _fresh_states(self, count: int) -> list[ConstraintListState]:
        return [ConstraintListState([c.copy() for c in self.constraints]) for _ in range(count)]

    def meets_constraints(self, tokens: list[int]) -> bool:
        state = self._fresh_states(1)[0]
        state.reset(tokens)
        return state.completed

    def process(self, input_ids, scores, tokens, indices, vocab_scores, pad_token_id, eos_token_id,
                beam_indices, prompt_len):
        """Like plain beam search, from the sorted best candidates of each prompt (``scores``, ``tokens``,
        source beams ``indices``), except that a hypothesis only finishes if it meets every constraint, and
        the beams kept are then re-chosen by :meth:`_rebank` among them and the constraint-advancing
        continuations (``vocab_scores``: every token's cumulative score, one row per beam)."""
        cur_len = input_ids.shape[-1] + 1
        beams = self.num_beams
        running = next_scores, next_tokens, next_indices = self._empty_rows(scores, tokens, indices, input_ids.device)
        eos = _as_list(eos_token_id)
        for b in range(len(self.hypotheses)):
            if self.done[b]:
                if eos_token_id is None or pad_token_id is None:
                    raise ValueError("pad_token_id and eos_token_id: needed to fill finished beams, given None")
                next_tokens[b] = pad_token_id
                continue
            kept = self._choose(b, input_ids, scores, tokens, indices, eos, beam_indices, cur_len, prompt_len, running,
                                finishes=self.meets_constraints)
            next_scores[b], next_tokens[b], next_indices[b] = self._rebank(
                b, input_ids, vocab_scores, next_scores[b], next_tokens[b], next_indices[b]
            )
            if kept < beams:
                raise ValueError(
                    f"too many end-of-sequence candidates among {tokens[b].tolist()} to keep {beams} beams"
                )
            self.done[b] = self.done[b] or self.hypotheses[b].is_done(scores[b].max().item(), cur_len, prompt_len)
        return next_scores.view(-1), next_tokens.view(-1), next_indices.view(-1)

    def _rebank(self, b, input_ids, vocab_scores, beam_scores, beam_tokens, beam_sources):
        """Re-choose prompt ``b``'s beams. Candidates: the beams plain beam search kept, plus, for each
        current beam that has not met its constraints, each token advancing them (with its own score, even
        if unlikely), unless that sequence is already a candidate. Candidates are ranked by bank (progress
        on the constraints) then score, and taken round-robin: the best of each bank, then the second best
        of each bank, ..., until the beams are full."""
        beams = self.num_beams
        device = beam_sources.device
        first = b * beams
        current = input_ids[first : first + beams]
        row_scores = vocab_scores[first : first + beams]
        kept_sequences = torch.cat((input_ids[beam_sources], beam_tokens.unsqueeze(-1)), dim=-1).tolist()
        states = self._fresh_states(beams)
        for state, sequence in zip(states, kept_sequences):
            state.reset(sequence)
        seen = list(kept_sequences)
        extra_states, extra_sources, extra_tokens, extra_scores = [], [], [], []
        progress_states = self._fresh_states(beams)
        for i, prefix in enumerate(current.tolist()):
            progress = progress_states[i]
            progress.reset(prefix)
            if progress.completed:
                continue
            for token in progress.advance():
                advanced = progress.copy(stateful=True)
                advanced.add(token)
                sequence = prefix + [token]
                if sequence in seen:
                    continue
                seen.append(sequence)
                extra_states.append(advanced)
                extra_sources.append(first + i)
                extra_tokens.append(token)
                extra_scores.append(row_scores[i, token])
        if not extra_sources:
            return beam_scores, beam_tokens, beam_sources
        all_scores = torch.cat((beam_scores, torch.stack(extra_scores).to(device)))
        all_tokens = torch.cat((beam_tokens, torch.tensor(extra_tokens, dtype=beam_tokens.dtype, device=device)))
        all_sources = torch.cat((beam_sources, torch.tensor(extra_sources, dtype=beam_sources.dtype, device=device)))
        banks = torch.tensor([state.get_bank() for state in states + extra_states], device=device)
        # Bank first, score second, as the reference orders them: each unit of bank counts as 100 of
        # log-probability (not a strict lexicographic order when scores differ by more than that).
        order = (banks * 100 + all_scores).sort(descending=True).indices
        # Round-robin over the banks: rank each candidate within its bank, then sort stably by that rank.
        ranks, previous, rank = [], None, -1
        for bank in banks[order].tolist():
            rank = rank + 1 if bank == previous else 0
            previous = bank
            ranks.append(rank)
        by_rank = sorted(range(len(ranks)), key=ranks.__getitem__)
        chosen = order[torch.tensor(by_rank, device=device)][:beams]
        return all_scores[chosen], all_tokens[chosen], all_sources[chosen]

    def finalize(self, input_ids, beam_scores, pad_token_id, eos_token_id, max_length, beam_indices, prompt_len):
        """Add the running beams of unfinished prompts as hypotheses: those that meet the constraints, and,
        if fewer than ``num_return_sequences`` do, all the others too (without their beam trails, as the
        reference does). Return the best hypotheses as :func:`_assemble` lays them out."""
        for b, hypotheses in enumerate(self.hypotheses):
            if self.done[b]:
                continue
            rows = range(b * self.num_beams, (b + 1) * self.num_beams)
            met = [row for row in rows if self.meets_constraints(input_ids[row].tolist())]
            for row in met:
                trail = beam_indices[row] if beam_indices is not None else None
                hypotheses.add(input_ids[row], beam_scores[row].item(), trail, input_ids.shape[-1] - prompt_len)
            if len(met) < self.keep:
                for row in rows:
                    if row not in met:
                        hypotheses.add(input_ids[row], beam_scores[row].item(), None, input_ids.shape[-1] - prompt_len)
        candidates = [h.beams for h in self.hypotheses]
        # Beam trails are returned when the best hypothesis of the first prompt has one; a hypothesis
        # without one (added above) then gets an empty trail (all -1), where the reference would fail.
        with_trails = bool(candidates) and bool(candidates[0]) and \
            sorted(candidates[0], key=lambda h: h[0])[-1][2] is not None
        candidates = [[(score, tokens, (trail if trail is not None else ()) if with_trails else None)
                       for score, tokens, trail in hyps] for hyps in candidates]
        return _assemble(candidates, self.keep, input_ids, pad_token_id, eos_token_id, max_length)


# ===================================================================================================
# The decoding loop


def constrained_beam_search(model, input_ids, config, processors, criteria, batch_size, model_kwargs):
    """Constrained beam search with ``model`` (a GenerationMixin), from ``input_ids`` already expanded to
    ``num_beams`` rows per prompt. Returns the sequences, or with ``return_dict_in_generate`` a
    ``GenerateBeam*Output``. As in the reference, ``scores`` holds each step's cumulative beam scores (the
    processed log-probabilities plus the beam's score so far)."""
    constraints = constraints_from_config(config)
    scorer = ConstrainedBeamSearchScorer(batch_size, config.num_beams, constraints, config.length_penalty,
                                         config.early_stopping, config.num_return_sequences, config.max_length)
    is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    beams = config.num_beams
    record = _Recorder(config, model_kwargs, is_encoder_decoder)
    trails = tuple(() for _ in range(batch_size * beams)) if record.scores is not None else None
    beam_scores = torch.zeros((batch_size, beams), dtype=torch.float, device=input_ids.device)
    beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
    beam_scores = beam_scores.view(-1)
    prompt_len = input_ids.shape[-1]
    eos = config.eos_token_id
    width = max(2, 1 + len(_as_list(eos))) * beams
    checked = False
    while True:
        outputs, logits = model._step(input_ids, model_kwargs, config)
        if not checked:
            _check_vocabulary(constraints, logits.shape[-1])
            checked = True
        step_scores = processors(input_ids, nn.functional.log_softmax(logits, dim=-1))
        cumulative = step_scores + beam_scores[:, None]
        record.step(cumulative, outputs)
        vocab = cumulative.shape[-1]
        totals, candidates = torch.topk(cumulative.view(batch_size, beams * vocab), width, dim=1, largest=True,
                                        sorted=True)
        sources = torch.div(candidates, vocab, rounding_mode="floor")
        beam_scores, next_tokens, beam_idx = scorer.process(
            input_ids, totals, candidates % vocab, sources, cumulative, config.pad_token_id, eos, trails, prompt_len
        )
        input_ids, model_kwargs, trails = follow_beams(model, outputs, input_ids, model_kwargs, is_encoder_decoder,
                                                       beam_idx, next_tokens, trails)
        if scorer.is_done or bool(criteria(input_ids, record.scores).all()):
            break
    return scorer.results(model, config, criteria, input_ids, beam_scores, trails, prompt_len, record, model_kwargs)
