"""The 4.37 reference's answers for the pipeline, CLI and legacy-checkpoint tests, from one subprocess.

:func:`world` builds the tiny checkpoints once per test session, runs every reference pipeline case on
them (PyTorch summarization; TF pipelines on the encoders) and has the reference write a
``tf_model.h5`` and a ``flax_model.msgpack``. Starting the reference's TensorFlow, JAX and torch once
instead of once per test module keeps the suite fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from . import checkpoints as ck

ORACLE = Path(__file__).with_name("_legacy_oracle.py")

SENTENCES = [
    "Hugging Face Inc. is a company based in New York City.",
    "My name is Wolfgang and I live in Berlin, unaffordably.",
    "short",
]
ARTICLE = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
           "structure in Paris. ")
SUMMARY_TEXTS = [ARTICLE, "Short text here.", "Hello   world , it 's fine ."]
LONG_ARTICLE = ARTICLE * 8  # over the tiny Pegasus' 64 positions

# (name, inputs, kwargs): every case runs on a single text and on the list, unless inputs is given.
SUMMARY_CASES = [
    ("default", None, {}),
    ("max_length", None, {"max_length": 12}),
    ("min_length", None, {"max_length": 20, "min_length": 15}),
    ("beams", None, {"num_beams": 3, "max_length": 12}),
    ("no_repeat", None, {"no_repeat_ngram_size": 1, "max_length": 16}),
    ("tensors", None, {"return_tensors": True, "return_text": False, "max_length": 10}),
    ("clean_up", None, {"clean_up_tokenization_spaces": True, "max_length": 16, "no_repeat_ngram_size": 1}),
    ("return_sequences", None, {"num_beams": 2, "num_return_sequences": 2, "max_length": 10}),
    ("batched", SUMMARY_TEXTS, {"max_length": 12, "batch_size": 2, "return_tensors": True}),
    ("batched_beams", SUMMARY_TEXTS, {"max_length": 10, "batch_size": 2, "num_beams": 2,
                                       "num_return_sequences": 2, "return_tensors": True}),
    ("truncation", LONG_ARTICLE, {"truncation": True, "max_length": 10}),
]

QA_CONTEXT = ("Duncan is the King of Scotland. Macbeth, a general, meets three witches on a heath near Forres "
              "after a battle. They tell him that he will be king, and his friend Banquo that his sons will be.")
# (id, task, folder name, [(args, kwargs)]): the TF pipelines checked against the reference's.
TF_CASES = [
    ("features", "feature-extraction", "electra_mlm", [([SENTENCES[0]], {}), ([SENTENCES], {})]),
    ("features_mpnet", "feature-extraction", "mpnet", [([SENTENCES], {})]),
    ("fill_mask", "fill-mask", "electra_mlm", [(["The capital of France is [MASK]."], {"top_k": 3}),
                                                (["[MASK] is a [MASK] city."], {}),
                                                (["Paris is [MASK]."], {"targets": ["paris", "london", "zzyzx"]})]),
    ("classification", "text-classification", "electra_cls",
     [([SENTENCES], {}), ([SENTENCES[0]], {"top_k": None}), ([{"text": "A question?", "text_pair": "An answer."}], {})]),
    ("ner", "token-classification", "electra_ner", [([SENTENCES], {"aggregation_strategy": "none"}),
                                                    ([SENTENCES], {"aggregation_strategy": "simple"}),
                                                    ([SENTENCES], {"aggregation_strategy": "max"})]),
    ("ner_bpe", "ner", "roberta_ner", [([SENTENCES[1]], {"aggregation_strategy": "none"}),
                                       ([SENTENCES[1]], {"aggregation_strategy": "first"})]),
    ("qa", "question-answering", "electra_qa", [([], {"question": "Who is the king?", "context": QA_CONTEXT}),
                                                ([], {"question": "Where?", "context": QA_CONTEXT, "top_k": 3,
                                                      "max_seq_len": 32, "doc_stride": 16})]),
]
PROBE = {"input_ids": [[5, 6, 7, 8, 9, 10, 11, 1]]}
PEGASUS_PROBE = {"input_ids": [[5, 6, 7, 8, 9, 10, 11, 1]], "decoder_input_ids": [[0, 5, 6, 7]]}


def summary_cases():
    """[(name, inputs, kwargs)] with each single-text case also run on the list of texts."""
    cases = []
    for name, inputs, kwargs in SUMMARY_CASES:
        if inputs is None:
            cases += [(name, SUMMARY_TEXTS[0], kwargs), (name + "_list", SUMMARY_TEXTS, kwargs)]
        else:
            cases.append((name, inputs, kwargs))
    return cases


PEGASUS = dict(vocab_size=1103, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, max_position_embeddings=64)


def build_pegasus(folder: Path, assets: Path) -> Path:
    """A reference Pegasus with every parameter perturbed (the sinusoidal position table stays: it is a
    constant in every implementation), a logits bias that ends some summaries early and never emits
    padding, and the real SentencePiece test model as tokenizer."""
    import torch
    import transformers

    from polyformers import PegasusTokenizer

    torch.manual_seed(0)
    model = transformers.PegasusForConditionalGeneration(transformers.PegasusConfig(**PEGASUS)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" not in name:
                param.add_(torch.randn_like(param) * 0.5)
        bias = model.final_logits_bias
        bias.add_(torch.randn_like(bias) * 0.5)
        bias[0, 0] -= 6.0  # padding
        bias[0, 1] += 7.0  # end of sequence
    model.save_pretrained(folder)
    PegasusTokenizer(str(assets / "spm" / "test_model.model"), model_max_length=64).save_pretrained(folder)
    return folder


def mpnet_files(assets: Path, folder: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(assets / "mpnet" / name, folder / name)


MPNET = dict(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=130)


def _build_folders(root: Path, assets: Path) -> dict:
    words = lambda f: ck.wordpiece_files(assets, f)
    labels = dict(enumerate(ck.NER_LABELS))
    tags = dict(id2label=labels, label2id={v: k for k, v in labels.items()})
    return {
        "electra_mlm": ck.build(root / "electra_mlm", "electra", "ElectraForMaskedLM", ck.ELECTRA, words),
        "electra_cls": ck.build(root / "electra_cls", "electra", "ElectraForSequenceClassification", ck.ELECTRA,
                                words, num_labels=3, seed=1),
        "electra_ner": ck.build(root / "electra_ner", "electra", "ElectraForTokenClassification", ck.ELECTRA,
                                words, seed=3, **tags),
        "electra_qa": ck.build(root / "electra_qa", "electra", "ElectraForQuestionAnswering", ck.ELECTRA, words,
                               seed=7),
        "roberta_ner": ck.build(root / "roberta_ner", "roberta", "RobertaForTokenClassification", ck.ROBERTA,
                                lambda f: ck.bpe_files(assets, f, "RobertaTokenizer"), seed=5, **tags),
        "roberta_mlm": ck.build(root / "roberta_mlm", "roberta", "RobertaForMaskedLM", ck.ROBERTA,
                                lambda f: ck.bpe_files(assets, f, "RobertaTokenizer"), seed=9),
        "mpnet": ck.build(root / "mpnet", "mpnet", "MPNetModel", MPNET, lambda f: mpnet_files(assets, f), seed=2),
        "pegasus": build_pegasus(root / "pegasus", assets),
    }


def run_reference(python: Path, job: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), str(ORACLE)], input=json.dumps(job), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, f"reference run failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


_WORLD: dict = {}


def world(tmp_path_factory, assets: Path, legacy_python: Path) -> dict:
    """{"folders", "summaries", "tf", "h5", "msgpack", "h5_out", "msgpack_out"}, built once per session."""
    if _WORLD:
        return _WORLD
    root = tmp_path_factory.mktemp("legacy_world")
    folders = _build_folders(root, assets)
    pipelines = [{"task": "summarization", "folder": str(folders["pegasus"]), "framework": "pt",
                  "cases": [{"args": [inputs], "kwargs": kwargs} for _, inputs, kwargs in summary_cases()]}]
    for _, task, name, cases in TF_CASES:
        pipelines.append({"task": task, "folder": str(folders[name]), "framework": "tf",
                          "cases": [{"args": a, "kwargs": k} for a, k in cases]})
    h5, msgpack = root / "h5_roberta_mlm", root / "msgpack_pegasus"
    saves = [{"cls": "TFRobertaForMaskedLM", "folder": str(folders["roberta_mlm"]), "dest": str(h5), "probe": PROBE},
             {"cls": "FlaxPegasusForConditionalGeneration", "folder": str(folders["pegasus"]), "dest": str(msgpack),
              "probe": PEGASUS_PROBE}]
    answers = run_reference(legacy_python, {"pipelines": pipelines, "saves": saves})
    # The legacy folders carry the tokenizer files, as a downloaded checkpoint does.
    for legacy, source in ((h5, folders["roberta_mlm"]), (msgpack, folders["pegasus"])):
        for f in source.iterdir():
            if f.suffix != ".safetensors" and not (legacy / f.name).exists():
                shutil.copy(f, legacy / f.name)
    _WORLD.update(
        folders=folders,
        summaries=answers["pipelines"][0],
        tf={case[0]: results for case, results in zip(TF_CASES, answers["pipelines"][1:])},
        h5=h5, msgpack=msgpack, h5_out=answers["saves"][0], msgpack_out=answers["saves"][1],
    )
    return _WORLD
