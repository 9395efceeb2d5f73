"""SentencePiece tokenizers: Pegasus's, over the `sentencepiece` library (slow) and over a `tokenizers`
Unigram model converted from the same ``spiece.model`` (fast).

Pegasus puts ``offset`` (103) ids in front of the SentencePiece vocabulary: pad 0, eos 1, the sentence
mask 2, the token mask 3, then the fillers ``<unk_2>`` ... ``<unk_102>`` that pretraining reserved.
SentencePiece piece ``i`` has id ``i + offset``; its own first two pieces (pad and eos) are shadowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .base import _hub_files
from .convert import register_converter
from .fast import TOKENIZER_FILE, PreTrainedTokenizerFast, _EncodingView
from .slow import PreTrainedTokenizer

__all__ = [
    "SentencePieceModel",
    "read_sentencepiece_model",
    "pegasus_tokenizer",
    "PegasusTokenizer",
    "PegasusTokenizerFast",
]

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"
VOCAB_FILES_NAMES = {"vocab_file": "spiece.model"}
_PEGASUS_CHECKPOINTS = {"google/pegasus-xsum": 512}


# ----------------------------------------------------------------------------------- spiece.model


@dataclass(frozen=True)
class SentencePieceModel:
    """What a fast tokenizer needs from a serialized SentencePiece ``ModelProto``."""

    pieces: Tuple[Tuple[str, float, int], ...]  # (piece, score, type) in id order
    model_type: int  # 1 unigram, 2 BPE, 3 word, 4 char
    unk_id: int
    unk_piece: str
    byte_fallback: bool
    precompiled_charsmap: bytes


UNIGRAM = 1
_UNKNOWN, _CONTROL = 2, 3  # SentencePiece piece types
# the fast backend's score of the <unk_i> fillers and of SentencePiece's control and unknown pieces
_UNMATCHED_SCORE = -100.0
_FILLER = re.compile(r"<unk_\d+>")


class _WireError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint longer than 10 bytes")


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise _WireError("truncated field")
        yield number, wire, value


def _int32(value: int) -> int:
    # int32 fields are sign-extended to 64 bits on the wire
    return value - (1 << 64) if value >= 1 << 63 else value


def read_sentencepiece_model(path: str | os.PathLike) -> SentencePieceModel:
    """Parse a ``spiece.model`` (a serialized SentencePiece ``ModelProto``) without protobuf.

    Raises ``ValueError`` naming the file when it is not such a model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"vocab_file: expected the path of a SentencePiece model, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"vocab_file: expected an existing SentencePiece model file, got {os.fspath(path)!r}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        pieces: List[Tuple[str, float, int]] = []
        trainer: Dict[int, Any] = {}
        charsmap = b""
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece, score, kind = "", 0.0, 1
                for sub, sub_wire, sub_value in _fields(value):
                    if sub == 1 and sub_wire == 2:
                        piece = sub_value.decode("utf-8")
                    elif sub == 2 and sub_wire == 5:
                        score = struct.unpack("<f", sub_value)[0]
                    elif sub == 3 and sub_wire == 0:
                        kind = sub_value
                pieces.append((piece, score, kind))
            elif number == 2 and wire == 2:
                trainer = {sub: sub_value for sub, _, sub_value in _fields(value)}
            elif number == 3 and wire == 2:
                for sub, sub_wire, sub_value in _fields(value):
                    if sub == 2 and sub_wire == 2:
                        charsmap = bytes(sub_value)
            elif wire != 2 and number in (1, 2, 3):
                raise _WireError(f"field {number} has wire type {wire}")
    except (_WireError, UnicodeDecodeError, struct.error) as error:
        raise ValueError(
            f"vocab_file: expected a SentencePiece model (spiece.model), got {os.fspath(path)!r}, "
            f"which cannot be parsed as one ({error})"
        ) from None
    if not pieces:
        raise ValueError(
            f"vocab_file: expected a SentencePiece model (spiece.model), got {os.fspath(path)!r}, which has no pieces"
        )
    unk_piece = trainer.get(45, b"<unk>")
    return SentencePieceModel(
        pieces=tuple(pieces),
        model_type=trainer.get(3, UNIGRAM),
        unk_id=_int32(trainer.get(40, 0)),
        unk_piece=unk_piece.decode("utf-8") if isinstance(unk_piece, bytes) else "<unk>",
        byte_fallback=bool(trainer.get(35, 0)),
        precompiled_charsmap=charsmap,
    )


