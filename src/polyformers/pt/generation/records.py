"""What ``generate`` returns: the output records (and the reference's older names for them) and the
:class:`_Recorder` that collects scores, attentions and hidden states step by step."""

from __future__ import annotations

from ... import outputs as _outputs
from ...generation_config import GenerationConfig

GenerateDecoderOnlyOutput = _outputs.GenerateDecoderOnlyOutput
GenerateEncoderDecoderOutput = _outputs.GenerateEncoderDecoderOutput
GenerateBeamDecoderOnlyOutput = _outputs.GenerateBeamDecoderOnlyOutput
GenerateBeamEncoderDecoderOutput = _outputs.GenerateBeamEncoderDecoderOutput
# The reference's older names for the same records, one per strategy.
GreedySearchDecoderOnlyOutput = SampleDecoderOnlyOutput = GenerateDecoderOnlyOutput
GreedySearchEncoderDecoderOutput = SampleEncoderDecoderOutput = GenerateEncoderDecoderOutput
BeamSearchDecoderOnlyOutput = BeamSampleDecoderOnlyOutput = GenerateBeamDecoderOnlyOutput
BeamSearchEncoderDecoderOutput = BeamSampleEncoderDecoderOutput = GenerateBeamEncoderDecoderOutput


class _Recorder:
    """Collects what ``return_dict_in_generate`` asks for, step by step."""

    def __init__(self, config: GenerationConfig, model_kwargs: dict, is_encoder_decoder: bool):
        wanted = config.return_dict_in_generate
        self.is_encoder_decoder = is_encoder_decoder
        self.scores = () if wanted and config.output_scores else None
        self.attentions = () if wanted and config.output_attentions else None
        self.cross_attentions = () if wanted and config.output_attentions and is_encoder_decoder else None
        self.hidden_states = () if wanted and config.output_hidden_states else None
        self.encoder = {}
        if wanted and is_encoder_decoder:
            encoder_outputs = model_kwargs["encoder_outputs"]
            if config.output_attentions:
                self.encoder["encoder_attentions"] = encoder_outputs.get("attentions")
            if config.output_hidden_states:
                self.encoder["encoder_hidden_states"] = encoder_outputs.get("hidden_states")

    def step(self, scores, outputs) -> None:
        if self.scores is not None:
            self.scores += (scores,)
        prefix = "decoder_" if self.is_encoder_decoder else ""
        if self.attentions is not None:
            self.attentions += (outputs[prefix + "attentions"],)
        if self.cross_attentions is not None:
            self.cross_attentions += (outputs["cross_attentions"],)
        if self.hidden_states is not None:
            self.hidden_states += (outputs[prefix + "hidden_states"],)

    def fields(self, past_key_values) -> dict:
        if self.is_encoder_decoder:
            return dict(scores=self.scores, decoder_attentions=self.attentions, cross_attentions=self.cross_attentions,
                        decoder_hidden_states=self.hidden_states, past_key_values=past_key_values, **self.encoder)
        return dict(scores=self.scores, attentions=self.attentions, hidden_states=self.hidden_states,
                    past_key_values=past_key_values)
