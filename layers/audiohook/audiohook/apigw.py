"""API Gateway WebSocket proxy events, built the way AWS builds them.

The local gateway, the relay and the tests feed these to the very same route code the
Lambdas run, so every front sees one event shape. Shapes follow AWS' documented
``$connect`` / ``$default`` / ``$disconnect`` proxy events.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping


def new_connection_id() -> str:
    """An id shaped like API Gateway's: 11 random bytes, base64 (``ITbAHeRmIAMCF3g=``-like)."""
    return base64.b64encode(os.urandom(11)).decode()


def _request_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")


class Connection:
    """One WebSocket connection as API Gateway describes it in every event it sends."""

    def __init__(self, *, domain_name: str, stage: str, api_id: str = "local", source_ip: str = "127.0.0.1",
                 user_agent: str = "", connection_id: str | None = None, connected_at: float | None = None):
        self.connection_id = connection_id or new_connection_id()
        self.domain_name = domain_name
        self.stage = stage
        self.api_id = api_id
        self.source_ip = source_ip
        self.user_agent = user_agent
        self.connected_at_ms = int((connected_at if connected_at is not None else time.time()) * 1000)

    def _context(self, route_key: str, event_type: str, now: float, **extra: Any) -> dict[str, Any]:
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": uuid.uuid4().hex[:16] + "=",
            "requestTime": _request_time(now),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": self.connected_at_ms,
            "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": self.source_ip, "userAgent": self.user_agent},
            "requestId": uuid.uuid4().hex[:16] + "=",
            "domainName": self.domain_name,
            "connectionId": self.connection_id,
            "apiId": self.api_id,
            **extra,
        }

    def connect(self, headers: Iterable[tuple[str, str]] | Mapping[str, str], now: float | None = None,
                query: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in pairs:
            single[name] = value if name not in single else f"{single[name]},{value}"
            multi.setdefault(name, []).append(value)
        event: dict[str, Any] = {
            "headers": single,
            "multiValueHeaders": multi,
            "requestContext": self._context("$connect", "CONNECT", now),
            "isBase64Encoded": False,
        }
        if query:
            event["queryStringParameters"] = {name: values[-1] for name, values in query.items()}
            event["multiValueQueryStringParameters"] = {name: list(values) for name, values in query.items()}
        return event

    def message(self, data: str | bytes, now: float | None = None) -> dict[str, Any]:
        """A ``$default`` event: text as is, binary as base64 with ``isBase64Encoded``."""
        now = time.time() if now is None else now
        binary = isinstance(data, (bytes, bytearray, memoryview))
        return {
            "requestContext": self._context("$default", "MESSAGE", now, messageId=uuid.uuid4().hex[:16] + "="),
            "body": base64.b64encode(data).decode() if binary else data,
            "isBase64Encoded": binary,
        }

    def disconnect(self, status_code: int, reason: str, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "headers": {"Host": self.domain_name},
            "multiValueHeaders": {"Host": [self.domain_name]},
            "requestContext": self._context(
                "$disconnect", "DISCONNECT", now, disconnectStatusCode=status_code, disconnectReason=reason,
            ),
            "isBase64Encoded": False,
        }
