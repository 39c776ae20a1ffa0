"""Per-operation latency metrics of one client: counts, errors, percentiles, slow operations.

Recording costs two clock reads and a lock (~1 us), so every public data method of the client is
timed. Percentiles come from the most recent :data:`WINDOW` latencies of each operation (a
bounded window, so memory stays constant however long an agent runs); counts and totals cover
the client's whole life. Slow operations (over the threshold) keep the last :data:`SLOW_KEPT`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import WouldWaitError

WINDOW = 2048
SLOW_KEPT = 100
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class _Op:
    count: int = 0
    errors: int = 0
    total: float = 0.0
    worst: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


class Metrics:
    """Thread-safe recorder; :meth:`snapshot` returns plain dicts (milliseconds)."""

    def __init__(self, slow_ms: float) -> None:
        self.slow_ms = slow_ms
        self._ops: dict[str, _Op] = {}
        self._slow: deque[dict[str, Any]] = deque(maxlen=SLOW_KEPT)
        self._lock = threading.Lock()

    def record(self, operation: str, seconds: float, failed: bool) -> None:
        with self._lock:
            op = self._ops.get(operation)
            if op is None:
                op = self._ops[operation] = _Op()
            op.count += 1
            op.errors += failed
            op.total += seconds
            op.worst = max(op.worst, seconds)
            op.recent.append(seconds)
            if seconds * 1000 >= self.slow_ms:
                self._slow.append({"operation": operation, "ms": round(seconds * 1000, 3), "at": time.time()})

    def snapshot(self) -> dict[str, Any]:
        """``avg_query_time`` (seconds, over every operation), per-operation counts, errors and
        p50/p95/p99/max in ms, and the slow operations (newest last)."""
        with self._lock:
            ops = {name: (op.count, op.errors, op.total, op.worst, sorted(op.recent)) for name, op in self._ops.items()}
            slow = list(self._slow)
        count = sum(o[0] for o in ops.values())
        total = sum(o[2] for o in ops.values())
        return {
            "avg_query_time": total / count if count else 0.0,
            "operations": {
                name: {
                    "count": n,
                    "errors": errors,
                    "avg_ms": total_s / n * 1000,
                    "p50_ms": _percentile(recent, 0.50),
                    "p95_ms": _percentile(recent, 0.95),
                    "p99_ms": _percentile(recent, 0.99),
                    "max_ms": worst * 1000,
                }
                for name, (n, errors, total_s, worst, recent) in sorted(ops.items())
            },
            "slow_operations": slow,
            "slow_threshold_ms": self.slow_ms,
        }


def timed(method: F) -> F:
    """Record each call's latency (and whether it raised) in ``self._metrics``, under the
    method's name. Marks the method ``is_timed``, which a test checks on every public method."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = method(self, *args, **kwargs)
        except WouldWaitError:
            raise  # not a call of the user's: the asyncio client runs it again (and counts it then)
        except BaseException:
            self._metrics.record(method.__name__, time.perf_counter() - started, True)
            raise
        self._metrics.record(method.__name__, time.perf_counter() - started, False)
        return result

    wrapper.is_timed = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index] * 1000
