"""The pipeline: a trained network with the vocabularies and prompts that connect it to raw
inputs and item ids (:class:`Recommender`). Consumers (adapt, consume, rank, store, serve)
use a run through it."""

from recfm.pipeline.recommender import Recommender

__all__ = ["Recommender"]
