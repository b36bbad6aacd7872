"""One retry policy for the whole testbed: exponential backoff, optionally with jitter.

Every loop that waits before trying again (the client reconnecting to the broker, the
ingest waiting out a database outage, the agent runtime re-running a failed handler,
the orchestrator polling a program that is starting) takes its delays from a
``Backoff``, so that the schedule is written once and tested once.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial``, ``initial*factor``, ... capped at ``maximum``.

    With ``jitter`` each delay is drawn from ``[d/2, d]`` ("equal jitter"), so that many
    clients cut off by the same outage do not all come back in the same instant.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: bool = False
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and factor >= 1, "
                f"got initial={self.initial}, maximum={self.maximum}, factor={self.factor}"
            )
        self._next = self.initial

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._next = self.initial

    @property
    def upcoming(self) -> float:
        """The delay the next call to ``next_delay`` is based on (before jitter)."""
        return self._next

    def next_delay(self) -> float:
        """The delay to wait now; the one after it grows by ``factor``."""
        delay = self._next
        self._next = min(delay * self.factor, self.maximum)
        return random.uniform(delay / 2, delay) if self.jitter else delay

    def for_attempt(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based), without changing state."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        delay = min(self.initial * self.factor ** (attempt - 1), self.maximum)
        return random.uniform(delay / 2, delay) if self.jitter else delay

    def wait(self, stop: threading.Event) -> bool:
        """Sleep for the next delay unless ``stop`` is set first; True if it was."""
        return stop.wait(self.next_delay())
