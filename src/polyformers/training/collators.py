"""Data collators: turn a list of dataset examples into one batch of tensors, as Transformers 4.37 does.

Each collator is a callable ``collator(features, return_tensors=None)``. ``features`` is a list of
dicts (or of objects whose attributes are the fields) holding ``input_ids`` and friends; the result
is a dict (a ``BatchEncoding`` when the tokenizer padded it) of PyTorch tensors, or of NumPy arrays
with ``return_tensors="np"``.

The masked-language-modeling collators draw their random numbers in the same order and with the same
shapes as the reference, from torch's (or NumPy's, for "np") global generator, and the whole-word
collator shuffles with Python's ``random``: seeding those generators the same way gives the same
masks as the reference library.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NewType, Optional, Union

import numpy as np

from ..tokenizers.base import PaddingStrategy, PreTrainedTokenizerBase

InputDataClass = NewType("InputDataClass", Any)
DataCollator = NewType("DataCollator", Callable[[List[InputDataClass]], Dict[str, Any]])

_FRAMEWORKS = ("pt", "np")


class FeatureKeyError(KeyError, ValueError):
    """A feature lacks a key that the first feature has.

    A KeyError, as the reference raises for this, and a ValueError, as every other bad-input error here.
    """

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _check_return_tensors(return_tensors) -> str:
    if return_tensors == "tf":
        raise ValueError(
            "return_tensors='tf' is not supported by polyformers' data collators; use 'pt' (PyTorch) or 'np' (NumPy)"
        )
    if return_tensors not in _FRAMEWORKS:
        raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
    return return_tensors


def _check_features(features, name: str = "features") -> None:
    if isinstance(features, (str, bytes, Mapping)) or not hasattr(features, "__len__"):
        raise ValueError(f"{name} must be a list of examples, got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError(f"{name} is empty: a batch needs at least one example")


def _as_dicts(features) -> List[Mapping]:
    """Examples as mappings: objects (dataclasses such as InputFeatures) are read through their attributes."""
    _check_features(features)
    if isinstance(features[0], Mapping):
        return list(features)
    try:
        return [vars(f) for f in features]
    except TypeError:
        raise ValueError(
            f"features must be dicts or objects with attributes (e.g. dataclasses), got {type(features[0]).__name__}"
        ) from None


def _column(features: List[Mapping], key: str) -> list:
    """``[f[key] for f in features]``, with an error that says which example lacks the key."""
    values = []
    for i, feature in enumerate(features):
        if key not in feature:
            raise FeatureKeyError(
                f"features[{i}] has no {key!r} but features[0] has; every example in a batch needs the same keys "
                f"(features[{i}] has {sorted(feature.keys())})"
            )
        values.append(feature[key])
    return values


def _to_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _stack_error(key: str, error: Exception) -> ValueError:
    return ValueError(
        f"could not batch the values of feature {key!r}: {error}. Values of one key must have the same shape in "
        "every example; pad them first (e.g. DataCollatorWithPadding for tokenizer outputs)"
    )


# ----------------------------------------------------------------------------------------------------
# default_data_collator
# ----------------------------------------------------------------------------------------------------


def default_data_collator(features: List[InputDataClass], return_tensors="pt") -> Dict[str, Any]:
    """Batch examples whose fields already have equal shapes; nothing is padded.

    ``label`` (one value per example) or ``label_ids`` (a list per example) become ``labels``: integers give
    an int64 tensor, anything else float32 (regression). Fields that are None or strings are left out; every
    other field is stacked. Examples may be dicts or objects such as dataclasses.
    """
    _check_return_tensors(return_tensors)
    if return_tensors == "pt":
        import torch

        return _default_collate(features, torch.Tensor, _torch_tensor, _torch_stack, torch.long, torch.float,
                                lambda column, key: torch.tensor(_numpy_stack(column, key)))
    return _default_collate(features, np.ndarray, _numpy_array, _numpy_stack, np.int64, np.float32, _numpy_stack)


def _default_collate(features, array_type, to_array, stack, int_dtype, float_dtype, from_numpy) -> Dict[str, Any]:
    """``default_data_collator`` for one framework: ``array_type`` is its array class, ``to_array(values, key,
    dtype=None)`` and ``stack(values, key)`` build its arrays from lists and from its own arrays, ``from_numpy``
    from NumPy arrays; ``int_dtype`` and ``float_dtype`` are the label dtypes."""
    features = _as_dicts(features)
    first = features[0]
    batch: Dict[str, Any] = {}

    # The reference chooses the label dtype from the first example only: a Python int (or an array
    # holding one) means class ids, anything else (float, NumPy scalar) means float targets.
    if first.get("label") is not None:
        label = first["label"].item() if isinstance(first["label"], array_type) else first["label"]
        dtype = int_dtype if isinstance(label, int) else float_dtype
        batch["labels"] = to_array(_column(features, "label"), "label", dtype)
    elif first.get("label_ids") is not None:
        label_ids = _column(features, "label_ids")
        if isinstance(first["label_ids"], array_type):
            batch["labels"] = stack(label_ids, "label_ids")
        else:
            dtype = int_dtype if isinstance(first["label_ids"][0], int) else float_dtype
            batch["labels"] = to_array(label_ids, "label_ids", dtype)

    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        column = _column(features, key)
        if isinstance(value, array_type):
            batch[key] = stack(column, key)
        elif isinstance(value, np.ndarray):
            batch[key] = from_numpy(column, key)
        else:
            batch[key] = to_array(column, key)
    return batch


def _torch_tensor(values, key, dtype=None):
    import torch

    try:
        return torch.tensor(values, dtype=dtype)
    except (ValueError, TypeError, RuntimeError) as error:
        raise _stack_error(key, error) from None


def _torch_stack(values, key):
    import torch

    try:
        return torch.stack(values)
    except (ValueError, TypeError, RuntimeError) as error:
        raise _stack_error(key, error) from None


def _numpy_stack(values, key):
    try:
        return np.stack(values)
    except (ValueError, TypeError) as error:
        raise _stack_error(key, error) from None


def _numpy_array(values, key, dtype=None):
    try:
        return np.array(values, dtype=dtype)
    except (ValueError, TypeError) as error:
        raise _stack_error(key, error) from None


class DataCollatorMixin:
    """Dispatch ``__call__(features, return_tensors=None)`` to ``torch_call`` or ``numpy_call``;
    ``return_tensors=None`` means the collator's own ``return_tensors``."""

    def __call__(self, features, return_tensors=None):
        if return_tensors is None:
            return_tensors = self.return_tensors
        if _check_return_tensors(return_tensors) == "pt":
            return self.torch_call(features)
        return self.numpy_call(features)


