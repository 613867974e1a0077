"""One poller per watched run, shared by every open event stream of that run in this API
process (`GET /runs/{id}/events`).

Why: each open run page used to poll the run on its own: a memo read (`describe`) every
half second, and on every change the full answer rebuilt (two more Temporal calls and a
database read). Fifty people watching one release cost Temporal fifty times that. Now the
first stream of a run starts its feed, the later streams of the same run join it, and the
feed stops with its last stream; every stream still gets the whole run at once when it
opens and each change after it, as before.

A feed is a small mailbox: its poller `publish`es the latest data of each event name
(`status`, `canary`, `end`) and bumps a version; a stream waits for a version newer than
the last it read and sends what changed. A stream that falls behind skips the states in
between (only the newest matters to a page that shows the run's state); the final ones are
never skipped, since the poller stops after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

log = logging.getLogger("shipflow.api")

#: What a feed's poller is: given the feed, publish into it until the run ends.
Poller = Callable[["RunFeed"], Coroutine[Any, Any, None]]


class RunFeed:
    """The latest data of each event of one run, and a way to wait for newer data."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.version = 0
        self.latest: dict[str, Any] = {}
        self.followers = 0
        self.stopped = False
        self.task: asyncio.Task[None] | None = None
        self._newer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def publish(self, name: str, data: Any) -> None:
        """Make `data` the latest of event `name` and wake every stream waiting."""
        self.latest[name] = data
        self.version += 1
        self._wake()

    def stop(self) -> None:
        """The poller is done (the run ended, or the poller failed): wake every stream."""
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        newer, self._newer = self._newer, asyncio.get_running_loop().create_future()
        newer.set_result(None)

    @property
    def ended(self) -> bool:
        """The run's `end` is published, or the poller stopped without it (it failed: the
        streams end too, and a reconnecting page starts a fresh feed)."""
        return "end" in self.latest or self.stopped

    async def wait_newer(self, seen: int, timeout: float) -> bool:
        """Wait until the version is past `seen` or the feed ended (True), or until
        `timeout` passes (False)."""
        if self.version > seen or self.ended:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._newer), timeout)
        except TimeoutError:
            return False
        return True


class RunFeeds:
    """The feeds of the runs being watched through this API process."""

    def __init__(self) -> None:
        self._feeds: dict[str, RunFeed] = {}

    @property
    def watched(self) -> int:
        """Runs with a feed (one poller each)."""
        return len(self._feeds)

    @property
    def streams(self) -> int:
        """Open streams, over all runs."""
        return sum(feed.followers for feed in self._feeds.values())

    @contextlib.asynccontextmanager
    async def follow(self, run_id: str, poller: Poller) -> AsyncIterator[RunFeed]:
        """Join the run's feed, starting it (with `poller`) if nobody watches the run yet, or
        if its last poller failed; leave it on exit, and stop it when the last stream leaves."""
        feed = self._feeds.get(run_id)
        if feed is None or (feed.stopped and "end" not in feed.latest):
            feed = RunFeed(run_id)
            feed.task = asyncio.create_task(self._run(feed, poller), name=f"feed {run_id}")
            self._feeds[run_id] = feed
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0 and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed.task

    @staticmethod
    async def _run(feed: RunFeed, poller: Poller) -> None:
        try:
            await poller(feed)
        except Exception:
            # The streams end (`RunFeed.ended`); their pages reconnect to a fresh feed.
            log.exception("the event feed of run %s failed", feed.run_id)
        finally:
            feed.stop()
