"""DynamoDB adapter: one table for session items, session-id markers and nonce items (key ``pk``).

Session item ``conn#<connectionId>``: the :class:`~audiohook.session.Session` as one JSON
attribute ``session`` (one attribute keeps every write a single short update expression),
copies of ``state``/``seq``/``clientseq``/``sessionId`` for people reading the table,
``version`` (+1 on every write), ``delivered`` (the highest server seq posted), ``recent``
(JSON digests of the last applied client messages), the mailbox of the Lambda path
(``mailbox``: a list of :class:`~audiohook.sequencing.Entry` JSON strings, ``mailboxBytes``
their total size, ``leaseUntil`` epoch ms and ``leaseOwner``; see docs/sequencing.md) and
``expiresAt`` (TTL), ``connectedAt`` (epoch ms of ``$connect``), ``conversationId`` once the
session is opened (not for probes; the ``conversation`` index finds a conversation's sessions
without a Scan) and ``results``: the results of the control actions the lease holders
applied, keyed by each action's token (a map of JSON strings, the last ``RESULTS_KEPT`` of
the last ``RESULTS_KEEP_MS``), read back by the control function that parked the action.

Session-id marker ``session#<sessionId>``: ``connectionId`` of the connection that holds the
id while it is live, ``expiresAt`` (TTL). Nonce item ``nonce#<nonce>``: only ``expiresAt``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from audiohook.session import Session

PARKED = "parked"  # SessionStore.enter: the input waits in the mailbox of a busy session
DROPPED = "dropped"  # SessionStore.enter: the mailbox is full (the holder reports the flood)
MAX_MARKERS = 64  # "mailbox full" markers a mailbox takes beyond its byte limit
RESULTS_KEPT = 32  # control action results kept in a session item (newest first) ...
RESULTS_KEEP_MS = 60_000  # ... and for at most this long
CONVERSATION_INDEX = "conversation"  # GSI: conversationId -> session items


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
    if session.conversation_id and not session.probe:  # every probe has the null conversation id
        values["conversationId"] = {"S": session.conversation_id.lower()}
    return values


@dataclass
class StoredSession:
    connection_id: str
    session: Session
    version: int
    delivered: int
    recent: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None


@dataclass
class Held:
    """A session whose lease this invocation holds, with its mailbox as it was last read."""

    connection_id: str
    owner: str
    session: Session
    recent: dict[str, str]
    mailbox: list[str]  # Entry JSON strings, in the order they reached the mailbox
    api_key: str | None = None
    connected_at_ms: int | None = None
    results: dict[str, str] = field(default_factory=dict)  # control action results, by token (JSON)
    new_results: bool = False  # results gained entries this holder must write


def _held(connection_id: str, owner: str, item: dict[str, Any]) -> Held:
    connected = item.get("connectedAt", {}).get("N")
    return Held(
        connection_id=connection_id, owner=owner,
        session=Session.from_dict(json.loads(item["session"]["S"])),
        recent=json.loads(item["recent"]["S"]),
        mailbox=[entry["S"] for entry in item.get("mailbox", {}).get("L", [])],
        api_key=item.get("apiKey", {}).get("S"),
        connected_at_ms=int(connected) if connected is not None else None,
        results={token: value["S"] for token, value in item.get("results", {}).get("M", {}).items()},
    )


def keep_results(results: dict[str, str], new: dict[str, dict[str, Any]], now_ms: int) -> dict[str, str]:
    """``results`` with ``new`` added (each stamped ``at``), trimmed to the newest
    ``RESULTS_KEPT`` of the last ``RESULTS_KEEP_MS``."""
    merged = {token: json.loads(raw) for token, raw in results.items()}
    merged |= {token: value | {"at": now_ms} for token, value in new.items()}
    fresh = sorted(((value.get("at", 0), token) for token, value in merged.items()
                    if value.get("at", 0) >= now_ms - RESULTS_KEEP_MS), reverse=True)[:RESULTS_KEPT]
    return {token: json.dumps(merged[token], separators=(",", ":")) for _, token in fresh}


def _failed_item(error: Exception) -> dict[str, Any] | None:
    """The item a failed conditional write returned (ReturnValuesOnConditionCheckFailure=ALL_OLD)."""
    return getattr(error, "response", {}).get("Item")


class SessionStore:
    def __init__(self, client: Any, table: str, session_ttl_s: int, clock: Callable[[], float] = time.time):
        self._client = client
        self._table = table
        self._ttl = session_ttl_s
        self._clock = clock
        self.calls = 0  # AWS API calls made, for benchmarks

    def _key(self, connection_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"conn#{connection_id}"}}

    def remember_nonce(self, nonce: str, expires_at: int, connection_id: str = "") -> bool:
        """True the first time a nonce is seen (or seen by this very connection: a retried
        attempt whose first one succeeded); False for a replay."""
        self.calls += 1
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"pk": {"S": f"nonce#{nonce}"}, "expiresAt": {"N": str(int(expires_at))},
                      "connectionId": {"S": connection_id}},
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as error:
            seen_by = (_failed_item(error) or {}).get("connectionId", {}).get("S")
            return bool(connection_id) and seen_by == connection_id
        return True

    def create(self, connection_id: str, session: Session, api_key: str | None, owner: str | None = None) -> None:
        """``owner``: the private control address of the relay task holding the connection
        (docs/control.md); the API Gateway front has none."""
        now = self._clock()
        item = _visible(session) | {
            "pk": {"S": f"conn#{connection_id}"}, "connectionId": {"S": connection_id},
            "connectedAt": {"N": str(int(now * 1000))}, "version": {"N": "1"}, "delivered": {"N": "0"},
            "recent": {"S": "{}"}, "expiresAt": {"N": str(int(now) + self._ttl)},
            "mailbox": {"L": []}, "mailboxBytes": {"N": "0"}, "leaseUntil": {"N": "0"},
        }
        if api_key:
            item["apiKey"] = {"S": api_key}
        if owner:
            item["owner"] = {"S": owner}
        self.calls += 1
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except self._client.exceptions.ConditionalCheckFailedException:
            pass  # connection ids are unique: only a retried attempt of ours can have written it


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

    # --- session-id markers ------------------------------------------------------------

    def claim_session_id(self, session_id: str, connection_id: str) -> str | None:
        """Mark ``session_id`` live on this connection. None: claimed; else the holder's connection id."""
        now = self._clock()
        self.calls += 1
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"pk": {"S": f"session#{session_id.lower()}"}, "connectionId": {"S": connection_id},
                      "expiresAt": {"N": str(int(now) + self._ttl)}},
                # A marker past its TTL that DynamoDB has not deleted yet does not count.
                ConditionExpression="attribute_not_exists(pk) OR expiresAt < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as error:
            holder = (_failed_item(error) or {}).get("connectionId", {}).get("S", "?")
            return None if holder == connection_id else holder  # None: a retried attempt of ours
        return None

    def release_session_id(self, session_id: str, connection_id: str) -> bool:
        """Delete the marker if this connection holds it; False: it does not (nothing changed)."""
        self.calls += 1
        try:
            self._client.delete_item(
                TableName=self._table, Key={"pk": {"S": f"session#{session_id.lower()}"}},
                ConditionExpression="connectionId = :me", ExpressionAttributeValues={":me": {"S": connection_id}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # --- the mailbox of the Lambda path (docs/sequencing.md) -----------------------------

    def enter(self, connection_id: str, entry: str, *, owner: str, now_ms: int, lease_ms: int,
              limit_bytes: int, full_entry: str) -> Held | str | None:
        """Put one input in the connection's mailbox and take the lease if the session is free.

        Held: this invocation holds the lease (the item as it is now, ``entry`` last in the
        mailbox); PARKED: another invocation holds it and will apply ``entry``; None: no such
        connection. When the mailbox already holds ``limit_bytes``, the small marker
        ``full_entry`` is parked instead of ``entry`` (at most
        ``MAX_MARKERS`` of them); with no ``full_entry``, nothing is parked (DROPPED). Never
        waits: each failed condition means the lease changed
        hands in between, so the other branch succeeds next.
        """
        key = self._key(connection_id)
        marker = False
        for _ in range(8):
            size = len(entry)
            self.calls += 1
            try:
                item = self._client.update_item(
                    TableName=self._table, Key=key,
                    UpdateExpression="SET leaseUntil = :until, leaseOwner = :me, "
                                     "mailbox = list_append(if_not_exists(mailbox, :empty), :entry), "
                                     "mailboxBytes = if_not_exists(mailboxBytes, :zero) + :size",
                    ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(leaseUntil) OR leaseUntil < :now)",
                    ExpressionAttributeValues={
                        ":until": {"N": str(now_ms + lease_ms)}, ":me": {"S": owner}, ":now": {"N": str(now_ms)},
                        ":entry": {"L": [{"S": entry}]}, ":size": {"N": str(size)}, ":empty": {"L": []},
                        ":zero": {"N": "0"},
                    },
                    ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )["Attributes"]
                return _held(connection_id, owner, item)
            except self._client.exceptions.ConditionalCheckFailedException as error:
                old = _failed_item(error)
                if old is None:
                    return None
                if old.get("leaseOwner", {}).get("S") == owner:
                    # botocore retried a TAKE whose first attempt did succeed (read timeout).
                    return _held(connection_id, owner, old)
            room = ("size(mailbox) < :room", str(MAX_MARKERS)) if marker else (
                "mailboxBytes <= :room", str(limit_bytes - size))
            self.calls += 1
            try:
                self._client.update_item(
                    TableName=self._table, Key=key,
                    UpdateExpression="SET mailbox = list_append(mailbox, :entry), mailboxBytes = mailboxBytes + :size",
                    # NOT contains: a retried PARK whose first attempt succeeded parks nothing twice
                    # (every entry carries its invocation's token, so no two are equal).
                    ConditionExpression=f"leaseUntil >= :now AND {room[0]} AND NOT contains(mailbox, :one)",
                    ExpressionAttributeValues={
                        ":entry": {"L": [{"S": entry}]}, ":size": {"N": str(size)}, ":now": {"N": str(now_ms)},
                        ":room": {"N": room[1]}, ":one": {"S": entry},
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return PARKED
            except self._client.exceptions.ConditionalCheckFailedException as error:
                old = _failed_item(error)
            if old is None:
                return None
            if {"S": entry} in old.get("mailbox", {}).get("L", []):
                return PARKED
            if int(old["leaseUntil"]["N"]) < now_ms:
                continue  # released in between: take it
            if marker or not full_entry:
                # The mailbox is full of markers (the holder reports the flood already), or the
                # input has no marker to stand for it (a control action: its caller is told).
                return DROPPED
            marker = True
            entry = full_entry
        return DROPPED  # pragma: no cover - the lease cannot change hands eight times in a row

    def release(self, held: Held, *, mailbox: list[str], seen: int) -> Held | bool:
        """Save the session, keep ``mailbox`` (what still waits) and release the lease.

        Only if the mailbox still holds the ``seen`` entries read last: True. If inputs were
        parked since, nothing is written and the item as it is now comes back (a Held) so the
        holder applies them too. False: the lease was lost (it expired and was taken over).
        """
        session = held.session
        values = _visible(session) | {
            "recent": {"S": json.dumps(held.recent, separators=(",", ":"))},
            "delivered": {"N": str(session.seq)},
            "mailbox": {"L": [{"S": entry} for entry in mailbox]},
            "mailboxBytes": {"N": str(sum(map(len, mailbox)))},
            "leaseUntil": {"N": "0"},
        }
        if held.new_results:
            values["results"] = {"M": {token: {"S": raw} for token, raw in held.results.items()}}
        names = {f"#a{i}": name for i, name in enumerate(values)}
        attribute_values = {f":a{i}": value for i, value in enumerate(values.values())}
        self.calls += 1
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key(held.connection_id),
                UpdateExpression="SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(values)))
                + ", version = version + :one REMOVE leaseOwner",
                ConditionExpression="leaseOwner = :me AND size(mailbox) = :seen",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values | {
                    ":me": {"S": held.owner}, ":seen": {"N": str(seen)}, ":one": {"N": "1"}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as error:
            item = _failed_item(error)
            if item is None or item.get("leaseOwner", {}).get("S") != held.owner:
                return False
            now = _held(held.connection_id, held.owner, item)
            return Held(held.connection_id, held.owner, held.session, held.recent, now.mailbox, held.api_key,
                        held.connected_at_ms, held.results, held.new_results)
        held.new_results = False
        return True

    # --- what the control path reads ------------------------------------------------------

    def action_result(self, connection_id: str, token: str) -> tuple[dict[str, Any] | None, bool]:
        """The result a lease holder wrote for the action ``token`` (None: not yet), and whether
        the connection's item still exists. One consistent GetItem of that one map entry."""
        self.calls += 1
        item = self._client.get_item(
            TableName=self._table, Key=self._key(connection_id), ConsistentRead=True,
            ProjectionExpression="results.#t, connectionId", ExpressionAttributeNames={"#t": token},
        ).get("Item")
        if item is None:
            return None, False
        raw = item.get("results", {}).get("M", {}).get(token, {}).get("S")
        return (json.loads(raw) if raw else None), True

    def session_by_id(self, session_id: str) -> Session | None:
        """The live session with this id (its ``session#`` marker, then its item): two
        consistent GetItem; None when no connection holds the id."""
        self.calls += 1
        marker = self._client.get_item(TableName=self._table, Key={"pk": {"S": f"session#{session_id.lower()}"}},
                                       ConsistentRead=True).get("Item")
        if not marker or "connectionId" not in marker:
            return None
        self.calls += 1
        item = self._client.get_item(TableName=self._table, Key=self._key(marker["connectionId"]["S"]),
                                     ConsistentRead=True, ProjectionExpression="#s",
                                     ExpressionAttributeNames={"#s": "session"}).get("Item")
        return Session.from_dict(json.loads(item["session"]["S"])) if item and "session" in item else None