@dataclass
class DefaultDataCollator(DataCollatorMixin):
    """``default_data_collator`` as an object, so that ``return_tensors`` can be set once."""

    return_tensors: str = "pt"

    def __call__(self, features: List[Dict[str, Any]], return_tensors=None) -> Dict[str, Any]:
        if return_tensors is None:
            return_tensors = self.return_tensors
        return default_data_collator(features, return_tensors)


# ----------------------------------------------------------------------------------------------------
# padding collators
# ----------------------------------------------------------------------------------------------------


def _has_token(tokenizer, name: str) -> bool:
    # Read the private attribute where there is one, as the reference does: the public property logs an
    # error when the token is unset.
    private = "_" + name
    return (getattr(tokenizer, private) if hasattr(tokenizer, private) else getattr(tokenizer, name, None)) is not None


def _check_tokenizer(tokenizer, owner: str) -> None:
    if tokenizer is None or not hasattr(tokenizer, "pad"):
        raise ValueError(f"{owner} needs a tokenizer (to pad with), got {type(tokenizer).__name__}")


def _check_pad_arguments(owner: str, max_length, pad_to_multiple_of) -> None:
    if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
        raise ValueError(f"{owner}: max_length must be a positive int or None, got {max_length!r}")
    if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0):
        raise ValueError(f"{owner}: pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")


