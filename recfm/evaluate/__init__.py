"""Streaming full-ranking evaluation and baselines."""
