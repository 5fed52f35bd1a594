"""The membership feed's two per-answer questions, answered without three
database reads and two file reads each time (SPEC §5.1, §8).

Every answer a member gives, and every report a querier reads, asks the feed
"is your view fresh?" and "which generation is it?" (trust decisions are
cached per generation). Asked directly, that cost ≈ 1.5 ms of CPU per answer,
more than the rest of the answer path's crypto. ``FeedMemo`` wraps a feed:

- freshness stays exact: a view proven ``age`` seconds ago cannot turn stale
  before ``max_age_s − age`` seconds have passed, so "fresh" is remembered
  for that long at most (and never longer than ``ttl_s``); "stale" is never
  remembered, so a refresh takes effect at once;
- the generation is re-read at most every ``ttl_s`` (1 s): a membership change
  the background refresh stored (every 5 s) reaches trust decisions at most
  1 s later; a refresh through this wrapper takes effect at once.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from alliance_member.feed import FEED_STALE

GENERATION_TTL_S = 1.0


class FeedMemo:
    def __init__(self, feed: Any, *, ttl_s: float = GENERATION_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.feed = feed
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._fresh_until = float("-inf")
        self._generation: object = None
        self._generation_until = float("-inf")

    def stale(self) -> bool:
        now = self.clock()
        with self._lock:
            if now < self._fresh_until:
                return False
        age = self.feed.age_s()
        max_age = self.feed.max_age_s
        if age > max_age:
            return True
        with self._lock:
            self._fresh_until = now + min(self.ttl_s, max_age - age)
        return False

    @property
    def generation(self) -> object:
        now = self.clock()
        with self._lock:
            if now < self._generation_until:
                return self._generation
        generation = self.feed.generation
        with self._lock:
            self._generation, self._generation_until = generation, now + self.ttl_s
        return generation

    def forget(self) -> None:
        with self._lock:
            self._fresh_until = self._generation_until = float("-inf")

    def refresh(self) -> Any:
        try:
            return self.feed.refresh()
        finally:
            self.forget()

    def view(self) -> Any:
        return self.feed.view()

    def decide(self, credential: bytes) -> str:
        """The feed's own decision (the witness gate included: a credential
        trusted only above the witnessed checkpoint is `not_witnessed`),
        with the memoised freshness check."""
        if self.stale():
            return FEED_STALE
        return self.feed.trust_decision(credential)

    def __getattr__(self, name: str) -> Any:  # everything else (age_s, max_age_s, roots, ...) is the feed's own
        return getattr(self.feed, name)