def _pad(tokenizer, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors=None,
         name: str = "features"):
    """tokenizer.pad on a list of example dicts, after checking that every example has the same keys
    (the tokenizer would otherwise fail with a bare KeyError)."""
    _check_features(features, name)
    if not isinstance(features[0], Mapping):
        raise ValueError(
            f"{name} must be a list of dicts (tokenizer outputs), got a list of {type(features[0]).__name__}"
        )
    keys = list(features[0].keys())
    for i, feature in enumerate(features[1:], start=1):
        if not isinstance(feature, Mapping):
            raise ValueError(f"{name}[{i}] is a {type(feature).__name__}, but {name}[0] is a dict")
        for key in keys:
            if key not in feature:
                raise FeatureKeyError(
                    f"{name}[{i}] has no {key!r} but {name}[0] has; every example in a batch needs the "
                    f"same keys ({name}[{i}] has {sorted(feature.keys())})"
                )
    return tokenizer.pad(
        features,
        padding=padding,
        max_length=max_length,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors=return_tensors,
    )


@dataclass
class DataCollatorWithPadding:
    """Pad tokenizer outputs to a common length with ``tokenizer.pad``.

    Args:
        tokenizer: the tokenizer that encoded the data; it pads.
        padding: True or "longest" (default: to the longest example), "max_length" (to ``max_length``, or
            the model's maximum when None), False or "do_not_pad".
        max_length: length for ``padding="max_length"``.
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor-core friendly sizes).
        return_tensors: "pt" (default) or "np".

    ``label`` and ``label_ids`` are renamed ``labels``, the name models take.
    """

    tokenizer: PreTrainedTokenizerBase
    padding: Union[bool, str, PaddingStrategy] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_tokenizer(self.tokenizer, type(self).__name__)
        _check_pad_arguments(type(self).__name__, self.max_length, self.pad_to_multiple_of)

    def __call__(self, features: List[Dict[str, Any]], return_tensors=None) -> Dict[str, Any]:
        return_tensors = _check_return_tensors(self.return_tensors if return_tensors is None else return_tensors)
        batch = _pad(self.tokenizer, features, self.padding, self.max_length, self.pad_to_multiple_of, return_tensors)
        for old in ("label", "label_ids"):
            if old in batch:
                batch["labels"] = batch[old]
                del batch[old]
        return batch


def _pad_rows(rows, length: int, fill, side: str) -> List[list]:
    """Python lists of ``rows`` padded with ``fill`` on ``side`` up to ``length`` (longer rows are kept)."""
    padded = []
    for row in rows:
        row = _to_list(row)
        extra = [fill] * (length - len(row))
        padded.append(row + extra if side == "right" else extra + row)
    return padded


