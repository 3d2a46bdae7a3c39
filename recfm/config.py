"""Typed configs and their TOML / JSON round trip.

Each component has one dataclass config. ``from_dict`` refuses unknown keys and wrong
types with an error that names the file and the key, so a typo in a TOML file is caught
before any work starts.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from recfm.errors import InputError, shorten

T = TypeVar("T")


def _check_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_check_type(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<config>") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(source, None, key, f"a {cls.__name__} key ({', '.join(sorted(names))})",
                             shorten(key))
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, source)
        elif not _check_type(value, hint):
            raise InputError(source, None, key, f"a value of type {hint}", shorten(value))
        if isinstance(value, tuple):
            value = list(value)
        if hint is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except InputError as e:  # a value the config's own check refuses: name the file
        raise InputError(source, None, e.column, e.expected, e.found) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or invalid file is an InputError naming it."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), None, None, "an existing TOML file", "nothing at that path") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(str(path), getattr(e, "lineno", None), None, "valid TOML", str(e)) from None


def load_toml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Read ``cls`` from a TOML file (optionally from one ``[section]`` of it)."""
    data = read_toml(path)
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, str(path))