def _load_processor(vocab_file: str, sp_model_kwargs: Dict[str, Any]):
    """A ``SentencePieceProcessor`` for ``vocab_file``; a file that is not a model is reported by name."""
    import sentencepiece

    if not isinstance(vocab_file, (str, os.PathLike)):
        raise TypeError(f"vocab_file: expected the path of a SentencePiece model, got {type(vocab_file).__name__}")
    if not os.path.isfile(vocab_file):
        raise ValueError(
            f"vocab_file: expected an existing SentencePiece model file, got {os.fspath(vocab_file)!r}. "
            "To load a checkpoint folder use PegasusTokenizer.from_pretrained(...)"
        )
    processor = sentencepiece.SentencePieceProcessor(**sp_model_kwargs)
    try:
        processor.Load(os.fspath(vocab_file))
    except (OSError, RuntimeError) as error:
        raise ValueError(
            f"vocab_file: expected a SentencePiece model (spiece.model), got {os.fspath(vocab_file)!r}, "
            f"which sentencepiece cannot load ({error})"
        ) from None
    return processor


# ----------------------------------------------------------------------------------- Pegasus specials


def _pegasus_additional_special_tokens(
    mask_token_sent: Optional[str], additional_special_tokens: Optional[List[str]], offset: int
) -> List[Any]:
    """The sentence mask first, then the caller's tokens, then ``<unk_i>`` fillers up to ``offset - 1`` tokens."""
    if additional_special_tokens is None:
        tokens: List[Any] = [mask_token_sent] if mask_token_sent is not None else []
        return tokens + [f"<unk_{i}>" for i in range(2, offset)]
    if not isinstance(additional_special_tokens, list):
        raise TypeError(
            f"additional_special_tokens: expected a list, got {type(additional_special_tokens).__name__}"
        )
    tokens = list(additional_special_tokens)
    if mask_token_sent is not None and mask_token_sent not in tokens:
        tokens.insert(0, mask_token_sent)
    tokens += [f"<unk_{i}>" for i in range(len(tokens), offset - 1)]
    names = [str(token) for token in tokens]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(
            "additional_special_tokens: expected distinct tokens once the sentence mask and the <unk_i> fillers "
            f"(up to <unk_{offset - 2}>) are added, got repeats of {repeated} in {names}"
        )
    return tokens


def _check_offset(offset: Any) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset: expected a non-negative int, got {offset!r}")
    return offset


def _pegasus_inputs(eos_token_id: int, token_ids_0: List[int], token_ids_1: Optional[List[int]]) -> List[int]:
    # Pegasus never uses a BOS token, and pairs (not an intended use) are joined without a separator.
    if token_ids_1 is None:
        return list(token_ids_0) + [eos_token_id]
    return list(token_ids_0) + list(token_ids_1) + [eos_token_id]


def _pegasus_special_mask(special_ids: set, token_ids_0, token_ids_1, already_has_special_tokens) -> List[int]:
    # <unk> is special only sometimes, so it is never masked
    def mask(ids):
        return [1 if index in special_ids else 0 for index in ids]

    if already_has_special_tokens:
        return mask(token_ids_0)
    if token_ids_1 is None:
        return mask(token_ids_0) + [1]
    return mask(list(token_ids_0) + list(token_ids_1)) + [1]


