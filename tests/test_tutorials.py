"""The tutorials (docs/tutorials/*.md) run as written.

Each tutorial's raw files are written into a temporary folder in their exact published
format (MovieLens 100K, Amazon 2018 gzipped JSON lines, a warehouse CSV log in several
shapes); then the page's fenced blocks run in order:

- a ```bash block: each ``recfm …`` line runs as ``python -m recfm`` there and must exit 0;
  each ``curl …`` line is sent to the app the page's last ``recfm serve`` line would start
  (in-process, FastAPI's TestClient) and must answer 200;
- a ```json block right after a block of one such command: the answer must have the same
  shape (the same keys, recursively, and the same kinds of values; numbers may differ);
- ``<!-- test: skip -->`` before a block: not run (downloads, ``recfm serve``, which
  blocks); its ``recfm`` lines are still checked against the CLI's options;
- ``<!-- test: fails -->``: every command must exit 2, printing the ```text block that
  follows word for word;
- ``<!-- test: status N -->``: the request must answer N;
- ``<!-- test: file NAME -->``: the block is written to NAME (a config, a small data file).

To keep the file fast, ``recfm train`` gets a tiny ``--config`` (``--epochs 2`` when it
fine-tunes a run) and ``recfm content embed`` the hashed embedder; the pages say so.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import random
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import pytest
import typer.main
from fastapi.testclient import TestClient

from recfm.cli import app
from recfm.serve.app import create_app
from recfm.serve.config import ServeConfig, load_serve_config

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "docs" / "tutorials"
TINY = ("[model]\nd_model = 16\nn_layers = 1\nmax_len = 16\n\n"
        "[train]\nepochs = 1\nbatch_size = 64\ntensorboard = false\n")
TOKEN = "tutorial-token"  # RECFM_ADMIN_TOKEN while a page runs


# ----------------------------------------------------------------------------- the pages

@dataclass
class Block:
    lang: str
    text: str
    marks: list[str]
    line: int
    follows: bool  # directly after the previous block (nothing but blank lines between)


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the ``<!-- test: … -->`` marks just before them."""
    out: list[Block] = []
    marks: list[str] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    prose = True
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        mark = re.fullmatch(r"<!--\s*test:\s*(.*?)\s*-->", text)
        fence = re.fullmatch(r"```(\w*)", text)
        if mark:
            marks = [m.strip() for m in mark.group(1).split(";")]
            prose = True
        elif fence:
            start, indent = i, len(lines[i]) - len(lines[i].lstrip())
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            out.append(Block(fence.group(1), "\n".join(body) + "\n", marks, start + 1,
                             bool(out) and not prose))
            marks, prose = [], False
        elif text:
            prose = True
        i += 1
    return out


def commands(block: Block) -> list[list[str]]:
    """The shell commands of a bash block, split as the shell would (comments dropped)."""
    joined = block.text.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def mark(block: Block, name: str) -> str | None:
    for m in block.marks:
        key, _, value = m.partition(" ")
        if key == name:
            return value.strip()
    return None


# ----------------------------------------------------------------------------- running them

def cli_options() -> dict[tuple[str, ...], set[str]]:
    """Every recfm command (as its words) → the options it takes."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))
        out[path] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}

    walk(typer.main.get_command(app), ())
    return out


def check_options(words: list[str], known: dict[tuple[str, ...], set[str]], where: str) -> None:
    """The command exists and takes every option the line gives it."""
    path = ()
    for w in words[1:]:
        if (*path, w) not in known:
            break
        path = (*path, w)
    assert path, f"{where}: no recfm command in {shlex.join(words)}"
    for w in words[1 + len(path):]:
        if w.startswith("--"):
            assert w.split("=")[0] in known[path], f"{where}: recfm {' '.join(path)} has no {w}"


def tiny(args: list[str], folder: Path) -> list[str]:
    """The test's own sizes: a tiny model, few epochs, the hashed text embedder."""
    if args[0] == "train" and "--config" not in args:
        if "--init-from" in args:
            return [*args, "--epochs", "2"]
        (folder / ".tiny.toml").write_text(TINY)
        return [*args, "--config", ".tiny.toml"]
    if args[:2] == ["content", "embed"] and "--embedder" not in args:
        return [*args, "--embedder", "hash:64"]
    return args


