"""Task pipelines: ``pipeline(task, model=..., tokenizer=..., framework=..., device=..., batch_size=...)``.

Each task names the auto class it loads the checkpoint with, so a checkpoint of a family that has no
class for the task is refused with an error naming both. Importing this package imports no framework.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

from .base import Pipeline, PipelineError

# task -> (module, class name); aliases map the reference's other names onto these.
_TASKS = {
    "feature-extraction": (".feature_extraction", "FeatureExtractionPipeline"),
    "sentence-similarity": (".feature_extraction", "SentenceSimilarityPipeline"),
    "fill-mask": (".fill_mask", "FillMaskPipeline"),
    "text-classification": (".text_classification", "TextClassificationPipeline"),
    "token-classification": (".token_classification", "TokenClassificationPipeline"),
    "question-answering": (".question_answering", "QuestionAnsweringPipeline"),
    "text-generation": (".text_generation", "TextGenerationPipeline"),
    "summarization": (".text_generation", "SummarizationPipeline"),
    "replaced-token-detection": (".replaced_token_detection", "ReplacedTokenDetectionPipeline"),
}
TASK_ALIASES = {
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "sentence-embeddings": "sentence-similarity",
}
SUPPORTED_TASKS = tuple(sorted(_TASKS))


def pipeline_class(task: str) -> type:
    name = TASK_ALIASES.get(task, task)
    if name not in _TASKS:
        raise KeyError(f"Unknown task {task!r}, available tasks are {sorted([*_TASKS, *TASK_ALIASES])}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module, __name__), cls)


def pipeline(task: Optional[str] = None, model=None, tokenizer=None, framework: Optional[str] = None,
             device=None, batch_size: int = 1, **kwargs) -> Pipeline:
    """Build the pipeline of ``task`` over ``model`` (a folder, a Hub id or a loaded model).

    ``sentence-similarity`` and ``feature-extraction`` default to the all-mpnet-base-v2 folder that the
    set-up fetched; other tasks need ``model``.
    """
    if task is None:
        raise PipelineError("task: give the task name, one of " + ", ".join(SUPPORTED_TASKS))
    cls = pipeline_class(task)
    if model is None:
        if cls.task in ("sentence-similarity", "feature-extraction"):
            model = default_embedding_model()
        else:
            raise PipelineError(f"model: task {task!r} has no default model here; give a folder or a Hub id")
    return cls(model, tokenizer, framework=framework, device=device, batch_size=batch_size,
               task=TASK_ALIASES.get(task, task), **kwargs)


DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-mpnet-base-v2"


def default_embedding_model() -> str:
    """The all-mpnet-base-v2 folder fetched by the set-up (``scripts/fetch_assets.py``), else its Hub id.

    Looked for in ``$POLYFORMERS_ASSETS/mpnet``, then ``.cache/assets/mpnet`` under the current folder and
    under the source checkout.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = []
    if os.environ.get("POLYFORMERS_ASSETS"):
        candidates.append(os.path.join(os.environ["POLYFORMERS_ASSETS"], "mpnet"))
    candidates.append(os.path.join(os.getcwd(), ".cache", "assets", "mpnet"))
    candidates.append(os.path.join(here, "..", "..", "..", ".cache", "assets", "mpnet"))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "config.json")):
            return os.path.normpath(c)
    return DEFAULT_EMBEDDING_MODEL


__all__ = ["pipeline", "Pipeline", "PipelineError", "SUPPORTED_TASKS", "TASK_ALIASES", "default_embedding_model"]
