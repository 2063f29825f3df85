"""The pieces of an RL run above the data layer: its config, the question sampler, skill-based
enhancement, the step's batch, and the run directory's plumbing."""
