"""benchmarks/gpu.py in its tiny ``--smoke`` mode: every part runs on whatever device the
suite has (a CPU here) and writes its result file (issue 22.3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--work",
                          str(tmp_path / "work"), "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["beauty"]["epochs_run"] == 2 and 0 <= m["ndcg@10"] <= 1
    assert [s["d_model"] for s in m["sizes"]] == [16, 32, 48]
    assert all(s["tokens_per_s"] > 0 and s["mfu_pct"] > 0 for s in m["sizes"])
    assert m["eval"]["n_items"] == 5000 and m["eval"]["users"] > 0
    assert result["extra"]["smoke"] and result["extra"]["gpu"]["torch"]
