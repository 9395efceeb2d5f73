"""``text-generation`` (decoder-only models) and ``summarization`` (encoder-decoder models).

Both hand the decoding to the model's ``generate`` (``pt/generation/``); the pipeline only encodes the
prompt, passes the generation arguments through and decodes. Prompts run one at a time: a batch of
prompts would need left padding, which changes nothing in the result but the speed on one CPU.
"""

from __future__ import annotations

import logging
from typing import Dict

from .base import Pipeline, PipelineError, given

logger = logging.getLogger("polyformers")

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
        pre = given(prefix=prefix, add_special_tokens=add_special_tokens)
        post = given(return_full_text=return_full_text, return_tensors=return_tensors,
                     clean_up_tokenization_spaces=clean_up_tokenization_spaces)
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
    """Summaries from an encoder-decoder model (Pegasus): a list of ``{"summary_text": ...}`` per text
    (``num_return_sequences`` of them), flattened to one dict per text when a list of texts each gets
    one summary. ``return_tensors=True`` gives ``summary_token_ids`` instead; ``truncation`` cuts texts
    longer than the tokenizer's ``model_max_length``; ``clean_up_tokenization_spaces`` (default False)
    applies to the decoded text; ``stop_sequence`` ends generation at its first token. Other arguments
    (``max_length``, ``min_length``, ``num_beams``, ``no_repeat_ngram_size``, ...) go to ``generate``,
    and the model's generation config supplies the rest.

    Texts run ``batch_size`` at a time in the order given, right-padded, as in the reference; a batch's
    token ids carry trailing padding up to its longest summary.
    """

    task = "summarization"
    auto_model = "AutoModelForSeq2SeqLM"

    def _sanitize_parameters(self, return_tensors=None, return_text=None, return_type=None,
                             clean_up_tokenization_spaces=None, truncation=None, stop_sequence=None,
                             **generate_kwargs):
        # return_text is accepted and, as in the reference, changes nothing: text is the default.
        pre, post = given(truncation=truncation), {}
        if return_type is not None:
            name = str(getattr(return_type, "name", return_type)).lower()
            if name not in ("text", "tensors"):
                raise PipelineError(f"return_type must be 'text' or 'tensors', got {return_type!r}")
            post["return_tensors"] = name == "tensors"
        elif return_tensors is not None:
            post["return_tensors"] = bool(return_tensors)
        if clean_up_tokenization_spaces is not None:
            post["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if stop_sequence is not None:
            ids = self.tokenizer.encode(stop_sequence, add_special_tokens=False)
            if not ids:
                raise PipelineError(f"stop_sequence: {stop_sequence!r} encodes to no token")
            if len(ids) > 1:
                logger.warning("stop_sequence %r is %d tokens; generation stops on its first token only",
                               stop_sequence, len(ids))
            generate_kwargs["eos_token_id"] = ids[0]
        return pre, generate_kwargs, post

    def __call__(self, inputs, *args, **kwargs):
        result = super().__call__(inputs, *args, **kwargs)
        if isinstance(inputs, (list, tuple)) and all(len(r) == 1 for r in result):
            return [r[0] for r in result]
        return result

    def preprocess(self, text, truncation=False):
        prefix = getattr(self.model.config, "prefix", None) or ""
        # verbose=False: a text over the limit gets the error below, not the tokenizer's warning too.
        enc = self.tokenizer(prefix + text, truncation=truncation, verbose=False)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(enc["input_ids"]) > limit:
            raise PipelineError(f"inputs: the text is {len(enc['input_ids'])} tokens, longer than the model's "
                                f"limit of {limit}; shorten it or pass truncation=True")
        return [{"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}]

    def run_rows(self, rows, desc=None, **generate_kwargs):
        import torch

        from .base import Progress

        config = self.model.generation_config
        with Progress(len(rows), desc or self.task, quiet=not self.progress, unit="text") as bar:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start: start + self.batch_size]
                batch = {k: torch.as_tensor(v, device=self.device)
                         for k, v in self._pad(chunk).items() if k in ("input_ids", "attention_mask")}
                self._check_lengths(batch["input_ids"].shape[1],
                                    generate_kwargs.get("min_length", getattr(config, "min_length", 0)),
                                    generate_kwargs.get("max_length", getattr(config, "max_length", 20)))
                with torch.inference_mode():
                    sequences = self.model.generate(**batch, **generate_kwargs).cpu().numpy()
                per_row = sequences.reshape(len(chunk), -1, sequences.shape[-1])
                for row, seqs in zip(chunk, per_row):
                    row["outputs"] = {"sequences": seqs}
                bar.update(len(chunk))
        return rows

    @staticmethod
    def _check_lengths(input_length: int, min_length: int, max_length: int) -> None:
        # Not errors: a summary at least as long as its text is allowed, only rarely wanted.
        if max_length is not None and min_length is not None and max_length < min_length:
            logger.warning("min_length=%s is larger than max_length=%s", min_length, max_length)
        if max_length is not None and input_length < max_length:
            logger.warning("max_length is %s but the input is only %s tokens; summaries are usually shorter than "
                           "their text: consider max_length=%s", max_length, input_length, input_length // 2)

    def postprocess(self, rows, return_tensors=False, clean_up_tokenization_spaces=False):
        out = []
        for seq in rows[0]["outputs"]["sequences"]:
            if return_tensors:
                out.append({"summary_token_ids": seq.tolist()})
            else:
                out.append({"summary_text": self.tokenizer.decode(
                    seq.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces)})
        return out
