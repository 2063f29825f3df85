"""Policies and token-level reward models (standard HF directories)."""
from .loading import (DEFAULT_MODEL, checkpoint_activations, set_attention, decoder_layers, default_model_dir, forward_kwargs, load_backbone, load_policy, load_tokenizer,
                      load_weights, read_safetensors, read_weights, resolve_model_path, save_model, shard_lm, torch_dtype, unwrapped)
from .credit import CREDIT_MODELS, CreditModel, LogProbCredit, TokenHeadCredit, load_credit_model, load_token_head
from .lora import add_lora, load_lora_adapter
from .tiny import TinyModelConfig, build_tiny_policy, train_tokenizer

__all__ = ["CREDIT_MODELS", "CreditModel", "DEFAULT_MODEL", "LogProbCredit", "TokenHeadCredit", "decoder_layers",
           "load_credit_model", "TinyModelConfig", "add_lora", "build_tiny_policy", "load_lora_adapter", "default_model_dir", "forward_kwargs", "load_backbone", "load_policy",
           "load_token_head", "load_tokenizer", "load_weights", "read_safetensors", "read_weights", "resolve_model_path", "save_model", "shard_lm",
           "torch_dtype", "train_tokenizer", "unwrapped"]
