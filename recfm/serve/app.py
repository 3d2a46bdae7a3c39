"""The HTTP service: FastAPI in front of an :class:`~recfm.serve.engine.Engine` (endpoints:
OpenAPI at ``/docs``). Model work runs on the micro-batcher's thread, never on the event loop.

    app = create_app("runs/beauty")          # or: recfm serve runs/beauty --port 8000
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Header, Query as Q, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

import recfm.serve.schemas as S
from recfm.errors import RecfmError, reading
from recfm.serve.batcher import MicroBatcher
from recfm.serve.collections import (generate_collection, genre_diversity, max_genre_count,
                                     plain_top_n)
from recfm.serve.config import ServeConfig
from recfm.serve.engine import Engine, Query
from recfm.serve.errors import NotFound, ServeError, Unprocessable
from recfm.serve.metrics import Metrics
from recfm.serve.rules import Filters
from recfm.tokens.serving import EventTokenizer
from recfm.tokens.tokenizer import N_RESERVED_ITEMS

log = logging.getLogger(__name__)

EXPLORER = Path(__file__).parent / "static" / "explorer.html"
EXPLORER_MIN_EVENTS = 20
"""The explorer opens on the first known user with at least this many events."""
EXPLORER_EXAMPLES = 4
"""Example item ids shown in the explorer's history box."""


