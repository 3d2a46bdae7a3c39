"""Unified contextual ranking (UniCoRn-style): one second-pass ranker for search and
recommendation, personalized by the foundation model. See :mod:`recfm.rank.model`."""
