"""Generated collections: a row of N items decoded with beam search, constraints enforced
while decoding. How: docs/guide/serving.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from recfm.model.attention import KVCache
from recfm.serve.engine import Engine, Query


@dataclass
class Beam:
    items: list[int]
    logp: float
    genres: Counter = field(default_factory=Counter)


def _append_tokens(window: np.ndarray, items: list[int], item_col: int = 0) -> np.ndarray:
    """``window`` with ``items`` appended, each a copy of the last token with another item."""
    rows = np.repeat(window[-1:], len(items), axis=0)
    rows[:, item_col] = items
    return np.concatenate([window, rows])


def _allowed_for(engine: Engine, base: np.ndarray, beam: Beam, cap: int) -> np.ndarray:
    ok = base.copy()
    ok[beam.items] = False
    over = engine.rules.genres_over_cap(beam.genres, cap) if cap > 0 else None
    if over is not None:
        ok &= ~over
    return ok


@torch.inference_mode()
def generate_collection(engine: Engine, query: Query, n: int, beam_width: int = 4,
                        max_per_genre: int = 0) -> list[int]:
    """Item indices of the best row of ``n`` (fewer only if fewer items are eligible);
    ``max_per_genre`` ≤ 0 disables the diversity constraint."""
    fm = engine.fm
    window = query.window[-(engine.max_len - n):] if n < engine.max_len else query.window[-1:]
    if len(window) == 0:
        raise ValueError("a collection needs a history to condition on")
    _, kv = fm.encode_incremental(engine._batch([window]), None, engine.input_table)
    beams = [Beam([], 0.0)]
    caches = [kv]  # one KVCache (B = 1) per beam
    for _ in range(n):
        seqs = np.stack([_append_tokens(window, b.items) if b.items else window for b in beams])
        if beams[0].items:  # every beam has the same length: one batched extension
            past = KVCache([torch.cat([c.keys[i] for c in caches]) for i in range(len(kv.keys))],
                           [torch.cat([c.values[i] for c in caches])
                            for i in range(len(kv.values))])
            users, grown = fm.encode_incremental(engine._batch(list(seqs)), past,
                                                 engine.input_table)  # (W, d)
        else:
            users, grown = fm.encode_incremental(engine._batch([window]), None,
                                                 engine.input_table)
        logp = torch.log_softmax(users @ engine.table.T, dim=1)  # (W, N)
        candidates = []
        for w, beam in enumerate(beams):
            ok = _allowed_for(engine, query.allowed, beam, max_per_genre)
            scores = logp[w].masked_fill(~torch.from_numpy(ok), float("-inf"))
            top = torch.topk(scores, min(beam_width, int(ok.sum())))
            for s, i in zip(top.values.tolist(), top.indices.tolist()):
                candidates.append((beam.logp + s, w, i))
        if not candidates:
            break
        candidates.sort(key=lambda c: -c[0])
        new_beams, new_caches, seen_sets = [], [], set()
        for total, w, i in candidates:
            items = beams[w].items + [i]
            key = frozenset(items)
            if key in seen_sets:  # the same set in another order: keep the likelier
                continue
            seen_sets.add(key)
            genres = beams[w].genres.copy()
            genres.update(engine.genres[i])
            new_beams.append(Beam(items, total, genres))
            new_caches.append(KVCache([k[w:w + 1] for k in grown.keys],
                                      [v[w:w + 1] for v in grown.values]))
            if len(new_beams) == beam_width:
                break
        beams, caches = new_beams, new_caches
    return beams[0].items


@torch.inference_mode()
def plain_top_n(engine: Engine, query: Query, n: int) -> list[int]:
    """The baseline row: the n best eligible items of one retrieval."""
    users = engine.encode([query])
    idx, _ = engine.exact.search(users, n, [query.allowed])[0]
    return idx.tolist()


def genre_diversity(engine: Engine, items: list[int]) -> float:
    """Intra-list diversity: mean pairwise Jaccard distance of the items' genre sets
    (Ziegler et al. 2005); 1 = no two items share a genre, 0 = all share all."""
    sets = [set(engine.genres[i]) for i in items]
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
    if not pairs:
        return 0.0
    dist = [1 - len(a & b) / len(a | b) if (a | b) else 0.0 for a, b in pairs]
    return float(np.mean(dist))


def max_genre_count(engine: Engine, items: list[int]) -> int:
    c = Counter(g for i in items for g in engine.genres[i])
    return max(c.values()) if c else 0
