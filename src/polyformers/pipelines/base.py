"""What every pipeline shares: loading a model for a task, batching by length, running one framework.

A pipeline is three steps, as in the reference: ``preprocess`` turns one input into one or more model
rows (a long question-answering context becomes several windows), ``_forward`` runs a padded batch of rows
and returns plain numpy arrays, ``postprocess`` turns the rows of one input back into the documented output.
Because ``_forward`` hands back numpy, the post-processing is written once for PyTorch, Keras and Flax.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

FRAMEWORKS = ("pt", "tf", "flax")
# Class-name prefix of each framework's model classes.
_PREFIX = {"pt": "", "tf": "TF", "flax": "Flax"}


class PipelineError(ValueError):
    """A user-facing problem with a pipeline's model, arguments or inputs (no traceback is needed)."""


def framework_of(model) -> str:
    name = type(model).__name__
    if name.startswith("TF"):
        return "tf"
    if name.startswith("Flax"):
        return "flax"
    return "pt"


def load_model(auto_name: str, model, *, framework: str, task: str, families: Optional[Sequence[str]] = None,
               **model_kwargs):
    """The model class that ``auto_name`` (e.g. ``AutoModelForMaskedLM``) picks for the checkpoint, loaded.

    ``families`` narrows the model types a task accepts beyond what the auto class registers (ELECTRA's
    replaced-token detection has no meaning for a masked-LM family's pre-training head).
    """
    import polyformers
    from polyformers.auto import _MODELS, AutoConfig

    if framework not in FRAMEWORKS:
        raise PipelineError(f"framework must be one of {list(FRAMEWORKS)}, got {framework!r}")
    path = os.fspath(model)
    config = model_kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    model_type = config.model_type
    table = _MODELS.get(auto_name, {})
    allowed = sorted(families if families is not None else table)
    if model_type not in table or model_type not in allowed:
        raise PipelineError(
            f"task {task!r} needs a model of family {' / '.join(allowed)}; {path!r} is a {model_type!r} checkpoint"
        )
    class_name = _PREFIX[framework] + table[model_type]
    # Looked up in the export table first so that asking costs no framework import.
    cls = getattr(polyformers, class_name) if class_name in dir(polyformers) else None
    if cls is None:
        raise PipelineError(
            f"framework {framework!r}: polyformers has no {class_name} for the {model_type!r} family "
            f"(task {task!r}); use framework='pt'"
        )
    return cls.from_pretrained(path, config=config, **model_kwargs)


def load_tokenizer(tokenizer, model, path: Optional[str]):
    from polyformers.auto import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    source = tokenizer if tokenizer is not None else path
    if source is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not source:
        raise PipelineError("tokenizer: a model object was given without a tokenizer; pass tokenizer=...")
    return AutoTokenizer.from_pretrained(os.fspath(source))


