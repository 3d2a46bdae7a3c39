"""Streaming full-ranking evaluation and baselines."""

from recfm.evaluate.metrics import KS, RankingAccumulator, ranks_of  # noqa: F401