def recfm(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RECFM_CACHE_DIR": str(folder / ".cache"),
           "OMP_NUM_THREADS": "1"}  # one thread: steady times on a shared machine
    return subprocess.run([sys.executable, "-m", "recfm", *tiny(args, folder)], cwd=folder,
                          capture_output=True, text=True, timeout=300, env=env, check=False)


def same_shape(doc, got, where: str) -> None:
    """``got`` has ``doc``'s keys, recursively, and the same kinds of values."""
    if isinstance(doc, dict):
        assert isinstance(got, dict), f"{where}: expected an object, found {got!r:.200}"
        assert set(doc) == set(got), f"{where}: keys {sorted(doc)} documented, {sorted(got)} found"
        for k in doc:
            same_shape(doc[k], got[k], f"{where}.{k}")
    elif isinstance(doc, list):
        assert isinstance(got, list), f"{where}: expected a list, found {got!r:.200}"
        if doc and got:
            for i, d in enumerate(doc):
                same_shape(d, got[min(i, len(got) - 1)], f"{where}[{i}]")
    elif doc is None or got is None:
        assert doc is got, f"{where}: {doc!r} documented, {got!r:.200} found"
    else:
        kind = (lambda v: "number" if isinstance(v, (int, float)) and not isinstance(v, bool)
                else type(v).__name__)
        assert kind(doc) == kind(got), f"{where}: {doc!r} documented, {got!r:.200} found"


def metrics_excerpt(doc: str, got: str, where: str) -> None:
    """Each documented comment line is in the answer as it is, and each sample's metric
    (with its labels, values aside) has a line there."""
    lines = got.splitlines()
    for line in doc.splitlines():
        if line.startswith("#"):
            assert line in lines, f"{where}: {line!r} documented, not in\n{got[:3000]}"
        elif line.strip():
            series = line.rsplit(" ", 1)[0]
            if "version=" in series:  # the model's hash differs from run to run
                series = series.split("version=")[0]
            assert any(g.startswith(series) for g in lines), \
                f"{where}: no {series!r} in\n{got[:3000]}"


class Server:
    """The app a page's ``recfm serve RUN [--config C] [--data D]`` line would start."""

    def __init__(self, words: list[str], folder: Path) -> None:
        args = words[2:]
        opts = dict(zip(args[1::2], args[2::2]))
        cfg = load_serve_config(folder / opts["--config"]) if "--config" in opts else ServeConfig()
        data = folder / opts["--data"] if "--data" in opts else None
        self.client = TestClient(create_app(folder / args[0], cfg, data))
        self.client.__enter__()

    def request(self, words: list[str]):
        method, headers, body, url = None, {}, None, None
        it = iter(words[1:])
        for w in it:
            if w in ("-H", "--header"):
                name, _, value = os.path.expandvars(next(it)).partition(":")
                headers[name.strip()] = value.strip()
            elif w in ("-d", "--data"):
                body = next(it)
            elif w in ("-X", "--request"):
                method = next(it)
            elif not w.startswith("-"):
                url = w
        parts = urlsplit(url if "://" in url else f"http://{url}")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.client.request(method or ("POST" if body is not None else "GET"), path,
                                   content=body, headers=headers)

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@dataclass
class Page:
    """What running a page produced: each command's words and its result."""

    name: str
    folder: Path
    results: list[tuple[list[str], object]] = field(default_factory=list)

    def output(self, *words: str) -> str:
        """The stdout of the first recfm command that starts with ``words``."""
        for cmd, res in self.results:
            if cmd[1:1 + len(words)] == list(words):
                return res.stdout
        raise AssertionError(f"{self.name}: no command recfm {' '.join(words)}")


