"""Add new titles to a trained run without retraining: ``recfm add-items``.

The vocabulary grows by appending: existing items keep their index, id embedding and every
other weight bit for bit. Each new item gets its content vector, its attribute bag and an
id embedding chosen by ``init`` (default ``scaled``: scores are dot products, and a
content-only vector is shorter than a trained one). The ``init`` modes:
docs/guide/new-items.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recfm.adapt.semantic_ids import extend_semantic_ids
from recfm.content.embedders import default_spec, make_embedder
from recfm.content.store import embed_new_items
from recfm.data.readers import read_items
from recfm.data.schema import LINE, normalize_items
from recfm.errors import RecfmError
from recfm.io import atomic_dir, check_out
from recfm.model.foundation import ITEM_ATTRIBUTE_COLUMNS, FoundationModel, item_attribute_csr
from recfm.pipeline import Recommender
from recfm.tokens.tokenizer import N_RESERVED_ITEMS, Tokenizer

log = logging.getLogger(__name__)

INIT_MODES = ("zero", "scaled", "random", "content", "neighbours")


# ----------------------------------------------------------------------------- id initialisation


def trained_rows(items: pl.DataFrame, n_items: int) -> np.ndarray:
    """Indices of items that had training data (``n_tokens`` > 0 when the catalog says)."""
    idx = items["idx"].to_numpy().astype(np.int64)
    if "n_tokens" in items.columns:
        idx = idx[items["n_tokens"].fill_null(0).to_numpy() > 0]
    return idx[(idx >= N_RESERVED_ITEMS) & (idx < n_items)]


def ridge_map(content: np.ndarray, target: np.ndarray, lam: float = 1.0) -> Callable:
    """Least-squares map content (m, c) → target (m, d) with an intercept and L2 penalty."""
    mc, mt = content.mean(0), target.mean(0)
    X, Y = content - mc, target - mt
    A = X.T @ X + lam * np.eye(X.shape[1])
    W = np.linalg.solve(A, X.T @ Y)  # (c, d)
    return lambda c: (c - mc) @ W + mt


def neighbour_mean(new: np.ndarray, known: np.ndarray, known_rows: np.ndarray, k: int = 10,
                   chunk: int = 1024, keep_norm: bool = False) -> np.ndarray:
    """(n, d) mean of ``known_rows`` over each new item's k nearest by cosine similarity of
    content ``new`` (n, c) to ``known`` (m, c), weighted by it (negatives 0; all ≤ 0: uniform)."""
    def unit(m: np.ndarray) -> np.ndarray:
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    new_u, known_u = unit(new), unit(known)
    k = min(k, len(known))
    out = np.zeros((len(new), known_rows.shape[1]), dtype=np.float32)
    for s in range(0, len(new), chunk):
        sims = new_u[s:s + chunk] @ known_u.T  # (b, m)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (b, k)
        w = np.maximum(np.take_along_axis(sims, top, 1), 0.0)
        w = np.where(w.sum(1, keepdims=True) > 0, w, 1.0)
        w = w / w.sum(1, keepdims=True)
        rows = known_rows[top]  # (b, k, d)
        mean = np.einsum("bk,bkd->bd", w, rows)
        if keep_norm:  # averaging directions shrinks the vector; restore the neighbours' norm
            norm = np.einsum("bk,bk->b", w, np.linalg.norm(rows, axis=2))
            mean *= (norm / np.maximum(np.linalg.norm(mean, axis=1), 1e-12))[:, None]
        out[s:s + chunk] = mean
    return out


def init_rows(mode: str, table: np.ndarray, trained: np.ndarray, n_new: int,
              new_content: np.ndarray | None, old_content: np.ndarray | None, k: int = 10,
              seed: int = 0) -> np.ndarray:
    """(n_new, d) initial rows of an item table for new items (docs/guide/new-items.md)."""
    d = table.shape[1]
    if mode in ("zero", "scaled") or n_new == 0:  # scaled: set once the model is grown
        return np.zeros((n_new, d), dtype=np.float32)
    if mode == "random":
        g = np.random.default_rng(seed)
        return (0.02 * g.standard_normal((n_new, d))).astype(np.float32)
    if new_content is None or old_content is None or len(trained) == 0:
        raise RecfmError(f"--init {mode} needs content vectors of the new and the trained items")
    known = table[trained]
    if mode == "content":
        # ridge predictions shrink toward the mean: rescale them so that, on the trained
        # items, predicted norms average what the learned norms do (scores are dot products)
        f = ridge_map(old_content[trained], known)
        fitted = np.linalg.norm(f(old_content[trained]), axis=1).mean()
        scale = np.linalg.norm(known, axis=1).mean() / max(float(fitted), 1e-12)
        return (scale * f(new_content)).astype(np.float32)
    if mode == "neighbours":
        return neighbour_mean(new_content, old_content[trained], known, k, keep_norm=True)
    raise RecfmError(f"--init: expected one of {', '.join(INIT_MODES)}, found {mode!r}")


def scalable(model) -> bool:
    """Whether ``--init scaled`` applies: content summed to tied id embeddings."""
    enc = model.item_encoder
    return model.output_items is None and enc.use_content and enc.combine == "sum"


def scale_new_rows(model, trained: np.ndarray, n_old: int) -> float:
    """``--init scaled``: set the (zero) id rows of items ``n_old:`` so each new item's vector
    is s × its content-only one, s the trained items' mean ratio of norms; returns s."""
    enc = model.item_encoder
    if not scalable(model):
        raise RecfmError("--init scaled needs a run with content summed to tied id embeddings")
    with torch.no_grad():
        ids = enc.ids.weight
        rest = enc.table() - ids  # (V, d) content-only part: projected content + attributes
        t = torch.as_tensor(trained, dtype=torch.long)
        full = (ids[t] + rest[t]).norm(dim=1).mean()
        alone = rest[t].norm(dim=1).mean()
        if float(alone) <= 0:
            raise RecfmError("--init scaled: the run has no content or attributes to scale")
        s = float(full / alone)
        ids[n_old:] = (s - 1.0) * rest[n_old:]
    return s


