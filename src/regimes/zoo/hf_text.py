"""Language models through Hugging Face ``transformers`` configs, built from scratch
with ReLU feed-forwards: XLNet and RoBERTa (sequence classification), T5
(sequence to sequence) and GPT-2 (causal language model).

Defaults are the standard base sizes; keyword arguments shrink them. Only the
feed-forward ReLU sites are tracked (each entry's ``sites``). Token ids follow
the BPE tokenizers of :mod:`regimes.data.text`: ``<pad>`` = 0, ``<s>`` = 1,
``</s>`` = 2. Every model returns a plain logits tensor.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from regimes.zoo.activations import check_activation, use_torch_activations
from regimes.zoo.hf_vision import import_transformers
from regimes.zoo.registry import register_model

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

XLNET_SITES = ("*.ff.activation_function",)
ROBERTA_SITES = ("*.intermediate.intermediate_act_fn",)
T5_SITES = ("*.DenseReluDense.act",)
GPT2_SITES = ("*.mlp.act",)
# GPT-2's own GELU is the tanh approximation ("gelu_new"): activation="gelu" is that one.
_GPT2_ACTIVATION = {"relu": "relu", "gelu": "gelu_new", "silu": "silu"}


class SequenceClassifier(nn.Module):
    """``logits [B, num_classes] = model(input_ids [B, T], attention_mask [B, T])``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


class CausalLM(nn.Module):
    """``logits [B, T, vocab] = model(input_ids [B, T])``: position t predicts token t + 1."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class Seq2SeqLM(nn.Module):
    """``logits [B, T_out, vocab] = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.hf(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            use_cache=False,
        ).logits


@register_model(
    "xlnet",
    description="XLNet (HF XLNetConfig; default base) with ReLU feed-forwards, sequence classifier",
    sites=XLNET_SITES,
)
def xlnet(
    *,
    num_classes: int = 2,
    vocab_size: int = 32000,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    dropout: float = 0.1,
    activation: str = "relu",
) -> SequenceClassifier:
    transformers = import_transformers()
    config = transformers.XLNetConfig(
        vocab_size=vocab_size,
        d_model=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        d_inner=intermediate_size,
        ff_activation=check_activation(activation),
        dropout=dropout,
        num_labels=num_classes,
        mem_len=None,
        use_mems_eval=False,
        # Right padding (the BPE tokenizers' layout): summarise the leading <s>, not the last position.
        summary_type="first",
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    model = use_torch_activations(transformers.XLNetForSequenceClassification(config))
    # mask_emb serves only permutation language modelling (target_mapping), the segment
    # embeddings only inputs with token_type_ids: for single-segment classification they
    # never move, so they are frozen rather than counted as trainable weights.
    model.transformer.mask_emb.requires_grad_(False)
    for layer in model.transformer.layer:
        layer.rel_attn.seg_embed.requires_grad_(False)
        layer.rel_attn.r_s_bias.requires_grad_(False)
    return SequenceClassifier(model)


@register_model(
    "roberta",
    description="RoBERTa (HF RobertaConfig; default base) with ReLU feed-forwards, sequence classifier",
    sites=ROBERTA_SITES,
)
def roberta(
    *,
    num_classes: int = 4,
    vocab_size: int = 50265,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    max_length: int = 512,
    dropout: float = 0.1,
    activation: str = "relu",
) -> SequenceClassifier:
    transformers = import_transformers()
    config = transformers.RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_act=check_activation(activation),
        hidden_dropout_prob=dropout,
        # Positions start after the padding id.
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_length + PAD_ID + 1,
        type_vocab_size=1,
        num_labels=num_classes,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return SequenceClassifier(use_torch_activations(transformers.RobertaForSequenceClassification(config)))


@register_model(
    "t5", description="T5 (HF T5Config; default base) with ReLU feed-forwards, encoder-decoder LM", sites=T5_SITES
)
def t5(
    *,
    vocab_size: int = 32128,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_decoder_layers: int | None = None,
    num_heads: int = 12,
    head_size: int = 64,
    intermediate_size: int = 3072,
    dropout: float = 0.1,
    activation: str = "relu",
) -> Seq2SeqLM:
    transformers = import_transformers()
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=hidden_size,
        d_kv=head_size,
        d_ff=intermediate_size,
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers or num_layers,
        num_heads=num_heads,
        feed_forward_proj=check_activation(activation),
        dropout_rate=dropout,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return Seq2SeqLM(use_torch_activations(transformers.T5ForConditionalGeneration(config)))


@register_model(
    "gpt2", description="GPT-2 (HF GPT2Config; default 124M) with ReLU feed-forwards, causal LM", sites=GPT2_SITES
)
def gpt2(
    *,
    vocab_size: int = 50257,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int | None = None,  # None: 4 x hidden_size
    max_length: int = 1024,
    dropout: float = 0.1,
    activation: str = "relu",
) -> CausalLM:
    transformers = import_transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_inner=intermediate_size,
        n_positions=max_length,
        activation_function=_GPT2_ACTIVATION[check_activation(activation)],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return CausalLM(use_torch_activations(transformers.GPT2LMHeadModel(config)))
