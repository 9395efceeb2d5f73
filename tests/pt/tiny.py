"""Tiny ELECTRA configurations and inputs shared by the tests in this folder."""

from __future__ import annotations

import torch

TINY = dict(
    vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
)
B, S = 2, 7


def electra_inputs(multiple_choice: bool = False, seed: int = 0) -> dict:
    """input_ids, attention_mask (one padded row) and token_type_ids; (B, 2, S) for multiple choice."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, 2, S) if multiple_choice else (B, S)
    ids = torch.randint(1, TINY["vocab_size"], shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[1, ..., 5:] = 0
    types = torch.zeros(shape, dtype=torch.long)
    types[..., 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def labels_for(kind: str, inputs: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = inputs["input_ids"]
    return {
        "binary": lambda: torch.randint(0, 2, ids.shape, generator=g),
        "ids": lambda: ids.clone(),
        "classes": lambda: torch.randint(0, 3, (ids.shape[0],), generator=g),
        "token_classes": lambda: torch.randint(0, 3, ids.shape, generator=g),
        "positions": lambda: torch.randint(0, ids.shape[-1], (ids.shape[0],), generator=g),
        "choice": lambda: torch.randint(0, ids.shape[1], (ids.shape[0],), generator=g),
    }[kind]()


HEADS = ("CausalLM", "MaskedLM", "SequenceClassification", "TokenClassification", "QuestionAnswering",
         "MultipleChoice")


def auto_classes(family: str, pretraining: str) -> dict:
    """What each auto model class picks for an encoder family (written out here, not read from the
    registry): ``AutoModelFor<head>`` -> ``<family>For<head>``, AutoModel -> ``<family>Model`` and
    AutoModelForPreTraining -> ``pretraining``."""
    return {"AutoModel": f"{family}Model", "AutoModelForPreTraining": pretraining,
            **{f"AutoModelFor{head}": f"{family}For{head}" for head in HEADS}}