# ----------------------------------------------------------------------------- attributes


def _bags(items: pl.DataFrame, columns: list[str]) -> list[list[str]]:
    """Each item's attribute bag as ``column:value`` strings (as the model's CSR builds it)."""
    bags: list[list[str]] = [[] for _ in range(items.height)]
    for c in columns:
        if c not in items.columns:
            continue
        for i, v in enumerate(items[c].to_list()):
            values = v if isinstance(v, list) else [v]
            bags[i].extend(f"{c}:{x}" for x in values if x is not None)
    return bags


def attribute_vocab(meta: dict[str, Any], items: pl.DataFrame, n_items: int) -> list[str]:
    """The run's attribute vocabulary: an earlier add-items' saved one, or rebuilt as trained."""
    if "attribute_vocab" in meta:
        return list(meta["attribute_vocab"])
    return item_attribute_csr(items, n_items)[2]


# ----------------------------------------------------------------------------- add_items


def _align(new: pl.DataFrame, old: pl.DataFrame) -> pl.DataFrame:
    """New catalog rows in the old catalog's column types (extra columns kept)."""
    return new.with_columns(pl.col(c).cast(old[c].dtype, strict=False) for c in new.columns
                            if c in old.columns and new[c].dtype != old[c].dtype)


def grow_vocabulary(tok: Tokenizer, old_items: pl.DataFrame, new: pl.DataFrame
                    ) -> tuple[Tokenizer, pl.DataFrame, pl.DataFrame]:
    """Append ``new`` items (ids not yet known) to the vocabulary, never renumbering: the
    grown tokenizer, the grown catalog and the new rows with their ``idx``."""
    tok2 = Tokenizer(tok.config, list(tok.item_ids), tok.facets, tok.value_edges, tok.has_time,
                     tok.item_facets, dict(tok.meta))
    idx = tok2.add_items(new["item_id"].to_list())
    new = _align(new, old_items).with_columns(
        pl.Series("idx", idx, dtype=old_items["idx"].dtype),
        *[pl.lit(0, dtype=old_items[c].dtype).alias(c) for c in ("n_events", "n_tokens")
          if c in old_items.columns])
    items2 = pl.concat([old_items, new], how="diagonal_relaxed") if new.height else old_items
    items2 = items2.select(old_items.columns + [c for c in items2.columns
                                                if c not in old_items.columns])
    return tok2, items2, new


