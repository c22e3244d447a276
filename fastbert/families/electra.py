"""ELECTRA on fastbert's encoder core: BERT's layers; embeddings of ``embedding_size`` projected to
``hidden_size`` by ``embeddings_project`` when the two differ; no pooler."""

from __future__ import annotations

from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.electra import modeling_electra as hf

from fastbert.families import bert_shaped_family
from fastbert.modeling import BertModelCore

TOKEN_LABELS = {"token_labels": "labels"}
HEADS = {
    "ElectraForSequenceClassification": {"reads_first_token": True},  # its classification head reads [CLS]
    "ElectraForTokenClassification": TOKEN_LABELS,
    "ElectraForQuestionAnswering": {"span_labels": ("start_positions", "end_positions")},
    # The discriminator's loss reads the real tokens only (it masks with attention_mask).
    "ElectraForPreTraining": None,
    "ElectraForMaskedLM": TOKEN_LABELS,
    "ElectraForMultipleChoice": {"summary": "sequence_summary"},
}


class ElectraModelCore(BertModelCore):
    """BERT's model core with ELECTRA's embedding projection and outputs (no pooler)."""

    def _embed(self, input_ids, token_type_ids, position_ids, inputs_embeds) -> Tensor:
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        project = self._modules.get("embeddings_project")
        return project(hidden) if project is not None else hidden

    def _output(self, sequence_output, pooled_output, hidden_states, attentions):
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=sequence_output,
                                                         hidden_states=hidden_states, attentions=attentions)


bert_shaped_family(hf, "Electra", globals(), HEADS, model_core=ElectraModelCore)
