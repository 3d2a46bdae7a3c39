"""Markdown tables of ``results/scale.json``'s attention and catalog parts.

Apart from :mod:`benchmarks.scale` so that :mod:`benchmarks.scaling`, which writes the
same results file, renders them without importing the module that runs it.
"""

from __future__ import annotations

from typing import Any


def rows_window(rows: list[dict[str, Any]]) -> Any:
    return next((r.get("window") for r in rows if r.get("window")), "?")


def rows_globals(rows: list[dict[str, Any]]) -> Any:
    return next((r.get("n_global") for r in rows if r.get("n_global") is not None), "?")


def tables(res: dict[str, Any]) -> str:
    lines = []
    att = res.get("attention") or []
    if att:
        s = res.get("attention_summary", {})
        lines.append(f"**Attention vs sequence length** (one training step, batch 1, d 64, "
                     f"2 layers; fresh process per point; sparse = window "
                     f"{rows_window(att)} + {rows_globals(att)} global). Sparse memory at "
                     f"8,192 / (8 × at 1,024) = {s.get('sparse_mem_8192_over_8x_1024')}; "
                     f"dense: {s.get('dense_mem_8192_over_8x_1024')}. Plot: "
                     "`results/scale_attention.png`.\n")
        lines.append("| seq len | dense MB | dense s/step | sparse MB | sparse s/step |")
        lines.append("|---:|---:|---:|---:|---:|")
        by = {(r["impl"], r["seq_len"]): r for r in att}
        for L in sorted({r["seq_len"] for r in att}):
            d, sp = by.get(("dense", L), {}), by.get(("sparse", L), {})
            lines.append(f"| {L:,} | {_f(d.get('peak_mb'))} | {_f(d.get('s_per_step'), 3)} | "
                         f"{_f(sp.get('peak_mb'))} | {_f(sp.get('s_per_step'), 3)} |")
        lines.append("")
    cat = res.get("catalog") or []
    if cat:
        lines.append("**Catalog size** (synthetic world, 5,000 users; one full epoch + the "
                     "loop's validation/test, full ranking streamed in item chunks; peak RSS "
                     "of the whole process):\n")
        lines.append("| items | peak MB | tokens/s | epoch s | valid NDCG@10 | params |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for r in cat:
            lines.append(f"| {r['items']:,} | {_f(r.get('peak_mb'))} | "
                         f"{_f(r.get('tokens_per_s'))} | {_f(r.get('epoch_train_s'))} | "
                         f"{_f(r.get('valid_ndcg@10'), 4)} | {_f(r.get('n_params'))} |")
        lines.append("")
    return "\n".join(lines)


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"