class Progress:
    """A tqdm bar on stderr when stderr is a terminal and not ``quiet``; otherwise it only counts."""

    def __init__(self, total: int, desc: str, quiet: bool = False, unit: str = "it"):
        self._bar = None
        if not quiet and total > 1 and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Pipeline:
    """Base of the task pipelines. Call it on one input (one result) or a list (a list of results).

    Arguments as in the reference: ``model`` (a loaded model, a folder or a Hub id), ``tokenizer``,
    ``framework`` ("pt", "tf" or "flax"), ``device`` (PyTorch: a torch device, its name or index; -1 is the
    CPU), ``batch_size`` (rows per forward pass; rows are sorted by length first so batches pad little).
    Other keyword arguments set the defaults of the call-time parameters.
    """

    task: str = ""
    auto_model: str = "AutoModel"
    families: Optional[Sequence[str]] = None

    def __init__(self, model, tokenizer=None, *, framework: Optional[str] = None, device=None,
                 batch_size: int = 1, task: Optional[str] = None, model_kwargs: Optional[dict] = None,
                 progress: bool = False, **kwargs):
        if task:
            self.task = task
        check_batch_size(batch_size)
        path = None
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            model = load_model(self.auto_model, path, framework=framework or "pt", task=self.task,
                               families=self.families, **(model_kwargs or {}))
        elif framework is not None and framework != framework_of(model):
            raise PipelineError(f"framework={framework!r} but the model is a {type(model).__name__}")
        self.model = model
        self.framework = framework_of(model)
        self.tokenizer = load_tokenizer(tokenizer, model, path)
        self.batch_size = batch_size
        self.progress = progress
        self.device = self._place(device)
        if self.framework == "pt":
            self.model.eval()
        self._defaults = self._sanitize_parameters(**kwargs)

    # ------------------------------------------------------------------ framework plumbing

    def _place(self, device):
        if self.framework != "pt":
            return device
        import torch

        if device is None or device == -1:
            device = torch.device("cpu") if device == -1 else next(self.model.parameters()).device
        elif isinstance(device, int):
            device = torch.device("cuda", device)
        else:
            device = torch.device(device)
        self.model.to(device)
        return device

    def model_call(self, **arrays: np.ndarray) -> Dict[str, np.ndarray]:
        """Run the model on numpy inputs; every tensor field of the output comes back as float32 numpy."""
        if self.framework == "pt":
            import torch

            inputs = {k: torch.as_tensor(v).to(self.device) for k, v in arrays.items()}
            with torch.inference_mode():
                out = self.model(**inputs, return_dict=True)
            return {k: v.float().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
        out = self.model(**arrays, return_dict=True)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items() if hasattr(v, "shape")}

    # ------------------------------------------------------------------ the three steps

    def _sanitize_parameters(self, **kwargs) -> Tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        return {}, {}, {}

    def preprocess(self, inputs, **params) -> List[Dict[str, Any]]:
        """One input -> its model rows: dicts of unpadded int lists plus any extra fields postprocess needs."""
        raise NotImplementedError

    def _forward(self, batch: Dict[str, np.ndarray], **params) -> Dict[str, np.ndarray]:
        return self.model_call(**batch)

    def postprocess(self, rows: List[Dict[str, Any]], **params):
        raise NotImplementedError

    # ------------------------------------------------------------------ calling

    model_input_names = ("input_ids", "attention_mask", "token_type_ids")

    def _input_names(self) -> List[str]:
        names = list(self.model_input_names)
        accepted = getattr(self.tokenizer, "model_input_names", None)
        if accepted:
            names = [n for n in names if n in accepted]
        return names

    def _pad(self, rows: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
        width = max(len(r["input_ids"]) for r in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        pad_id = self.tokenizer.pad_token_id
        batch = {}
        for name in self._input_names():
            if name not in rows[0]:
                continue
            fill = (pad_id if pad_id is not None else 0) if name == "input_ids" else 0
            arr = np.full((len(rows), width), fill, dtype=np.int64)
            for i, r in enumerate(rows):
                seq = r[name]
                if left:
                    arr[i, width - len(seq):] = seq
                else:
                    arr[i, : len(seq)] = seq
            batch[name] = arr
        return batch

    def _unpad(self, out: Dict[str, np.ndarray], i: int, length: int, width: int) -> Dict[str, np.ndarray]:
        """Row ``i`` of a batch output, with the sequence axis cut back to the row's own tokens."""
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        row = {}
        for k, v in out.items():
            r = v[i]
            if r.ndim >= 1 and r.shape[0] == width:
                r = r[width - length:] if left else r[:length]
            row[k] = r
        return row

    def run_rows(self, rows: List[Dict[str, Any]], desc: Optional[str] = None, unit: str = "text",
                 **forward_params) -> List[dict]:
        """Forward every row, longest first in batches of ``batch_size``; each row gains its outputs."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
        with Progress(len(rows), desc or self.task, quiet=not self.progress, unit=unit) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = [rows[i] for i in order[start: start + self.batch_size]]
                batch = self._pad(chunk)
                width = batch["input_ids"].shape[1]
                out = self._forward(batch, **forward_params)
                for j, r in enumerate(chunk):
                    r["outputs"] = self._unpad(out, j, len(r["input_ids"]), width)
                bar.update(len(chunk))
        return rows

    def __call__(self, inputs, *args, **kwargs):
        # As in the reference, the batch size may be set for one call too; num_workers (DataLoader workers
        # there) has no meaning here and is accepted for compatibility.
        batch_size = kwargs.pop("batch_size", None)
        kwargs.pop("num_workers", None)
        if batch_size is None:
            return self._call(inputs, *args, **kwargs)
        check_batch_size(batch_size)
        kept, self.batch_size = self.batch_size, batch_size
        try:
            return self._call(inputs, *args, **kwargs)
        finally:
            self.batch_size = kept

    def _call(self, inputs, *args, **kwargs):
        pre, fwd, post = self._sanitize_parameters(**kwargs)
        pre = {**self._defaults[0], **pre}
        fwd = {**self._defaults[1], **fwd}
        post = {**self._defaults[2], **post}
        single, items = self._split_inputs(inputs, *args)
        if not items:
            raise PipelineError(f"{self.task}: inputs is an empty list; give at least one text")
        per_item = [self.preprocess(item, **pre) for item in items]
        flat = [dict(row, _item=k) for k, rows in enumerate(per_item) for row in rows]
        self.run_rows(flat, **fwd)
        grouped: List[List[dict]] = [[] for _ in items]
        for row in flat:
            grouped[row.pop("_item")].append(row)
        results = [self.postprocess(rows, **post) for rows in grouped]
        return results[0] if single else results

    def _split_inputs(self, inputs, *args) -> Tuple[bool, list]:
        if args:
            raise TypeError(f"{type(self).__name__} takes one positional argument (the inputs)")
        if isinstance(inputs, (list, tuple)):
            for x in inputs:
                check_text(x, "inputs")
            return False, list(inputs)
        check_text(inputs, "inputs")
        return True, [inputs]

    def save_pretrained(self, save_directory) -> None:
        self.model.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)


def given(**settings) -> dict:
    """The settings that were given (not None), for the pre/forward/post dicts of ``_sanitize_parameters``."""
    return {name: value for name, value in settings.items() if value is not None}


def check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise PipelineError(f"batch_size must be a positive int, got {batch_size!r}")


def check_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise PipelineError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if not value.strip():
        raise PipelineError(f"{name} is empty; give some text")
    return value


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
