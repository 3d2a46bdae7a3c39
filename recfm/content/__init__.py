"""Semantic content of items: text → embeddings (offline MiniLM), cached; attribute bags;
your own vectors. See :mod:`recfm.content.embedders` and :mod:`recfm.content.store`."""

from recfm.content.embedders import (
    AttributeBagEmbedder,
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    VectorFileEmbedder,
    make_embedder,
)
from recfm.content.store import embed_dataset, load_dataset_content

__all__ = ["AttributeBagEmbedder", "Embedder", "HashingEmbedder", "MiniLMEmbedder",
           "VectorFileEmbedder", "embed_dataset", "load_dataset_content", "make_embedder"]
