"""The model's one typed config (saved as ``config.json`` in a run directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from recfm.config import from_dict


@dataclass
class ModelConfig:
    """Shape and objective of the foundation model.

    Vocabulary sizes (``n_items``, ``facet_sizes``, ``n_attributes``) are filled from the
    prepared dataset by :func:`recfm.model.foundation.build_config`; the rest are choices.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int | None = None
    """Feed-forward width; None means 4 × d_model."""
    dropout: float = 0.2
    emb_dropout: float | None = None
    """Dropout on the summed event embedding; None means ``dropout``."""
    max_len: int = 50
    positions: Literal["learned", "rope", "none"] = "learned"
    attention: Literal["sdpa", "reference"] = "sdpa"
    tied_embeddings: bool = True
    """Score items against the input item table (True) or a separate output table."""
    use_facets: bool = True
    use_time: bool = True
    use_item_attributes: bool = True
    """Add a bag of the item's genres / attributes / entity type to its id embedding."""

    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = 256
    negatives: Literal["uniform", "in_batch", "mixed"] = "uniform"
    logq_correction: bool = True
    label_smoothing: float = 0.0
    temperature: float = 1.0

    n_items: int = 0
    facet_sizes: dict[str, int] = field(default_factory=dict)
    n_attributes: int = 0

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<model config>") -> "ModelConfig":
        return from_dict(cls, data, source)
