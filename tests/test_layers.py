"""The import contract of pyproject.toml ([tool.importlinter]): layers, no cycles.

A module may import only from the layers below its own (recfm.cli at the top, the plain
helpers at the bottom), and no package's modules import each other in a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_keep_the_layers_and_have_no_cycles():
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def _recfm_imports(path: Path):
    """(line, module, names, at top level) of every ``from recfm… import …`` in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recfm"):
            yield node.lineno, node.module, [a.name for a in node.names], id(node) in top


def test_no_private_name_crosses_a_package_and_imports_sit_at_the_top():
    """STYLE: ``_private`` names stay inside their package; recfm imports are at the top of
    the file — except in the command line, whose commands import the library they call
    (start-up time, see recfm/cli/__init__.py), and recfm.serve's FastAPI app, which says
    why in a comment."""
    problems = []
    for path in sorted((ROOT / "recfm").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parts[:2])
        for line, module, names, at_top in _recfm_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and not module.startswith(package):
                problems.append(f"{where}: {module}.{private[0]} is private to its package")
            deferred_ok = package == "recfm.cli" or \
                path.relative_to(ROOT).as_posix() == "recfm/serve/__init__.py"
            if not at_top and not deferred_ok:
                problems.append(f"{where}: import of {module} inside a function")
    assert not problems, "\n".join(problems)


def test_the_command_line_starts_without_the_heavy_libraries():
    """issue 19.12: ``recfm --help`` took 2-3 s loading torch and polars it did not need."""
    code = ("import sys, recfm.cli; heavy = sorted({'torch', 'polars', 'pyarrow', 'numpy', "
            "'fastapi', 'uvicorn'} & set(sys.modules)); print(heavy); assert not heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