@dataclass
class DataCollatorForTokenClassification(DataCollatorMixin):
    """Pad inputs with the tokenizer and the per-token labels with ``label_pad_token_id`` (-100, which the
    losses ignore), on the tokenizer's ``padding_side``, to the padded length of ``input_ids``.

    Args are those of ``DataCollatorWithPadding`` plus ``label_pad_token_id``. The labels are read from
    ``labels`` (or ``label``) and keep that name.
    """

    tokenizer: PreTrainedTokenizerBase
    padding: Union[bool, str, PaddingStrategy] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_tokenizer(self.tokenizer, type(self).__name__)
        _check_pad_arguments(type(self).__name__, self.max_length, self.pad_to_multiple_of)

    def _split_labels(self, features):
        _check_features(features)
        first = features[0]
        if not isinstance(first, Mapping):
            raise ValueError(
                f"features must be a list of dicts (tokenizer outputs), got a list of {type(first).__name__}"
            )
        label_name = "label" if "label" in first else "labels"
        labels = _column(features, label_name) if label_name in first else None
        return label_name, labels

    def _padded_labels(self, labels, length: int) -> List[list]:
        padded = _pad_rows(labels, length, self.label_pad_token_id, self.tokenizer.padding_side)
        longest = max(len(row) for row in padded)
        if longest > length:
            raise ValueError(
                f"{type(self).__name__}: an example has {longest} labels but input_ids are padded to {length}; "
                "labels need one value per token"
            )
        return padded

    def torch_call(self, features):
        import torch

        label_name, labels = self._split_labels(features)
        # Labels are padded here, not by the tokenizer: it only knows how to pad the model inputs.
        inputs = [{k: v for k, v in f.items() if k != label_name} for f in features]
        batch = _pad(self.tokenizer, inputs, self.padding, self.max_length, self.pad_to_multiple_of, "pt")
        if labels is None:
            return batch
        length = batch["input_ids"].shape[1]
        batch[label_name] = torch.tensor(self._padded_labels(labels, length), dtype=torch.int64)
        return batch

    def numpy_call(self, features):
        label_name, labels = self._split_labels(features)
        if labels is None:
            return _pad(self.tokenizer, features, self.padding, self.max_length, self.pad_to_multiple_of, "np")
        # As the reference's NumPy path: pad to lists, then every field becomes int64 and the labels are
        # stored as "labels" whatever their input name.
        batch = _pad(self.tokenizer, features, self.padding, self.max_length, self.pad_to_multiple_of, None)
        length = len(batch["input_ids"][0])
        batch["labels"] = self._padded_labels(labels, length)
        return {key: np.array(value, dtype=np.int64) for key, value in batch.items()}