class PegasusTokenizer(PreTrainedTokenizer):
    """Pegasus's tokenizer over a SentencePiece model.

    Args:
        vocab_file: the SentencePiece model (``spiece.model``).
        pad_token, eos_token, unk_token: the special tokens; encoding appends ``eos_token``.
        mask_token: masks single tokens (MLM, ``[MASK2]`` in the paper).
        mask_token_sent: masks whole sentences (gap-sentence generation, ``[MASK1]``); ``None`` for none.
        additional_special_tokens: extra special tokens; ``<unk_i>`` fillers complete them to
            ``offset - 1`` tokens, the sentence mask first.
        offset: how many ids come before the SentencePiece pieces.
        sp_model_kwargs: passed to ``sentencepiece.SentencePieceProcessor`` (e.g. subword sampling).
    """

    vocab_files_names = dict(VOCAB_FILES_NAMES)
    pretrained_vocab_files_map = _hub_files(_PEGASUS_CHECKPOINTS, vocab_file="spiece.model")
    max_model_input_sizes = dict(_PEGASUS_CHECKPOINTS)
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask_2>",
        mask_token_sent="<mask_1>",
        additional_special_tokens=None,
        offset=103,
        sp_model_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
    ) -> None:
        self.offset = _check_offset(offset)
        additional_special_tokens = _pegasus_additional_special_tokens(
            mask_token_sent, additional_special_tokens, offset
        )
        self.sp_model_kwargs = {} if sp_model_kwargs is None else dict(sp_model_kwargs)
        self.mask_token_sent = mask_token_sent
        self.vocab_file = vocab_file
        self.sp_model = _load_processor(vocab_file, self.sp_model_kwargs)

        # The reserved ids are fixed whatever the checkpoint's saved added tokens say.
        reserved = {0: AddedToken(str(pad_token), special=True), 1: AddedToken(str(eos_token), special=True)}
        if mask_token_sent is not None:
            reserved[2] = AddedToken(mask_token_sent, special=True)
            reserved[3] = AddedToken(str(mask_token), special=True)
        for i in range(2, offset):
            reserved[len(reserved)] = AddedToken(f"<unk_{i}>", special=True)
        self._added_tokens_decoder = dict(kwargs.pop("added_tokens_decoder", None) or {})
        self._added_tokens_decoder.update(reserved)

        super().__init__(
            eos_token=eos_token,
            unk_token=unk_token,
            mask_token=mask_token,
            pad_token=pad_token,
            mask_token_sent=mask_token_sent,
            offset=offset,
            additional_special_tokens=additional_special_tokens,
            sp_model_kwargs=self.sp_model_kwargs,
            **kwargs,
        )
        self._constructed = True

    _constructed = False

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add tokens; after construction each new content gets the id after the highest one in use.

        The slow tokenizers number a new token by their count of distinct contents (kept here for the tokens
        the constructor adds, so "<unk>" of a model whose own "<unk>" piece lies under the reserved ids gets
        4.37's id). When a piece repeats a reserved token's content (a model's own "</s>"), that count is
        below the highest id, and 4.37's slow tokenizer gives every later token an id already in use (each
        one the same, hiding the tokens before it); 4.37's fast tokenizer numbers them after its highest id,
        which is followed here (and by PegasusTokenizerFast).
        """
        if not self._constructed or new_tokens is None:
            return super()._add_tokens(new_tokens, special_tokens=special_tokens)
        added = 0
        for token in [new_tokens] if isinstance(new_tokens, (str, AddedToken)) else list(new_tokens):
            before = dict(self._added_tokens_decoder)
            following = max([self.vocab_size - 1] + list(before)) + 1
            count = super()._add_tokens([token], special_tokens=special_tokens)
            added += count
            if not count:
                continue
            (index,) = [index for index, new in self._added_tokens_decoder.items() if before.get(index) is not new]
            if index == following:
                continue
            new = self._added_tokens_decoder.pop(index)
            if index in before:
                self._added_tokens_decoder[index] = before[index]
            self._added_tokens_decoder[following] = new
            self._added_tokens_encoder[new.content] = following
        return added

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state):
        import sentencepiece

        self.__dict__ = state
        proto = state["sp_model"]
        self.sp_model = sentencepiece.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)

    @property
    def vocab_size(self) -> int:
        return len(self.sp_model) + self.offset

    def get_vocab(self) -> Dict[str, int]:
        ids = list(range(self.vocab_size))
        vocab = dict(zip(self.convert_ids_to_tokens(ids), ids))
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        # Unknown pieces get SentencePiece's unknown id, shifted like every other piece.
        return self.sp_model.piece_to_id(token) + self.offset

    def _convert_id_to_token(self, index: int) -> str:
        # Ids below the offset are normally added tokens, looked up before this is called.
        return self.sp_model.id_to_piece(index if index < self.offset else index - self.offset)

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """Detokenize with SentencePiece, passing special tokens through verbatim."""
        specials = set(self.all_special_tokens)
        out: List[str] = []
        run: List[str] = []
        for token in tokens:
            if token in specials:
                out.append(self.sp_model.decode(run) + token)
                run = []
            else:
                run.append(token)
        out.append(self.sp_model.decode(run))
        return "".join(out).strip()

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Only the EOS token."""
        return 1

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None) -> List[int]:
        """``X </s>``, or ``A B </s>`` for a pair."""
        return _pegasus_inputs(self.eos_token_id, token_ids_0, token_ids_1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False) -> List[int]:
        """1 for eos, pad, the masks and the fillers (never for ``<unk>``), 0 for other tokens."""
        special_ids = set(self.all_special_ids) - {self.unk_token_id}
        return _pegasus_special_mask(special_ids, token_ids_0, token_ids_1, already_has_special_tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str]:
        """Write ``spiece.model`` (a copy of the loaded file) and return its path."""
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory: expected an existing directory, got {save_directory!r}")
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "spiece.model")
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out):
                shutil.copyfile(self.vocab_file, out)
        else:
            with open(out, "wb") as handle:
                handle.write(self.sp_model.serialized_model_proto())
        return (out,)


