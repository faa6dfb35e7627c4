"""DynamoDB adapter: one table for session items and nonce items (key ``pk``).

Session item ``conn#<connectionId>``: the :class:`~audiohook.session.Session` as one JSON
attribute ``session`` (one attribute keeps every write a single short update expression),
copies of ``state``/``seq``/``clientseq``/``sessionId`` for people reading the table,
``version`` (optimistic lock, +1 on every write), ``delivered`` (the highest server seq
already posted to the client), ``recent`` (JSON digests of the last applied client
messages) and ``expiresAt`` (TTL). Nonce item ``nonce#<nonce>``: only ``expiresAt``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from audiohook.session import Session


def _visible(session: Session) -> dict[str, Any]:
    """The attributes written on every save."""
    values: dict[str, Any] = {
        "session": {"S": json.dumps(session.to_dict(), separators=(",", ":"))},
        "state": {"S": session.state.value},
        "seq": {"N": str(session.seq)},
        "clientseq": {"N": str(session.clientseq)},
    }
    if session.session_id:
        values["sessionId"] = {"S": session.session_id}
    return values


@dataclass
class StoredSession:
    connection_id: str
    session: Session
    version: int
    delivered: int
    recent: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None


class SessionStore:
    def __init__(self, client: Any, table: str, session_ttl_s: int, clock: Callable[[], float] = time.time):
        self._client = client
        self._table = table
        self._ttl = session_ttl_s
        self._clock = clock
        self.calls = 0  # AWS API calls made, for benchmarks

    def _key(self, connection_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"conn#{connection_id}"}}

    def remember_nonce(self, nonce: str, expires_at: int) -> bool:
        """True the first time a nonce is seen; False for a replay."""
        self.calls += 1
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"pk": {"S": f"nonce#{nonce}"}, "expiresAt": {"N": str(int(expires_at))}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def create(self, connection_id: str, session: Session, api_key: str | None) -> None:
        now = self._clock()
        item = _visible(session) | {
            "pk": {"S": f"conn#{connection_id}"}, "connectionId": {"S": connection_id},
            "connectedAt": {"N": str(int(now * 1000))}, "version": {"N": "1"}, "delivered": {"N": "0"},
            "recent": {"S": "{}"}, "expiresAt": {"N": str(int(now) + self._ttl)},
        }
        if api_key:
            item["apiKey"] = {"S": api_key}
        self.calls += 1
        self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")

    def load(self, connection_id: str) -> StoredSession | None:
        self.calls += 1
        item = self._client.get_item(
            TableName=self._table, Key=self._key(connection_id), ConsistentRead=True,
            ProjectionExpression="#s, version, delivered, recent, apiKey", ExpressionAttributeNames={"#s": "session"},
        ).get("Item")
        if item is None:
            return None
        return StoredSession(
            connection_id=connection_id,
            session=Session.from_dict(json.loads(item["session"]["S"])),
            version=int(item["version"]["N"]),
            delivered=int(item["delivered"]["N"]),
            recent=json.loads(item["recent"]["S"]),
            api_key=item.get("apiKey", {}).get("S"),
        )

    def save(self, stored: StoredSession) -> bool:
        """Write the session if nobody wrote since it was loaded; False: reload and retry."""
        values = _visible(stored.session) | {"recent": {"S": json.dumps(stored.recent, separators=(",", ":"))}}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        attribute_values = {f":a{i}": value for i, value in enumerate(values.values())}
        self.calls += 1
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(stored.connection_id),
                UpdateExpression="SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(values)))
                + ", version = :next",
                ConditionExpression="version = :loaded",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values | {
                    ":loaded": {"N": str(stored.version)}, ":next": {"N": str(stored.version + 1)},
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        stored.version += 1
        return True

    def mark_delivered(self, connection_id: str, seq: int) -> None:
        """Record that server messages up to ``seq`` were posted (never moves backwards)."""
        self.calls += 1
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(connection_id),
                UpdateExpression="SET delivered = :seq",
                ConditionExpression="attribute_exists(pk) AND delivered < :seq",
                ExpressionAttributeValues={":seq": {"N": str(seq)}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            pass
