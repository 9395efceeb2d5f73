"""RoBERTa (PyTorch) against the reference's 4.37 release on perturbed random weights, both directions.

Inputs hold real padding tokens (right- and left-padded rows, a pad id inside a row), because RoBERTa
derives its positions from them."""

import torch

from tests.parity.harness import (
    Call, Case, FromCall, cross_attention_inputs, encoder_case_args, masked_lm_cases, run_parity, second_segment,
    sequence_classification_cases, token_labels,
)

PAD = 1
TINY = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=40, type_vocab_size=2, pad_token_id=PAD, bos_token_id=0, eos_token_id=2,
)
B, S = 4, 9


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY["vocab_size"], (B, S), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, :3] = 0  # left padding: its real tokens still start at position PAD + 1
    ids[mask == 0] = PAD
    ids[3, 4] = PAD  # a pad id the mask keeps: it takes position PAD and later tokens shift down
    return g, ids, mask, second_segment(B, S)


def _cases():
    g, ids, mask, types = _inputs()
    base, every, head_mask, mlm_labels, embeds, positions = encoder_case_args(
        TINY, g, ids, mask, TINY["hidden_size"], token_type_ids=types)
    seq = lambda n: torch.randint(0, n, (B,), generator=g)  # noqa: E731
    choices = dict(input_ids=torch.stack([ids[:2], ids[2:]]), attention_mask=torch.stack([mask[:2], mask[2:]]))
    return [
        Case("model", "RobertaModel", "roberta", TINY, [
            Call(base), Call(every), Call(dict(every, head_mask=head_mask)),
            Call(dict(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)),
            Call(dict(base, position_ids=positions)), Call(dict(every, return_dict=False)), Call(dict(input_ids=ids)),
        ]),
        Case("model_one_type", "RobertaModel", "roberta", dict(TINY, type_vocab_size=1),
             [Call(dict(input_ids=ids, attention_mask=mask))]),
        Case("model_relative_key", "RobertaModel", "roberta", dict(TINY, position_embedding_type="relative_key"),
             [Call(every)]),
        Case("model_relative_key_query", "RobertaModel", "roberta",
             dict(TINY, position_embedding_type="relative_key_query"),
             [Call(every), Call(dict(base, head_mask=head_mask[0]))]),
        *masked_lm_cases("RobertaForMaskedLM", "roberta", TINY, [
            Call(dict(every, labels=mlm_labels)), Call(dict(base, labels=mlm_labels, return_dict=False)),
            Call(dict(inputs_embeds=embeds, attention_mask=mask)),
        ], base, mlm_labels),
        *sequence_classification_cases(
            "RobertaForSequenceClassification", "roberta", TINY, g,
            [Call(dict(every, labels=seq(3))), Call(dict(base, labels=seq(3), return_dict=False))], base,
            classifier_dropout=0.3),
        Case("token_cls", "RobertaForTokenClassification", "roberta", dict(TINY, num_labels=5), [
            Call(dict(every, labels=token_labels(g, mask))),
            Call(dict(inputs_embeds=embeds, head_mask=head_mask)),
        ]),
        Case("qa", "RobertaForQuestionAnswering", "roberta", TINY, [
            Call(dict(every, start_positions=seq(S), end_positions=torch.tensor([S - 1, 40, 2, 0]))),
            Call(dict(base, return_dict=False)),
        ]),
        Case("multiple_choice", "RobertaForMultipleChoice", "roberta", TINY, [
            Call(dict(choices, labels=torch.tensor([0, 1]), output_hidden_states=True, output_attentions=True)),
            Call(dict(choices, token_type_ids=torch.stack([types[:2], types[2:]]), return_dict=False)),
            Call(dict(inputs_embeds=torch.stack([embeds[:2], embeds[2:]]), labels=torch.tensor([1, 1]))),
        ]),
    ]


