"""`shipflow.api.run_feeds`: one poller per watched run, shared by its streams, stopped with
the last of them; a failed poller ends its streams and the next stream starts a fresh one."""

from __future__ import annotations

import asyncio

from shipflow.api.run_feeds import RunFeed, RunFeeds


async def test_streams_of_one_run_share_one_poller_that_stops_with_the_last() -> None:
    feeds = RunFeeds()
    polling: dict[str, asyncio.Event] = {}
    stopped: dict[str, asyncio.Event] = {}

    async def poller(feed: RunFeed) -> None:
        polling[feed.run_id], stopped[feed.run_id] = asyncio.Event(), asyncio.Event()
        try:
            feed.publish("status", {"run": feed.run_id})
            polling[feed.run_id].set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            stopped[feed.run_id].set()

    async with feeds.follow("r1", poller) as first, feeds.follow("r1", poller) as second:
        assert first is second and feeds.watched == 1 and feeds.streams == 2
        assert await first.wait_newer(0, timeout=5)
        assert first.latest == {"status": {"run": "r1"}} and not first.ended
        async with feeds.follow("r2", poller) as other:
            assert await other.wait_newer(0, timeout=5)
            assert feeds.watched == 2 and feeds.streams == 3
        assert stopped["r2"].is_set()  # stopped with its only stream
        assert feeds.watched == 1 and not stopped["r1"].is_set()
        assert await first.wait_newer(first.version, timeout=0.01) is False  # nothing new
    assert stopped["r1"].is_set() and sorted(polling) == ["r1", "r2"]
    assert feeds.watched == 0 and feeds.streams == 0


async def test_a_failed_poller_ends_its_streams_and_the_next_stream_starts_afresh() -> None:
    feeds = RunFeeds()
    attempts = 0

    async def poller(feed: RunFeed) -> None:
        nonlocal attempts
        attempts += 1
        feed.publish("status", {"attempt": attempts})
        if attempts == 1:
            raise RuntimeError("Temporal said something unexpected")
        feed.publish("end", {"state": "succeeded"})

    async with feeds.follow("r", poller) as broken:
        assert await broken.wait_newer(1, timeout=5)
        assert broken.ended and "end" not in broken.latest
        async with feeds.follow("r", poller) as fresh:
            assert fresh is not broken
            assert await fresh.wait_newer(1, timeout=5)
            assert fresh.latest == {"status": {"attempt": 2}, "end": {"state": "succeeded"}}
    assert attempts == 2 and feeds.watched == 0
