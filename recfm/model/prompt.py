"""Soft prompts as the network sees them: the forward pass over [prompt; history], and the
prompt files of a run (``RUN/prompts/<name>.safetensors``).

Training prompts is :mod:`recfm.consume.prompt`; this module is what a loaded model needs
to use them: an ``input`` prompt (k, d) is prepended to the event embeddings, a ``deep`` one
(2, n_layers, k, d) is the KV cache k prompt events would leave.
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
from recfm.io import atomic_write_json
from recfm.model.attention import KVCache
from recfm.model.backbone import Backbone
from recfm.model.config import ModelConfig

PROMPTS_DIR = "prompts"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ----------------------------------------------------------------------------- the forward pass


def prompted_backbone(backbone: Backbone, x: torch.Tensor, valid: torch.Tensor,
                      prompt: torch.Tensor, all_layers: bool = False
                      ) -> torch.Tensor | list[torch.Tensor]:
    """``backbone`` over [prompt; x]; returns the history positions only.

    x: (B, T, d) event embeddings, valid: (B, T). ``prompt``: (k, d) input tokens, or
    (2, n_layers, k, d) deep tokens (:func:`prefix_backbone`). Returns (B, T, d) — or a list
    of them with ``all_layers`` — as ``backbone(x, valid)`` does.
    """
    if prompt.dim() == 4:
        if all_layers:
            raise RecfmError("deep prompts give the last layer only: use a model whose "
                             "user_repr is last, mean_last, attention or last_attention")
        return prefix_backbone(backbone, x, prompt)
    B, T, d = x.shape
    k = prompt.size(0)
    p = prompt.to(x.dtype)[None].expand(B, k, d)  # (B, k, d)
    xp = torch.cat([p, x], dim=1)  # (B, k + T, d)
    vp = torch.cat([valid.new_ones(B, k), valid], dim=1)  # (B, k + T)
    out = backbone(xp, vp, all_layers=all_layers)
    if all_layers:
        return [h[:, k:] for h in out]
    return out[:, k:]  # (B, T, d)


def prefix_backbone(backbone: Backbone, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """``backbone`` over x after k *deep* prompt tokens: learned keys and values per layer.

    prompt: (2, n_layers, k, d) — keys ``prompt[0, l]`` and values ``prompt[1, l]`` of the
    k prompt positions in layer l, as a KV cache holds them (Li & Liang 2021, prefix tuning;
    Liu et al. 2022, P-Tuning v2). The history runs after that cache (positions k..), so
    the causal mask lets it see the whole prompt. Right padding is harmless: a padded
    position comes after every real one, which never attends to it. x: (B, T, d).
    """
    B, T, d = x.shape
    _, L, k, _ = prompt.shape
    H = backbone.blocks[0].attn.n_heads
    heads = prompt.to(x.dtype).view(2, L, k, H, d // H).transpose(2, 3)  # (2, L, H, k, Dh)
    past = KVCache([heads[0, i][None].expand(B, H, k, d // H) for i in range(L)],
                   [heads[1, i][None].expand(B, H, k, d // H) for i in range(L)])
    out, _ = backbone.extend(x, None, past)
    return out  # (B, T, d)


def prefix_from_tokens(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """(k, d) event embeddings → (2, n_layers, k, d): the keys and values they leave in a
    KV cache, i.e. the deep prompt equivalent to a history of those k events."""
    with torch.no_grad():
        _, cache = backbone.extend(x[None])
    k, d = x.shape
    keys = torch.stack([t[0].transpose(0, 1).reshape(k, d) for t in cache.keys])  # (L, k, d)
    values = torch.stack([t[0].transpose(0, 1).reshape(k, d) for t in cache.values])
    return torch.stack([keys, values])


# ----------------------------------------------------------------------------- storage


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise RecfmError(f"prompt name {name!r}: expected letters, digits, '_', '-' or '.' "
                         "(at most 64, starting with a letter or digit)")
    return name


def check_vectors(vectors: torch.Tensor, cfg: ModelConfig, name: str) -> torch.Tensor:
    """A prompt as a detached float32 tensor — (k, d) input tokens or (2, n_layers, k, d)
    deep ones — for a model of config ``cfg``; a clear error otherwise."""
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


def prompts_dir(model, path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    if model.run_dir is None:
        raise RecfmError("this model has no run directory (load it with from_pretrained) "
                         "to read prompts from; add one with fm.add_prompt(name, vectors)")
    return Path(model.run_dir) / PROMPTS_DIR


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


def read_prompt(model, name: str) -> torch.Tensor:
    """(k, d) vectors of prompt ``name`` from the model's run; a clear error if absent."""
    d = prompts_dir(model)
    path = d / f"{name}.safetensors"
    if not NAME_RE.match(name) or not path.is_file():
        known = sorted(set(model.prompts) | set(prompt_names(d.parent)))
        raise RecfmError(f"no prompt {name!r} in {d}: expected one of "
                         f"{', '.join(known) if known else '(none: train one with recfm prompt-tune)'}")
    return read_file(path, model.cfg, name)


def read_prompts(model, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Every prompt stored in ``path`` (default: the model's run ``prompts/``)."""
    d = prompts_dir(model, path)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    return {p.stem: read_file(p, model.cfg, p.stem) for p in files}


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
    tmp = d / f".{name}.safetensors.tmp"
    save_file({"prompt": vectors}, str(tmp), metadata={"recfm_prompt": json.dumps(meta)})
    tmp.replace(path)
    atomic_write_json(d / f"{name}.json", meta)
    return path


def weights_sha256(run: str | Path) -> str:
    """sha256 of the run's ``model.safetensors`` (the frozen foundation weights)."""
    h = hashlib.sha256()
    with open(Path(run) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor of ``model.state_dict()`` (names, shapes and bytes)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
