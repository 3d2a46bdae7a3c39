"""The unified contextual ranker (UniCoRn-style): one DCN-v2 model for every task.

    score(request, item) = base(context, item, lexical) + knob[task] · personal(everything + FM)

``base`` has no foundation-model input and trains first; ``personal`` trains on top of the
frozen base; ``knob`` 0 gives exactly the base ranking. Towers and files: docs/guide/ranker.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from recfm import __version__
from recfm.config import from_dict
from recfm.errors import InputError
from recfm.io import atomic_write_bytes, atomic_write_json
from recfm.rank.data import TASKS, check_task, require_files
from recfm.rank.features import CROSS_FEATURES, FM_FEATURES, Batchable, Vocab

FORMAT = "recfm.ranker/1"


@dataclass
class RankerConfig:
    """Architecture and training of the ranker. Saved in the ranker's ``config.json``."""

    d_cat: int = 8
    """Width of each categorical embedding (task, country, language, device, …)."""
    d_text: int = 32
    """Query and content embeddings are projected to this width."""
    d_fm: int = 32
    """The foundation model's user and item vectors are projected to this width."""
    n_cross: int = 2
    """DCN-v2 cross layers."""
    cross_rank: int = 32
    """Low-rank cross weights W = U Vᵀ (0: full rank)."""
    d_deep: int = 128
    n_deep: int = 2
    """Residual MLP blocks of the deep tower."""
    dropout: float = 0.1
    fm_dropout: float = 0.3
    """Dropout on the foundation model's projected user and item vectors (they overfit first)."""
    per_task_heads: bool = True
    use_fm: bool = True
    """Train the personalization tower (foundation-model features) after the base."""
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 3
    """Stop a stage after this many epochs without a better validation NDCG@10."""
    seed: int = 0
    embedder: str = "minilm"
    """Text embedder of queries and items (:func:`recfm.content.make_embedder`)."""
    knob: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TASKS})
    """Default personalization per task (0: none, 1: as trained); ``recfm rank train`` tunes
    it on validation (:func:`recfm.rank.train.tune_knobs`)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<ranker config>") -> "RankerConfig":
        cfg = from_dict(cls, data, source)
        for t in cfg.knob:
            check_task(t, source)
        return cfg


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l (W low-rank when asked)."""

    def __init__(self, dim: int, n_layers: int, rank: int) -> None:
        super().__init__()
        if rank > 0:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dim, rank, bias=False),
                                                      nn.Linear(rank, dim))
                                        for _ in range(n_layers))
        else:
            self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0  # (..., D)
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Tower(nn.Module):
    """Cross network ∥ deep residual tower → per-task (or shared) linear head."""

    def __init__(self, d_in: int, cfg: RankerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.cross = CrossNetwork(d_in, cfg.n_cross, cfg.cross_rank)
        self.inp = nn.Linear(d_in, cfg.d_deep)
        self.deep = nn.Sequential(*(ResidualBlock(cfg.d_deep, cfg.dropout)
                                    for _ in range(cfg.n_deep)))
        d_out = d_in + cfg.d_deep
        n_heads = len(TASKS) if cfg.per_task_heads else 1
        self.head_w = nn.Parameter(torch.zeros(n_heads, d_out))
        self.head_b = nn.Parameter(torch.zeros(n_heads))
        nn.init.normal_(self.head_w, std=0.02)

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """x: (R, N, D), task: (R,) → (R, N) scores."""
        x0 = self.norm(x)
        z = torch.cat([self.cross(x0), self.deep(self.inp(x0))], dim=-1)  # (R, N, D + d_deep)
        h = task if self.head_w.size(0) > 1 else torch.zeros_like(task)
        return (z * self.head_w[h][:, None, :]).sum(-1) + self.head_b[h][:, None]


class UnifiedRanker(nn.Module):
    """The base tower plus the personalization tower (docs/guide/ranker.md). Item tables and
    feature normalisation are buffers: a saved ranker scores without any other file."""

    def __init__(self, cfg: RankerConfig, vocab: Vocab, d_text_in: int, d_fm_in: int,
                 n_items: int) -> None:
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        sizes = vocab.sizes()
        self.d_text_in, self.d_fm_in, self.n_items = d_text_in, d_fm_in, n_items
        n_item_dense = 4 + len(vocab.genres)
        self.ctx_emb = nn.ModuleList(nn.Embedding(sizes[k], cfg.d_cat)
                                     for k in ("task", "country", "language", "device"))
        self.item_emb = nn.ModuleList(nn.Embedding(sizes[k], cfg.d_cat)
                                      for k in ("entity_type", "item_language"))
        self.query_proj = nn.Linear(d_text_in, cfg.d_text)
        self.content_proj = nn.Linear(d_text_in, cfg.d_text)
        d_base = 6 * cfg.d_cat + 2 * cfg.d_text + n_item_dense + len(CROSS_FEATURES)
        self.base = Tower(d_base, cfg)
        self.personal = None
        if cfg.use_fm:
            self.fm_user_proj = nn.Linear(d_fm_in, cfg.d_fm)
            self.fm_item_proj = nn.Linear(d_fm_in, cfg.d_fm)
            self.fm_drop = nn.Dropout(cfg.fm_dropout)
            self.personal = Tower(d_base + len(FM_FEATURES) + 3 * cfg.d_fm, cfg)
        self.register_buffer("item_cat", torch.zeros(n_items, 2, dtype=torch.long))
        self.register_buffer("item_dense", torch.zeros(n_items, n_item_dense))
        self.register_buffer("item_content", torch.zeros(n_items, d_text_in))
        self.register_buffer("item_fm", torch.zeros(n_items, d_fm_in))
        for name, n in (("cross", len(CROSS_FEATURES)), ("fm", len(FM_FEATURES)),
                        ("dense", n_item_dense)):
            self.register_buffer(f"{name}_mean", torch.zeros(n))
            self.register_buffer(f"{name}_std", torch.ones(n))

    # ------------------------------------------------------------------ inputs

    def set_tables(self, cat, dense, content, fm) -> None:
        """Item tables from :func:`recfm.rank.features.item_tables` (NumPy arrays)."""
        for buf, x in ((self.item_cat, cat), (self.item_dense, dense),
                       (self.item_content, content), (self.item_fm, fm)):
            buf.copy_(torch.as_tensor(x))

    def fit_normalization(self, b: Batchable) -> None:
        """Mean and std of the dense features over the valid candidates of training data."""
        m = b.mask
        for name, x in (("cross", b.cross[m]), ("fm", b.fm_cross[m]),
                        ("dense", self.item_dense[b.cand[m]])):
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0).clamp_min(1e-3))

    def base_input(self, b: Batchable) -> torch.Tensor:
        """(R, N, D_base): context ⊕ item ⊕ lexical cross features."""
        R, N = b.cand.shape
        ctx = torch.cat([e(b.ctx[:, j]) for j, e in enumerate(self.ctx_emb)]
                        + [self.query_proj(b.query)], dim=-1)  # (R, 4·d_cat + d_text)
        cat = self.item_cat[b.cand]  # (R, N, 2)
        item = torch.cat([self.item_emb[0](cat[..., 0]), self.item_emb[1](cat[..., 1]),
                          (self.item_dense[b.cand] - self.dense_mean) / self.dense_std,
                          self.content_proj(self.item_content[b.cand])], dim=-1)
        cross = (b.cross - self.cross_mean) / self.cross_std
        return torch.cat([ctx[:, None, :].expand(R, N, ctx.size(-1)), item, cross], dim=-1)

    def personal_input(self, b: Batchable, x_base: torch.Tensor) -> torch.Tensor:
        R, N = b.cand.shape
        fm = (b.fm_cross - self.fm_mean) / self.fm_std
        u = self.fm_drop(self.fm_user_proj(b.fm_user))[:, None, :].expand(R, N, self.cfg.d_fm)
        v = self.fm_drop(self.fm_item_proj(self.item_fm[b.cand]))  # (R, N, d_fm)
        return torch.cat([x_base, fm, u, v, u * v], dim=-1)

    # ------------------------------------------------------------------ scores

    def forward(self, b: Batchable, knob: torch.Tensor | None = None,
                parts: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(R, N) scores, padding at -inf. ``knob``: (R,) personalization per request
        (default: the config's per task). ``parts``: return (base, personal) instead."""
        task = b.ctx[:, 0]
        x = self.base_input(b)
        base = self.base(x, task)
        pers = torch.zeros_like(base)
        if self.personal is not None:
            if knob is None:
                knob = self.default_knob(task)
            if parts or bool((knob != 0).any()):
                pers = self.personal(self.personal_input(b, x), task)
        if parts:
            return base, pers
        score = base if knob is None else base + knob[:, None] * pers
        return score.masked_fill(~b.mask, float("-inf"))

    def default_knob(self, task: torch.Tensor) -> torch.Tensor:
        values = torch.tensor([float(self.cfg.knob.get(t, 1.0)) for t in TASKS])
        return values[task]

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        path = Path(path)
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_write_bytes(path / "model.safetensors",
                           save(state, metadata={"recfm_version": __version__, "format": FORMAT}))
        atomic_write_json(path / "config.json", {
            "format": FORMAT, "ranker": asdict(self.cfg), "vocab": asdict(self.vocab),
            "d_text_in": self.d_text_in, "d_fm_in": self.d_fm_in, "n_items": self.n_items,
            "tasks": list(TASKS), "cross_features": list(CROSS_FEATURES),
            "fm_features": list(FM_FEATURES), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path) -> "UnifiedRanker":
        path = Path(path)
        require_files(path, ("config.json", "model.safetensors"),
                      "a ranker file (recfm rank train)")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise InputError(str(path / "config.json"), None, "format", FORMAT,
                             repr(meta.get("format")))
        cfg = RankerConfig.from_dict(meta["ranker"], str(path / "config.json"))
        vocab = Vocab(**meta["vocab"])
        model = cls(cfg, vocab, meta["d_text_in"], meta["d_fm_in"], meta["n_items"])
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        model.eval()
        return model
