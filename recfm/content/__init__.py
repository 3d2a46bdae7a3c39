"""Semantic content of items: text → embeddings (offline MiniLM), cached; attribute bags;
your own vectors. See :mod:`recfm.content.embedders` and :mod:`recfm.content.store`."""
