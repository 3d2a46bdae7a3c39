"""Lexical first pass for search: BM25 over titles and genres, terms = words + character
trigrams (docs/guide/ranker.md). The index is a term → postings table in CSR form, so a
query touches only the items that share a term with it.

Example:
    >>> index = BM25Index(["The Iron Strike", "Quiet Letters"], [["action"], ["drama"]])
    >>> scores = index.scores("iron strike")          # (n_items,) BM25 scores
    >>> int(scores.argmax())
    0
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset({"the", "of", "a", "an", "and", "season", "live"})


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: ``The Iron: Strike`` → ``the iron strike``."""
    return " ".join(_WORD.findall(text.lower()))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def terms(text: str) -> list[str]:
    """Words and the character trigrams of each word (``w:iron``, ``#ir``, ``iro``, ``ron``, ``on#``)."""
    out: list[str] = []
    for w in words(text):
        out.append(f"w:{w}")
        padded = f"#{w}#"
        out.extend(padded[i:i + 3] for i in range(len(padded) - 2))
    return out


class BM25Index:
    """Okapi BM25 (constants ``k1``, ``b``) over one document per item: its title, counted
    ``title_weight`` times, its genres and entity type."""

    def __init__(self, titles: Sequence[str], genres: Sequence[Sequence[str]],
                 extra: Sequence[str] | None = None, k1: float = 1.2, b: float = 0.75,
                 title_weight: int = 2) -> None:
        docs: list[Counter[str]] = []
        for i, title in enumerate(titles):
            c: Counter[str] = Counter()
            for t in terms(title or ""):
                c[t] += title_weight
            for g in genres[i] or []:
                c.update(terms(str(g)))
            if extra is not None and extra[i]:
                c.update(terms(str(extra[i])))
            docs.append(c)
        vocab = {t: j for j, t in enumerate(dict.fromkeys(t for c in docs for t in c))}
        self.vocab = vocab
        self.n_items = len(docs)
        lengths = np.array([sum(c.values()) for c in docs], dtype=np.float64)
        avg = float(lengths.mean()) if len(lengths) else 1.0
        # Postings in CSR: for each term, the items holding it and their BM25 term weight.
        rows: list[list[tuple[int, float]]] = [[] for _ in vocab]
        for i, c in enumerate(docs):
            norm = k1 * (1 - b + b * lengths[i] / max(avg, 1e-9))
            for t, tf in c.items():
                rows[vocab[t]].append((i, tf * (k1 + 1) / (tf + norm)))
        df = np.array([len(r) for r in rows], dtype=np.float64)
        self.idf = np.log(1.0 + (self.n_items - df + 0.5) / (df + 0.5))  # (V,)
        self.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(df.astype(np.int64), out=self.offsets[1:])
        self.items = np.array([i for r in rows for i, _ in r], dtype=np.int64)
        self.weights = np.array([w for r in rows for _, w in r], dtype=np.float64)

    def scores(self, query: str) -> np.ndarray:
        """(n_items,) BM25 score of every item for ``query`` (0 for items sharing no term)."""
        out = np.zeros(self.n_items, dtype=np.float64)
        for t, qtf in Counter(terms(query)).items():
            j = self.vocab.get(t)
            if j is None:
                continue
            a, z = self.offsets[j], self.offsets[j + 1]
            np.add.at(out, self.items[a:z], qtf * self.idf[j] * self.weights[a:z])
        return out

    def top(self, query: str, n: int, tie_break: np.ndarray | None = None,
            allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items with a positive score (ties broken by ``tie_break``, e.g.
        popularity) and their scores, best first."""
        s = self.scores(query)
        key = s + (1e-6 * tie_break if tie_break is not None else 0.0)
        ok = s > 0
        if allowed is not None:
            ok &= allowed
        idx = np.nonzero(ok)[0]
        order = idx[np.argsort(-key[idx], kind="stable")][:n]
        return order, s[order]
