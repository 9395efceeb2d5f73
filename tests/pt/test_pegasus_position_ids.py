"""PegasusDecoder's ``position_ids`` (beyond the reference): rows that cached different lengths decode in
one batch, each as it decodes alone, when the masks hide each row's unused cache slots."""

from __future__ import annotations

import pytest
import torch

from polyformers import PegasusConfig, PegasusForConditionalGeneration


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = PegasusConfig(vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
                           max_position_embeddings=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = PegasusForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_rows_with_their_own_positions_decode_as_alone(model):
    decoder = model.get_decoder()
    torch.manual_seed(1)
    sources = [torch.randint(2, 60, (1, 5)), torch.randint(2, 60, (1, 7))]
    targets = [torch.randint(2, 60, (1, 3)), torch.randint(2, 60, (1, 6))]  # cached lengths differ
    new = torch.tensor([[7], [9]])
    alone, caches, states = [], [], []
    with torch.no_grad():
        for source, target, token in zip(sources, targets, new):
            encoded = model.get_encoder()(input_ids=source).last_hidden_state
            prefix = decoder(input_ids=target, encoder_hidden_states=encoded, use_cache=True)
            step = decoder(input_ids=token[None], encoder_hidden_states=encoded, past_key_values=prefix.past_key_values,
                           use_cache=True)
            alone.append(step.last_hidden_state[0, -1])
            caches.append(prefix.past_key_values)
            states.append(encoded)
        # One batch: each row's cache padded to the longest, its tail and the other's extra source masked.
        past, source_len = 6, 7

        def pad(t, length):
            return torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[2]))

        cache = tuple(tuple(torch.cat([pad(caches[r][layer][k], past if k < 2 else source_len) for r in (0, 1)])
                            for k in range(4)) for layer in range(2))
        self_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1]])
        cross_mask = torch.tensor([[1] * 5 + [0] * 2, [1] * 7])
        encoded = torch.cat([pad(states[0][None], source_len)[0], states[1]])
        together = decoder(input_ids=new, attention_mask=self_mask, encoder_hidden_states=encoded,
                           encoder_attention_mask=cross_mask, past_key_values=cache, use_cache=True,
                           position_ids=torch.tensor([[3], [6]]))
        default = decoder(input_ids=new, attention_mask=self_mask, encoder_hidden_states=encoded,
                          encoder_attention_mask=cross_mask, past_key_values=cache, use_cache=True)
    for row in (0, 1):
        assert torch.allclose(together.last_hidden_state[row, -1], alone[row], atol=1e-5)
    # Without them every row is at position 6: row 0 (cached 3) differs, which is why the argument exists.
    assert not torch.allclose(default.last_hidden_state[0, -1], alone[0], atol=1e-3)
    assert torch.allclose(default.last_hidden_state[1, -1], alone[1], atol=1e-5)


def test_position_ids_errors_name_the_argument(model):
    decoder = model.get_decoder()
    ids = torch.tensor([[3, 4]])
    with pytest.raises(ValueError, match=r"position_ids must have the inputs' shape \(batch, sequence\) = \(1, 2\), got \(1, 3\)"):
        decoder(input_ids=ids, position_ids=torch.tensor([[0, 1, 2]]))
    with pytest.raises(IndexError, match=r"position_ids holds id 32, outside \[0, 32\)"):
        decoder(input_ids=ids, position_ids=torch.tensor([[0, 32]]))