def run_command(words: list[str], block: Block, answer: Block | None, folder: Path,
                server: Server | None, at: str):
    """Run one line of a bash block as the page says it behaves; its result."""
    if words[0] == "recfm":
        res = recfm(words[1:], folder)
        if "fails" in block.marks:
            assert res.returncode == 2, \
                f"{at}: {shlex.join(words)} did not fail: {res.stdout[-2000:]}"
            assert answer is not None and answer.lang == "text", \
                f"{at}: a failing command is followed by its error (```text)"
            assert " ".join(answer.text.split()) in " ".join(res.stderr.split()), \
                f"{at}: documented\n{answer.text}\nprinted\n{res.stderr}"
        else:
            assert res.returncode == 0, \
                f"{at}: {shlex.join(words)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res
    if words[0] == "curl":
        assert server is not None, f"{at}: a curl before any `recfm serve` line"
        res = server.request(words)
        status = int(mark(block, "status") or 200)
        assert res.status_code == status, \
            f"{at}: {shlex.join(words)} answered {res.status_code}: {res.text[:2000]}"
        return res
    raise AssertionError(f"{at}: a command the test cannot run: {words[0]}")


def run_page(name: str, folder: Path) -> Page:
    """Run the blocks of ``docs/tutorials/NAME`` in order in ``folder`` (see the module doc)."""
    page = Page(name, folder)
    known = cli_options()
    server: Server | None = None
    all_blocks = blocks(TUTORIALS / name)
    old_cwd, old_token = Path.cwd(), os.environ.get("RECFM_ADMIN_TOKEN")
    os.chdir(folder)  # paths in reload requests are the server's: relative to its folder
    os.environ["RECFM_ADMIN_TOKEN"] = TOKEN
    try:
        for i, block in enumerate(all_blocks):
            at = f"docs/tutorials/{name}:{block.line}"
            nxt = all_blocks[i + 1] if i + 1 < len(all_blocks) else None
            answer = nxt if nxt is not None and nxt.follows and not nxt.marks else None
            if mark(block, "file") is not None:
                (folder / mark(block, "file")).write_text(block.text, encoding="utf-8")
                continue
            if block.lang != "bash":
                continue
            cmds = commands(block)
            for words in cmds:
                if words[0] == "recfm":
                    check_options(words, known, at)
            if "skip" in block.marks:
                for words in cmds:
                    if words[:2] == ["recfm", "serve"]:
                        if server is not None:
                            server.close()
                        server = Server(words, folder)
                continue
            for words in cmds:
                res = run_command(words, block, answer, folder, server, at)
                page.results.append((words, res))
            if answer is not None and answer.lang == "json" and len(cmds) == 1:
                got = res.json() if words[0] == "curl" else json.loads(res.stdout)
                same_shape(json.loads(answer.text), got, f"{at} answer")
            elif answer is not None and answer.lang == "text" and cmds[-1][0] == "curl":
                metrics_excerpt(answer.text, res.text, f"{at} answer")
    finally:
        if server is not None:
            server.close()
        os.chdir(old_cwd)
        if old_token is None:
            os.environ.pop("RECFM_ADMIN_TOKEN", None)
        else:
            os.environ["RECFM_ADMIN_TOKEN"] = old_token
    return page


