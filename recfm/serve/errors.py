"""Errors the service turns into 4xx answers with a message the caller can act on."""

from __future__ import annotations


class ServeError(Exception):
    """A request the service cannot answer as asked; ``status`` is the HTTP status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServeError):
    status = 404


class Unprocessable(ServeError):
    status = 422
