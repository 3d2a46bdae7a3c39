"""Streaming full-ranking evaluation and baselines."""

from recfm.evaluate.metrics import KS, RankingAccumulator, rank_summary, ranks_of  # noqa: F401
from recfm.evaluate.ranks import scored_batches, target_log_probs, target_ranks  # noqa: F401
