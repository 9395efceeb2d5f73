"""Config cases shared by the config parity tests, and the helpers that run a reference interpreter."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

from polyformers import configs

ORACLE_SCRIPT = Path(__file__).with_name("oracle_configs.py")
CURRENT_PYTHON = Path(sys.executable)  # the test venv, which has the current reference release

# name -> (class name, constructor kwargs): every default config plus non-default ones that exercise
# the common settings (labels, dtype, pruned heads, generation leftovers, unknown keys) and nested MPT.
CASES: dict[str, tuple[str, dict]] = {
    "electra_default": ("ElectraConfig", {}),
    "roberta_default": ("RobertaConfig", {}),
    "mpnet_default": ("MPNetConfig", {}),
    "gptj_default": ("GPTJConfig", {}),
    "mpt_default": ("MptConfig", {}),
    "mpt_attention_default": ("MptAttentionConfig", {}),
    "pegasus_default": ("PegasusConfig", {}),
    "electra_custom": (
        "ElectraConfig",
        {
            "embedding_size": 64,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_labels": 3,
            "problem_type": "multi_label_classification",
            "is_decoder": True,
            "add_cross_attention": True,
            "classifier_dropout": 0.2,
            "position_embedding_type": "relative_key",
            "summary_type": "mean",
            "summary_activation": "tanh",
        },
    ),
    "roberta_custom": (
        "RobertaConfig",
        {
            "vocab_size": 100,
            "type_vocab_size": 1,
            "max_position_embeddings": 514,
            "layer_norm_eps": 1e-5,
            "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
            "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
            "architectures": ["RobertaForSequenceClassification"],
            "torch_dtype": "float16",
            "finetuning_task": "sst2",
        },
    ),
    "mpnet_custom": (
        "MPNetConfig",
        {"relative_attention_num_buckets": 16, "hidden_act": "relu", "pruned_heads": {"1": [0, 2]}, "sep_token_id": 2},
    ),
    "gptj_custom": (
        "GPTJConfig",
        {
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "rotary_dim": 8,
            "n_inner": 128,
            "tie_word_embeddings": True,
            "pad_token_id": 50256,
            "torch_dtype": "bfloat16",
            "resid_pdrop": 0.1,
            "gradient_checkpointing": False,
            "custom_setting": {"a": [1, 2]},
        },
    ),
    "mpt_custom": (
        "MptConfig",
        {
            "d_model": 64,
            "n_heads": 4,
            "n_layers": 2,
            "max_seq_len": 128,
            "attn_config": {"alibi": False, "clip_qkv": 6.0, "softmax_scale": 0.5, "qk_ln": True},
            "logit_scale": "inv_sqrt_d_model",
            "no_bias": False,
            "use_cache": True,
            "learned_pos_emb": False,
        },
    ),
    "pegasus_custom": (
        "PegasusConfig",
        {
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 3,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 2,
            "scale_embedding": True,
            "max_length": 64,
            "num_beams": 4,
            "length_penalty": 0.8,
            "task_specific_params": {"summarization": {"length_penalty": 0.6, "max_length": 64}},
        },
    ),
}


def config_class(name: str) -> type:
    return getattr(configs, name)


def family_fields(cls: type) -> list[str]:
    """The documented arguments of a config class (its constructor parameters)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]


def run_oracle(python: Path, job: dict) -> dict:
    proc = subprocess.run(
        [str(python), str(ORACLE_SCRIPT)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed ({python}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
