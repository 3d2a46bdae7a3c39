"""`recfm serve`: a run behind the HTTP API (:mod:`recfm.serve.app`) with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from recfm.cli.output import console, err_console, override, steps
from recfm.errors import RecfmError


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (localhost by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    data: Optional[Path] = typer.Option(None, help="Prepared dataset with known users' "
                                        "histories (default: the one the run was trained on)."),
    config: Optional[Path] = typer.Option(None, help="TOML with ServeConfig keys "
                                          "(recfm.serve.config)."),
    retrieval: Optional[str] = typer.Option(None, help="auto, exact or hnsw."),
    window_hop: Optional[int] = typer.Option(None, help="Move the context window in steps "
                                             "of this many tokens (cacheable growth)."),
    cache_mb: Optional[float] = typer.Option(None, help="Memory for cached user states."),
    threads: Optional[int] = typer.Option(None, help="torch threads for the model."),
    runs_root: Optional[str] = typer.Option(None, help="Reloads may name only runs inside "
                                            "this folder (default: the run's own folder)."),
    log_level: str = typer.Option("warning", help="Server log level."),
) -> None:
    """Serve a run over HTTP: recommendations, embeddings, collections, explorer page at /."""
    from recfm.serve import create_app
    from recfm.serve.config import ServeConfig, load_serve_config
    from recfm.tokens.tokenizer import N_RESERVED_ITEMS
    import uvicorn
    cfg = load_serve_config(config) if config else ServeConfig()
    if retrieval is not None and retrieval not in ("auto", "exact", "hnsw"):
        raise RecfmError(f"--retrieval: expected auto, exact or hnsw, found {retrieval!r}")
    override(cfg, retrieval=retrieval, window_hop=window_hop, cache_mb=cache_mb, threads=threads,
             runs_root=runs_root)
    logging.getLogger("recfm").setLevel(log_level.upper())
    with steps("loading") as on_step:
        on_step(str(run))
        web = create_app(run, cfg, data)
    engine = web.state.service.engine
    if engine.degraded:
        err_console.print(f"warning: {engine.degraded}", markup=False, highlight=False)
    console.print(f"serving {engine.version} ({engine.n_items - N_RESERVED_ITEMS:,} items, "
                  f"{engine.index.kind} retrieval) on http://{host}:{port}  "
                  f"(explorer at /, API docs at /docs)")
    uvicorn.run(web, host=host, port=port, log_level=log_level, access_log=False)
