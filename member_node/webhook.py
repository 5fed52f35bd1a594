"""`--webhook URL` (SPEC §9): POST each alert as JSON to the member's own
system, from a background thread, never blocking an answer or the code that
raised the alert.

- ``submit`` only enqueues, into a bounded queue; when it is full the alert
  is dropped from the webhook (it stays in the alerts table, so `member
  alerts` still lists it) and the drop is logged.
- Each POST is retried with exponential back-off (base × 2^attempt, capped)
  on a connection error, a timeout, HTTP 408, 429 or 5xx; any other 4xx is
  the receiver refusing the document, which a retry would not change: it is
  logged and given up.
- Standard library only (urllib). The alert's JSON is what `member alerts
  --json` prints for it.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from alliance.errors import UsageError
from alliance_member import alerts

log = logging.getLogger("alliance.member.webhook")

RETRYABLE_STATUS = {408, 429}


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--webhook must be an http:// or https:// URL, not {url!r}")
    return url


class Webhook:
    def __init__(self, url: str, *, max_queue: int = 1000, attempts: int = 6, base_delay_s: float = 1.0,
                 max_delay_s: float = 60.0, timeout_s: float = 5.0, start: bool = True,
                 sleep: Callable[[float], bool] | None = None) -> None:
        self.url = check_url(url)
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._sleep = sleep or (lambda s: not self._stop.wait(s))  # False when stopping
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._unlisten: Callable[[], None] | None = None
        if start:
            self._thread.start()

    # -- wiring -------------------------------------------------------------

    def listen(self) -> "Webhook":
        """POST every alert this process raises from now on."""
        self._unlisten = alerts.add_listener(lambda alert: self.submit(alert.as_json()))
        return self

    def submit(self, document: dict[str, Any]) -> bool:
        """Enqueue one alert; never blocks. False when it had to be dropped."""
        try:
            self._queue.put_nowait(document)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("webhook queue full (%d): alert %s dropped from the webhook (%d dropped so far; "
                        "it stays in `member alerts`)", self._queue.maxsize, document.get("id"), self.dropped)
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop listening; give queued alerts up to ``timeout_s`` to go out."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._thread.is_alive():
            self.flush(timeout_s)
            self._stop.set()
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
        pending = self._queue.qsize()
        if pending:
            log.warning("webhook stopped with %d alert(s) not delivered (they stay in `member alerts`)", pending)

    def flush(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    # -- the worker ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            document = self._queue.get()
            try:
                if document is None:
                    return
                if self.deliver(document):
                    self.delivered += 1
                else:
                    self.failed += 1
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("webhook worker error")
            finally:
                self._queue.task_done()

    def delay(self, attempt: int) -> float:
        """Back-off before retry number ``attempt`` (1, 2, …)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))

    def deliver(self, document: dict[str, Any]) -> bool:
        data = json.dumps(document, ensure_ascii=False, sort_keys=True).encode("utf-8")
        for attempt in range(self.attempts):
            if attempt and not self._sleep(self.delay(attempt)):
                return False  # stopping
            request = urllib.request.Request(self.url, data=data, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": "alliance-member"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - scheme checked
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                if not (exc.code >= 500 or exc.code in RETRYABLE_STATUS):
                    log.warning("webhook %s refused alert %s with HTTP %d; not retried", self.url, document.get("id"), exc.code)
                    return False
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                why = str(getattr(exc, "reason", exc))
            if attempt + 1 < self.attempts:
                log.info("webhook %s: alert %s not delivered (%s); retrying in %.1f s", self.url, document.get("id"), why,
                         self.delay(attempt + 1))
        log.warning("webhook %s: alert %s not delivered after %d attempts (it stays in `member alerts`)",
                    self.url, document.get("id"), self.attempts)
        return False
