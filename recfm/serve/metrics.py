"""Prometheus text-format metrics (exposition format 0.0.4), in-process and thread-safe:
small enough to need no client library."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, cum = [], 0
        for b, c in zip(self.buckets, self.counts):
            cum += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {cum}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.n}"]
        return out


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.reloads: dict[str, int] = defaultdict(int)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            h = self.latency.get((method, path))
            if h is None:
                h = self.latency[(method, path)] = Histogram(LATENCY_BUCKETS)
            h.observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch.observe(size)

    def observe_reload(self, outcome: str) -> None:
        with self._lock:
            self.reloads[outcome] += 1

    def render(self, gauges: dict[str, tuple[str, float]], info: dict[str, str],
               cache_lookups: dict[str, int]) -> str:
        lines = ["# HELP recfm_requests_total HTTP requests by method, route and status.",
                 "# TYPE recfm_requests_total counter"]
        with self._lock:
            for (m, p, s), n in sorted(self.requests.items()):
                lines.append(f'recfm_requests_total{{method="{m}",route="{_escape(p)}",'
                             f'status="{s}"}} {n}')
            lines += ["# HELP recfm_request_duration_seconds Request latency by route.",
                      "# TYPE recfm_request_duration_seconds histogram"]
            for (m, p), h in sorted(self.latency.items()):
                lines += h.lines("recfm_request_duration_seconds",
                                 f'method="{m}",route="{_escape(p)}"')
            lines += ["# HELP recfm_batch_size Requests per micro-batch run by the model.",
                      "# TYPE recfm_batch_size histogram"]
            lines += self.batch.lines("recfm_batch_size", "")
            lines += ["# HELP recfm_reloads_total Hot reloads by outcome.",
                      "# TYPE recfm_reloads_total counter"]
            for outcome, n in sorted(self.reloads.items()):
                lines.append(f'recfm_reloads_total{{outcome="{outcome}"}} {n}')
        lines += ["# HELP recfm_user_state_cache_lookups_total User-state cache lookups.",
                  "# TYPE recfm_user_state_cache_lookups_total counter"]
        for result, n in sorted(cache_lookups.items()):
            lines.append(f'recfm_user_state_cache_lookups_total{{result="{result}"}} {n}')
        for name, (help_text, value) in sorted(gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(info.items()))
        lines += ["# HELP recfm_model_info The model being served.",
                  "# TYPE recfm_model_info gauge", f"recfm_model_info{{{labels}}} 1"]
        return "\n".join(lines) + "\n"
