"""Training recipes: plain PyTorch loops composed from oreal's building blocks."""
