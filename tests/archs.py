"""The architecture matrix: tiny random causal LMs of the architectures users bring, built from
`transformers` configs (no download) with the embedded tokenizer. 2 layers, hidden 64, 2 heads of
32 (vLLM's CPU attention needs a head dimension of at least 32). Used by
tests/test_architectures.py and, one process per model, tests/test_vllm.py.

    python tests/archs.py DIR [ARCH ...]   # writes DIR/ARCH, an HF directory, for each
"""
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from oreal.models import load_tokenizer, save_model

# model_type -> what its config needs beyond the common sizes
ARCHS = {
    "llama": {}, "qwen2": {}, "qwen3": {"head_dim": 32},
    "qwen3_moe": {"head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "mistral": {"head_dim": 32}, "gemma2": {"head_dim": 32}, "gemma3_text": {"head_dim": 32},
    "phi3": {}, "olmo2": {}, "granite": {}, "cohere": {}, "gpt_neox": {"num_key_value_heads": None},
}


def build(model_type: str, path: str | Path, seed: int = 0) -> str:
    """A tiny random `model_type` policy saved with the embedded tokenizer in `path`."""
    tok = load_tokenizer("default")
    kw = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              intermediate_size=128, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    kw.update(ARCHS[model_type])
    kw = {k: v for k, v in kw.items() if v is not None}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw))
    save_model(model, tok, path)
    return str(path)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for name in sys.argv[2:] or list(ARCHS):
        build(name, out / name)
