"""`recfm content embed` and `recfm add-items`: item content vectors, new titles in a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from recfm.cli.output import JSON, OVERWRITE, at_least_one, console, json_mode, print_json, steps

content_app = typer.Typer(no_args_is_help=True, help="Item content: text / attribute embeddings.")


def register(app: typer.Typer) -> None:
    app.add_typer(content_app, name="content")
    app.command("add-items")(add_items_cmd)


@content_app.command("embed")
def content_embed(
    data_dir: Path = typer.Argument(..., help="A prepared dataset directory."),
    embedder: Optional[str] = typer.Option(None, help="minilm, hash:D, attributes:D or "
                                           "file:PATH (default: minilm for catalogs with text, "
                                           "attributes:256 for attribute ids only)."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder "
                                         "(default: $RECFM_CACHE_DIR or ~/.cache/recfm)."),
    as_json: bool = JSON,
) -> None:
    """Embed every item's content; `recfm train` then combines it with the id embeddings."""
    json_mode(as_json)
    from recfm.content.store import embed_dataset
    with steps("content") as on_step:
        meta = embed_dataset(data_dir, embedder, cache, on_step=on_step)
    hits = f", {meta['cache_hits']:,} from the cache" if meta.get("cache_hits") else ""
    console.print(f"wrote {data_dir / 'content.parquet'}: {meta['items']:,} items × "
                  f"{meta['dim']} ({meta['embedder']}{hits}; {meta['items_without_content']:,} "
                  f"without content) in {meta['wall_s']:.1f} s")
    if as_json:
        print_json(meta)


def add_items_cmd(
    run: Path = typer.Argument(..., help="A run directory."),
    items: Path = typer.Option(..., help="Catalog file of the new items (Parquet, CSV, JSONL)."),
    out: Path = typer.Option(..., help="New run directory to write."),
    init: str = typer.Option("scaled", help="Id embeddings of new items: scaled (content "
                             "alone, as long as a trained item's vector; zero where it does "
                             "not apply), zero (content alone), "
                             "neighbours (mean of the nearest items in content space), "
                             "content (ridge map from content) or random."),
    k: int = typer.Option(10, help="Neighbours averaged by --init neighbours.",
                          callback=at_least_one("--k")),
    embedder: Optional[str] = typer.Option(None, help="For a run without content: the "
                                           "embedder used by --init content / neighbours."),
    vectors: Optional[Path] = typer.Option(None, help="The new items' vectors, for a run "
                                           "trained on your own vectors (file:...)."),
    cache: Optional[Path] = typer.Option(None, help="Embedding cache folder."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Add new titles to a run without retraining; existing items keep ids and weights."""
    json_mode(as_json)
    from recfm.adapt.new_items import add_items
    with steps("adding items") as on_step:
        rep = add_items(run, items, out, init=init, k=k, embedder=embedder, vectors=vectors,
                        cache_dir=cache, on_step=on_step, overwrite=overwrite)
    console.print(f"wrote {out}: {rep['added']:,} new items ({rep['skipped_existing']:,} "
                  f"already known), {rep['n_items_after']:,} in all; init {rep['init']}, "
                  f"content {rep['embedder'] or 'none'}; {rep['wall_s']:.1f} s")
    if as_json:
        print_json(rep)
