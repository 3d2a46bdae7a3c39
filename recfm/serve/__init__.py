"""Serving: retrieval, business rules, generated collections, user-state cache, HTTP app.

    from recfm.serve import create_app, Engine, ServeConfig
    app = create_app("runs/beauty", ServeConfig(retrieval="auto"))
"""

from recfm.serve.config import ServeConfig, SurfaceConfig
from recfm.serve.engine import Engine, Query
from recfm.serve.rules import Filters


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003
    # FastAPI is heavy: deliberately deferred, so that importing the engine does not load it
    from recfm.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["Engine", "Filters", "Query", "ServeConfig", "SurfaceConfig", "create_app"]
