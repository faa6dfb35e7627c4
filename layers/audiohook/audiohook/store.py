"""DynamoDB adapter: one table for session items and nonce items (key ``pk``).

Session item ``conn#<connectionId>``: the :class:`~audiohook.session.Session` fields, plus
``version`` (optimistic lock, +1 on every write), ``delivered`` (the highest server seq
already posted to the client), ``recent`` (digests of the last applied client messages)
and ``expiresAt`` (TTL). Nonce item ``nonce#<nonce>``: only ``expiresAt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from .session import Session

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {key: _to_dynamo(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_dynamo(item) for item in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _from_dynamo(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(item) for item in value]
    return value


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(_to_dynamo(value)) for key, value in values.items()}


def _decode(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _from_dynamo(_deserializer.deserialize(value)) for key, value in item.items()}


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
                Item=_encode({"pk": f"nonce#{nonce}", "expiresAt": int(expires_at)}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def create(self, connection_id: str, session: Session, api_key: str | None) -> None:
        now = self._clock()
        values = session.to_dict() | {
            "pk": f"conn#{connection_id}", "connectionId": connection_id, "apiKey": api_key,
            "connectedAt": int(now * 1000), "version": 1, "delivered": 0, "recent": {},
            "expiresAt": int(now) + self._ttl,
        }
        self.calls += 1
        self._client.put_item(
            TableName=self._table, Item=_encode({k: v for k, v in values.items() if v is not None}),
            ConditionExpression="attribute_not_exists(pk)",
        )

    def load(self, connection_id: str) -> StoredSession | None:
        self.calls += 1
        item = self._client.get_item(TableName=self._table, Key=self._key(connection_id), ConsistentRead=True)
        if "Item" not in item:
            return None
        values = _decode(item["Item"])
        return StoredSession(
            connection_id=connection_id,
            session=Session.from_dict(values),
            version=values["version"],
            delivered=values.get("delivered", 0),
            recent=values.get("recent", {}),
            api_key=values.get("apiKey"),
        )

    def save(self, stored: StoredSession) -> bool:
        """Write the session if nobody wrote since it was loaded; False: reload and retry."""
        values = stored.session.to_dict() | {"recent": stored.recent}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        assignments = [f"#a{i} = :a{i}" for i in range(len(values))]
        attribute_values = {f":a{i}": value for i, value in enumerate(values.values())}
        attribute_values |= {":loaded": stored.version, ":next": stored.version + 1}
        self.calls += 1
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(stored.connection_id),
                UpdateExpression="SET " + ", ".join(assignments + ["#version = :next"]),
                ConditionExpression="#version = :loaded",
                ExpressionAttributeNames=names | {"#version": "version"},
                ExpressionAttributeValues=_encode(attribute_values),
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