# ----------------------------------------------------------------------------- raw files

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
# Movies the pages name: id → (title, release date, genre flag positions).
MOVIES = {1: ("Toy Story (1995)", "01-Jan-1995", (3, 4, 5)),
          50: ("Star Wars (1977)", "01-Jan-1977", (1, 2, 14, 15, 17)),
          71: ("Lion King, The (1994)", "01-Jan-1994", (3, 4, 12)),
          95: ("Aladdin (1992)", "01-Jan-1992", (3, 4, 5, 12)),
          99: ("Snow White and the Seven Dwarfs (1937)", "01-Jan-1937", (3, 4, 12)),
          102: ("Aristocats, The (1970)", "01-Jan-1970", (3, 4)),
          267: ("unknown", "", (0,)),
          300: ("Air Force One (1997)", "01-Jan-1997", (1, 16)),
          302: ("L.A. Confidential (1997)", "01-Jan-1997", (6, 10, 13, 16)),
          313: ("Titanic (1997)", "01-Jan-1997", (1, 8, 14)),
          1144: ("Misérables, Les (1995)", "01-Jan-1995", (8, 17))}


def write_ml100k(folder: Path, n_users: int = 120, n_items: int = 320, per_user: int = 30) -> None:
    """u.data (tab-separated, no header, not sorted), u.item ('|', latin-1, 19 genre flags),
    u.genre and u.user, as in ml-100k.zip."""
    rnd = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [*range(1, n_items + 1), 1144]
    ratings = []
    for user in range(1, n_users + 1):
        t, pos = 874_700_000 + rnd.randrange(5_000_000), rnd.randrange(len(ids))
        for _ in range(per_user):
            pos = pos + 1 if rnd.random() < 0.8 else rnd.randrange(len(ids))
            t += rnd.randrange(60, 86_400)
            ratings.append(f"{user}\t{ids[pos % len(ids)]}\t{rnd.randint(1, 5)}\t{t}")
    rnd.shuffle(ratings)
    (folder / "u.data").write_text("\n".join(ratings) + "\n")
    rows = []
    for i in ids:
        year = 1950 + i % 48
        title, date, flags = MOVIES.get(i, (f"Movie {i} ({year})", f"01-Jan-{year}",
                                            (1 + i % 18, 1 + i * 7 % 18)))
        url = "" if i == 267 else "http://us.imdb.com/M/title-exact?" + title.replace(" ", "%20")
        rows.append("|".join([str(i), title, date, "", url,
                              *("1" if g in flags else "0" for g in range(19))]))
    (folder / "u.item").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K))
                                    + "\n")
    jobs = ("student", "engineer", "writer", "educator", "technician", "other")
    (folder / "u.user").write_text("".join(
        f"{u}|{rnd.randint(12, 70)}|{rnd.choice('MF')}|{rnd.choice(jobs)}|"
        f"{rnd.randint(10000, 99999)}\n" for u in range(1, n_users + 1)))


MARKUP = '<span class="a-size-medium a-color-secondary"'


