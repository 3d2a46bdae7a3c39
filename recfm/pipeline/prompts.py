"""The soft prompts of a run: ``RUN/prompts/<name>.safetensors`` (+ a readable ``.json``).

Each file holds ``{"prompt": tensor}`` — (k, d) input tokens or (2, n_layers, k, d) deep
ones (:mod:`recfm.model.prompt`) — with the training metadata in its header. Writes are
atomic; the model files are never touched. Training prompts: :mod:`recfm.consume.prompt`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from recfm.errors import InputError, RecfmError
from recfm.io import atomic_write_file, atomic_write_json
from recfm.model.config import ModelConfig

PROMPTS_DIR = "prompts"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise RecfmError(f"prompt name {name!r}: expected letters, digits, '_', '-' or '.' "
                         "(at most 64, starting with a letter or digit)")
    return name


def check_vectors(vectors: torch.Tensor, cfg: ModelConfig, name: str) -> torch.Tensor:
    """A (k, d) or (2, n_layers, k, d) prompt for a model of config ``cfg``, as a detached
    float32 tensor; a clear error otherwise."""
    check_name(name)
    d, L = cfg.d_model, cfg.n_layers
    ok = isinstance(vectors, torch.Tensor) and (
        (vectors.dim() == 2 and vectors.size(1) == d)
        or (vectors.dim() == 4 and tuple(vectors.shape[:2]) == (2, L) and vectors.size(3) == d))
    if not ok or vectors.size(-2) < 1:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors)
        raise RecfmError(f"prompt {name!r}: expected a (k, {d}) or (2, {L}, k, {d}) tensor, "
                         f"found {shape}")
    if not torch.isfinite(vectors).all():
        raise RecfmError(f"prompt {name!r}: expected finite values, found NaN or inf")
    return vectors.detach().float().contiguous()


def prompts_dir(run: str | Path | None, path: str | Path | None = None) -> Path:
    """``path``, or the ``prompts/`` folder of the run directory ``run``."""
    if path is not None:
        return Path(path)
    if run is None:
        raise RecfmError("this model has no run directory (load it with from_pretrained) "
                         "to read prompts from; add one with add_prompt(name, vectors)")
    return Path(run) / PROMPTS_DIR


def prompt_names(run: str | Path) -> list[str]:
    """Names of the prompts stored in a run directory."""
    d = Path(run) / PROMPTS_DIR
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def read_file(path: Path, cfg: ModelConfig, name: str) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as f:
            if "prompt" not in f.keys():
                raise InputError(str(path), None, "prompt", "a 'prompt' tensor",
                                 ", ".join(f.keys()) or "no tensors")
            vectors = f.get_tensor("prompt")
    except (OSError, ValueError) as e:  # safetensors raises these for unreadable headers
        raise InputError(str(path), None, None, "a safetensors prompt file", str(e)) from None
    return check_vectors(vectors, cfg, name)


def read_prompt(run: str | Path | None, cfg: ModelConfig, name: str,
                loaded: list[str] | None = None) -> torch.Tensor:
    """(k, d) vectors of prompt ``name`` from the run; a clear error naming the prompts
    there (and the ``loaded`` ones) if it is absent."""
    d = prompts_dir(run)
    path = d / f"{name}.safetensors"
    if not NAME_RE.match(name) or not path.is_file():
        known = sorted(set(loaded or []) | set(prompt_names(d.parent)))
        raise RecfmError(f"no prompt {name!r} in {d}: expected one of "
                         f"{', '.join(known) if known else '(none: train one with recfm prompt-tune)'}")
    return read_file(path, cfg, name)


def read_prompts(run: str | Path | None, cfg: ModelConfig,
                 path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Every prompt stored in ``path`` (default: the run's ``prompts/``)."""
    d = prompts_dir(run, path)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    return {p.stem: read_file(p, cfg, p.stem) for p in files}


def prompt_metadata(run: str | Path, name: str) -> dict[str, Any]:
    """The metadata stored with a prompt (from the safetensors header)."""
    path = Path(run) / PROMPTS_DIR / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("recfm_prompt", "{}"))


def write_prompt(run: str | Path, name: str, vectors: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Store a prompt in ``run/prompts/`` atomically (tensor + header metadata, JSON copy)."""
    check_name(name)
    vectors = vectors.detach().float().contiguous()
    d = Path(run) / PROMPTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.safetensors"
    atomic_write_file(path, lambda tmp: save_file({"prompt": vectors}, str(tmp),
                                                  metadata={"recfm_prompt": json.dumps(meta)}))
    atomic_write_json(d / f"{name}.json", meta)
    return path


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor of ``model.state_dict()`` (names, shapes and bytes)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