def new_item_content(rec: Recommender, new: pl.DataFrame, init: str, embedder: str | None,
                     cache_dir: str | Path | None, vectors: str | Path | None,
                     step: Callable[[str], None]
                     ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Content vectors of the new (n_new, c) and the run's items (n_old, c), from the run's
    weights, else embedded here if the init needs them; and the embedder spec used."""
    cfg, old_items, n_new = rec.cfg, rec.items, new.height
    spec = cfg.content_embedder if cfg.content_dim > 0 else None
    if cfg.content_dim > 0 and n_new:
        step(f"embedding {n_new:,} new items ({spec})")
        new_content, _ = embed_new_items(spec, new, cache_dir, vectors)
        return new_content, rec.model.state_dict()["item_encoder.content"].numpy(), spec
    if init in ("content", "neighbours") and n_new:
        spec = embedder or default_spec(old_items)
        emb = make_embedder(spec, cache_dir)
        step(f"embedding {cfg.n_items - N_RESERVED_ITEMS + n_new:,} items ({spec})")
        vecs = emb.embed_items(old_items)
        old_content = np.zeros((cfg.n_items, vecs.shape[1]), dtype=np.float32)
        old_content[old_items["idx"].to_numpy()] = vecs
        return emb.embed_items(new), old_content, spec
    return None, None, spec


def grow_attributes(vocab: list[str], old_items: pl.DataFrame, new: pl.DataFrame,
                    offsets: torch.Tensor, values: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The attribute CSR (offsets, values) with the new items' bags appended, in the run's
    attribute vocabulary; values it has never seen are dropped and counted (3rd result)."""
    code = {v: i for i, v in enumerate(vocab)}
    bags = _bags(new, [c for c in ITEM_ATTRIBUTE_COLUMNS if c in old_items.columns])
    unknown = sum(1 for b in bags for v in b if v not in code)
    new_codes = [[code[v] for v in b if v in code] for b in bags]
    lens = torch.tensor([len(b) for b in new_codes], dtype=torch.long)
    offsets = torch.cat([offsets, offsets[-1] + torch.cumsum(lens, 0)])
    values = torch.cat([values, torch.tensor([v for b in new_codes for v in b], dtype=torch.long)])
    return offsets, values, unknown


def grow_state(state: dict[str, torch.Tensor], n_old: int, n_new: int,
               rows: Callable[[np.ndarray], np.ndarray], new_content: np.ndarray | None,
               csr: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every per-item tensor of ``state`` grown by ``n_new`` items, the rest untouched;
    ``rows(table)``: an id table's new rows; ``csr``: the grown attribute (offsets, values)."""
    grown: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name in ("item_encoder.attr_offsets", "item_encoder.attr_values"):
            grown[name] = csr[name == "item_encoder.attr_values"]
        elif name == "item_encoder.content":
            grown[name] = torch.cat([t, torch.from_numpy(new_content).to(t.dtype)]) if n_new \
                else t
        elif name in ("item_encoder.ids.weight", "output_items.weight"):
            grown[name] = torch.cat([t, torch.from_numpy(rows(t.numpy())).to(t.dtype)])
        elif name == "log_q":  # a new item is as rare as the rarest trained one
            grown[name] = torch.cat([t, torch.full((n_new,), float(t[N_RESERVED_ITEMS:].min()))])
        elif t.dim() >= 1 and t.shape[0] == n_old and n_new:
            log.warning("%s: a per-item tensor add-items does not know; new rows are zeros", name)
            grown[name] = torch.cat([t, torch.zeros((n_new,) + tuple(t.shape[1:]), dtype=t.dtype)])
        else:
            grown[name] = t
    return grown


def add_items(run: str | Path, items: str | Path | pl.DataFrame, out: str | Path,
              init: str = "scaled", k: int = 10, embedder: str | None = None,
              vectors: str | Path | None = None, cache_dir: str | Path | None = None,
              on_step: Callable[[str], None] | None = None,
              overwrite: bool = False) -> dict[str, Any]:
    """Append the items of ``items`` (a catalog file or frame) to ``run`` as ``out``
    (``overwrite``: an earlier add-items output); returns a report, also saved under
    ``added_items`` in ``out/config.json``. ``embedder``: a run without content's embedder for
    neighbours / the content map (default: MiniLM for text, attribute bags otherwise).
    ``vectors``: the new items' vectors when the run uses your own (``file:``) vectors.
    """
    step = on_step or (lambda name: log.info(name))
    t0 = time.perf_counter()
    run, out = Path(run), Path(out)
    if init not in INIT_MODES:
        raise RecfmError(f"--init: expected one of {', '.join(INIT_MODES)}, found {init!r}")
    inputs = (run, None if isinstance(items, pl.DataFrame) else items)
    check_out(out, "run", overwrite, inputs)  # before any work
    step("reading new items")
    new = (normalize_items(items, "<items>") if isinstance(items, pl.DataFrame)
           else read_items(items)).drop(LINE)  # a malformed file stops here, before any work
    step("loading the run")
    rec = Recommender.from_pretrained(run)
    meta = json.loads((run / "config.json").read_text())
    if rec.tokenizer is None or rec.items is None:
        raise RecfmError(f"{run}: the run has no tokenizer.json / items.parquet")
    is_new = ~new["item_id"].is_in(list(rec.tokenizer.item_ids))
    skipped = int((~is_new).sum())
    tok2, items2, new = grow_vocabulary(rec.tokenizer, rec.items, new.filter(is_new))
    n_old, n_new = rec.cfg.n_items, new.height

    t_embed = time.perf_counter()
    new_content, old_content, spec = new_item_content(rec, new, init, embedder, cache_dir,
                                                      vectors, step)
    embed_s = time.perf_counter() - t_embed

    step("initialising new items")
    state = rec.model.state_dict()
    trained = trained_rows(rec.items, n_old)
    vocab = attribute_vocab(meta, rec.items, n_old)
    *csr, unknown_attrs = grow_attributes(vocab, rec.items, new,
                                          state["item_encoder.attr_offsets"],
                                          state["item_encoder.attr_values"])
    def new_rows(table: np.ndarray) -> np.ndarray:
        return init_rows(init, table, trained, n_new, new_content, old_content, k)

    grown = grow_state(state, n_old, n_new, new_rows, new_content, tuple(csr))
    model2 = FoundationModel(replace(rec.cfg, n_items=n_old + n_new), tok2, items2)
    model2.item_encoder.set_attributes(*csr)
    model2.load_state_dict(grown)
    model2.eval()
    init, scale = _finish_init(model2, init, trained, n_old, n_new)

    report = {"from": str(run), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "added": n_new, "skipped_existing": skipped, "init": init, "k": k,
              "embedder": spec, "n_items_before": n_old - N_RESERVED_ITEMS,
              "n_items_after": n_old + n_new - N_RESERVED_ITEMS,
              "attribute_values_unknown": unknown_attrs,
              "items_without_content": int((np.abs(new_content).sum(1) == 0).sum())
              if new_content is not None else None,
              "embed_s": round(embed_s, 3),
              **({"scale": round(scale, 4)} if scale is not None else {})}
    step("writing the run")
    report["wall_s"] = round(time.perf_counter() - t0, 3)  # updated once written
    extra = {k2: v for k2, v in meta.items() if k2 != "model"}
    extra["attribute_vocab"] = vocab
    extra["added_items"] = list(meta.get("added_items", [])) + [report]
    with atomic_dir(out, "run", overwrite, inputs) as tmp:
        Recommender(model2, tok2, items2).save_pretrained(tmp, extra)
        # the run's semantic ids, the new items coded with the frozen codebooks
        report["semantic_ids"] = extend_semantic_ids(tmp, run)
    report["wall_s"] = round(time.perf_counter() - t0, 3)
    log.info("added %d items to %s → %s in %.1fs (%d already known)", n_new, run, out,
             report["wall_s"], skipped)
    return report


def _finish_init(model: FoundationModel, init: str, trained: np.ndarray, n_old: int,
                 n_new: int) -> tuple[str, float | None]:
    """``scaled`` sets the new id rows once the model is grown (or falls back to ``zero``
    for a run it does not apply to); returns the init used and the scale."""
    if init == "scaled" and not scalable(model):
        log.info("--init scaled applies to runs with content summed to tied id embeddings; "
                 "new items get zero id rows (content / attributes alone)")
        return "zero", None
    if init == "scaled" and n_new:
        return init, scale_new_rows(model, trained, n_old)
    return init, None
