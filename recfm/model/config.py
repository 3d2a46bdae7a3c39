"""The model's one typed config (saved as ``config.json`` in a run directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from recfm.config import from_dict


@dataclass
class ObjectiveConfig:
    """What the model learns to predict besides the next item, and how targets are weighted.

    Example (TOML, inside ``[model.objectives]``)::

        facet_heads = { action = 0.2, genres = 0.2, gap_bucket = 0.1 }
        multi_token_k = 3            # also predict items t+2 and t+3 from position t
        window_events = 10           # every item of the next 10 events is a target …
        window_days = 7.0            # … if it happens within 7 days
        action_weights = { complete = 1.0, play = 0.5, trailer = 0.1, impression = 0.0 }
    """

    next_item_weight: float = 1.0
    facet_heads: dict[str, float] = field(default_factory=dict)
    """Next-event facet → loss weight. Facets: action, value_bucket, device, gap_bucket
    (time until the next event), entity_type and genres (of the next item), or any other
    categorical event facet of the dataset."""
    hierarchical: bool = False
    """Predict the next item's entity type first; item logits add log p(type | history)."""
    multi_token_k: int = 1
    """Predict the next k items from each position (1: next item only)."""
    multi_token_weight: float = 0.5
    window_events: int = 0
    """Future-window objective (PinnerFormer's dense all-action loss): every item within the
    next ``window_events`` tokens (and ``window_days``, when > 0) is a target. 0: off."""
    window_days: float = 0.0
    window_weight: float = 0.5
    action_weights: dict[str, float] = field(default_factory=dict)
    """Weight of a target by its action (missing actions weigh 1.0; 0.0 masks them)."""
    value_weighting: Literal["none", "linear", "log"] = "none"
    """Also weight a target by its value (rating or watch time), normalised to mean ~1."""
    generative_weight: float = 1.0
    """Loss weight of the generative head (next item's semantic-id codes), when the model
    has one (``ModelConfig.semantic_sizes``)."""


@dataclass
class ModelConfig:
    """Shape and objective of the foundation model. Vocabulary sizes (``n_items``,
    ``facet_sizes``, ``n_attributes``) come from the dataset (``build_config``)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int | None = None
    """Feed-forward width; None means 4 × d_model."""
    dropout: float = 0.2
    emb_dropout: float | None = None
    """Dropout on the summed event embedding; None means ``dropout``."""
    fast_dropout: bool = True
    """CPU dropout masks from 16-bit lanes of 64-bit draws (:mod:`recfm.model.dropout`);
    False: torch's per-element Bernoulli dropout, the reference."""
    max_len: int = 50
    positions: Literal["learned", "rope", "none"] = "learned"
    attention: Literal["sdpa", "reference"] = "sdpa"
    attention_pattern: Literal["dense", "local"] = "dense"
    """``local``: each position sees the last ``local_window`` positions and the first
    ``n_global`` ones (:mod:`recfm.model.sparse`); memory linear in sequence length."""
    local_window: int = 128
    n_global: int = 0
    inference_len: int | None = None
    """History tokens read at inference (None: ``max_len``). Longer than ``max_len`` needs
    ``positions`` rope or none (learned positions end at max_len); with local attention
    the memory stays linear. Otherwise a long history is cut to its last window."""
    tied_embeddings: bool = True
    """Score items against the input item table (True) or a separate output table."""
    use_facets: bool = True
    use_time: bool = True
    use_item_attributes: bool = True
    """Add a bag of the item's genres / attributes / entity type to its id embedding."""
    use_content: bool = True
    """Combine each item's id embedding with its projected content vector when the dataset
    has content (``recfm content embed``); a dataset without it trains id-only."""
    content_combine: Literal["gate", "sum"] = "sum"
    """``sum``: id + W·content. ``gate``: g ⊙ id + (1 − g) ⊙ W·content, g = σ(U[id; W·content])
    per dimension. Sum ranks never-trained items better (figures: benchmarks/RESULTS.md)."""
    content_hidden: int = 0
    """Width of a hidden layer in the content projection (0: one linear map)."""
    id_dropout: float = 0.25
    """With content, zero this fraction of id embeddings each step (DropoutNet, Volkovs et
    al. 2017), so the model ranks from content alone, as it must a never-trained item."""

    loss: Literal["full", "sampled"] = "full"
    n_negatives: int = 256
    negatives: Literal["uniform", "in_batch", "mixed", "popularity"] = "uniform"
    """Where sampled-softmax negatives come from: uniform over the catalog, other targets
    of the batch, half each, or drawn from the training item frequency (``log_q``)."""
    logq_correction: bool = True
    label_smoothing: float = 0.0
    temperature: float = 1.0
    loss_chunk: int = 1 << 21
    """Full softmax: logits (tokens × items) held at a time, with their gradient
    (:class:`recfm.model.heads.ChunkedSoftmaxLoss`); 0: the plain loss, holding all."""

    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    user_repr: Literal["last", "mean_last", "attention", "last_attention", "layer_mean",
                       "layer_mix"] = "last"
    """How position states become the user vector the model is trained and scored with."""
    repr_n_last: int = 4
    """Positions averaged by ``mean_last``."""

    n_items: int = 0
    facet_sizes: dict[str, int] = field(default_factory=dict)
    n_attributes: int = 0
    content_dim: int = 0
    """Width of the item content vectors (0: no content); filled from the dataset."""
    semantic_sizes: list[int] = field(default_factory=list)
    """Codes per level of the items' semantic ids (:mod:`recfm.adapt.semantic_ids`): the
    model then has a generative head predicting the next item's codes
    (:class:`recfm.model.semantic.GenerativeHead`) and an ``item_codes`` buffer; empty: none."""
    content_embedder: str = ""
    """Spec of the embedder the content vectors came from (``recfm.content.embedders.make_embedder``)."""

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<model config>") -> "ModelConfig":
        return from_dict(cls, data, source)