# ----------------------------------------------------------------------------------- fast


def _spaces_as_sentencepiece() -> List[Any]:
    """The normalizer steps after the model's own character map: SentencePiece drops trailing spaces and
    runs of spaces become one boundary marker. Only spaces: other whitespace that the model's normalization
    keeps ("\n", "\t" with some models) is text, as in the slow tokenizer (the reference's fast one drops
    it)."""
    return [normalizers.Replace(Regex(" +\\z"), ""), normalizers.Replace(Regex(" {2,}"), SPIECE_UNDERLINE)]


def _words_as_sentencepiece() -> Any:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", "removed"),
            pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always"),
        ]
    )


def _spaces_like_the_slow_tokenizer(backend: Tokenizer) -> Tokenizer:
    """`backend` (a loaded tokenizer.json), with the reference's whitespace handling replaced by the slow one's.

    The reference's converter writes a normalizer ``[Precompiled, Strip(right), Replace(" {2,}", "▁")]`` (older
    versions: ``[Precompiled, Replace(" {2,}", " ")]``) and a pre-tokenizer ``[WhitespaceSplit, Metaspace]``,
    which drop every newline and tab; SentencePiece (the slow tokenizer) keeps those its character map keeps.
    The character map is in the file, so the pipeline is rebuilt as
    :func:`pegasus_tokenizer` builds it from a spiece.model. Any other pipeline is left as it is.
    """
    pipeline = json.loads(backend.to_str())
    pre = pipeline.get("pre_tokenizer") or {}
    kinds = [step.get("type") for step in pre.get("pretokenizers") or [pre]]
    if kinds != ["WhitespaceSplit", "Metaspace"]:
        return backend
    normalizer = pipeline.get("normalizer") or {}
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    steps = [step for step in steps or [] if step]
    charmaps = [step for step in steps if step.get("type") == "Precompiled"]
    spaces = [step for step in steps if step.get("type") == "Strip"
              or step.get("type") == "Replace" and step.get("content") in (" ", SPIECE_UNDERLINE)]
    if len(charmaps) + len(spaces) != len(steps):
        return backend  # a normalizer of another kind: not the reference's Pegasus pipeline
    ours = [json.loads(step.__getstate__()) for step in _spaces_as_sentencepiece()]
    pipeline["normalizer"] = {"type": "Sequence", "normalizers": charmaps + ours}
    pipeline["pre_tokenizer"] = json.loads(_words_as_sentencepiece().__getstate__())
    return Tokenizer.from_str(json.dumps(pipeline))


def pegasus_tokenizer(
    vocab_file: str | os.PathLike,
    *,
    pad_token: str = "<pad>",
    eos_token: str = "</s>",
    eos_token_id: int = 1,
    mask_token: Optional[str] = "<mask_2>",
    mask_token_id: Optional[int] = 3,
    mask_token_sent: Optional[str] = "<mask_1>",
    offset: int = 103,
) -> Tokenizer:
    """The fast backend of a Pegasus ``spiece.model``: the reserved ids, then the model's pieces from
    the third on (SentencePiece's pad and eos already have ids 0 and 1), in a Unigram model."""
    model = read_sentencepiece_model(vocab_file)
    if model.model_type != UNIGRAM:
        raise ValueError(
            f"vocab_file: expected a Unigram SentencePiece model, got model type {model.model_type} in "
            f"{os.fspath(vocab_file)!r}"
        )
    if model.byte_fallback:
        logger.warning(
            "%s uses byte fallback, which the fast tokenizer does not reproduce: where SentencePiece emits "
            "byte pieces the fast tokenizer emits the unknown token",
            os.fspath(vocab_file),
        )
    vocab = [(str(pad_token), 0.0), (str(eos_token), 0.0)]
    if mask_token_sent is not None:
        vocab.append((str(mask_token_sent), 0.0))
    if mask_token is not None and mask_token_id is not None and mask_token_id < offset:
        vocab.append((str(mask_token), 0.0))
    # Fillers score so low that the Unigram model never picks them for text.
    vocab += [(f"<unk_{i}>", _UNMATCHED_SCORE) for i in range(2, offset)]
    # SentencePiece never produces a control or unknown piece (e.g. a model's own "</s>") from text; here they
    # keep their ids but score as the fillers, which marks them for PegasusTokenizerFast._model_for_text.
    vocab += [(piece, _UNMATCHED_SCORE if kind in (_UNKNOWN, _CONTROL) else score)
              for piece, score, kind in model.pieces[2:]]
    tokenizer = Tokenizer(models.Unigram(vocab, model.unk_id + offset))

    steps = [normalizers.Precompiled(model.precompiled_charsmap)] if model.precompiled_charsmap else []
    tokenizer.normalizer = normalizers.Sequence(steps + _spaces_as_sentencepiece())
    tokenizer.pre_tokenizer = _words_as_sentencepiece()
    tokenizer.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", str(eos_token)],
        pair=["$A", "$B", str(eos_token)],
        special_tokens=[(str(eos_token), eos_token_id)],
    )
    return tokenizer


