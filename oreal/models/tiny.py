"""From-scratch tiny policies: a byte-level BPE tokenizer trained on the curriculum, and a
small Qwen2 model. Both save as a standard Hugging Face directory."""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIALS = ["<pad>", "<eos>", "<unk>"]


def train_tokenizer(texts, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose pre-tokenizer keeps every digit a token of its own, so numbers are
    read and written digit by digit (a tiny model cannot learn multi-digit tokens' arithmetic)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


@dataclass
class TinyModelConfig:
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 256
    vocab_size: int = 320  # tokenizer vocabulary target
    # the embedding's and output layer's rows (None: the tokenizer's size); 151,936 is Qwen2.5's,
    # for memory and long-response checks at a real output layer (the ids past the tokenizer's
    # end decode to nothing, as they do for a real model's padded rows)
    output_rows: int | None = None


def build_tiny_policy(tokenizer, cfg: TinyModelConfig, seed: int = 0) -> Qwen2ForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=cfg.output_rows or len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)
