"""PyTorch reference modules for bridges transformers does not have (written from their papers)."""
