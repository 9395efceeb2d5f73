"""``text-generation`` (decoder-only models) and ``summarization`` (encoder-decoder models).

Both hand the decoding to the model's ``generate`` (``pt/generation.py``); the pipeline only encodes the
prompt, passes the generation arguments through and decodes. Prompts run one at a time: a batch of
prompts would need left padding, which changes nothing in the result but the speed on one CPU.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .base import Pipeline, PipelineError



class _GenerationPipeline(Pipeline):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.framework != "pt":
            raise PipelineError(f"task {self.task!r}: generation runs in PyTorch only here; use framework='pt'")

    def _generate(self, row: Dict, **generate_kwargs):
        import torch

        inputs = {k: torch.tensor([row[k]], device=self.device) for k in ("input_ids", "attention_mask") if k in row}
        with torch.inference_mode():
            return self.model.generate(**inputs, **generate_kwargs).cpu().numpy()

    def run_rows(self, rows, desc=None, **generate_kwargs):
        from .base import Progress

        with Progress(len(rows), desc or self.task, quiet=not self.progress, unit="text") as bar:
            for row in rows:
                row["outputs"] = {"sequences": self._generate(row, **generate_kwargs)}
                bar.update()
        return rows


class TextGenerationPipeline(_GenerationPipeline):
    """Continues each prompt: a list of ``{"generated_text": ...}`` per prompt (``num_return_sequences``
    of them). ``return_full_text=False`` keeps only the new text; ``return_tensors=True`` gives
    ``generated_token_ids`` instead; the other arguments (``max_new_tokens``, ``do_sample``, ``num_beams``,
    ...) go to ``generate``. ``prefix`` is prepended to every prompt."""

    task = "text-generation"
    auto_model = "AutoModelForCausalLM"

    def _sanitize_parameters(self, return_full_text=None, return_tensors=None, return_text=None,
                             clean_up_tokenization_spaces=None, prefix=None, add_special_tokens=None,
                             **generate_kwargs):
        pre, post = {}, {}
        if prefix is not None:
            pre["prefix"] = prefix
        if add_special_tokens is not None:
            pre["add_special_tokens"] = add_special_tokens
        if return_full_text is not None:
            post["return_full_text"] = return_full_text
        if return_tensors is not None:
            post["return_tensors"] = return_tensors
        if clean_up_tokenization_spaces is not None:
            post["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if return_text is False and return_tensors is None:
            post["return_tensors"] = True
        return pre, generate_kwargs, post

    def preprocess(self, prompt, prefix="", add_special_tokens=False):
        enc = self.tokenizer(prefix + prompt, add_special_tokens=add_special_tokens)
        return [{"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]),
                 "prompt": prompt, "prefix_length": len(prefix)}]

    def postprocess(self, rows, return_full_text=True, return_tensors=False, clean_up_tokenization_spaces=True):
        row = rows[0]
        out = []
        decode = dict(skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces)
        prompt_length = len(self.tokenizer.decode(row["input_ids"], **decode))
        for seq in row["outputs"]["sequences"]:
            if return_tensors:
                out.append({"generated_token_ids": seq.tolist()})
                continue
            # Decoding the whole sequence and cutting the prompt's decoded length keeps word joins right.
            new_text = self.tokenizer.decode(seq.tolist(), **decode)[prompt_length:]
            out.append({"generated_text": row["prompt"] + new_text if return_full_text else new_text})
        return out


class SummarizationPipeline(_GenerationPipeline):
    """Summaries from an encoder-decoder model: a list of ``{"summary_text": ...}`` per text. Generation
    arguments (``max_length``, ``min_length``, ``num_beams``, ...) go to ``generate``; the model's
    generation config supplies the rest."""

    task = "summarization"
    auto_model = "AutoModelForSeq2SeqLM"

    def _sanitize_parameters(self, return_tensors=None, return_text=None, clean_up_tokenization_spaces=None,
                             truncation=None, **generate_kwargs):
        pre, post = {}, {}
        if truncation is not None:
            pre["truncation"] = truncation
        if return_tensors is not None:
            post["return_tensors"] = return_tensors
        if clean_up_tokenization_spaces is not None:
            post["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return pre, generate_kwargs, post

    def preprocess(self, text, truncation=False):
        enc = self.tokenizer(text, truncation=truncation)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(enc["input_ids"]) > limit and not truncation:
            raise PipelineError(f"inputs: the text is {len(enc['input_ids'])} tokens, longer than the model's "
                                f"limit of {limit}; shorten it or pass truncation=True")
        return [{"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}]

    def postprocess(self, rows, return_tensors=False, clean_up_tokenization_spaces=False):
        out = []
        for seq in rows[0]["outputs"]["sequences"]:
            if return_tensors:
                out.append({"summary_token_ids": np.asarray(seq).tolist()})
            else:
                out.append({"summary_text": self.tokenizer.decode(
                    seq.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces)})
        return out
