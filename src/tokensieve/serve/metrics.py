"""Prometheus text-format metrics, hand-rolled (no extra dependency): requests and errors per
path and status, tokens in / out, and a latency histogram per path."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KNOWN_PATHS = ("/", "/health", "/metrics", "/v1/compress", "/v1/score", "/v1/methods",
               "/v1/chat/completions")
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def path_label(path: str) -> str:
    """Bounded label values: the page's files share ``/static``, unknown paths ``other``."""
    if path.startswith("/static/"):
        return "/static"
    return path if path in KNOWN_PATHS else "other"


def method_label(method: str) -> str:
    """Bounded label values: any method name a client invents is ``other``."""
    return method if method in KNOWN_METHODS else "other"


class Metrics:
    """Thread-safe counters; :meth:`render` gives the Prometheus exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, int], int] = defaultdict(int)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        label = path_label(path)
        with self._lock:
            self.requests[(method_label(method), label, status)] += 1
            if status >= 400:
                self.errors[(label, status)] += 1
            counts = self.hist[label]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self.hist_sum[label] += seconds

    def add_tokens(self, endpoint: str, before: int, after: int) -> None:
        with self._lock:
            self.tokens[(endpoint, "in")] += int(before)
            self.tokens[(endpoint, "out")] += int(after)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP tokensieve_requests_total HTTP requests handled.",
                     "# TYPE tokensieve_requests_total counter"]
            for (m, p, s), n in sorted(self.requests.items()):
                lines.append(f'tokensieve_requests_total{{method="{m}",path="{p}",'
                             f'status="{s}"}} {n}')
            lines += ["# HELP tokensieve_errors_total HTTP responses with status >= 400.",
                      "# TYPE tokensieve_errors_total counter"]
            for (p, s), n in sorted(self.errors.items()):
                lines.append(f'tokensieve_errors_total{{path="{p}",status="{s}"}} {n}')
            lines += ["# HELP tokensieve_tokens_total Tokens before (in) and after (out) "
                      "compression.", "# TYPE tokensieve_tokens_total counter"]
            for (e, d), n in sorted(self.tokens.items()):
                lines.append(f'tokensieve_tokens_total{{endpoint="{e}",direction="{d}"}} {n}')
            lines += ["# HELP tokensieve_in_flight Requests being handled now.",
                      "# TYPE tokensieve_in_flight gauge", f"tokensieve_in_flight {self.in_flight}",
                      "# HELP tokensieve_request_seconds Request latency.",
                      "# TYPE tokensieve_request_seconds histogram"]
            for p in sorted(self.hist):
                counts, acc = self.hist[p], 0
                for bound, c in zip(BUCKETS, counts, strict=False):
                    acc += c
                    lines.append(f'tokensieve_request_seconds_bucket{{path="{p}",le="{bound}"}}'
                                 f" {acc}")
                acc += counts[-1]
                lines.append(f'tokensieve_request_seconds_bucket{{path="{p}",le="+Inf"}} {acc}')
                lines.append(f'tokensieve_request_seconds_sum{{path="{p}"}} '
                             f"{self.hist_sum[p]:.6f}")
                lines.append(f'tokensieve_request_seconds_count{{path="{p}"}} {acc}')
        return "\n".join(lines) + "\n"