def _convert_pegasus(slow: PegasusTokenizer) -> Tokenizer:
    return pegasus_tokenizer(
        slow.vocab_file,
        pad_token=slow.pad_token,
        eos_token=slow.eos_token,
        eos_token_id=slow.eos_token_id,
        mask_token=slow.mask_token,
        mask_token_id=slow.mask_token_id if slow.mask_token is not None else None,
        mask_token_sent=slow.mask_token_sent,
        offset=slow.offset,
    )


register_converter("PegasusTokenizer", _convert_pegasus)


class _WithSlowIds(_EncodingView):
    """A backend `Encoding` whose ``ids`` are numbered as the slow tokenizer numbers them (the ``input_ids``
    of the same call); everything else is the backend encoding's own."""

    __slots__ = ("_to_slow",)
    _state = ("to_slow",)
    _what = "ids of the slow tokenizer"

    def __init__(self, encoding: Any, to_slow: Dict[int, int]) -> None:
        self._encoding = encoding
        self._to_slow = to_slow

    @property
    def ids(self) -> List[int]:
        return [self._to_slow.get(index, index) for index in self._encoding.ids]

    @property
    def overflowing(self) -> List["_WithSlowIds"]:
        return [_WithSlowIds(item, self._to_slow) for item in self._encoding.overflowing]


