"""The relay's CloudWatch metrics: the Lambda path's metric set, aggregated in memory and
published as EMF once per interval from the event loop.

Nothing here runs per frame. The audio path only bumps the relay's own integer counters
(``RelayCounters``, the buffer's counters and delay histogram); each flush reads them and
publishes the change since the previous flush. What the service counts itself (connections,
sessions opened, protocol errors, control actions, ...) arrives through :meth:`add_metric`
(this object is the relay's service's metric sink) from worker threads, under a lock.

Per flush: one EMF document with the totals and the gauges (``ActiveSessions``,
``BufferedBytes``: a task's level at flush time, so ``Average`` over tasks is "per task",
which the scaling policy tracks), plus one document per breakdown value. The delay from
frame receipt to Kinesis acknowledgement (``AudioAckDelay``) is published as the 1st..99th
percentiles of the interval's delays: 99 values whose CloudWatch percentiles (p50, p90, p99)
are those of the interval, whatever the frame rate, in one log line.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from audiohook import metrics as M
from audiohook.aws.emf import EmfPublisher

if TYPE_CHECKING:
    from audiohook.relay.server import Relay

logger = Logger(service="audiohook")

DELAY_QUANTILES = tuple(range(1, 100))


def quantiles(buckets: Sequence[int], percents: Sequence[int] = DELAY_QUANTILES) -> list[float]:
    """The ``percents`` quantiles (ms, upper edge of the bucket) of a histogram of whole
    milliseconds (``buckets[ms]`` = count); empty when it holds nothing."""
    total = sum(buckets)
    if not total:
        return []
    ranks = [max(1, round(total * percent / 100)) for percent in percents]
    values: list[float] = []
    seen = 0
    index = 0
    for ms, count in enumerate(buckets):
        if not count:
            continue
        seen += count
        while index < len(ranks) and ranks[index] <= seen:
            values.append(float(ms + 1))
            index += 1
        if index == len(ranks):
            break
    return values


@dataclass
class _Previous:
    totals: dict[str, float] = field(default_factory=dict)
    refused_draining: int = 0
    delay_buckets: list[int] = field(default_factory=list)


class RelayMetrics:
    """The relay's metric sink and EMF flusher (``Front`` = relay)."""

    def __init__(self, namespace: str, publisher: EmfPublisher | None = None) -> None:
        self.publisher = publisher or EmfPublisher(namespace, M.Front.RELAY)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], float] = {}
        self._breakdowns: dict[tuple[str, str, str, str], float] = {}
        self._previous = _Previous()

    # ----------------------------------------------------------------- the service's sink
    def add_metric(self, name: str, unit: str, value: float, breakdown: tuple[str, str] | None = None) -> None:
        with self._lock:
            self._values[(name, unit)] = self._values.get((name, unit), 0) + value
            if breakdown is not None:
                key = (name, unit, *breakdown)
                self._breakdowns[key] = self._breakdowns.get(key, 0) + value

    # ----------------------------------------------------------------- the relay's counters
    @staticmethod
    def totals(relay: Relay) -> dict[str, float]:
        """The relay's cumulative counters, by metric name (what the service does not count)."""
        counters, buffer = relay.counters, relay.buffer.counters
        return {
            M.AUDIO_FRAMES.name: counters.frames,
            M.AUDIO_BYTES.name: counters.audio_bytes,
            M.KINESIS_RETRIES.name: counters.kinesis_retries + buffer.requeued,
            M.KINESIS_THROTTLES.name: counters.kinesis_throttles,
            # Audio Kinesis never took becomes a gap record (counted below); lifecycle records are lost.
            M.RECORDS_UNDELIVERED.name: buffer.lifecycle_dropped,
            M.AUDIO_GAPS.name: buffer.gaps,
            M.AUDIO_DROPPED_FRAMES.name: buffer.frames_dropped,
            M.AUDIO_DROPPED_BYTES.name: buffer.bytes_dropped,
        }

    def collect(self, relay: Relay) -> Callable[[], None]:
        """Take what to publish now (on the event loop: copies only); the returned call computes
        the delay percentiles and prints, and may run in another thread."""
        with self._lock:
            values: dict[tuple[str, str], list[float]] = {key: [v] for key, v in self._values.items()}
            breakdowns = self._breakdowns
            self._values, self._breakdowns = {}, {}
        previous = self._previous
        totals = self.totals(relay)
        for name, total in totals.items():
            change = total - previous.totals.get(name, 0)
            if change:
                metric = M.BY_NAME[name]
                values.setdefault((name, metric.unit), []).append(change)
        previous.totals = totals
        draining = relay.counters.upgrades_refused_draining - previous.refused_draining
        previous.refused_draining = relay.counters.upgrades_refused_draining
        if draining:  # 503 while draining: the relay answers these itself, the service never sees them
            metric = M.UPGRADES_REJECTED
            values.setdefault((metric.name, metric.unit), []).append(draining)
            key = (metric.name, metric.unit, metric.breakdown or "", "draining")
            breakdowns[key] = breakdowns.get(key, 0) + draining
        values[(M.ACTIVE_SESSIONS.name, M.ACTIVE_SESSIONS.unit)] = [float(relay.sessions())]
        values[(M.BUFFERED_BYTES.name, M.BUFFERED_BYTES.unit)] = [float(relay.buffer.buffered)]
        buckets = list(relay.buffer.latency.buckets)
        before = previous.delay_buckets or [0] * len(buckets)
        previous.delay_buckets = buckets

        def publish() -> None:
            # The histogram has a bucket per millisecond up to a minute: ~20 ms of Python to
            # diff and rank, kept off the event loop.
            delays = quantiles([now - then for now, then in zip(buckets, before)])
            if delays:
                values[(M.AUDIO_ACK_DELAY.name, M.AUDIO_ACK_DELAY.unit)] = delays
            self.publisher.publish(values, breakdowns)

        return publish

    def flush(self, relay: Relay) -> None:
        """Publish one interval now (a few EMF lines on stdout); never raises into the relay."""
        try:
            self.collect(relay)()
        except Exception:
            logger.exception("relay metrics not published")

    async def run(self, relay: Relay, interval_s: float) -> None:
        """Publish every ``interval_s`` until cancelled (the relay's drain flushes one last time);
        the event loop only copies counters, the rest runs in a thread."""
        if interval_s <= 0:
            raise ValueError(f"the metrics interval must be positive, not {interval_s}")
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.collect(relay))
            except Exception:
                logger.exception("relay metrics not published")
