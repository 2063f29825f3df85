"""Policies and token-level reward models (standard HF directories)."""
from .loading import (DEFAULT_MODEL, default_model_dir, load_policy, load_token_rm, load_tokenizer,
                      load_weights, read_safetensors, resolve_model_path, save_model, torch_dtype)
from .credit import LogProbCredit, token_scores
from .lora import add_lora, load_lora_adapter
from .tiny import TinyModelConfig, build_tiny_policy, train_tokenizer

__all__ = ["DEFAULT_MODEL", "LogProbCredit", "TinyModelConfig", "add_lora", "build_tiny_policy", "load_lora_adapter", "default_model_dir", "load_policy",
           "load_token_rm", "load_tokenizer", "load_weights", "read_safetensors", "resolve_model_path", "save_model", "token_scores",
           "torch_dtype", "train_tokenizer"]