class ErrorResponse(JSONResponse):
    """An error as ASCII JSON: a lone surrogate echoed from the request is escaped, not a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False).encode()


class ServiceMiddleware:
    """Pure ASGI: refuses bodies over the limit (413) and records metrics per route."""

    def __init__(self, app: Any, metrics: Metrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body
        self.too_large = f"request body larger than {max_body:,} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await JSONResponse({"detail": self.too_large}, 413)(scope, receive, send)
                self.metrics.observe_request(scope["method"], "(body too large)", 413,
                                             time.perf_counter() - t0)
                return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, self.too_large)
            return message

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "(no route)"
            self.metrics.observe_request(scope["method"], path, status["code"],
                                         time.perf_counter() - t0)


def _filters(f: S.FiltersIn | None) -> Filters:
    if f is None:
        return Filters()
    return Filters(tuple(f.entity_types) if f.entity_types is not None else None,
                   tuple(f.genres) if f.genres is not None else None,
                   f.kids_only, f.available_only)


class Service:
    """The mutable state behind the app: the current engine, the batcher, the metrics."""

    def __init__(self, run: str | Path, cfg: ServeConfig | None = None,
                 data: str | Path | None = None) -> None:
        self.cfg = cfg or ServeConfig()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.data = data  # served by every version unless a reload names other data
        self.runs_root = Path(self.cfg.runs_root or Path(run).resolve().parent).resolve()
        self.engine = Engine(run, self.cfg, data)
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            {"recommend": lambda e, qs: e.recommend(qs), "embed": lambda e, qs: e.embed(qs),
             "call": lambda e, fns: [f() for f in fns]},
            self.cfg.max_batch, self.cfg.batch_wait_ms, self.metrics.observe_batch)
        self.reloading = threading.Lock()
        self.started = time.time()

    async def query(self, req: S.UserRef, **kw: Any) -> tuple[Engine, Query]:
        if req.user_id is None and not req.events and not isinstance(req, S.RecommendRequest):
            raise Unprocessable("give `user_id`, `events`, or both")
        engine = self.engine
        # events: validated dicts (a field not given is absent or None)
        args = dict(user_id=req.user_id, events=req.events,
                    ignore_unknown=req.ignore_unknown_items, **kw)
        if req.events and not EventTokenizer.supports(args["events"]):
            # the reference tokenizer (polars, releases the GIL): off the event loop
            return engine, await run_in_threadpool(engine.query, **args)
        # the serving tokenizer is pure Python under the GIL: a thread would only add a hop
        return engine, engine.query(**args)


def create_app(run: str | Path, cfg: ServeConfig | None = None,
               data: str | Path | None = None) -> FastAPI:
    """The FastAPI app serving ``run``, known users' histories from ``data`` (default: the
    run's own dataset, when it is there)."""
    service = Service(run, cfg, data)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.batcher.close()

    app = FastAPI(title="recfm", version=service.engine.version, lifespan=lifespan,
                  description="Recommendations, user embeddings, similar items and generated "
                              "collections from one foundation model.")
    app.state.service = service
    app.add_middleware(ServiceMiddleware, metrics=service.metrics,
                       max_body=service.cfg.max_body_bytes)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError) -> JSONResponse:
        return ErrorResponse({"detail": e.message}, e.status)

    @app.exception_handler(RecfmError)
    async def recfm_error(request: Request, e: RecfmError) -> JSONResponse:
        return ErrorResponse({"detail": str(e)}, 422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each input, and NaN or a lone surrogate is not JSON
        return ErrorResponse({"detail": [{k: err[k] for k in ("type", "loc", "msg")}
                                         for err in e.errors()]}, 422)

    _model_routes(app, service)
    _browse_routes(app, service)
    _operation_routes(app, service)
    return app


ERRORS = {404: {"description": "Unknown item or user"},
          422: {"description": "Invalid request: the message names the field"}}


def _model_routes(app: FastAPI, service: Service, errors: dict = ERRORS) -> None:
    """Recommendations, user vectors, similar items and generated collections."""

    @app.post("/v1/recommend", response_model=S.RecommendResponse, responses=errors,
              tags=["recommend"])
    async def recommend(req: S.RecommendRequest) -> JSONResponse:
        """Top-k items for a known user, raw events, or both (events appended); with
        neither, the model's first items for the request's context."""
        context = req.context.model_dump(exclude_none=True) if req.context else None
        if req.retrieval == "generative" and service.engine.fm.generative is None:
            raise Unprocessable("retrieval: 'generative' needs a model trained with semantic "
                                "ids (recfm train --semantic-ids RUN); this one scores items")
        engine, q = await service.query(req, k=req.k, exclude_seen=req.exclude_seen,
                                        filters=_filters(req.filters), surface=req.surface,
                                        context=context)
        q.extra["retrieval"] = req.retrieval
        # built to the response model already: skip FastAPI's re-validation on the hot path
        return JSONResponse(await service.batcher.submit("recommend", engine, q))

    @app.post("/v1/users/embed", response_model=S.EmbedResponse, responses=errors,
              tags=["users"])
    async def embed(req: S.EmbedRequest) -> dict:
        """The user vector (the model's hidden state after the last event)."""
        engine, q = await service.query(req)
        vec = await service.batcher.submit("embed", engine, q)
        return {"vector": vec, "dim": engine.d, "model_version": engine.version,
                "how": q.how if vec is not None else "no history: no vector"}

    @app.get("/v1/items/{item_id}/similar", response_model=S.SimilarResponse,
             responses=errors, tags=["items"])
    async def similar(item_id: str, k: int = Q(10, ge=1, le=S.MAX_K),
                      surface: str = Q("home", max_length=64),
                      genres: list[str] | None = Q(None, max_length=100),
                      entity_types: list[str] | None = Q(None, max_length=100),
                      kids_only: bool = False, available_only: bool = False) -> dict:
        """Items closest to this one (cosine of the model's item vectors), under the rules."""
        engine = service.engine
        f = Filters(tuple(entity_types) if entity_types else None,
                    tuple(genres) if genres else None, kids_only, available_only)
        return await service.batcher.submit(
            "call", engine, lambda: engine.similar(item_id, k, f, surface))

    @app.post("/v1/collections", response_model=S.CollectionResponse, responses=errors,
              tags=["recommend"])
    async def collections(req: S.CollectionRequest) -> dict:
        """A row of n items generated by beam search, diversity and rules enforced while
        decoding (``compare_plain`` adds the plain top-n row)."""
        engine, q = await service.query(req, k=req.n, exclude_seen=req.exclude_seen,
                                        filters=_filters(req.filters), surface=req.surface)

        def run() -> dict:
            idx = generate_collection(engine, q, req.n, req.beam_width, req.max_per_genre)
            how = (f"beam search (width {req.beam_width}, at most {req.max_per_genre} per "
                   "genre)" if req.max_per_genre else f"beam search (width {req.beam_width})")
            out = {**_row(engine, idx), "model_version": engine.version, "how": how}
            if req.compare_plain:
                out["plain_top_n"] = _row(engine, plain_top_n(engine, q, req.n))
            return out

        return await service.batcher.submit("call", engine, run)


class ExplorerView(BaseModel):
    """What the explorer page opens with, and a typed history checked against the catalog."""

    default_user: str | None = Field(
        description=f"The first known user with at least {EXPLORER_MIN_EVENTS} events (else "
                    "the one with the longest history): the page's view without ?user= or "
                    "?history=. Null without known users.")
    example_items: list[S.ItemOut] = Field(
        description="The items with the most events in the known histories (without them, "
                    "the catalog's first items): example ids for the history box.")
    history: list[S.ItemOut] = Field(
        description="The ids of `history` that are in the served catalog, in order.")
    unknown_items: list[str] = Field(
        description="The ids of `history` that are not in the served catalog.")


def _explorer_view(engine: Engine, history: list[str]) -> dict:
    """:class:`ExplorerView` of ``engine`` (counts the histories' items once per engine)."""
    h = engine.histories
    default, examples = None, []
    if h is not None and len(h):
        long = np.flatnonzero(h.lengths >= EXPLORER_MIN_EVENTS)
        default = h.ids[int(long[0]) if len(long) else int(np.argmax(h.lengths))]
        counts = h.item_counts[N_RESERVED_ITEMS:engine.n_items]  # (catalog items,)
        top = np.argsort(-counts, kind="stable")[:EXPLORER_EXAMPLES]
        examples = [N_RESERVED_ITEMS + int(i) for i in top if counts[i] > 0]
    if not examples:
        examples = list(range(N_RESERVED_ITEMS,
                              min(engine.n_items, N_RESERVED_ITEMS + EXPLORER_EXAMPLES)))
    return {"default_user": default,
            "example_items": [engine.describe_item(i) for i in examples],
            "history": [engine.describe_item(engine.index_of[i]) for i in history
                        if i in engine.index_of],
            "unknown_items": [i for i in history if i not in engine.index_of]}


def _browse_routes(app: FastAPI, service: Service) -> None:
    """Known users, their histories and title search (what the explorer page browses)."""

    @app.get("/v1/users", response_model=S.UserList, tags=["users"])
    async def users(limit: int = Q(50, ge=1, le=1000), min_tokens: int = Q(5, ge=0, le=10**6),
                    prefix: str | None = Q(None, max_length=200)) -> dict:
        """Known user ids (for the explorer), those with at least ``min_tokens`` events."""
        h = service.engine.histories
        if h is None:
            return {"users": [], "total": 0}
        out = []
        for uid, n in zip(h.ids, h.lengths.tolist()):
            if n >= min_tokens and (prefix is None or uid.startswith(prefix)):
                out.append(uid)
                if len(out) == limit:
                    break
        return {"users": out, "total": len(h)}

    @app.get("/v1/users/{user_id}", response_model=S.UserHistory, responses=ERRORS,
             tags=["users"])
    async def user_history(user_id: str, last: int = Q(50, ge=1, le=1000)) -> dict:
        engine = service.engine
        stored = engine.histories.tokens(user_id) if engine.histories else None
        if stored is None:
            raise NotFound(f"user {user_id!r} is not among the known users")
        items = stored[0][:, 0]
        return {"user_id": user_id, "history_tokens": int(len(items)),
                "history": [engine.describe_item(int(i)) for i in items[-last:]]}

    @app.get("/v1/items", response_model=S.ItemSearch, tags=["items"])
    async def search_items(q: str = Q(..., min_length=1, max_length=200),
                           limit: int = Q(20, ge=1, le=200)) -> dict:
        """Items whose title contains ``q`` (case-insensitive), or whose id is ``q``."""
        engine = service.engine
        hits: list[int] = []
        if q in engine.index_of:
            hits.append(engine.index_of[q])
        titles = engine.lowercase_titles()
        if titles is not None:
            found = titles.str.contains(q.lower(), literal=True).fill_null(False).arg_true()
            hits += [int(i) for i in found[:limit].to_list() if int(i) not in hits]
        return {"items": [engine.describe_item(i) for i in hits[:limit]]}

    @app.get("/v1/explorer", response_model=ExplorerView, tags=["users"])
    async def explorer_view(history: list[str] | None = Q(None, max_length=S.MAX_EVENTS)
                            ) -> dict:
        """The explorer's default user and example item ids; ``history`` (repeated: item ids,
        oldest first) is split into the items the catalog has and the ids it does not."""
        return await run_in_threadpool(_explorer_view, service.engine, history or [])


def _operation_routes(app: FastAPI, service: Service, errors: dict = ERRORS) -> None:
    """Health, Prometheus metrics, hot reload and the explorer page."""

    @app.get("/healthz", response_model=S.Health, tags=["operations"])
    async def healthz() -> dict:
        e = service.engine
        return {"status": "degraded" if e.degraded else "ok", "degraded": e.degraded,
                "model_version": e.version,
                "items": e.n_items - N_RESERVED_ITEMS,
                "retrieval": e.index.kind,
                "known_users": len(e.histories) if e.histories else 0,
                "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> PlainTextResponse:
        e = service.engine
        gauges = {"recfm_user_state_cache_entries": ("Cached user states.", len(e.cache)),
                  "recfm_user_state_cache_bytes": ("Bytes of cached user states.", e.cache.bytes),
                  "recfm_catalog_items": ("Items in the served catalog.",
                                          e.n_items - N_RESERVED_ITEMS)}
        text = service.metrics.render(gauges, {"version": e.version, "retrieval": e.index.kind},
                                      dict(e.cache.stats))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", response_model=S.ReloadResponse,
              responses={401: {"description": "Missing or wrong bearer token"},
                         403: {"description": "Reload disabled (no token configured), or a "
                                          "path outside the runs root"},
                         409: {"description": "A reload is already running"}, **errors},
              tags=["operations"])
    async def reload(req: S.ReloadRequest,
                     authorization: str | None = Header(None, max_length=4096)) -> dict:
        """Load another run directory and swap to it; requests in flight finish on the old one."""
        token = os.environ.get(service.cfg.admin_token_env)
        if not token:
            return ErrorResponse({"detail": "reload is disabled: start the server with "
                                  f"{service.cfg.admin_token_env} set to a secret token"}, 403)
        if authorization is None or not hmac.compare_digest(
                authorization.encode(), f"Bearer {token}".encode()):
            return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        with reading("/admin/reload", "run and data paths that exist as names"):
            outside = [p for p in (req.run, req.data) if p is not None and service.runs_root
                       not in (Path(p).resolve(), *Path(p).resolve().parents)]
        if outside:
            return ErrorResponse({"detail": f"{outside[0]} is outside the runs root "
                                  f"{service.runs_root} (recfm serve --runs-root)"}, 403)
        if not service.reloading.acquire(blocking=False):
            return ErrorResponse({"detail": "a reload is already running"}, 409)
        try:
            new = await run_in_threadpool(_load_and_warm, req.run, service.cfg,
                                          req.data or service.data)
            known = len(service.engine.histories or ())
            if new.degraded and known:
                raise Unprocessable(f"{new.degraded}; {known:,} known users would be lost")
            old, service.engine = service.engine, new
        except (ServeError, RecfmError, OSError, ValueError, KeyError) as e:
            service.metrics.observe_reload("failed")
            raise Unprocessable(f"reload of {req.run!r} failed, still serving "
                                f"{service.engine.version}: {e}") from None
        finally:
            service.reloading.release()
        service.metrics.observe_reload("ok")
        log.info("reloaded: %s → %s", old.version, new.version)
        return {"model_version": new.version, "previous_version": old.version,
                "load_s": round(new.load_s, 3)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def explorer() -> HTMLResponse:
        return HTMLResponse(EXPLORER.read_text(encoding="utf-8"))


def _row(engine: Engine, idx: list[int]) -> dict:
    return {"items": engine.ranked_items(idx),
            "genre_diversity": round(genre_diversity(engine, idx), 4),
            "max_genre_count": max_genre_count(engine, idx)}


def _load_and_warm(run: str, cfg: ServeConfig, data: str | Path | None) -> Engine:
    """Load a run and run one request through it before it takes traffic."""
    if not Path(run).is_dir():
        raise Unprocessable(f"run: {run!r} is not a directory")
    engine = Engine(run, cfg, data)
    probe = engine.query(events=[{"item_id": engine.item_ids[N_RESERVED_ITEMS]}], k=10)
    engine.recommend([probe])
    engine.cache.clear()
    return engine
