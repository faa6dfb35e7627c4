"""API Gateway WebSocket proxy events, built the way AWS builds them.

The local gateway, the relay and the tests feed these to the very same route code the
Lambdas run, so every front sees one event shape: AWS' documented ``$connect`` /
``$default`` / ``$disconnect`` proxy events, down to the ``X-Forwarded-*`` headers
API Gateway adds on ``$connect`` and the sparse headers of ``$disconnect``.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# The upgrade request's hop-by-hop headers are not part of API Gateway's $connect event.
_HOP_BY_HOP = {"connection", "upgrade"}


def aws_id() -> str:
    """An id shaped like API Gateway's connection/request ids, e.g. ``BFHPhfCWIAMCKlQ=``."""
    return base64.urlsafe_b64encode(secrets.token_bytes(11)).decode()


def request_time(epoch_ms: int) -> str:
    """API Gateway's ``requestTime``: ``24/Nov/2026:08:00:00 +0000`` (English months, any locale)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.strftime('%Y:%H:%M:%S')} +0000"


def _epoch_ms(now: float | None) -> int:
    return time.time_ns() // 1_000_000 if now is None else int(now * 1000)


@dataclass
class Connection:
    """One WebSocket connection as API Gateway describes it in every event it sends.

    ``now`` arguments are epoch seconds (default: the clock), so recorded sessions replay.
    """

    domain_name: str
    stage: str
    api_id: str = "local"
    source_ip: str = "127.0.0.1"
    user_agent: str | None = None
    connection_id: str = field(default_factory=aws_id)
    connected_at_ms: int = field(default_factory=lambda: _epoch_ms(None))

    def _context(self, route_key: str, event_type: str, epoch_ms: int, **extra: Any) -> dict[str, Any]:
        request_id = aws_id()
        identity: dict[str, Any] = {"sourceIp": self.source_ip}
        if self.user_agent is not None:
            identity["userAgent"] = self.user_agent
        return {
            "routeKey": route_key,
            **extra,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(epoch_ms),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": self.connected_at_ms,
            "requestTimeEpoch": epoch_ms,
            "identity": identity,
            "requestId": request_id,
            "domainName": self.domain_name,
            "connectionId": self.connection_id,
            "apiId": self.api_id,
        }

    def connect(self, headers: Iterable[tuple[str, str]] | Mapping[str, str], *, query: str = "",
                forwarded_port: int = 443, forwarded_proto: str = "https",
                now: float | None = None) -> dict[str, Any]:
        """The ``$connect`` event of an upgrade request (headers as sent, in order)."""
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        kept = [(name, value) for name, value in pairs if name.lower() not in _HOP_BY_HOP]
        forwarded_for = [value for name, value in kept if name.lower() == "x-forwarded-for"]
        kept = [(name, value) for name, value in kept if name.lower() != "x-forwarded-for"]
        kept += [
            ("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"),
            ("X-Forwarded-For", ", ".join(forwarded_for + [self.source_ip])),
            ("X-Forwarded-Port", str(forwarded_port)),
            ("X-Forwarded-Proto", forwarded_proto),
        ]
        event: dict[str, Any] = {"headers": {}, "multiValueHeaders": {}}
        for name, value in kept:
            event["headers"][name] = value
            event["multiValueHeaders"].setdefault(name, []).append(value)
        if query:
            query_pairs = parse_qsl(query, keep_blank_values=True)
            event["queryStringParameters"] = dict(query_pairs)
            event["multiValueQueryStringParameters"] = {}
            for name, value in query_pairs:
                event["multiValueQueryStringParameters"].setdefault(name, []).append(value)
        epoch_ms = _epoch_ms(now) if now is not None else self.connected_at_ms
        event["requestContext"] = self._context("$connect", "CONNECT", epoch_ms)
        event["isBase64Encoded"] = False
        return event

    def message(self, data: str | bytes | bytearray | memoryview, now: float | None = None) -> dict[str, Any]:
        """The ``$default`` event of one message; binary data travels base64-encoded."""
        binary = not isinstance(data, str)
        return {
            "requestContext": self._context("$default", "MESSAGE", _epoch_ms(now), messageId=aws_id()),
            "body": base64.b64encode(data).decode() if binary else data,
            "isBase64Encoded": binary,
        }

    def disconnect(self, status_code: int, reason: str, now: float | None = None) -> dict[str, Any]:
        """The ``$disconnect`` event; its odd fixed headers are what API Gateway sends."""
        headers = {"Host": self.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
        context = self._context("$disconnect", "DISCONNECT", _epoch_ms(now))
        context = {"disconnectStatusCode": status_code, "disconnectReason": reason, **context}
        return {
            "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "requestContext": context,
            "isBase64Encoded": False,
        }
