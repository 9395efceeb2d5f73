"""ELECTRA (PyTorch) against the reference's 4.37 release on perturbed random weights, both directions."""

import torch

from tests.parity.harness import (
    Call, Case, FromCall, cross_attention_inputs, encoder_case_args, masked_lm_cases, run_parity, second_segment,
    sequence_classification_cases, token_labels,
)

TINY = dict(
    vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
)
B, S = 3, 9


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0  # a padded row
    mask[2, 3:] = 0
    return g, ids, mask, second_segment(B, S)


def _cases():
    g, ids, mask, types = _inputs()
    base, every, head_mask, mlm_labels, embeds, positions = encoder_case_args(
        TINY, g, ids, mask, TINY["embedding_size"], token_type_ids=types)
    rtd_labels = torch.randint(0, 2, (B, S), generator=g)
    seq = lambda n: torch.randint(0, n, (B,), generator=g)  # noqa: E731
    cases = [
        Case("model_projected", "ElectraModel", "electra", TINY, [
            Call(base), Call(every), Call(dict(every, head_mask=head_mask)),
            Call(dict(inputs_embeds=embeds, attention_mask=mask)), Call(dict(base, position_ids=positions)),
            Call(dict(base, return_dict=False)), Call(dict(input_ids=ids)),
        ]),
        Case("model_relative_key", "ElectraModel", "electra",
             dict(TINY, embedding_size=32, position_embedding_type="relative_key"), [Call(every)]),
        Case("model_relative_key_query", "ElectraModel", "electra",
             dict(TINY, position_embedding_type="relative_key_query"), [Call(every), Call(dict(base, head_mask=head_mask[0]))]),
        Case("pretraining", "ElectraForPreTraining", "electra", TINY, [
            Call(dict(every, labels=rtd_labels)), Call(dict(input_ids=ids, labels=rtd_labels)),
            Call(dict(base, labels=rtd_labels, return_dict=False)),
        ]),
        *masked_lm_cases("ElectraForMaskedLM", "electra", TINY, [Call(dict(every, labels=mlm_labels))], base,
                         mlm_labels),
        *sequence_classification_cases("ElectraForSequenceClassification", "electra", TINY, g,
                                       [Call(dict(every, labels=seq(3)))], base),
        Case("token_cls", "ElectraForTokenClassification", "electra", dict(TINY, num_labels=5),
             [Call(dict(every, labels=token_labels(g, mask)))]),
        Case("qa", "ElectraForQuestionAnswering", "electra", TINY, [
            Call(dict(every, start_positions=seq(S), end_positions=torch.tensor([S - 1, 40, 2]))),
        ]),
        Case("multiple_choice", "ElectraForMultipleChoice", "electra", TINY, [
            Call(dict(input_ids=torch.stack([ids[:2], ids[1:]]), attention_mask=torch.stack([mask[:2], mask[1:]]),
                      labels=torch.tensor([0, 1]), output_hidden_states=True)),
        ]),
    ]
    return cases


def _decoder_cases():
    g, ids, mask, _ = _inputs(1)
    config = dict(TINY, is_decoder=True, add_cross_attention=True)
    encoder_states, encoder_mask = cross_attention_inputs(g, TINY, B)
    step = torch.randint(1, TINY["vocab_size"], (B, 1), generator=g)
    return [
        Case("causal_cross_cache", "ElectraForCausalLM", "electra", config, [
            Call(dict(input_ids=ids, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                      use_cache=True, output_attentions=True, output_hidden_states=True)),
            Call(dict(input_ids=step, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask,
                      past_key_values=FromCall(0, "past_key_values"), use_cache=True, output_attentions=True)),
            Call(dict(input_ids=ids, attention_mask=mask, encoder_hidden_states=encoder_states, labels=ids)),
        ]),
        Case("causal_plain", "ElectraForCausalLM", "electra", dict(TINY, is_decoder=True), [
            Call(dict(input_ids=ids, attention_mask=mask, labels=torch.where(mask.bool(), ids, -100))),
            Call(dict(input_ids=ids[:, :4], use_cache=True)),
            Call(dict(input_ids=ids[:, 4:5], past_key_values=FromCall(1, "past_key_values"))),
        ]),
        Case("decoder_relative_cache", "ElectraModel", "electra",
             dict(TINY, is_decoder=True, position_embedding_type="relative_key_query"), [
            Call(dict(input_ids=ids[:, :5], use_cache=True, output_attentions=True)),
            Call(dict(input_ids=ids[:, 5:6], past_key_values=FromCall(0, "past_key_values"), output_attentions=True)),
        ]),
    ]


def test_electra_heads_match_reference(tmp_path, legacy_python):
    run_parity(_cases(), tmp_path, legacy_python)


def test_electra_decoder_and_cache_match_reference(tmp_path, legacy_python):
    run_parity(_decoder_cases(), tmp_path, legacy_python)