def write_gz(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def review(user: str, asin: str, ts: int, stars: int) -> dict:
    day = dt.datetime.fromtimestamp(ts, dt.UTC)
    return {"overall": float(stars), "verified": True,
            "reviewTime": f"{day.month:02d} {day.day}, {day.year}", "reviewerID": user,
            "asin": asin, "style": {"Format:": " Video Game"}, "reviewerName": "Sam",
            "reviewText": "Works well.", "summary": "Five Stars", "unixReviewTime": ts}


def write_amazon(folder: Path, n_users: int = 80, n_items: int = 60, per_user: int = 8) -> None:
    """Video_Games_5.json.gz (2018 reviews) and meta_Video_Games.json.gz (2018 metadata):
    every fifth title only markup, one asin listed twice, two reviews of an unknown asin."""
    rnd = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    asins = ["B00004SVV9", "B00005NZ1G",  # the asins of the page's new customer
             *(f"B00{rnd.randrange(16**7):07X}" for _ in range(n_items - 2))]
    paths = (["PC", "Accessories", "Gaming Mice"], ["Nintendo Switch", "Games"],
             ["PlayStation 4", "Games"], ["Xbox One", "Accessories", "Controllers"])
    meta = [{"category": ["Video Games", *paths[i % 4]], "tech1": "",
             "description": [(f"<p>Quest {i} &amp; its expansion, remastered for a new "
                              "generation of players.</p>")],
             "fit": "", "title": MARKUP if i % 5 == 0 else f"Adventure Quest {i} &amp; Friends",
             "also_buy": [asins[(i + 1) % n_items]], "brand": "Nintendo" if i % 2 else "Logitech",
             "feature": [], "rank": [f">#{1000 + i} in Video Games (See top 100)"],
             "main_cat": "Video Games", "price": f"${10 + i}.99", "asin": asin}
            for i, asin in enumerate(asins)]
    meta.insert(7, {**meta[3], "description": [], "brand": "", "category": []})  # a poorer repeat
    users = ["A1HP7NVNPFMA4N", *(f"A{rnd.randrange(36**12):012X}" for _ in range(n_users - 1))]
    reviews = []
    for user in users:
        t, pos = 1_420_000_000 + 86_400 * rnd.randrange(300), rnd.randrange(n_items)
        for _ in range(per_user):
            pos = pos + 1 if rnd.random() < 0.8 else rnd.randrange(n_items)
            t += 86_400 * rnd.randrange(1, 20)
            reviews.append(review(user, asins[pos % n_items], t, rnd.randint(1, 5)))
    reviews.insert(10, review(users[1], "B000FQ9R4E", 1_500_000_000, 4))  # not in the metadata
    reviews.insert(50, review(users[5], "B000FQ9R4E", 1_500_100_000, 5))
    write_gz(folder / "Video_Games_5.json.gz", reviews)
    write_gz(folder / "meta_Video_Games.json.gz", meta)


ADJECTIVES = ("Silent", "Last", "Northern", "Hidden", "Broken", "Golden", "Little", "Midnight")
NOUNS = ("Harbour", "Orchard", "Signal", "Garden", "Frontier", "Lantern", "Island", "Winter",
         "Circus", "Archive")
LOG_GENRES = ("Drama", "Comedy", "Documentary", "Kids", "Thriller", "Romance")


def write_log(folder: Path, n_users: int = 100, n_items: int = 80, per_user: int = 20) -> None:
    """plays.csv (a warehouse's own column names, ISO-8601 times) and titles.csv, and the
    same log as plays.csv.gz, plays.parquet, export.csv (';', cp1252, CRLF) and plays.txt
    (tab-separated, no header)."""
    rnd = random.Random(2)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["member_id,title_id,event_time,event,seconds,device,country"]
    for u in range(n_users):
        t = dt.datetime(2024, 1, 1) + dt.timedelta(hours=rnd.randrange(24 * 60))
        item = rnd.randrange(n_items)
        device, country = rnd.choice(("tv", "phone", "web")), rnd.choice(("SE", "DE", "FR", "US"))
        for _ in range(per_user):
            item = (item + 1) % n_items if rnd.random() < 0.8 else rnd.randrange(n_items)
            t += dt.timedelta(minutes=rnd.randrange(30, 3000))
            rows.append(f"{100_000 + u},{80_000 + item},{t:%Y-%m-%dT%H:%M:%SZ},"
                        f"{rnd.choice(('play', 'play', 'complete', 'trailer'))},"
                        f"{rnd.randrange(60, 5400)},{device},{country}")
    (folder / "plays.csv").write_text("\n".join(rows) + "\n")
    titles = ["id,name,genre_list,year,kids"]
    for i in range(n_items):
        genres = sorted({LOG_GENRES[i % 6], LOG_GENRES[(i // 2 + 3) % 6]})
        titles.append(f"{80_000 + i},The {ADJECTIVES[i % 8]} {NOUNS[i // 8]},"
                      f"{'|'.join(genres)},{1990 + i % 35},{str('Kids' in genres).lower()}")
    (folder / "titles.csv").write_text("\n".join(titles) + "\n")
    (folder / "plays.csv.gz").write_bytes(gzip.compress((folder / "plays.csv").read_bytes()))
    pl.read_csv(folder / "plays.csv").write_parquet(folder / "plays.parquet")
    export = [r.replace(",", ";").replace(";tv;", ";Télé;") for r in rows]
    (folder / "export.csv").write_bytes(("\r\n".join(export) + "\r\n").encode("cp1252"))
    (folder / "plays.txt").write_text("\n".join(r.replace(",", "\t") for r in rows[1:]) + "\n")


# ----------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> Page:
    folder = tmp_path_factory.mktemp("movielens")
    write_ml100k(folder / "ml-100k")
    return run_page("movielens.md", folder)


@pytest.fixture(scope="module")
def own_log(tmp_path_factory) -> Page:
    folder = tmp_path_factory.mktemp("own-log")
    write_log(folder)
    return run_page("your-own-log.md", folder)


def test_movielens(movielens):
    folder = movielens.folder
    items = pl.read_parquet(folder / "prep" / "items.parquet")
    toy, les = (items.filter(pl.col("item_id") == i).row(0, named=True) for i in ("1", "1144"))
    assert (toy["title"], toy["release_year"]) == ("Toy Story", 1995)
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]  # u.item's flags, u.genre's names
    assert les["title"] == "Misérables, Les"  # latin-1
    facets = json.loads((folder / "prep" / "tokenizer.json").read_text())["facets"]
    assert set(facets) == {"action", "age_group", "gender", "occupation"}  # u.user's, per event
    generic = pl.read_parquet(folder / "prep2" / "items.parquet")
    toy2 = generic.filter(pl.col("item_id") == "1").row(0, named=True)
    assert (toy2["title"], toy2["genres"]) == ("Toy Story (1995)", toy["genres"])
    recs = pl.read_parquet(folder / "recs.parquet")
    assert recs.height == 120 * 100 and recs["user_id"].n_unique() == 120
    assert "top 10 for 944 (new.data)" in movielens.output("recommend", "run", "--events")


def test_daily(movielens):
    page = run_page("daily.md", movielens.folder)
    folder = page.folder
    added = json.loads((folder / "base-0602" / "config.json").read_text())["added_items"][-1]
    assert (added["added"], added["init"], added["embedder"]) == (2, "scaled", "hash:64")
    for words, res in page.results:
        if words[0] == "curl":  # the family surface answers with the row's titles only
            for item in res.json()["items"]:
                assert {"Children's", "Animation"} & set(item["genres"]), item
    assert (folder / "base-0602-tuned" / "model.safetensors").is_file()


def test_amazon(tmp_path):
    write_amazon(tmp_path)
    page = run_page("amazon.md", tmp_path)
    report = json.loads((tmp_path / "prep" / "report.json").read_text())
    assert report["dropped"]["item_not_in_catalog"] == 2
    adapter = report["adapter"]
    assert (adapter["unknown_items"], adapter["duplicate_items_dropped"]) == (1, 1)
    assert adapter["root_category"] == "Video Games" and adapter["titles_from_fallback"] == 12
    titles = pl.read_parquet(tmp_path / "prep" / "items.parquet")["title"].to_list()
    assert "Adventure Quest 1 & Friends" in titles and not any("<" in t for t in titles)
    assert not (tmp_path / "prep-strict").exists()  # --strict refused: nothing written
    assert "top 10 for NEWCUSTOMER" in page.output("recommend", "run", "--events")


def test_your_own_log(own_log):
    folder = own_log.folder
    counts = {p: json.loads((folder / p / "report.json").read_text())["events_in"]
              for p in ("prep", "prep-gz", "prep-parquet", "prep-export", "prep-txt")}
    assert set(counts.values()) == {2000}, counts
    items = pl.read_parquet(folder / "prep" / "items.parquet")
    assert {"title", "genres", "release_year", "kids"} <= set(items.columns)
    assert not (folder / "prep-bad").exists()
    assert "top 10 for 200001" in own_log.output("recommend", "run", "--events")


def test_serving(own_log):
    page = run_page("serving.md", own_log.folder)
    assert sum(words[0] == "curl" for words, _ in page.results) >= 12
