"""CloudWatch embedded metric format (EMF) for every front, through powertools.

:class:`EmfPublisher` prints the metrics of :mod:`audiohook.metrics` as EMF documents with the
common dimensions (``service`` and ``Front``): one document for the totals, and one per
breakdown value (e.g. ``ProtocolErrors`` of ``Kind`` ``sequence``). It uses powertools'
``AmazonCloudWatchEMFProvider`` (the engine of ``Metrics``) with a provider of its own per
document: powertools' ``Metrics`` facade keeps one metric set per process, which the local
gateway (routes in threads) and the relay (same process in tests) would otherwise share.
``POWERTOOLS_METRICS_DISABLED`` silences it, as it does powertools.

:class:`EmfMetrics` is the Lambda path's sink: the service adds to it during an invocation,
the entry point flushes it once at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from audiohook.metrics import FRONT, SERVICE, Front

# (name, unit) -> values; (name, unit, dimension, value) -> sum
Values = Mapping[tuple[str, str], list[float]]
Breakdowns = Mapping[tuple[str, str, str, str], float]


class EmfPublisher:
    def __init__(self, namespace: str, front: Front, service: str = SERVICE) -> None:
        self.namespace = namespace
        self.front = front
        self.service = service

    def _provider(self) -> AmazonCloudWatchEMFProvider:
        return AmazonCloudWatchEMFProvider(namespace=self.namespace, service=self.service,
                                           default_dimensions={FRONT: self.front.value})

    def publish(self, values: Values, breakdowns: Breakdowns) -> None:
        """Print the documents (stdout, one line each; CloudWatch Logs extracts the metrics)."""
        totals = self._provider()
        for (name, unit), numbers in values.items():
            for number in numbers:
                totals.add_metric(name=name, unit=unit, value=number)
        if totals.metric_set:
            totals.flush_metrics()
        for (name, unit, dimension, label), number in breakdowns.items():
            single = self._provider()
            single.add_dimension(name=dimension, value=label)
            single.add_metric(name=name, unit=unit, value=number)
            single.flush_metrics()


class EmfMetrics:
    """The Lambda path's metric sink: collected during an invocation, printed by ``flush``.
    Thread-safe: the local gateway runs routes in threads of one process."""

    def __init__(self, namespace: str, front: Front = Front.APIGATEWAY) -> None:
        self.publisher = EmfPublisher(namespace, front)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], list[float]] = {}
        self._breakdowns: dict[tuple[str, str, str, str], float] = {}

    def add_metric(self, name: str, unit: str, value: float, breakdown: tuple[str, str] | None = None) -> None:
        with self._lock:
            self._values.setdefault((name, unit), []).append(value)
            if breakdown is not None:
                key = (name, unit, *breakdown)
                self._breakdowns[key] = self._breakdowns.get(key, 0) + value

    def flush(self) -> None:
        with self._lock:
            values, breakdowns = self._values, self._breakdowns
            self._values, self._breakdowns = {}, {}
        if values:
            self.publisher.publish(values, breakdowns)