class PegasusTokenizerFast(PreTrainedTokenizerFast):
    """A fast Pegasus tokenizer (Unigram, backed by the `tokenizers` library).

    Args:
        vocab_file: the SentencePiece model (``spiece.model``), converted when no ``tokenizer_file`` is given.
        tokenizer_file: a tokenizer.json.
        pad_token, eos_token, unk_token, mask_token, mask_token_sent, additional_special_tokens, offset:
            as for :class:`PegasusTokenizer`. Non-default pad, eos or unk tokens move ids, so the
            backend is then rebuilt from ``vocab_file``.
    """

    vocab_files_names = {"vocab_file": "spiece.model", "tokenizer_file": TOKENIZER_FILE}
    pretrained_vocab_files_map = _hub_files(
        _PEGASUS_CHECKPOINTS, vocab_file="spiece.model", tokenizer_file=TOKENIZER_FILE
    )
    max_model_input_sizes = dict(_PEGASUS_CHECKPOINTS)
    slow_tokenizer_class = PegasusTokenizer
    model_input_names = ["input_ids", "attention_mask"]
    # backend id -> slow id where they differ, and back (see _slow_id_layout)
    _to_slow_ids: Dict[int, int] = {}
    _to_backend_ids: Dict[int, int] = {}
    _piece_unk_id: Optional[int] = None  # the Unigram model's unknown id
    # the backend's model for text, in which SentencePiece's control and unknown pieces cannot match
    _text_model: Any = None
    _hidden_ids: frozenset = frozenset()  # the ids of those pieces
    # whether an added token is matched in normalized text by the backend (see _backend_for_text), and the
    # backend built for text then (made when first needed, dropped when tokens are added)
    _normalized_added = False
    _text_backend: Optional[Tokenizer] = None
    _constructed = False

    def __init__(
        self,
        vocab_file=None,
        tokenizer_file=None,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask_2>",
        mask_token_sent="<mask_1>",
        additional_special_tokens=None,
        offset=103,
        **kwargs,
    ) -> None:
        self.offset = _check_offset(offset)
        additional_special_tokens = _pegasus_additional_special_tokens(
            mask_token_sent, additional_special_tokens, offset
        )
        from_slow = kwargs.pop("from_slow", None)
        from_slow = from_slow or str(pad_token) != "<pad>" or str(eos_token) != "</s>" or str(unk_token) != "<unk>"
        # The reserved ids come from the backend's vocabulary, not from the saved added tokens; the tokens saved
        # after them are added again (in id order), so that a backend rebuilt from the spiece.model keeps them.
        saved = kwargs.pop("added_tokens_decoder", None) or {}
        kwargs["added_tokens_decoder"] = {int(index): token for index, token in saved.items() if int(index) >= offset}
        super().__init__(
            vocab_file,
            tokenizer_file=tokenizer_file,
            pad_token=pad_token,
            eos_token=eos_token,
            unk_token=unk_token,
            mask_token=mask_token,
            mask_token_sent=mask_token_sent,
            offset=offset,
            additional_special_tokens=additional_special_tokens,
            from_slow=from_slow,
            **kwargs,
        )
        self.vocab_file = vocab_file
        self.mask_token_sent = mask_token_sent
        self._tokenizer = _spaces_like_the_slow_tokenizer(self._tokenizer)
        self._to_slow_ids, self._to_backend_ids = self._slow_id_layout()
        self._text_model, self._hidden_ids = self._model_for_text()
        self._normalized_added = self._has_normalized_added_tokens()
        self._constructed = True

    def _slow_id_layout(self) -> Tuple[Dict[int, int], Dict[int, int]]:
        """Where the slow tokenizer numbers an added token otherwise than the backend: backend id -> slow id,
        and back.

        The slow tokenizer numbers its tokens by a dict of the vocabulary's contents: a content that a
        SentencePiece piece repeats (a model's own "</s>" piece) keeps the reserved id (eos: 1) where the
        backend takes the piece's, and a special token that is no piece (an "<unk>" whose piece lies under the
        reserved ids) gets the count of distinct contents as its id, one less per repeat than the backend's.
        """
        backend = self._tokenizer
        model = backend.model
        if not isinstance(model, models.Unigram):
            return {}, {}
        self._piece_unk_id = json.loads(model.__getstate__()).get("unk_id")
        size = backend.get_vocab_size(with_added_tokens=False)
        contents = [model.id_to_token(index) for index in range(size)]
        numbering = {content: index for index, content in enumerate(contents)}
        numbering.update({contents[index]: index for index in range(min(self.offset, size))})
        following = len(numbering)
        to_slow = {}
        for index, token in sorted(backend.get_added_tokens_decoder().items()):
            wanted = numbering.get(token.content)
            if wanted is None:
                wanted, following = following, following + 1
                numbering[token.content] = wanted
            if wanted != index:
                to_slow[index] = wanted
        return to_slow, {slow: index for index, slow in to_slow.items()}

    def _model_for_text(self) -> Tuple[Any, frozenset]:
        """A copy of the backend's Unigram model in which no control or unknown piece of the SentencePiece
        model can match text (SentencePiece never produces them from text), and the ids of those pieces.

        Such a piece is one that the converter marked (pegasus_tokenizer scores SentencePiece's control and
        unknown pieces -100, and so do the tokenizer.json files saved from it), or one that repeats the content
        of a reserved token (a model's own "</s>", also in a tokenizer.json the reference saved, which keeps
        the pieces' scores). Its content gets a leading space, which no word holds once the pre-tokenizer has
        split the text at spaces, so the lattice never contains it; ids and scores stay. The model's unknown id
        keeps its content (the backend names unknown spans by it). ``(None, frozenset())`` when there is no
        such piece or the pipeline keeps spaces inside words. The spiece.model is not read again: parsing a
        large one in Python takes about a second.
        """
        backend = self._tokenizer
        model = backend.model
        if not isinstance(model, models.Unigram) or backend.pre_tokenizer is None:
            return None, frozenset()
        probe = backend.normalizer.normalize_str("a b") if backend.normalizer is not None else "a b"
        if any(" " in word for word, _ in backend.pre_tokenizer.pre_tokenize_str(probe)):
            return None, frozenset()
        state = json.loads(model.__getstate__())
        vocab = [list(entry) for entry in state["vocab"]]
        unk_id = state.get("unk_id")
        first = {}
        for index, (piece, _) in enumerate(vocab):
            first.setdefault(piece, index)
        hidden = {index for index in range(self.offset, len(vocab)) if first[vocab[index][0]] < index
                  or vocab[index][1] == _UNMATCHED_SCORE and not _FILLER.fullmatch(vocab[index][0])}
        hidden.discard(unk_id)
        if not hidden:
            return None, frozenset()
        for index in hidden:
            vocab[index][0] = " " + vocab[index][0]
        text_model = models.Unigram([(piece, score) for piece, score in vocab], unk_id,
                                    bool(state.get("byte_fallback", False)))
        return text_model, frozenset(hidden)

    def _has_normalized_added_tokens(self) -> bool:
        return any(token.normalized for token in self._tokenizer.get_added_tokens_decoder().values())

    def _backend_for_text(self) -> Tokenizer:
        """The backend that encodes text: a copy of the backend in which every added token is matched in the
        text as given, before normalization, as the slow tokenizer matches it.

        The backend looks for a token added with ``normalized=True`` (what ``add_tokens`` gives a plain string)
        in the normalized text, where a run of spaces has become one "▁" already; the slow tokenizer splits the
        raw text at the token and SentencePiece drops the spaces that end the text before it (``"a  AAA"``:
        ``a``, ``AAA``, where the backend gives ``a``, ``▁``, ``AAA``). The copy holds the tokens with
        ``normalized=False`` (and the model for text, see :meth:`_model_for_text`); the backend itself keeps
        the tokens as they were added, so ``added_tokens_decoder`` and the saved files report the caller's
        flags. Built once after tokens are added, only when such a token exists: over the same model and
        pipeline steps (shared, not copied), the tokens added again in id order; where that numbers them
        otherwise, from the serialized pipeline (0.33 s for a 96,000-piece Unigram model).
        """
        if self._text_backend is not None:
            return self._text_backend
        original = self._tokenizer
        tokens = sorted(original.get_added_tokens_decoder().items())
        model = self._text_model if self._text_model is not None else original.model
        backend = Tokenizer(model)
        for step in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "encode_special_tokens"):
            value = getattr(original, step, None)
            if value is not None:
                setattr(backend, step, value)
        for _, token in tokens:
            raw = AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip, rstrip=token.rstrip,
                             normalized=False, special=token.special)
            (backend.add_special_tokens if token.special else backend.add_tokens)([raw])
        if [(index, token.content) for index, token in sorted(backend.get_added_tokens_decoder().items())] != [
                (index, token.content) for index, token in tokens]:
            state = json.loads(original.to_str())
            for entry in state.get("added_tokens") or []:
                entry["normalized"] = False
            backend = Tokenizer.from_str(json.dumps(state))
            backend.model = model
        self._text_backend = backend
        return backend

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        known = set(self._tokenizer.get_added_tokens_decoder())
        added = super()._add_tokens(new_tokens, special_tokens=special_tokens)
        self._text_backend = None
        self._normalized_added = self._has_normalized_added_tokens()
        if not self._constructed:
            self._to_slow_ids, self._to_backend_ids = self._slow_id_layout()  # the new tokens' ids too
            return added
        # After construction, new tokens follow the highest id in use, as in the slow tokenizer (see
        # PegasusTokenizer._add_tokens); a content the model holds keeps the model's id.
        backend = self._tokenizer
        size = backend.get_vocab_size(with_added_tokens=False)
        to_slow = dict(self._to_slow_ids)
        following = max([size - 1] + [to_slow.get(index, index) for index in known]) + 1
        for index in sorted(set(backend.get_added_tokens_decoder()) - known):
            if index < size:
                continue
            if index != following:
                to_slow[index] = following
            following += 1
        self._to_slow_ids, self._to_backend_ids = to_slow, {slow: index for index, slow in to_slow.items()}
        return added

    def __len__(self) -> int:
        # where ids are renumbered, the slow tokenizer's count: its vocabulary's distinct contents
        return len(self.get_vocab()) if self._to_slow_ids else super().__len__()

    def _batch_encode_plus(self, *args: Any, **kwargs: Any):
        if self._normalized_added:
            backend = self._tokenizer
            self._tokenizer = self._backend_for_text()
            try:
                return super()._batch_encode_plus(*args, **kwargs)
            finally:
                self._tokenizer = backend
        if self._text_model is None:
            return super()._batch_encode_plus(*args, **kwargs)
        backend = self._tokenizer
        model = backend.model
        backend.model = self._text_model
        try:
            return super()._batch_encode_plus(*args, **kwargs)
        finally:
            backend.model = model

    def _convert_token_to_id_with_added_voc(self, token: str) -> Optional[int]:
        index = self._tokenizer.token_to_id(token)
        if index is None:
            # like the slow tokenizer: SentencePiece's unknown piece (shifted by the offset), which is the
            # unknown token's id unless a model's own "<unk>" piece lies under the reserved ids
            return self.unk_token_id if self._piece_unk_id is None else self._piece_unk_id
        return self._to_slow_ids.get(index, index)

    def _convert_id_to_token(self, index: int) -> Optional[str]:
        return super()._convert_id_to_token(self._to_backend_ids.get(int(index), int(index)))

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._convert_id_to_token(ids)
        skipped = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._convert_id_to_token(index) for index in ids if int(index) not in skipped]

    def get_vocab(self) -> Dict[str, int]:
        vocab = super().get_vocab()
        if not self._to_slow_ids:
            return vocab
        vocab = {token: self._to_slow_ids.get(index, index) for token, index in vocab.items()}
        # as in the slow tokenizer, a piece whose id an added token of other content holds is left out
        owners = {index: token.content for index, token in self.added_tokens_decoder.items()}
        return {token: index for token, index in vocab.items() if owners.get(index, token) == token}

    @property
    def added_tokens_decoder(self) -> Dict[int, AddedToken]:
        """Added tokens by id, numbered as the slow tokenizer numbers them."""
        tokens = super().added_tokens_decoder
        return dict(sorted((self._to_slow_ids.get(index, index), token) for index, token in tokens.items()))

    def _convert_encoding(self, encoding, *args, **kwargs):
        columns, encodings = super()._convert_encoding(encoding, *args, **kwargs)
        if self._to_slow_ids:
            columns["input_ids"] = [[self._to_slow_ids.get(index, index) for index in ids]
                                    for ids in columns["input_ids"]]
            encodings = [_WithSlowIds(item, self._to_slow_ids) for item in encodings]
        return columns, encodings

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        if self._to_backend_ids or self._hidden_ids:
            # The slow tokenizer's special ids are skipped before the ids become the backend's: a piece whose
            # content is a special token ("</s>" at 105) is no special id there, and is kept. A control piece
            # whose content is no special token decodes to nothing, as in SentencePiece.
            token_ids = [int(token_ids)] if isinstance(token_ids, int) else [int(index) for index in token_ids]
            dropped = set(self.all_special_ids) if skip_special_tokens else set()
            if self._hidden_ids:
                specials = set(self.all_special_tokens)
                dropped |= {index for index in self._hidden_ids if self._convert_id_to_token(index) not in specials}
            token_ids = [self._to_backend_ids.get(index, index) for index in token_ids if index not in dropped]
            skip_special_tokens = False
        return super()._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)

    @property
    def can_save_slow_tokenizer(self) -> bool:  # type: ignore[override]
        return bool(self.vocab_file) and os.path.isfile(self.vocab_file)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None) -> List[int]:
        """``X </s>``, or ``A B </s>`` for a pair."""
        return _pegasus_inputs(self.eos_token_id, token_ids_0, token_ids_1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False) -> List[int]:
        """1 for eos, pad, the masks and the fillers (never for ``<unk>``), 0 for other tokens."""
        special_ids = set(self.all_special_ids) - {self.unk_token_id}
        # The mask relies on the special tokens holding the first ids; anything else is a broken layout.
        expected = set(range(len(self.additional_special_tokens) + 3))
        if special_ids != expected:
            raise ValueError(
                f"special tokens: expected mask, pad and eos plus {len(self.additional_special_tokens)} additional "
                f"special tokens with ids 0..{len(expected) - 1}, got ids {sorted(special_ids)}"
            )
        return _pegasus_special_mask(special_ids, token_ids_0, token_ids_1, already_has_special_tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str]:
        """Copy the ``spiece.model`` this tokenizer was built from; return its path."""
        if not self.can_save_slow_tokenizer:
            raise ValueError(
                "vocab_file: expected the spiece.model this fast tokenizer was built from (needed to save "
                f"slow-tokenizer files), got {self.vocab_file!r}"
            )
        if not os.path.isdir(save_directory):
            raise ValueError(f"save_directory: expected an existing directory, got {save_directory!r}")
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "spiece.model")
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
