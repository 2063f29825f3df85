"""Rollout engines behind one interface (`sample(prompts, k, cfg, seed)`)."""
from .engine import (ENGINES, HFGenerateEngine, HFSampler, Rollout, RolloutEngine, SamplingConfig,
                     filter_logits, make_engine)

__all__ = ["ENGINES", "HFGenerateEngine", "HFSampler", "Rollout", "RolloutEngine", "SamplingConfig",
           "filter_logits", "make_engine"]
