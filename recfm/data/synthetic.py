"""A simulated streaming service: the offline default world of the demo and the tests.

Small enough to generate in seconds, rich enough to exercise every layer. The hidden truth
behind each choice is returned and written beside the data, so tests can check what a model
learned; one seed gives byte-identical files. What it simulates: docs/guide/data.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recfm.data.readers import RawDataset, read_events, read_items
from recfm.io import atomic_dir

log = logging.getLogger(__name__)

FORMAT = "recfm.synthetic/1"
WORLD_FILE = "world.json"

# ----------------------------------------------------------------------------- vocabulary

GENRES: tuple[str, ...] = (
    "action", "adventure", "animation", "comedy", "crime", "documentary", "drama", "family",
    "fantasy", "horror", "music", "romance", "scifi", "sports", "thriller",
)
GENRE_INDEX = {g: i for i, g in enumerate(GENRES)}
KIDS_GENRES = ("animation", "family")
# Genres a kids title may also carry, and that a kids profile's taste spreads over.
KIDS_FRIENDLY = ("adventure", "animation", "comedy", "family", "fantasy", "music")

ENTITY_TYPES: tuple[str, ...] = ("movie", "series", "game", "live")
ENTITY_P = (0.55, 0.30, 0.08, 0.07)
MOVIE, SERIES, GAME, LIVE = range(4)

_GENRE_WEIGHT = {
    "action": 0.10, "adventure": 0.05, "animation": 0.06, "comedy": 0.12, "crime": 0.07,
    "documentary": 0.06, "drama": 0.13, "family": 0.06, "fantasy": 0.05, "horror": 0.05,
    "music": 0.02, "romance": 0.06, "scifi": 0.06, "sports": 0.03, "thriller": 0.08,
}
# Genre mix of the primary genre, per entity type.
_ENTITY_GENRES: dict[int, dict[str, float]] = {
    MOVIE: _GENRE_WEIGHT,
    SERIES: _GENRE_WEIGHT,
    GAME: {"action": 0.25, "adventure": 0.20, "fantasy": 0.15, "scifi": 0.15, "sports": 0.10,
           "family": 0.05, "animation": 0.05, "horror": 0.05},
    LIVE: {"sports": 0.55, "music": 0.30, "comedy": 0.15},
}

# Per genre: adjectives and nouns that titles and descriptions are made of.
GENRE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "action": (("Iron", "Rogue", "Silent", "Final", "Burning", "Steel", "Lethal", "Deadly"),
               ("Strike", "Fury", "Mission", "Protocol", "Hunter", "Vendetta", "Siege",
                "Blade", "Payback", "Force")),
    "adventure": (("Lost", "Hidden", "Wild", "Golden", "Forgotten", "Distant", "Endless"),
                  ("Expedition", "Island", "Treasure", "Voyage", "Jungle", "Quest", "Map",
                   "Compass", "River", "Summit")),
    "animation": (("Tiny", "Magic", "Bouncy", "Brave", "Sparkly", "Happy", "Little"),
                  ("Robot", "Dragon", "Penguin", "Bunny", "Rocket", "Kitten", "Fox", "Toy",
                   "Cloud", "Bear")),
    "comedy": (("Awkward", "Crazy", "Lucky", "Silly", "Accidental", "Totally", "Wacky"),
               ("Roommates", "Wedding", "Neighbors", "Vacation", "Office", "Party",
                "Weekend", "Trip", "Mixup", "Reunion")),
    "crime": (("Dirty", "Cold", "Crooked", "Undercover", "Blind", "Perfect", "Midnight"),
              ("Heist", "Case", "Alibi", "Cartel", "Detective", "Witness", "Verdict",
               "Syndicate", "Evidence", "Precinct")),
    "documentary": (("Untold", "Inside", "Real", "Secret", "True", "Living", "Wild"),
                    ("Planet", "Story", "Ocean", "Empire", "History", "Frontier", "Nature",
                     "Truth", "Machine", "Wilderness")),
    "drama": (("Broken", "Quiet", "Bitter", "Tender", "Fragile", "Last", "Long"),
              ("Promise", "Letters", "Summer", "Daughter", "Harbor", "Silence",
               "Inheritance", "Garden", "Years", "Return")),
    "family": (("Magical", "Wonderful", "Big", "Friendly", "Cozy", "Jolly", "Sunny"),
               ("Puppy", "Holiday", "Treehouse", "Christmas", "Circus", "Pony", "Camp",
                "Grandma", "Friends", "Picnic")),
    "fantasy": (("Enchanted", "Dark", "Ancient", "Shadow", "Crystal", "Cursed", "Eternal"),
                ("Kingdom", "Sword", "Throne", "Sorcerer", "Realm", "Prophecy", "Crown",
                 "Wizard", "Legend", "Dragonfire")),
    "horror": (("Haunted", "Bloody", "Hollow", "Wicked", "Sinister", "Unholy", "Pale"),
               ("House", "Ritual", "Curse", "Shadows", "Asylum", "Night", "Possession",
                "Graveyard", "Whisper", "Doll")),
    "music": (("Electric", "Acoustic", "Loud", "Soulful", "Rising", "Neon", "Golden"),
              ("Concert", "Tour", "Symphony", "Rhythm", "Band", "Festival", "Stage",
               "Anthem", "Melody", "Beat")),
    "romance": (("Sweet", "Sudden", "Lovely", "Forever", "Tender", "Starry", "Second"),
                ("Kiss", "Heart", "Valentine", "Romance", "Affair", "Sunset", "Love",
                 "Proposal", "Crush", "Honeymoon")),
    "scifi": (("Quantum", "Stellar", "Cyber", "Galactic", "Orbital", "Synthetic", "Alien"),
              ("Station", "Colony", "Signal", "Horizon", "Android", "Nebula", "Paradox",
               "Odyssey", "Mars", "Outpost")),
    "sports": (("Unbeaten", "Fast", "Rookie", "Underdog", "Grand", "Champion", "Open"),
               ("League", "Match", "Goal", "Cup", "Derby", "Championship", "Slam", "Race",
                "Knockout", "Final")),
    "thriller": (("Dangerous", "Fatal", "Twisted", "Hidden", "Paranoid", "Deep", "Blackout"),
                 ("Conspiracy", "Target", "Agent", "Code", "Secret", "Escape", "Hostage",
                  "Trap", "Pursuit", "Cipher")),
}
GENRE_MOOD = {
    "action": "adrenaline", "adventure": "epic", "animation": "colorful", "comedy": "feel-good",
    "crime": "gritty", "documentary": "thought-provoking", "drama": "emotional",
    "family": "heartwarming", "fantasy": "imaginative", "horror": "scary", "music": "uplifting",
    "romance": "romantic", "scifi": "mind-bending", "sports": "inspiring",
    "thriller": "suspenseful",
}
_GAME_WORDS = ("Arena", "Tactics", "Legends", "Rush", "Saga", "Odyssey")
_ENTITY_WORD = {MOVIE: "film", SERIES: "series", GAME: "game", LIVE: "live event"}

LANGUAGES: tuple[str, ...] = ("en", "es", "fr", "de", "ja", "ko", "hi", "pt")
_LANGUAGE_P = (0.55, 0.10, 0.06, 0.05, 0.07, 0.07, 0.06, 0.04)
# (country, language, share of users)
COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "en", 0.35), ("GB", "en", 0.10), ("CA", "en", 0.05), ("BR", "pt", 0.08),
    ("MX", "es", 0.08), ("ES", "es", 0.05), ("FR", "fr", 0.06), ("DE", "de", 0.06),
    ("JP", "ja", 0.06), ("KR", "ko", 0.05), ("IN", "hi", 0.06),
)
DEVICES: tuple[str, ...] = ("tv", "mobile", "web")
_DEVICE_P = (0.45, 0.35, 0.20)
SURFACES: tuple[str, ...] = ("home", "search", "kids", "continue_watching")
HOME, SEARCH, KIDS, CONTINUE = range(4)
ACTIONS: tuple[str, ...] = (
    "impression", "trailer", "play", "complete", "thumbs_up", "add_to_list", "search",
)
A_IMPRESSION, A_TRAILER, A_PLAY, A_COMPLETE, A_THUMBS, A_LIST, A_SEARCH = range(7)
REASONS: tuple[str, ...] = ("taste", "continue", "successor", "cluster")
R_TASTE, R_CONTINUE, R_SUCCESSOR, R_CLUSTER = range(4)

# Simulation constants that are not worth a config field.
_MAX_DISTRACTORS = 6            # impressions of other titles around one choice, at most
_FREE_CANDIDATES = 4            # taste draws per choice (the first unseen one is taken)
_CLUSTER_CANDIDATES = 3
_N_ANCHORS = 8                  # the drifting taste is evaluated at this many times
_USER_CHUNK = 1024              # users simulated together (fixed: part of the output)
# A viewing is logged as play events, one per segment: the first at most
# _FIRST_SEGMENT_S long, the others at most _SEGMENT_S. With the gaps below, consecutive
# non-impression events of one choice (and of a binge inside one session) are always
# less than 30 minutes apart, and sessions at least an hour apart.
_FIRST_SEGMENT_S = 1200
_SEGMENT_S = 1700
_MIN_SESSION_GAP_S = 3600
_LANG_OWN, _LANG_FOREIGN = 1.5, -1.0
# Non-impression events per choice (search, trailer, play segments, complete, …), measured
# on the default world; used only to turn ``events_per_user`` into a number of choices.
_OTHER_EVENTS_PER_CHOICE = 4.3


@dataclass
class SynthConfig:
    """Everything that shapes the world. The same config gives the same world."""

    seed: int = 0
    n_users: int = 5000
    n_items: int = 2000
    events_per_user: float = 100.0
    """Mean events per user (impressions included); 5000 users → about 500,000 events."""
    dim: int = 16
    """Dimension of the latent taste and item factor vectors."""
    kids_fraction: float = 0.08
    """Share of users that are kids profiles."""
    start_ts: int = 1_704_067_200
    """Start of the simulated period (2024-01-01T00:00:00Z), seconds since the epoch."""
    days: int = 365
    drift: float = 0.5
    """Mean share of a user's taste that moves to a second genre mix over the period."""
    taste_weight: float = 5.0
    """Weight of taste · factor in the softmax of free choices."""
    popularity_weight: float = 1.0
    """Weight of log-popularity in the softmax of free choices."""
    popularity_sigma: float = 1.0
    """Spread of log-popularity across works."""
    p_successor: float = 0.5
    """Probability of watching the next installment of a franchise right after one."""
    p_same_cluster: float = 0.3
    """Probability of continuing in the cluster of the last title (when no successor)."""
    binge_mean: float = 1.5
    """Mean number of further episodes watched after starting a series."""
    p_continue_next_session: float = 0.25
    """Probability that a binge carries on into the next session rather than ending."""
    cluster_size: int = 16
    """Mean titles per cluster."""
    impressions_per_choice: float = 1.5
    """Mean impressions of other titles shown around each choice."""
    new_item_fraction: float = 0.08
    """About this share of titles launch during the simulated period."""
    activity_sigma: float = 0.8
    """Spread (log-normal sigma) of how many choices users make."""
    choices_per_session: float = 2.0
    """Mean choices per session."""
    completion_sigma: float = 0.0
    """Spread (a per-user offset on the logit of completing) of users' tendency to finish what
    they start, which their history shows. 0: every user alike (title and taste decide)."""
    habit_fraction: float = 0.0
    """Share of users whose sessions come on a fixed cadence (daily, every other day, weekly or
    fortnightly, as their number of sessions allows), so a history tells when the next one
    will be. 0: uniform random days for everyone (no user signal in the time to the next)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        checks = [
            ("n_users", self.n_users >= 1, "at least 1"),
            ("n_items", self.n_items >= 20, "at least 20"),
            ("events_per_user", self.events_per_user > 0, "positive"),
            ("dim", self.dim >= 2, "at least 2"),
            ("kids_fraction", 0.0 <= self.kids_fraction <= 1.0, "in [0, 1]"),
            ("start_ts", self.start_ts >= 0, "at or after 1970"),
            ("days", self.days >= 1, "at least 1"),
            ("drift", 0.0 <= self.drift <= 1.0, "in [0, 1]"),
            ("p_successor", 0.0 <= self.p_successor <= 1.0, "in [0, 1]"),
            ("p_same_cluster", 0.0 <= self.p_same_cluster <= 1.0, "in [0, 1]"),
            ("p_continue_next_session", 0.0 <= self.p_continue_next_session <= 1.0,
             "in [0, 1]"),
            ("binge_mean", self.binge_mean >= 0, "non-negative"),
            ("cluster_size", self.cluster_size >= 1, "at least 1"),
            ("impressions_per_choice", self.impressions_per_choice >= 0, "non-negative"),
            ("new_item_fraction", 0.0 <= self.new_item_fraction <= 1.0, "in [0, 1]"),
            ("activity_sigma", self.activity_sigma >= 0, "non-negative"),
            ("choices_per_session", self.choices_per_session >= 1, "at least 1"),
            ("habit_fraction", 0.0 <= self.habit_fraction <= 1.0, "in [0, 1]"),
            ("completion_sigma", self.completion_sigma >= 0, "non-negative"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SynthConfig.{name} must be {expected}, "
                                 f"got {getattr(self, name)!r}")


@dataclass
class SynthWorld:
    """The generated data (``events``, ``items``: canonical frames) and the hidden truth behind
    it (``truth_users``, ``truth_items``, ``choices`` with a ``reason`` from :data:`REASONS`;
    columns in docs/guide/data.md)."""

    events: pl.DataFrame
    items: pl.DataFrame
    truth_users: pl.DataFrame
    truth_items: pl.DataFrame
    choices: pl.DataFrame = field(default_factory=pl.DataFrame)
    config: SynthConfig = field(default_factory=SynthConfig)


# ----------------------------------------------------------------------------- helpers


def _cdf(p: np.ndarray) -> np.ndarray:
    c = np.cumsum(np.asarray(p, dtype=np.float64), axis=-1)
    return c / c[..., -1:]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draws: index of the first cumulative probability above ``u``."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _draw_rows(weights: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draws from row ``rows[k]`` of a (R, N) matrix of non-negative weights:
    ``u`` (K, …) uniforms, ``rows`` (K,) → (K, …) column indices. One running sum over the
    whole matrix serves all draws: row r's is a search for ``start_r + u · total_r``."""
    n = weights.shape[1]
    flat = np.cumsum(weights.ravel(), dtype=np.float64)          # (R·N,)
    ends = flat[n - 1::n]                                         # (R,)
    starts = np.concatenate([[0.0], ends[:-1]])
    shape = u.shape
    rows_b = np.broadcast_to(rows.reshape(rows.shape + (1,) * (u.ndim - 1)), shape)
    q = starts[rows_b] + u * (ends - starts)[rows_b]
    idx = np.searchsorted(flat, q.ravel(), side="right").reshape(shape)
    return np.clip(idx - rows_b * n, 0, n - 1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _id_strings(prefix: str, n: int, min_width: int) -> pl.Series:
    width = max(min_width, len(str(n)))
    return pl.Series([f"{prefix}{i + 1:0{width}d}" for i in range(n)], dtype=pl.Utf8)


def _group_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


# ----------------------------------------------------------------------------- catalog


@dataclass
class _Catalog:
    genre: np.ndarray          # (N,) primary genre index
    genres: list[list[str]]    # primary first
    entity: np.ndarray         # (N,)
    language: np.ndarray       # (N,) index into LANGUAGES
    year: np.ndarray
    runtime: np.ndarray        # (N,) seconds (episode length for series)
    kids: np.ndarray           # (N,) bool
    log_pop: np.ndarray
    cluster: np.ndarray
    franchise: np.ndarray      # (N,) work index
    franchise_pos: np.ndarray  # (N,) 1-based installment
    successor: np.ndarray      # (N,) index or -1
    launch_ts: np.ndarray
    available: np.ndarray
    factor: np.ndarray         # (N, d)
    title: list[str]
    description: list[str]
    attributes: list[list[str]]
    centroids: np.ndarray      # (G, d) genre centroids


def _title_words(genres: list[int], entity: int, u: np.ndarray,
                 attempt: int) -> tuple[str, str, str, str]:
    """A title stem from the words of the primary and last genre: (stem, adj, noun, noun2)."""
    adjs, nouns = GENRE_WORDS[GENRES[genres[0]]]
    _, nouns2 = GENRE_WORDS[GENRES[genres[-1]]]
    v = (u + attempt * np.array([0.618034, 0.381966, 0.723607, 0.276393, 0.5])) % 1.0
    adj = adjs[int(v[1] * len(adjs))]
    noun = nouns[int(v[2] * len(nouns))]
    noun2 = nouns2[int(v[3] * len(nouns2))]
    if noun2 == noun:
        noun2 = nouns[(int(v[2] * len(nouns)) + 1) % len(nouns)]
    pattern = int(v[0] * 4)
    stem = (f"The {adj} {noun}", f"{adj} {noun}", f"{noun} of the {noun2}",
            f"{adj} {noun2}")[pattern]
    if entity == GAME:
        stem = f"{stem}: {_GAME_WORDS[int(v[4] * len(_GAME_WORDS))]}"
    return stem, adj, noun, noun2


def _draw_works(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Works (franchises): entity type, primary genre and number of installments of each,
    cut and trimmed to make exactly ``n`` items."""
    entity_w = _draw(_cdf(ENTITY_P), rng.random(n))
    genre_p = np.array([[_ENTITY_GENRES[e].get(g, 0.0) for g in GENRES]
                        for e in range(len(ENTITY_TYPES))])
    genre_w = _draw_rows(genre_p, entity_w, rng.random(n))
    u_inst = rng.random(n)
    sequel = rng.integers(2, 5, n)
    n_inst = np.where((entity_w == MOVIE) & (u_inst < 0.28), sequel, 1)
    n_inst = np.where(entity_w == SERIES, np.minimum(rng.geometric(0.45, n), 6), n_inst)
    n_inst = np.where((entity_w == GAME) & (u_inst < 0.3), np.minimum(sequel, 3), n_inst)
    n_inst = np.where((entity_w == LIVE) & (u_inst < 0.5), np.minimum(sequel, 3), n_inst)
    cum = np.cumsum(n_inst)
    n_works = int(np.searchsorted(cum, n)) + 1
    entity_w, genre_w, n_inst = entity_w[:n_works], genre_w[:n_works], n_inst[:n_works].copy()
    n_inst[-1] -= int(cum[n_works - 1] - n)
    return entity_w, genre_w, n_inst


def _work_genres(rng: np.random.Generator, entity_w: np.ndarray,
                 genre_w: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Genres of each work (primary first; kids-friendly secondaries for a kids primary) and
    its kids flag. A catalog without a kids title turns its first work into a family movie
    (in place in ``entity_w`` and ``genre_w``): kids profiles need something to watch."""
    n_works = len(genre_w)
    weight = np.array([_GENRE_WEIGHT[g] for g in GENRES])
    friendly = np.array([g in KIDS_FRIENDLY for g in GENRES])
    n_second = _draw(_cdf([0.35, 0.45, 0.20]), rng.random(n_works))
    u_second = rng.random((n_works, 2))
    u_kids = rng.random(n_works)
    kids_primary = np.isin(genre_w, [GENRE_INDEX[g] for g in KIDS_GENRES])
    cdf_all, cdf_friendly = _cdf(weight), _cdf(weight * friendly)
    work_genres: list[list[int]] = []
    kids_w = np.zeros(n_works, dtype=bool)
    for w in range(n_works):
        g = int(genre_w[w])
        cdf = cdf_friendly if kids_primary[w] else cdf_all
        gs = [g]
        for j in range(int(n_second[w])):
            s = int(_draw(cdf, u_second[w, j]))
            if s not in gs:
                gs.append(s)
        work_genres.append(gs)
        if GENRES[g] == "family":
            kids_w[w] = True
        elif GENRES[g] == "animation":
            kids_w[w] = u_kids[w] < 0.85
        elif friendly[g] and entity_w[w] != LIVE:
            kids_w[w] = any(GENRES[s] in KIDS_GENRES for s in gs[1:])
    if not kids_w.any():
        family = GENRE_INDEX["family"]
        genre_w[0], entity_w[0], work_genres[0] = family, MOVIE, [family]
        kids_w[0] = True
    return work_genres, kids_w


def _work_launches(cfg: SynthConfig, rng: np.random.Generator, kids_w: np.ndarray,
                   start_year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per work: whether its last installment is new this period (never every kids title),
    the release year of its last installment otherwise, and the launch time if new."""
    n_works = len(kids_w)
    q_new = min(1.0, cfg.new_item_fraction * cfg.n_items / max(n_works, 1))
    is_new_w = rng.random(n_works) < q_new
    if not (kids_w & ~is_new_w).any():      # some kids title is there from the start
        is_new_w[np.argmax(kids_w)] = False
    last_year_w = start_year - 1 - np.floor(rng.exponential(6.0, n_works)).astype(np.int64)
    last_year_w = np.maximum(last_year_w, 1960)
    launch_new_w = cfg.start_ts + (0.05 + 0.9 * rng.random(n_works)) * cfg.days * 86400
    return is_new_w, last_year_w, launch_new_w


def _work_runtimes(rng: np.random.Generator, entity_w: np.ndarray,
                   kids_w: np.ndarray) -> np.ndarray:
    """Runtime of each work in whole minutes (as seconds); a series' is its episode length."""
    n_works = len(kids_w)
    rt = np.where(kids_w, rng.normal(88, 8, n_works), rng.normal(105, 18, n_works))
    rt = np.clip(rt, 70, 170) * 60
    episode = np.where(kids_w, rng.choice([11, 22], n_works),
                       rng.choice([22, 30, 45, 55, 60], n_works)) * 60.0
    rt = np.where(entity_w == SERIES, episode, rt)
    rt = np.where(entity_w == GAME, rng.uniform(20, 90, n_works) * 60, rt)
    rt = np.where(entity_w == LIVE, rng.uniform(90, 180, n_works) * 60, rt)
    return np.round(rt / 60.0) * 60.0


def _work_factors(cfg: SynthConfig, rng: np.random.Generator, genre_w: np.ndarray,
                  n_inst: np.ndarray, work_genres: list[list[int]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genre centroids (G, d); each work's cluster inside its primary genre (about
    ``cluster_size`` items each); its factor (W, d): near the cluster's centroid, pulled
    towards its secondary genres' centroids."""
    n_g, d, n_works = len(GENRES), cfg.dim, len(genre_w)
    centroids = _unit(rng.normal(size=(n_g, d)))
    cluster_w = np.zeros(n_works, dtype=np.int64)
    n_clusters = 0
    u_cluster = rng.random(n_works)
    for g in range(n_g):
        members = np.nonzero(genre_w == g)[0]
        if len(members) == 0:
            continue
        k = max(1, round(int(n_inst[members].sum()) / cfg.cluster_size))
        cluster_w[members] = n_clusters + np.minimum((u_cluster[members] * k).astype(np.int64),
                                                     k - 1)
        n_clusters += k
    cluster_genre = np.zeros(n_clusters, dtype=np.int64)
    cluster_genre[cluster_w] = genre_w
    cluster_centroid = (centroids[cluster_genre]
                        + 0.7 * rng.normal(size=(n_clusters, d)) / math.sqrt(d))
    second_mix = np.zeros((n_works, d))
    for w, gs in enumerate(work_genres):
        for s in gs[1:]:
            second_mix[w] += 0.3 * centroids[s]
    work_factor = (cluster_centroid[cluster_w] + second_mix
                   + 0.4 * rng.normal(size=(n_works, d)) / math.sqrt(d))
    return centroids, cluster_w, work_factor


def _unique_stem(stems: set[str], genres: list[int], entity: int, u: np.ndarray,
                 year: int) -> tuple[str, str, str, str]:
    """A title stem not yet in ``stems`` (added to it), and its words: a fresh combination of
    words if the first is taken, then the year, then a number."""
    for attempt in range(12):
        stem, adj, noun, noun2 = _title_words(genres, entity, u, attempt)
        if stem not in stems:
            break
    else:
        stem = f"{stem} ({year})"
    base, k = stem, 2
    while stem in stems:
        stem = f"{base} {k}"
        k += 1
    stems.add(stem)
    return stem, adj, noun, noun2


def _texts(rng: np.random.Generator, n_inst: np.ndarray, entity_w: np.ndarray,
           work_genres: list[list[int]], kids_w: np.ndarray, original_w: np.ndarray,
           last_year_w: np.ndarray, year: np.ndarray, new_item: np.ndarray
           ) -> tuple[list[str], list[str], list[list[str]], list[list[str]]]:
    """Title, description, tags and genre names of every item, in work-major order: one stem
    per work, installments as seasons, yearly live events or sequels (a title tells its genre)."""
    u_words = rng.random((len(n_inst), 5))
    starts = _group_starts(n_inst)
    stems: set[str] = set()
    titles: list[str] = []
    descriptions: list[str] = []
    attributes: list[list[str]] = []
    genres_items: list[list[str]] = []
    for w, gs in enumerate(work_genres):
        stem, adj, noun, noun2 = _unique_stem(stems, gs, int(entity_w[w]), u_words[w],
                                              int(last_year_w[w]))
        genre_names = [GENRES[g] for g in gs]
        genre_text = (genre_names[0] if len(genre_names) == 1 else
                      f"{', '.join(genre_names[:-1])} and {genre_names[-1]}")
        article = "An" if adj[0].lower() in "aeiou" else "A"
        for p in range(int(n_inst[w])):
            i = int(starts[w]) + p
            if entity_w[w] == SERIES:
                title = f"{stem}: Season {p + 1}"
            elif entity_w[w] == LIVE:
                title = f"{stem} Live {int(year[i])}"
            else:
                title = stem if p == 0 else f"{stem} {p + 1}"
            text = (f"{article} {adj.lower()} {genre_text} {_ENTITY_WORD[int(entity_w[w])]} "
                    f"about the {noun.lower()} and the {noun2.lower()}.")
            if p > 0 and entity_w[w] == SERIES:
                text += f" Season {p + 1} continues the story of {stem}."
            elif p > 0:
                text += f" The sequel to {titles[-1]}."
            if kids_w[w]:
                text += " Fun for the whole family."
            if entity_w[w] == LIVE:
                text += " Streamed live."
            tags = [GENRE_MOOD[genre_names[0]]]
            if kids_w[w]:
                tags.append("kids")
            if original_w[w]:
                tags.append("original")
            if new_item[i]:
                tags.append("new")
            titles.append(title)
            descriptions.append(text)
            attributes.append(tags)
            genres_items.append(genre_names)
    return titles, descriptions, attributes, genres_items


def _make_catalog(cfg: SynthConfig, rng: np.random.Generator) -> _Catalog:
    """The catalog: works (franchises) first, then one item per installment, shuffled. The
    order of the steps' draws from ``rng`` is part of the output."""
    n, d = cfg.n_items, cfg.dim
    start_year = int(time.gmtime(cfg.start_ts).tm_year)
    entity_w, genre_w, n_inst = _draw_works(n, rng)
    n_works = len(n_inst)
    work_genres, kids_w = _work_genres(rng, entity_w, genre_w)
    lang_w = _draw(_cdf(_LANGUAGE_P), rng.random(n_works))
    log_pop_w = rng.normal(0.0, cfg.popularity_sigma, n_works)
    original_w = rng.random(n_works) < 0.2
    available_w = rng.random(n_works) >= 0.03
    is_new_w, last_year_w, launch_new_w = _work_launches(cfg, rng, kids_w, start_year)
    runtime_w = _work_runtimes(rng, entity_w, kids_w)
    centroids, cluster_w, work_factor = _work_factors(cfg, rng, genre_w, n_inst, work_genres)

    # Items: one per installment; the last installment of a new work launches this period.
    work = np.repeat(np.arange(n_works), n_inst)
    pos = np.arange(n) - _group_starts(n_inst)[work]           # 0-based installment
    last = pos == n_inst[work] - 1
    successor_old = np.where(last, -1, np.arange(n) + 1)
    step_w = rng.integers(1, 3, n_works)                      # years between installments
    year = last_year_w[work] - (n_inst[work] - 1 - pos) * step_w[work]
    year = np.where(is_new_w[work] & last, start_year, np.maximum(year, 1950))
    new_item = is_new_w[work] & last
    year_start_ts = cfg.start_ts - (start_year - year) * 31_557_600
    launch = np.where(new_item, launch_new_w[work], year_start_ts).astype(np.int64)
    log_pop = log_pop_w[work] - 0.25 * pos + 0.5 * new_item + 0.1 * rng.normal(size=n)
    factor = work_factor[work] + 0.15 * rng.normal(size=(n, d)) / math.sqrt(d)
    titles, descriptions, attributes, genres_items = _texts(
        rng, n_inst, entity_w, work_genres, kids_w, original_w, last_year_w, year, new_item)

    # Shuffle so that an item's id says nothing about its franchise.
    order = rng.permutation(n)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)
    succ = successor_old[order]
    succ = np.where(succ >= 0, inv[np.maximum(succ, 0)], -1)
    return _Catalog(
        genre=genre_w[work][order], genres=[genres_items[j] for j in order],
        entity=entity_w[work][order], language=lang_w[work][order], year=year[order],
        runtime=runtime_w[work][order], kids=kids_w[work][order], log_pop=log_pop[order],
        cluster=cluster_w[work][order], franchise=work[order], franchise_pos=pos[order] + 1,
        successor=succ, launch_ts=launch[order], available=available_w[work][order],
        factor=factor[order], title=[titles[j] for j in order],
        description=[descriptions[j] for j in order],
        attributes=[attributes[j] for j in order], centroids=centroids,
    )


# ----------------------------------------------------------------------------- users


@dataclass
class _Users:
    country: np.ndarray        # index into COUNTRIES
    language: np.ndarray       # index into LANGUAGES
    kids: np.ndarray
    device: np.ndarray         # (U, 2): primary, secondary (-1: none)
    pref_start: np.ndarray     # (U, G)
    pref_end: np.ndarray
    drift: np.ndarray          # (U,) share of the taste that moves
    taste_start: np.ndarray    # (U, d)
    taste_end: np.ndarray
    n_choices: np.ndarray


def _make_users(cfg: SynthConfig, rng: np.random.Generator, cat: _Catalog) -> _Users:
    n_u, n_g, d = cfg.n_users, len(GENRES), cfg.dim
    country = _draw(_cdf([c[2] for c in COUNTRIES]), rng.random(n_u))
    language = np.array([LANGUAGES.index(COUNTRIES[c][1]) for c in country], dtype=np.int64)
    kids = rng.random(n_u) < cfg.kids_fraction
    primary = _draw(_cdf(_DEVICE_P), rng.random(n_u))
    primary = np.where(kids & (primary == DEVICES.index("web")), DEVICES.index("tv"), primary)
    secondary = (primary + rng.integers(1, len(DEVICES), n_u)) % len(DEVICES)
    secondary = np.where(rng.random(n_u) < 0.5, secondary, -1)
    secondary = np.where(kids, -1, secondary)
    device = np.stack([primary, secondary], axis=1)

    friendly = np.array([g in KIDS_FRIENDLY for g in GENRES], dtype=np.float64)

    def genre_mix() -> np.ndarray:
        mix = rng.dirichlet(np.full(n_g, 0.35), n_u)
        kid_mix = rng.dirichlet(np.full(n_g, 0.6), n_u) * friendly
        kid_mix = kid_mix / kid_mix.sum(axis=1, keepdims=True)
        return np.where(kids[:, None], kid_mix, mix)

    pref_start, pref_end = genre_mix(), genre_mix()
    drift = np.clip(cfg.drift * rng.uniform(0.25, 1.75, n_u), 0.0, 1.0)
    taste_start = pref_start @ cat.centroids + 0.5 * rng.normal(size=(n_u, d)) / math.sqrt(d)
    taste_new = pref_end @ cat.centroids + 0.5 * rng.normal(size=(n_u, d)) / math.sqrt(d)
    taste_end = (1 - drift[:, None]) * taste_start + drift[:, None] * taste_new
    pref_end = (1 - drift[:, None]) * pref_start + drift[:, None] * pref_end

    events_per_choice = (min(cfg.impressions_per_choice, _MAX_DISTRACTORS)
                         + _OTHER_EVENTS_PER_CHOICE)
    mean_choices = cfg.events_per_user / events_per_choice
    s = cfg.activity_sigma
    scale = np.exp(rng.normal(-s * s / 2, s, n_u)) if s > 0 else np.ones(n_u)
    n_choices = 2 + rng.poisson(max(mean_choices - 2, 0.1) * scale)
    return _Users(country, language, kids, device, pref_start, pref_end, drift,
                  taste_start, taste_end, n_choices.astype(np.int64))


# ----------------------------------------------------------------------------- sessions


@dataclass
class _Plan:
    user: np.ndarray           # (C,) per choice, user-major
    session: np.ndarray        # (C,) global session index
    new_session: np.ndarray    # (C,) bool: first choice of its session
    tau: np.ndarray            # (C,) time fraction of the period, in [0, 1]
    t: np.ndarray              # (C,) planned session start (seconds)
    offsets: np.ndarray        # (U,) first choice of each user
    s_user: np.ndarray         # (S,) per session
    s_start: np.ndarray        # (S,) planned start (seconds)
    s_device: np.ndarray
    s_country: np.ndarray


def _plan_sessions(cfg: SynthConfig, rng: np.random.Generator, users: _Users) -> _Plan:
    n_u = cfg.n_users
    span = cfg.days * 86400
    counts = users.n_choices
    n_c = int(counts.sum())
    offsets = _group_starts(counts)
    user = np.repeat(np.arange(n_u), counts)
    new_session = rng.random(n_c) < 1.0 / cfg.choices_per_session
    new_session[offsets] = True
    session = np.cumsum(new_session) - 1
    n_s = int(session[-1]) + 1
    s_user = user[new_session]

    # Session start: a join time, then uniform days and an evening-heavy time of day.
    join = np.where(rng.random(n_u) < 0.6, 0.0, rng.uniform(0.0, 0.75, n_u))
    frac = join[s_user] + (1 - join[s_user]) * rng.random(n_s)
    day = np.minimum(np.floor(frac * cfg.days), cfg.days - 1)
    if cfg.habit_fraction > 0:
        day = _habit_days(cfg, join, s_user, day)
    hour = np.where(rng.random(n_s) < 0.65, rng.normal(20.5, 1.5, n_s),
                    rng.normal(14.0, 3.5, n_s)) % 24.0
    s_start = (cfg.start_ts + day * 86400 + hour * 3600).astype(np.int64)
    order = np.lexsort((s_start, s_user))          # s_user is already sorted
    s_start = s_start[order]

    primary, secondary = users.device[s_user, 0], users.device[s_user, 1]
    s_device = np.where((secondary >= 0) & (rng.random(n_s) < 0.25), secondary, primary)
    travel = rng.random(n_s) < 0.03
    s_country = np.where(travel, rng.integers(0, len(COUNTRIES), n_s), users.country[s_user])
    t = s_start[session]
    tau = np.clip((t - cfg.start_ts) / span, 0.0, 1.0)
    return _Plan(user, session, new_session, tau, t, offsets, s_user, s_start, s_device,
                 s_country)


HABIT_PERIODS_DAYS = (1.0, 2.0, 7.0, 14.0)


def _habit_days(cfg: SynthConfig, join: np.ndarray, s_user: np.ndarray,
                day: np.ndarray) -> np.ndarray:
    """Session days of habitual users: the j-th session ``start + j × period`` days, the
    period drawn from :data:`HABIT_PERIODS_DAYS` and shortened (never below a day) until
    the user's sessions fit in the period; users with more sessions than days keep their
    uniform days. Its own random stream, so a world without habits is drawn as before.
    ``join``: (U,) share of the period before each user joins; ``s_user``: (S,) user of
    each session (sorted); ``day``: (S,) uniform session days → (S,) days."""
    n_u = len(join)
    rng = np.random.default_rng([cfg.seed, 1010])
    habit = rng.random(n_u) < cfg.habit_fraction
    period = rng.choice(np.array(HABIT_PERIODS_DAYS), n_u)
    n_sessions = np.bincount(s_user, minlength=n_u)
    first = np.floor(join * cfg.days)
    fits = (cfg.days - first) / np.maximum(n_sessions, 1)  # days per session at most
    period = np.minimum(period, np.floor(fits))
    habit &= period >= 1
    slack = np.maximum(cfg.days - first - n_sessions * period, 0)  # days to spare
    start = first + np.floor(rng.random(n_u) * slack)
    j = np.arange(len(s_user)) - _group_starts(n_sessions)[s_user]  # session index in user
    planned = start[s_user] + j * period[s_user]
    return np.where(habit[s_user], planned, day)


# ----------------------------------------------------------------------------- choices


def _free_draws(cfg: SynthConfig, cat: _Catalog, users: _Users, plan: _Plan,
                u: np.ndarray) -> np.ndarray:
    """Draws from each user's softmax over the catalog at the time of each choice: ``u``
    (C, K) uniforms → (C, K) item indices; the drifting taste is taken at ``_N_ANCHORS`` times."""
    n = cfg.n_items
    out = np.zeros(u.shape, dtype=np.int64)
    anchor = np.minimum((plan.tau * _N_ANCHORS).astype(np.int64), _N_ANCHORS - 1)
    lang_item = cat.language
    en = LANGUAGES.index("en")
    base = cfg.popularity_weight * cat.log_pop                      # (N,)
    for u0 in range(0, cfg.n_users, _USER_CHUNK):
        u1 = min(u0 + _USER_CHUNK, cfg.n_users)
        c0, c1 = int(plan.offsets[u0]), int(plan.offsets[u1 - 1] + users.n_choices[u1 - 1])
        lang_u = users.language[u0:u1]
        same = lang_item[None, :] == lang_u[:, None]                # (B, N)
        lang_term = np.where(same, _LANG_OWN, np.where(lang_item[None, :] == en, 0.0,
                                                       _LANG_FOREIGN))
        mask = np.where(users.kids[u0:u1, None] & ~cat.kids[None, :], -np.inf, 0.0)
        fixed = (base[None, :] + lang_term + mask).astype(np.float32)     # (B, N)
        delta = users.taste_end[u0:u1] - users.taste_start[u0:u1]       # (B, d)
        factor_t = cat.factor.T.astype(np.float32)                      # (d, N)
        for a in range(_N_ANCHORS):
            sel = np.nonzero(anchor[c0:c1] == a)[0] + c0
            if len(sel) == 0:
                continue
            # Only the users with a choice in this stretch of time.
            need, local = np.unique(plan.user[sel] - u0, return_inverse=True)
            taste = users.taste_start[u0 + need] + (a + 0.5) / _N_ANCHORS * delta[need]
            logits = cfg.taste_weight * (taste.astype(np.float32) @ factor_t) + fixed[need]
            logits -= logits.max(axis=1, keepdims=True)                 # (b, N)
            out[sel] = _draw_rows(np.exp(logits), local.ravel(), u[sel])
        log.debug("free draws for users %d-%d", u0, u1)
    assert out.max(initial=0) < n
    return out


def _cluster_cdf(cat: _Catalog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items sorted by cluster, and one CDF (by popularity) per cluster, laid end to end."""
    order = np.lexsort((np.arange(len(cat.cluster)), cat.cluster))
    cl = cat.cluster[order]
    w = np.exp(cat.log_pop[order])
    n_cl = int(cl.max()) + 1
    sums = np.bincount(cl, weights=w, minlength=n_cl)
    cum = np.cumsum(w)
    before = np.concatenate([[0.0], np.cumsum(sums)[:-1]])
    within = (cum - before[cl]) / sums[cl]                  # in (0, 1], per cluster
    ends = np.cumsum(np.bincount(cl, minlength=n_cl))
    return order, within + cl, ends


_Valid = Callable[[np.ndarray], np.ndarray]  # candidates → which the user may take now


def _rule_continue(cfg: SynthConfig, crossing: np.ndarray, u: np.ndarray, p: np.ndarray,
                   stay: np.ndarray, act: np.ndarray, chosen: np.ndarray,
                   why: np.ndarray) -> None:
    """1. Another episode of the series ``p`` being watched, while its binge (``stay``
    episodes left per user) lasts; across a session boundary (``crossing``) only with
    ``p_continue_next_session`` (``u``: uniforms). Fills ``chosen``/``why`` in place."""
    keep = ~crossing | (u < cfg.p_continue_next_session)
    stay[act[crossing & ~keep]] = 0
    m = (p >= 0) & (stay[act] > 0)
    chosen[m] = p[m]
    why[m] = R_CONTINUE
    stay[act[m]] -= 1


def _rule_cluster(cfg: SynthConfig, cat: _Catalog, tables: tuple[np.ndarray, ...],
                  u: np.ndarray, u_cluster: np.ndarray, p: np.ndarray, valid: _Valid,
                  chosen: np.ndarray, why: np.ndarray) -> None:
    """3. With ``p_same_cluster`` (``u``: uniforms), a popular title of the cluster of the
    last title ``p``: the first ``valid`` of ``_CLUSTER_CANDIDATES`` popularity-weighted
    draws (``u_cluster``: (A, candidates) uniforms; ``tables``: :func:`_cluster_cdf`)."""
    want = (chosen < 0) & (p >= 0) & (u < cfg.p_same_cluster)
    if not want.any():
        return
    cl_order, cl_cdf, cl_ends = tables
    cl = cat.cluster[np.maximum(p, 0)]
    for r in range(_CLUSTER_CANDIDATES):
        idx = np.searchsorted(cl_cdf, cl + u_cluster[:, r], side="right")
        idx = np.minimum(idx, cl_ends[cl] - 1)
        cand = cl_order[idx]
        m = want & (chosen < 0) & valid(cand)
        chosen[m] = cand[m]
        why[m] = R_CLUSTER


def _rule_taste(cat: _Catalog, by_pop: np.ndarray, free: np.ndarray, t: np.ndarray,
                kids: np.ndarray, valid: _Valid, chosen: np.ndarray, why: np.ndarray) -> None:
    """4. The user's own (drifting) taste: the first ``valid`` of the free draws ``free``
    (A, K). When all were seen already, a re-watch of a launched one; failing that (rare),
    the most popular title on offer at time ``t`` (``by_pop``: titles by popularity)."""
    for r in range(free.shape[1]):
        cand = free[:, r]
        m = (chosen < 0) & valid(cand)
        chosen[m] = cand[m]
        why[m] = R_TASTE
    for r in range(free.shape[1]):
        cand = free[:, r]
        m = (chosen < 0) & (cat.launch_ts[cand] <= t)
        chosen[m] = cand[m]
    m = np.nonzero(chosen < 0)[0]
    if len(m):
        ok = ((cat.launch_ts[by_pop][None, :] <= t[m, None])
              & (cat.kids[by_pop][None, :] | ~kids[m, None]))  # (m, N)
        chosen[m] = by_pop[np.argmax(ok, axis=1)]


def _simulate(cfg: SynthConfig, rng: np.random.Generator, cat: _Catalog, users: _Users,
              plan: _Plan, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item and reason (index into :data:`REASONS`) of every choice, walking each user's choices
    in order (continue, successor, same cluster, or taste), vectorized over the users."""
    n_c, n = len(plan.user), cfg.n_items
    u_step = rng.random((n_c, 3))
    u_cluster = rng.random((n_c, _CLUSTER_CANDIDATES))
    binge = rng.geometric(1.0 / (1.0 + cfg.binge_mean), n_c) - 1
    tables = _cluster_cdf(cat)
    is_series = cat.entity == SERIES
    by_pop = np.argsort(-cat.log_pop, kind="stable")
    item = np.full(n_c, -1, dtype=np.int64)
    reason = np.zeros(n_c, dtype=np.int64)

    for u0 in range(0, cfg.n_users, _USER_CHUNK):
        u1 = min(u0 + _USER_CHUNK, cfg.n_users)
        counts = users.n_choices[u0:u1]
        offs = plan.offsets[u0:u1]
        kids_u = users.kids[u0:u1]
        seen = np.zeros((u1 - u0, n), dtype=bool)
        prev = np.full(u1 - u0, -1, dtype=np.int64)
        stay = np.zeros(u1 - u0, dtype=np.int64)                    # episodes left to binge
        for k in range(int(counts.max())):
            act = np.nonzero(counts > k)[0]                         # local users
            slot = offs[act] + k                                    # global choice index
            t = plan.t[slot]
            p = prev[act]
            chosen = np.full(len(act), -1, dtype=np.int64)
            why = np.zeros(len(act), dtype=np.int64)

            def valid(cand: np.ndarray, act: np.ndarray = act, t: np.ndarray = t) -> np.ndarray:
                c = np.maximum(cand, 0)
                return ((cand >= 0) & ~seen[act, c] & (cat.launch_ts[c] <= t)
                        & (cat.kids[c] | ~kids_u[act]))

            _rule_continue(cfg, plan.new_session[slot], u_step[slot, 2], p, stay, act,
                           chosen, why)
            # 2. The next installment of the franchise.
            s = np.where(p >= 0, cat.successor[np.maximum(p, 0)], -1)
            m = (chosen < 0) & (u_step[slot, 0] < cfg.p_successor) & valid(s)
            chosen[m] = s[m]
            why[m] = R_SUCCESSOR
            _rule_cluster(cfg, cat, tables, u_step[slot, 1], u_cluster[slot], p, valid,
                          chosen, why)
            _rule_taste(cat, by_pop, free[slot], t, kids_u[act], valid, chosen, why)

            started = (why != R_CONTINUE) & is_series[chosen]
            stay[act[started]] = binge[slot[started]]
            stay[act[(why != R_CONTINUE) & ~is_series[chosen]]] = 0
            seen[act, chosen] = True
            prev[act] = chosen
            item[slot] = chosen
            reason[slot] = why
    return item, reason


# ----------------------------------------------------------------------------- events


# Slots of a choice's events after the ``_MAX_DISTRACTORS`` impressions of other titles;
# the play segments start at _I_PLAY, followed by complete and thumbs_up (see _emit).
_I_IMP, _I_SEARCH, _I_LIST, _I_TRAILER, _I_PLAY = range(_MAX_DISTRACTORS, _MAX_DISTRACTORS + 5)


def _surfaces(rng: np.random.Generator, kids_u: np.ndarray, kids_item: np.ndarray,
              reason: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface of each choice, the row its title sat in, and that surface's number of rows
    (kids profiles: kids, others home; continuations mostly continue_watching; some search)."""
    n_c = len(reason)
    r = rng.random(n_c)
    base_surface = np.where(kids_u, KIDS, HOME)
    surface = np.where(r < 0.15, SEARCH, base_surface)
    surface = np.where(~kids_u & kids_item & (r > 0.95), KIDS, surface)
    surface = np.where(reason == R_SUCCESSOR,
                       np.where(r < 0.3, CONTINUE, np.where(r < 0.45, SEARCH, base_surface)),
                       surface)
    surface = np.where(reason == R_CONTINUE, np.where(r < 0.75, CONTINUE, base_surface),
                       surface)
    row_c = np.select(
        [surface == HOME, surface == SEARCH, surface == KIDS],
        [np.minimum(rng.geometric(0.3, n_c) - 1, 19), np.minimum(rng.geometric(0.5, n_c) - 1, 9),
         np.minimum(rng.geometric(0.4, n_c) - 1, 9)], 0)
    max_row = np.select([surface == HOME, surface == SEARCH, surface == KIDS], [20, 10, 10], 1)
    return surface, row_c, max_row


def _outcomes(cfg: SynthConfig, rng: np.random.Generator, cat: _Catalog, users: _Users,
              plan: _Plan, item: np.ndarray, reason: np.ndarray, surface: np.ndarray
              ) -> tuple[np.ndarray, ...]:
    """What happens around each chosen title, (C,) each: abandoned, trailer, listed, shown,
    completed, seconds watched, thumbs_up, and how many other titles were shown. A continued
    series has no trailer or add-to-list; completion is likelier the better the title fits
    the taste of the time (plus the ``completion_sigma`` offset, from its own stream so a
    world without it is drawn as before)."""
    n_c, user = len(item), plan.user
    ent = cat.entity[item]
    fresh = reason != R_CONTINUE
    abandoned = fresh & (rng.random(n_c) < 0.06)
    p_trailer = np.array([0.25, 0.15, 0.2, 0.05])[ent]
    trailer = fresh & (rng.random(n_c) < np.where(abandoned, 0.6, p_trailer))
    listed = fresh & (rng.random(n_c) < 0.04)
    # An abandoned choice leaves at least its impression.
    shown = (surface == CONTINUE) | abandoned | (rng.random(n_c) < 0.92)
    tau = plan.tau
    taste = users.taste_start[user] + tau[:, None] * (users.taste_end[user]
                                                       - users.taste_start[user])
    affinity = np.einsum("cd,cd->c", taste, cat.factor[item])
    affinity = (affinity - affinity.mean()) / (affinity.std() + 1e-9)
    lift = affinity
    if cfg.completion_sigma > 0:
        finisher = np.random.default_rng([cfg.seed, 1011]).standard_normal(cfg.n_users)
        lift = affinity + cfg.completion_sigma * finisher[user]
    p_complete = np.array([0.65, 0.75, 0.05, 0.45])[ent] * 2.0 / (1.0 + np.exp(-lift))
    completed = ~abandoned & (rng.random(n_c) < np.minimum(p_complete, 0.97))
    watched = np.where(completed, rng.uniform(0.93, 0.99, n_c), rng.uniform(0.03, 0.85, n_c))
    watched = np.maximum(np.round(watched * cat.runtime[item]), 30.0)
    thumbs = completed & (rng.random(n_c) < 0.1 + 0.1 * (affinity > 0.5))
    n_dist = np.minimum(rng.poisson(cfg.impressions_per_choice, n_c), _MAX_DISTRACTORS)
    return abandoned, trailer, listed, shown, completed, watched, thumbs, n_dist


def _segments(watched: np.ndarray, abandoned: np.ndarray,
              max_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Play segments of each viewing: (C, max_seg) seconds — the first at most
    ``_FIRST_SEGMENT_S``, the rest split evenly (each at most ``_SEGMENT_S``) — and (C,)
    how many there are (none for an abandoned choice)."""
    n_c = len(watched)
    rest = np.maximum(watched - _FIRST_SEGMENT_S, 0.0)
    n_rest = np.ceil(rest / _SEGMENT_S).astype(np.int64)
    n_seg = np.where(abandoned, 0, 1 + n_rest)
    seg_len = np.floor(rest / np.maximum(n_rest, 1))
    segs = np.repeat(seg_len[:, None], max_seg, axis=1)              # (C, max_seg)
    segs[:, 0] = np.minimum(watched, _FIRST_SEGMENT_S)
    segs[np.arange(n_c), n_rest] += rest - seg_len * n_rest           # remainder
    return segs, n_seg


def _slot_values(rng: np.random.Generator, runtime: np.ndarray,
                 segs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, slots) event values — trailer seconds, seconds of each play segment, about the
    runtime for complete, NaN elsewhere — and (C,) the trailer seconds."""
    n_c, max_seg = segs.shape
    i_complete = _I_PLAY + max_seg
    value = np.full((n_c, i_complete + 2), np.nan)
    trailer_s = np.round(rng.uniform(30, 150, n_c))
    value[:, _I_TRAILER] = trailer_s
    value[:, _I_PLAY:i_complete] = segs
    value[:, i_complete] = np.round(runtime * rng.uniform(0.97, 1.0, n_c))
    return value, trailer_s


def _slot_offsets(rng: np.random.Generator, present: np.ndarray, trailer_s: np.ndarray,
                  segs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, slots) seconds from a choice's start to each of its events, and (C,) the
    choice's duration: a random gap before each present slot plus the time its activity
    takes (events are stamped when it ends)."""
    n_c, max_seg = segs.shape
    m_d, i_complete = _MAX_DISTRACTORS, _I_PLAY + max_seg
    gap = np.zeros(present.shape, dtype=np.int64)
    gap[:, :m_d] = rng.integers(1, 7, (n_c, m_d))
    gap[:, _I_IMP] = rng.integers(1, 7, n_c)
    gap[:, _I_SEARCH] = rng.integers(2, 9, n_c)
    gap[:, _I_LIST] = rng.integers(2, 11, n_c)
    gap[:, _I_TRAILER] = rng.integers(3, 21, n_c) + trailer_s.astype(np.int64)
    gap[:, _I_PLAY] = rng.integers(2, 16, n_c)
    gap[:, _I_PLAY + 1:i_complete] = rng.integers(0, 61, (n_c, max_seg - 1))
    gap[:, _I_PLAY:i_complete] += segs.astype(np.int64)
    gap[:, i_complete] = 1
    gap[:, i_complete + 1] = rng.integers(5, 61, n_c)                 # thumbs_up
    offset = np.cumsum(np.where(present, gap, 0), axis=1)            # (C, slots)
    duration = offset[:, -1] + rng.integers(20, 301, n_c)
    return offset, duration


def _choice_starts(plan: _Plan, duration: np.ndarray) -> np.ndarray:
    """(C,) start of each choice: back to back inside a session, and sessions of a user
    at least ``_MIN_SESSION_GAP_S`` apart (pushed later where they would overlap)."""
    cum = np.cumsum(duration)
    before = cum - duration
    s_first = np.nonzero(plan.new_session)[0]
    in_session = before - before[s_first][plan.session]
    s_dur = np.add.reduceat(duration, s_first)
    s_start = _non_overlapping(plan.s_user, plan.s_start, s_dur + _MIN_SESSION_GAP_S)
    return s_start[plan.session] + in_session


def _emit(cfg: SynthConfig, rng: np.random.Generator, cat: _Catalog, users: _Users,
          plan: _Plan, item: np.ndarray, reason: np.ndarray,
          distract: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every choice → a burst of events in fixed slots (``_MAX_DISTRACTORS`` impressions of
    other titles, the chosen title's impression, search, add_to_list, trailer, up to
    ``max_seg`` plays, complete, thumbs_up), then flattened; events are stamped when their
    activity ends."""
    n_c, m_d = len(item), _MAX_DISTRACTORS
    max_seg = 1 + int(math.ceil(max(float(cat.runtime.max()) - _FIRST_SEGMENT_S, 0.0)
                                / _SEGMENT_S))
    i_complete = _I_PLAY + max_seg
    i_thumbs = i_complete + 1
    n_slots = i_thumbs + 1
    surface, row_c, max_row = _surfaces(rng, users.kids[plan.user], cat.kids[item], reason)
    abandoned, trailer, listed, shown, completed, watched, thumbs, n_dist = _outcomes(
        cfg, rng, cat, users, plan, item, reason, surface)
    segs, n_seg = _segments(watched, abandoned, max_seg)

    present = np.zeros((n_c, n_slots), dtype=bool)
    # Other titles shown around the choice (never one that has not launched yet).
    present[:, :m_d] = ((np.arange(m_d)[None, :] < n_dist[:, None])
                        & (cat.launch_ts[distract] <= plan.t[:, None]))
    present[:, _I_IMP] = shown
    present[:, _I_SEARCH] = surface == SEARCH
    present[:, _I_LIST] = listed
    present[:, _I_TRAILER] = trailer
    present[:, _I_PLAY:i_complete] = np.arange(max_seg)[None, :] < n_seg[:, None]
    present[:, i_complete] = completed
    present[:, i_thumbs] = thumbs
    items2d = np.repeat(item[:, None], n_slots, axis=1)              # (C, slots)
    items2d[:, :m_d] = distract
    action = np.empty(n_slots, dtype=np.int64)
    action[:m_d] = A_IMPRESSION
    action[[_I_IMP, _I_SEARCH, _I_LIST, _I_TRAILER]] = [A_IMPRESSION, A_SEARCH, A_LIST,
                                                         A_TRAILER]
    action[_I_PLAY:i_complete] = A_PLAY
    action[[i_complete, i_thumbs]] = [A_COMPLETE, A_THUMBS]

    value, trailer_s = _slot_values(rng, cat.runtime[item], segs)
    offset, duration = _slot_offsets(rng, present, trailer_s, segs)
    # Rows: the chosen title's row for its own events, random rows for the others.
    rows = np.repeat(row_c[:, None], n_slots, axis=1)
    rows[:, :m_d] = (rng.random((n_c, m_d)) * max_row[:, None]).astype(np.int64)
    start = _choice_starts(plan, duration)

    flat = present.ravel()                                            # (C · slots,)
    c_idx = np.repeat(np.arange(n_c), n_slots)[flat]
    events = {
        "user": plan.user[c_idx],
        "item": items2d.ravel()[flat],
        "timestamp": (start[:, None] + offset).ravel()[flat],
        "action": np.tile(action, n_c)[flat],
        "value": value.ravel()[flat],
        "device": plan.s_device[plan.session][c_idx],
        "country": plan.s_country[plan.session][c_idx],
        "surface": surface[c_idx],
        "row": rows.ravel()[flat],
    }
    first_event = start + np.min(np.where(present, offset, np.iinfo(np.int64).max), axis=1)
    return events, surface, first_event


def _non_overlapping(s_user: np.ndarray, a: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Session starts ``s_k = max(a_k, s_{k-1} + length_{k-1})`` per user, vectorized. With
    ``D_k`` the exclusive running sum of ``length`` within the user, the recurrence solves to
    ``s_k = D_k + max_{j ≤ k}(a_j − D_j)``; a large per-user offset keeps the running maximum
    from leaking across users."""
    first = np.r_[True, s_user[1:] != s_user[:-1]]  # (S,) a user's first session
    excl = np.cumsum(length) - length
    d = excl - excl[first][np.cumsum(first) - 1]
    big = np.int64(1) << np.int64(40)
    v = a - d + s_user.astype(np.int64) * big
    return np.maximum.accumulate(v) - s_user.astype(np.int64) * big + d


# ----------------------------------------------------------------------------- frames


def _items_frame(cat: _Catalog, item_ids: pl.Series) -> pl.DataFrame:
    """The catalog in the canonical column order; extra columns as strings."""
    flag = np.array(["false", "true"])
    return pl.DataFrame({
        "item_id": item_ids,
        "title": pl.Series(cat.title, dtype=pl.Utf8),
        "description": pl.Series(cat.description, dtype=pl.Utf8),
        "entity_type": pl.Series(np.array(ENTITY_TYPES)[cat.entity], dtype=pl.Utf8),
        "language": pl.Series(np.array(LANGUAGES)[cat.language], dtype=pl.Utf8),
        "genres": pl.Series(cat.genres, dtype=pl.List(pl.Utf8)),
        "attributes": pl.Series(cat.attributes, dtype=pl.List(pl.Utf8)),
        "release_year": pl.Series(cat.year, dtype=pl.Int64),
        "available": pl.Series(flag[cat.available.astype(np.int64)], dtype=pl.Utf8),
        "kids": pl.Series(flag[cat.kids.astype(np.int64)], dtype=pl.Utf8),
        "runtime_s": pl.Series(cat.runtime.astype(np.int64).astype(str), dtype=pl.Utf8),
    })


def _vectors(name: str, x: np.ndarray) -> pl.Series:
    return pl.Series(name, x.astype(np.float64)).cast(pl.List(pl.Float64))


def generate(cfg: SynthConfig | None = None) -> SynthWorld:
    """Simulate the world described by ``cfg`` (default: 5,000 users, 2,000 titles); the same
    config gives identical frames."""
    cfg = cfg if cfg is not None else SynthConfig()
    cfg.validate()
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    cat = _make_catalog(cfg, rng)
    users = _make_users(cfg, rng, cat)
    plan = _plan_sessions(cfg, rng, users)
    n_c = len(plan.user)
    u_free = rng.random((n_c, _FREE_CANDIDATES + _MAX_DISTRACTORS))
    draws = _free_draws(cfg, cat, users, plan, u_free)
    free, distract = draws[:, :_FREE_CANDIDATES], draws[:, _FREE_CANDIDATES:]
    item, reason = _simulate(cfg, rng, cat, users, plan, free)
    ev, surface, first_ts = _emit(cfg, rng, cat, users, plan, item, reason, distract)

    user_ids = _id_strings("u", cfg.n_users, 5)
    item_ids = _id_strings("i", cfg.n_items, 4)
    events = pl.DataFrame({
        "user_id": user_ids.gather(ev["user"]),
        "item_id": item_ids.gather(ev["item"]),
        "timestamp": pl.Series(ev["timestamp"], dtype=pl.Int64),
        "action": pl.Series(ACTIONS, dtype=pl.Utf8).gather(ev["action"]),
        "device": pl.Series(DEVICES, dtype=pl.Utf8).gather(ev["device"]),
        "country": pl.Series([c[0] for c in COUNTRIES], dtype=pl.Utf8).gather(ev["country"]),
        "surface": pl.Series(SURFACES, dtype=pl.Utf8).gather(ev["surface"]),
        "value": pl.Series(ev["value"], dtype=pl.Float64).fill_nan(None),
        "row": pl.Series(ev["row"], dtype=pl.Int64),
    })
    items = _items_frame(cat, item_ids)

    n_events = np.bincount(ev["user"], minlength=cfg.n_users)
    devices = [[DEVICES[d] for d in pair if d >= 0] for pair in users.device.tolist()]
    truth_users = pl.DataFrame({
        "user_id": user_ids,
        "is_kids": pl.Series(users.kids, dtype=pl.Boolean),
        "country": pl.Series([COUNTRIES[c][0] for c in users.country], dtype=pl.Utf8),
        "language": pl.Series(np.array(LANGUAGES)[users.language], dtype=pl.Utf8),
        "devices": pl.Series(devices, dtype=pl.List(pl.Utf8)),
        "n_choices": pl.Series(users.n_choices, dtype=pl.Int64),
        "n_events": pl.Series(n_events, dtype=pl.Int64),
        "drift": pl.Series(users.drift, dtype=pl.Float64),
        "genre_pref_start": _vectors("genre_pref_start", users.pref_start),
        "genre_pref_end": _vectors("genre_pref_end", users.pref_end),
        "taste_start": _vectors("taste_start", users.taste_start),
        "taste_end": _vectors("taste_end", users.taste_end),
    })
    id_list = item_ids.to_list()
    succ_ids = [id_list[s] if s >= 0 else None for s in cat.successor.tolist()]
    truth_items = pl.DataFrame({
        "item_id": item_ids,
        "primary_genre": pl.Series(np.array(GENRES)[cat.genre], dtype=pl.Utf8),
        "cluster": pl.Series(cat.cluster, dtype=pl.Int64),
        "franchise_id": _id_strings("f", int(cat.franchise.max()) + 1, 4).gather(cat.franchise),
        "franchise_pos": pl.Series(cat.franchise_pos, dtype=pl.Int64),
        "successor": pl.Series(succ_ids, dtype=pl.Utf8),
        "log_popularity": pl.Series(cat.log_pop, dtype=pl.Float64),
        "factor": _vectors("factor", cat.factor),
        "kids": pl.Series(cat.kids, dtype=pl.Boolean),
        "runtime_s": pl.Series(cat.runtime, dtype=pl.Float64),
        "launch_ts": pl.Series(cat.launch_ts, dtype=pl.Int64),
        "available": pl.Series(cat.available, dtype=pl.Boolean),
    })
    choices = pl.DataFrame({
        "user_id": user_ids.gather(plan.user),
        "item_id": item_ids.gather(item),
        "timestamp": pl.Series(first_ts, dtype=pl.Int64),
        "reason": pl.Series(REASONS, dtype=pl.Utf8).gather(reason),
        "surface": pl.Series(SURFACES, dtype=pl.Utf8).gather(surface),
    })
    log.info("synthetic world: %d users, %d items, %d choices, %d events in %.2f s",
             cfg.n_users, cfg.n_items, n_c, events.height, time.perf_counter() - t0)
    return SynthWorld(events, items, truth_users, truth_items, choices, cfg)


# ----------------------------------------------------------------------------- files


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    # Polars writes no timestamps into the file: the same frame gives the same bytes.
    df.write_parquet(path, compression="zstd", compression_level=3, statistics=True)


def world_summary(world: SynthWorld) -> dict[str, Any]:
    """Counts that go into ``world.json`` (and the logs)."""
    by_action = dict(sorted(world.events.group_by("action").len().iter_rows()))
    by_reason = dict(sorted(world.choices.group_by("reason").len().iter_rows())) \
        if world.choices.height else {}
    return {
        "n_users": world.truth_users.height,
        "n_items": world.items.height,
        "n_events": world.events.height,
        "n_choices": world.choices.height,
        "events_by_action": by_action,
        "choices_by_reason": by_reason,
        "kids_users": int(world.truth_users["is_kids"].sum()),
        "kids_items": int(world.truth_items["kids"].sum()),
        "time_range": [int(world.events["timestamp"].min()),
                       int(world.events["timestamp"].max())],
    }


def write_world(world: SynthWorld, out: str | Path, cfg: SynthConfig | None = None,
                overwrite: bool = False) -> None:
    """Write the world atomically (``overwrite``: replace a world written before at ``out``).

        out/events.parquet  out/items.parquet  out/world.json
        out/truth/users.parquet  out/truth/items.parquet  out/truth/choices.parquet
    """
    cfg = cfg if cfg is not None else world.config
    meta = {
        "format": FORMAT,
        "config": asdict(cfg),
        "counts": world_summary(world),
        "genres": list(GENRES),
        "kids_genres": list(KIDS_GENRES),
        "languages": list(LANGUAGES),
        "reasons": list(REASONS),
    }
    with atomic_dir(out, "world", overwrite) as tmp:
        _write_parquet(world.events, tmp / "events.parquet")
        _write_parquet(world.items, tmp / "items.parquet")
        (tmp / "truth").mkdir()
        _write_parquet(world.truth_users, tmp / "truth" / "users.parquet")
        _write_parquet(world.truth_items, tmp / "truth" / "items.parquet")
        if world.choices.height:
            _write_parquet(world.choices, tmp / "truth" / "choices.parquet")
        text = json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / WORLD_FILE).write_text(text, encoding="utf-8")
    log.info("wrote synthetic world to %s", out)


def _root(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name == WORLD_FILE else path


def detect(path: str | Path) -> bool:
    """True for a folder written by :func:`write_world` (or its ``world.json``)."""
    root = _root(path)
    meta = root / WORLD_FILE
    if not (meta.is_file() and (root / "events.parquet").is_file()):
        return False
    try:
        return str(json.loads(meta.read_text(encoding="utf-8")).get("format", "")) \
            .startswith("recfm.synthetic/")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_world(path: str | Path) -> RawDataset:
    """Read a written world back as a validated :class:`RawDataset`."""
    root = _root(path)
    events_file, items_file = root / "events.parquet", root / "items.parquet"
    events = read_events(events_file)
    items = read_items(items_file)
    return RawDataset(events, items, str(events_file), str(items_file),
                      {"name": "synthetic", "has_time": True, "value_kind": "duration"})


def load_truth(path: str | Path) -> dict[str, pl.DataFrame]:
    """The ground-truth frames written beside the data: ``users``, ``items``, ``choices``."""
    truth = _root(path) / "truth"
    return {p.stem: pl.read_parquet(p) for p in sorted(truth.glob("*.parquet"))}