@dataclass
class DataCollatorForSeq2Seq:
    """Pad encoder inputs with the tokenizer and ``labels`` with ``label_pad_token_id`` to the longest label
    sequence of the batch (rounded up to ``pad_to_multiple_of``), on the tokenizer's ``padding_side``.

    Args are those of ``DataCollatorWithPadding`` plus:
        model: when given and it has ``prepare_decoder_input_ids_from_labels``, the batch also gets
            ``decoder_input_ids`` made from the padded labels (the labels shifted right), which saves the
            model doing it.
        label_pad_token_id: fill for label padding (-100, ignored by the loss).

    As in 4.37, ``padding="max_length"`` pads the inputs to ``max_length`` but the labels only to the longest
    label sequence. The given features are not modified (4.37 wrote the padded labels back into them).
    """

    tokenizer: PreTrainedTokenizerBase
    model: Optional[Any] = None
    padding: Union[bool, str, PaddingStrategy] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"

    def __post_init__(self):
        _check_tokenizer(self.tokenizer, type(self).__name__)
        _check_pad_arguments(type(self).__name__, self.max_length, self.pad_to_multiple_of)

    def __call__(self, features, return_tensors=None):
        return_tensors = _check_return_tensors(self.return_tensors if return_tensors is None else return_tensors)
        _check_features(features)
        if not isinstance(features[0], Mapping):
            raise ValueError(
                f"features must be a list of dicts (tokenizer outputs), got a list of {type(features[0]).__name__}"
            )
        labels = _column(features, "labels") if "labels" in features[0] else None
        if labels is not None:
            length = max(len(row) for row in labels)
            multiple = self.pad_to_multiple_of
            if multiple is not None:
                length = -(-length // multiple) * multiple
            padded = _pad_rows(labels, length, self.label_pad_token_id, self.tokenizer.padding_side)
            features = [{**f, "labels": row} for f, row in zip(features, padded)]
        batch = _pad(self.tokenizer, features, self.padding, self.max_length, self.pad_to_multiple_of, return_tensors)
        make_decoder_inputs = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        if labels is not None and make_decoder_inputs is not None:
            batch["decoder_input_ids"] = make_decoder_inputs(labels=batch["labels"])
        return batch


# ----------------------------------------------------------------------------------------------------
# language modeling
# ----------------------------------------------------------------------------------------------------


def _torch_collate_batch(examples, tokenizer, pad_to_multiple_of=None):
    """Stack lists of token ids (or 1-D tensors / arrays) into one int64 tensor, padding with the pad token
    on the tokenizer's padding side when lengths differ or are not a multiple of ``pad_to_multiple_of``."""
    import torch

    rows = []
    for i, example in enumerate(examples):
        if isinstance(example, torch.Tensor):
            rows.append(example)
        elif isinstance(example, (list, tuple, np.ndarray)):
            rows.append(torch.tensor(example, dtype=torch.long))
        else:
            raise ValueError(
                f"examples[{i}] must be a dict, a list of token ids or a 1-D tensor, got {type(example).__name__}"
            )
        if rows[-1].dim() != 1:
            raise ValueError(f"examples[{i}] must be one sequence of token ids, got shape {tuple(rows[-1].shape)}")
    longest = max(row.size(0) for row in rows)
    same_length = all(row.size(0) == longest for row in rows)
    if same_length and (pad_to_multiple_of is None or longest % pad_to_multiple_of == 0):
        return torch.stack(rows, dim=0)
    length = _padded_length(rows, tokenizer, pad_to_multiple_of)
    batch = rows[0].new_full((len(rows), length), tokenizer.pad_token_id)
    for i, row in enumerate(rows):
        if tokenizer.padding_side == "right":
            batch[i, : row.size(0)] = row
        else:
            batch[i, length - row.size(0) :] = row
    return batch


def _numpy_collate_batch(examples, tokenizer, pad_to_multiple_of=None):
    """``_torch_collate_batch`` for NumPy."""
    rows = []
    for i, example in enumerate(examples):
        if isinstance(example, np.ndarray):
            rows.append(example)
        elif isinstance(example, (list, tuple)) or hasattr(example, "numpy"):
            rows.append(np.array(example, dtype=np.int64))
        else:
            raise ValueError(
                f"examples[{i}] must be a dict, a list of token ids or a 1-D array, got {type(example).__name__}"
            )
        if rows[-1].ndim != 1:
            raise ValueError(f"examples[{i}] must be one sequence of token ids, got shape {rows[-1].shape}")
    longest = max(len(row) for row in rows)
    if all(len(row) == longest for row in rows) and (pad_to_multiple_of is None or longest % pad_to_multiple_of == 0):
        return np.stack(rows, axis=0)
    length = _padded_length(rows, tokenizer, pad_to_multiple_of)
    batch = np.full((len(rows), length), tokenizer.pad_token_id, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if tokenizer.padding_side == "right":
            batch[i, : len(row)] = row
        else:
            batch[i, length - len(row) :] = row
    return batch


def _padded_length(rows, tokenizer, pad_to_multiple_of) -> int:
    if not _has_token(tokenizer, "pad_token"):
        raise ValueError(
            f"the examples need padding (their lengths differ or are not a multiple of pad_to_multiple_of) but "
            f"the tokenizer ({type(tokenizer).__name__}) has no pad_token; set tokenizer.pad_token"
        )
    length = max(len(row) for row in rows)
    if pad_to_multiple_of is not None and length % pad_to_multiple_of != 0:
        length = (length // pad_to_multiple_of + 1) * pad_to_multiple_of
    return length


@dataclass
class DataCollatorForLanguageModeling(DataCollatorMixin):
    """Batches for masked (``mlm=True``) or causal (``mlm=False``) language modeling.

    Examples are tokenizer outputs (dicts, padded with ``tokenizer.pad``) or plain lists of token ids.

    With ``mlm=True`` each token is chosen for prediction with probability ``mlm_probability``, except
    special tokens (from a ``special_tokens_mask`` field when the examples have one, otherwise from
    ``tokenizer.get_special_tokens_mask``) and padding; of the chosen tokens 80% become the mask token, 10%
    a random token and 10% stay. ``labels`` hold the original ids at chosen positions and -100 elsewhere.

    With ``mlm=False``, ``labels`` are a copy of ``input_ids`` with the padding positions set to -100 (the
    model shifts them itself).

    Args:
        tokenizer: the tokenizer of the data; it pads, and gives the mask token and the vocabulary size.
        mlm: masked (True) or causal (False) language modeling.
        mlm_probability: share of tokens to predict when ``mlm=True``.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        tf_experimental_compile: accepted for compatibility; there is no TensorFlow path here.
        return_tensors: "pt" (default) or "np".
    """

    tokenizer: PreTrainedTokenizerBase
    mlm: bool = True
    mlm_probability: float = 0.15
    pad_to_multiple_of: Optional[int] = None
    tf_experimental_compile: bool = False
    return_tensors: str = "pt"

    def __post_init__(self):
        owner = type(self).__name__
        _check_tokenizer(self.tokenizer, owner)
        if self.mlm and not _has_token(self.tokenizer, "mask_token"):
            raise ValueError(
                f"{owner}: this tokenizer ({type(self.tokenizer).__name__}) has no mask token, which masked "
                "language modeling (mlm=True) needs. Pass mlm=False to train causal language modeling instead, "
                "or set tokenizer.mask_token."
            )
        if isinstance(self.mlm_probability, bool) or not isinstance(self.mlm_probability, (int, float)) or not (
            0.0 <= self.mlm_probability <= 1.0
        ):
            raise ValueError(f"{owner}: mlm_probability must be a number in [0, 1], got {self.mlm_probability!r}")
        _check_pad_arguments(owner, None, self.pad_to_multiple_of)

    # -- PyTorch ------------------------------------------------------------------------------------

    def _batch(self, examples, return_tensors: str, collate_batch, mask_tokens, copy):
        """The batch in ``return_tensors``' arrays: ``collate_batch`` pads bare id lists, ``mask_tokens``
        corrupts them for masked LM, ``copy`` copies an array (the causal LM labels)."""
        _check_features(examples, "examples")
        if isinstance(examples[0], Mapping):
            batch = _pad(self.tokenizer, examples, pad_to_multiple_of=self.pad_to_multiple_of,
                         return_tensors=return_tensors, name="examples")
        else:
            batch = {"input_ids": collate_batch(examples, self.tokenizer, self.pad_to_multiple_of)}
        special_tokens_mask = batch.pop("special_tokens_mask", None)
        if self.mlm:
            batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], special_tokens_mask)
        else:
            labels = copy(batch["input_ids"])
            if self.tokenizer.pad_token_id is not None:
                labels[labels == self.tokenizer.pad_token_id] = -100
            batch["labels"] = labels
        return batch

    def torch_call(self, examples):
        return self._batch(examples, "pt", _torch_collate_batch, self.torch_mask_tokens, lambda ids: ids.clone())

    def _special_mask_rows(self, ids: List[List[int]]) -> List[List[int]]:
        return [self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids]

    def torch_mask_tokens(self, inputs, special_tokens_mask=None):
        """Choose the tokens to predict and corrupt them (in place); returns ``(inputs, labels)``."""
        import torch

        labels = inputs.clone()
        if special_tokens_mask is None:
            special_tokens_mask = torch.tensor(self._special_mask_rows(labels.tolist()), dtype=torch.bool)
        else:
            special_tokens_mask = special_tokens_mask.bool()
        # The draws below (three Bernoulli matrices then a matrix of random ids, each of the batch's shape)
        # are those of the reference, so a given torch seed picks the same tokens.
        probability = torch.full(labels.shape, self.mlm_probability)
        probability.masked_fill_(special_tokens_mask, value=0.0)
        chosen = torch.bernoulli(probability).bool()
        labels[~chosen] = -100
        to_mask = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & chosen
        inputs[to_mask] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        # Half of the remaining 20% become a random token; the other half stay as they were.
        to_random = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & chosen & ~to_mask
        random_ids = torch.randint(len(self.tokenizer), labels.shape, dtype=torch.long)
        inputs[to_random] = random_ids[to_random]
        return inputs, labels

    # -- NumPy --------------------------------------------------------------------------------------

    def numpy_call(self, examples):
        return self._batch(examples, "np", _numpy_collate_batch, self.numpy_mask_tokens, np.copy)

    def numpy_mask_tokens(self, inputs, special_tokens_mask=None):
        """``torch_mask_tokens`` with NumPy's global generator (drawn as the reference's NumPy path does)."""
        labels = np.copy(inputs)
        if special_tokens_mask is None:
            special_tokens_mask = np.array(self._special_mask_rows(labels.tolist()), dtype=bool)
        else:
            special_tokens_mask = special_tokens_mask.astype(bool)
        probability = np.full(labels.shape, self.mlm_probability)
        probability[special_tokens_mask] = 0
        chosen = np.random.binomial(1, probability, size=probability.shape).astype(bool)
        labels[~chosen] = -100
        to_mask = np.random.binomial(1, 0.8, size=labels.shape).astype(bool) & chosen
        inputs[to_mask] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        to_random = np.random.binomial(1, 0.5, size=labels.shape).astype(bool) & chosen & ~to_mask
        # Unlike the PyTorch path, only as many random ids as there are positions to fill are drawn.
        inputs[to_random] = np.random.randint(0, len(self.tokenizer), size=np.count_nonzero(to_random), dtype=np.int64)
        return inputs, labels


@dataclass
class DataCollatorForWholeWordMask(DataCollatorForLanguageModeling):
    """Masked language modeling that masks whole words: a WordPiece token starting with "##" is masked
    together with the tokens of its word.

    About ``mlm_probability`` of each example's tokens (at least one, counting whole words) are chosen,
    after shuffling the words with Python's ``random``; then 80% / 10% / 10% become the mask token / a
    random token / stay. Examples may carry ``chinese_ref`` (positions of tokens that continue a Chinese
    word). The batch has only ``input_ids`` and ``labels``: no attention mask.
    """

    def _mask_labels(self, examples) -> List[List[int]]:
        mask_labels = []
        for example in examples:
            ids = _to_list(example["input_ids"])
            tokens = [self.tokenizer.convert_ids_to_tokens(i) for i in ids]
            if "chinese_ref" in example:
                for position in set(_to_list(example["chinese_ref"])):
                    if 0 <= position < len(tokens):
                        tokens[position] = "##" + tokens[position]
            mask_labels.append(self._whole_word_mask(tokens))
        return mask_labels

    def _split(self, examples):
        _check_features(examples, "examples")
        if isinstance(examples[0], Mapping):
            return [e["input_ids"] for e in _check_same_keys(examples, "input_ids")], examples
        return list(examples), [{"input_ids": e} for e in examples]

    def _whole_word_batch(self, examples, collate_batch, mask_tokens):
        input_ids, examples = self._split(examples)
        batch_input = collate_batch(input_ids, self.tokenizer, self.pad_to_multiple_of)
        mask_labels = collate_batch(self._mask_labels(examples), self.tokenizer, self.pad_to_multiple_of)
        inputs, labels = mask_tokens(batch_input, mask_labels)
        return {"input_ids": inputs, "labels": labels}

    def torch_call(self, examples):
        return self._whole_word_batch(examples, _torch_collate_batch, self.torch_mask_tokens)

    def numpy_call(self, examples):
        return self._whole_word_batch(examples, _numpy_collate_batch, self.numpy_mask_tokens)

    def _whole_word_mask(self, input_tokens: List[str], max_predictions: int = 512) -> List[int]:
        """1 at the positions of the words chosen for prediction, 0 elsewhere."""
        if not type(self.tokenizer).__name__.startswith(("Electra", "Bert")):
            warnings.warn(
                f"{type(self).__name__} is meant for WordPiece tokenizers ('##' continuation tokens), such as "
                f"ElectraTokenizer; with {type(self.tokenizer).__name__} every token counts as a word",
                stacklevel=3,
            )
        words: List[List[int]] = []
        for i, token in enumerate(input_tokens):
            if token in ("[CLS]", "[SEP]"):
                continue
            if words and token.startswith("##"):
                words[-1].append(i)
            else:
                words.append([i])
        random.shuffle(words)
        budget = min(max_predictions, max(1, int(round(len(input_tokens) * self.mlm_probability))))
        chosen: List[int] = []
        # Take whole words in the shuffled order while they fit in the budget; a word that would overflow
        # it is skipped, and a later, shorter one may still fit.
        for word in words:
            if len(chosen) >= budget:
                break
            if len(chosen) + len(word) > budget:
                continue
            chosen.extend(word)
        chosen_set = set(chosen)
        return [1 if i in chosen_set else 0 for i in range(len(input_tokens))]

    def torch_mask_tokens(self, inputs, mask_labels):
        """Corrupt the chosen positions of ``mask_labels`` (in place); returns ``(inputs, labels)``."""
        import torch

        labels = inputs.clone()
        chosen = mask_labels.clone()
        special = torch.tensor(self._special_mask_rows(labels.tolist()), dtype=torch.bool)
        chosen.masked_fill_(special, value=0)
        if _has_token(self.tokenizer, "pad_token"):
            chosen.masked_fill_(labels.eq(self.tokenizer.pad_token_id), value=0)
        chosen = chosen.bool()
        labels[~chosen] = -100
        # The same draws as DataCollatorForLanguageModeling after its first Bernoulli matrix.
        to_mask = torch.bernoulli(torch.full(labels.shape, 0.8)).bool() & chosen
        inputs[to_mask] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        to_random = torch.bernoulli(torch.full(labels.shape, 0.5)).bool() & chosen & ~to_mask
        random_ids = torch.randint(len(self.tokenizer), labels.shape, dtype=torch.long)
        inputs[to_random] = random_ids[to_random]
        return inputs, labels

    def numpy_mask_tokens(self, inputs, mask_labels):
        labels = np.copy(inputs)
        chosen = mask_labels.astype(bool)
        chosen[np.array(self._special_mask_rows(labels.tolist()), dtype=bool)] = False
        if _has_token(self.tokenizer, "pad_token"):
            chosen[labels == self.tokenizer.pad_token_id] = False
        labels[~chosen] = -100
        to_mask = np.random.binomial(1, 0.8, size=labels.shape).astype(bool) & chosen
        inputs[to_mask] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        to_random = np.random.binomial(1, 0.5, size=labels.shape).astype(bool) & chosen & ~to_mask
        random_ids = np.random.randint(low=0, high=len(self.tokenizer), size=labels.shape, dtype=np.int64)
        inputs[to_random] = random_ids[to_random]
        return inputs, labels


def _check_same_keys(examples, key: str):
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or key not in example:
            raise FeatureKeyError(f"examples[{i}] has no {key!r}; every example needs {key!r} (the token ids)")
    return examples


__all__ = [
    "DataCollator",
    "DataCollatorForLanguageModeling",
    "DataCollatorForSeq2Seq",
    "DataCollatorForTokenClassification",
    "DataCollatorForWholeWordMask",
    "DataCollatorMixin",
    "DataCollatorWithPadding",
    "DefaultDataCollator",
    "FeatureKeyError",
    "InputDataClass",
    "default_data_collator",
]