def _decoder_cases():
    g, ids, mask, _ = _inputs(1)
    cross = dict(TINY, is_decoder=True, add_cross_attention=True)
    encoder_states, encoder_mask = cross_attention_inputs(g, TINY, B)
    step = torch.randint(3, TINY["vocab_size"], (B, 1), generator=g)
    step[1] = PAD  # a padding token in the step: position PAD, whatever the cache holds
    encoder = dict(encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask)
    embeds = torch.randn(B, 3, TINY["hidden_size"], generator=g)
    return [
        # config.use_cache is True, so a RoBERTa decoder returns its cache without being asked.
        Case("causal_cross_cache", "RobertaForCausalLM", "roberta", cross, [
            Call(dict(encoder, input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)),
            Call(dict(encoder, input_ids=step, attention_mask=torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1),
                      past_key_values=FromCall(0, "past_key_values"), output_attentions=True)),
            Call(dict(encoder, input_ids=step, past_key_values=FromCall(1, "past_key_values"),
                      output_hidden_states=True)),
            Call(dict(input_ids=ids, attention_mask=mask, encoder_hidden_states=encoder_states, labels=ids)),
            Call(dict(encoder, input_ids=ids, return_dict=False)),
        ]),
        Case("causal_plain", "RobertaForCausalLM", "roberta", dict(TINY, is_decoder=True), [
            Call(dict(input_ids=ids, attention_mask=mask, labels=torch.where(mask.bool(), ids, -100))),
            Call(dict(input_ids=ids[:, :4], use_cache=False)),
            Call(dict(input_ids=ids[:, :4])),
            Call(dict(input_ids=ids[:, 4:6], past_key_values=FromCall(2, "past_key_values"), use_cache=True)),
            # inputs_embeds positions restart after the padding index even with a cache, as in the reference
            Call(dict(inputs_embeds=embeds, past_key_values=FromCall(2, "past_key_values"))),
        ]),
        Case("causal_no_cache_config", "RobertaForCausalLM", "roberta", dict(TINY, is_decoder=True, use_cache=False),
             [Call(dict(input_ids=ids)), Call(dict(input_ids=ids, use_cache=True, return_dict=False))]),
        Case("decoder_model_cross", "RobertaModel", "roberta", cross, [
            Call(dict(encoder, input_ids=ids[:, :5], output_attentions=True,
                      head_mask=torch.tensor([1.0, 0.0, 1.0, 0.5]))),
            Call(dict(encoder, input_ids=ids[:, 5:7], past_key_values=FromCall(0, "past_key_values"),
                      output_attentions=True, output_hidden_states=True, return_dict=False)),
        ]),
        Case("decoder_relative_cache", "RobertaModel", "roberta",
             dict(TINY, is_decoder=True, position_embedding_type="relative_key_query"), [
            Call(dict(input_ids=ids[:, :5], output_attentions=True)),
            Call(dict(input_ids=ids[:, 5:6], past_key_values=FromCall(0, "past_key_values"), output_attentions=True)),
        ]),
        Case("decoder_relative_key_cross", "RobertaForCausalLM", "roberta",
             dict(cross, position_embedding_type="relative_key"), [
            Call(dict(encoder, input_ids=ids[:, :5], output_attentions=True)),
            Call(dict(encoder, input_ids=ids[:, 5:6], past_key_values=FromCall(0, "past_key_values"))),
        ]),
    ]


def test_roberta_heads_match_reference(tmp_path, legacy_python):
    models = run_parity(_cases(), tmp_path, legacy_python)
    mlm = models["masked_lm"]
    assert mlm.lm_head.decoder.weight is mlm.roberta.embeddings.word_embeddings.weight
    assert mlm.lm_head.decoder.bias is mlm.lm_head.bias
    untied = models["masked_lm_untied"]
    assert untied.lm_head.decoder.weight is not untied.roberta.embeddings.word_embeddings.weight
    assert untied.lm_head.decoder.bias is untied.lm_head.bias


def test_roberta_decoder_and_cache_match_reference(tmp_path, legacy_python):
    run_parity(_decoder_cases(), tmp_path, legacy_python)
