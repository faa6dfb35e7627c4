"""In which order the inputs of one connection are applied on the Lambda path (sans-I/O).

API Gateway runs the ``$default`` invocations of one connection concurrently and out of
order. Every input (a text message, an audio frame, the ``$disconnect``) is first put in the
connection's *mailbox*, an :class:`Entry` list in the session item; the one invocation that
holds the session's lease then calls :func:`drain`, which applies every entry that may be
applied now, in this order:

- text messages in ``seq`` order: the next one (``seq == clientseq + 1``) is applied; a
  message whose ``seq`` was already applied with the same text is a DUPLICATE (API Gateway
  may deliver twice) and is dropped; an old ``seq`` with other text, and a message whose
  ``seq`` cannot be read, are applied at once (the core answers them with a protocol error);
  a message ahead of its predecessor stays in the mailbox, until its predecessor arrives or,
  once it has waited ``gap_wait_ms``, it is applied anyway and the core reports the gap;
- audio frames in mailbox order (the order their invocations reached the mailbox), so
  positions are contiguous;
- a flood: more than ``limit_bytes`` of inputs waiting for a missing predecessor (or a
  ``full`` marker, parked in place of an input the mailbox had no room for): one protocol
  error, after which the waiting inputs are applied as the core treats input after an error;
- server actions (``pause``, ``resume``, ``event``, ``disconnect``, ``reconnect`` from the
  control API) in mailbox order with audio, through :func:`~audiohook.session.act`: the
  message takes the next server ``seq``; a :class:`~audiohook.session.Refused` changes nothing
  and is kept in the step, so the holder can report it to the caller;
- the end of the connection last: whatever is still waiting is applied in ``seq`` order
  (a real gap is reported), then :func:`~audiohook.session.finish` writes the final record.
  Nothing is applied after it.

Two inputs come from the holder rather than the mailbox: for an ``open`` that lists
``continuedSessions``, what the front found for those sessions (``continued``, looked up
before draining: see :func:`continued_ids`); and the connection's age: once ``now_s`` reaches
``reconnect_at_s`` (API Gateway cuts connections after 2 hours), one ``reconnect`` is applied
after the inputs, so the client moves the call to a new connection in time.

See docs/sequencing.md for the protocol between invocations (lease, park, release).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from audiohook.protocol import ClientMessage, Violation, parse_client_message
from audiohook.session import (
    OPEN_STATES,
    ContinuedLookup,
    Disconnect,
    Outcome,
    Pause,
    Policy,
    Reconnect,
    Refused,
    Resume,
    SendEvent,
    ServerAction,
    Session,
    State,
    act,
    continued_session_ids,
    finish,
    protocol_error,
    receive,
    receive_audio,
)

CONNECTION_LIMIT = "connection limit"  # the info of the reconnect sent before API Gateway's 2 h cut
LIMIT_TOKEN = "connection-limit"  # the token of that reconnect's entry (no caller waits for it)

RECENT_DIGESTS = 8


def digest(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def remember(recent: dict[str, str], seq: int, text_digest: str) -> dict[str, str]:
    """The digests of the last few applied messages, for duplicate detection."""
    kept = {key: value for key, value in recent.items() if int(key) > seq - RECENT_DIGESTS}
    kept[str(seq)] = text_digest
    return kept


class Entry(BaseModel):
    """One input waiting in a connection's mailbox (stored as compact JSON).

    ``at_ms`` is when its invocation reached the mailbox: a message ahead of its predecessor
    waits ``gap_wait_ms`` from then before the gap is reported.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    kind: Literal["text", "audio", "full", "end", "action"]
    at_ms: int
    token: str | None = None  # the parking invocation's own: no two entries are equal
    seq: int | None = None  # text: the message's seq when readable; full: the refused message's
    digest: str | None = None  # text: of the whole text, for duplicates
    text: str | None = None  # text that parsed into a message
    info: str | None = None  # text that did not parse (its Violation), or why the mailbox was full
    audio: bytes | None = None
    status_code: int | None = None  # end: $disconnect's status and reason
    reason: str | None = None
    action: dict[str, Any] | None = None  # action: the server action (see :func:`action_data`)

    @classmethod
    def of_text(cls, text: str, at_ms: int) -> "Entry":
        parsed = parse_client_message(text)
        if isinstance(parsed, Violation):  # kept small: a 64 KiB non-message is not stored
            return cls(kind="text", at_ms=at_ms, seq=parsed.seq, digest=digest(text), info=parsed.info)
        return cls(kind="text", at_ms=at_ms, seq=parsed.seq, digest=digest(text), text=text)

    @classmethod
    def of_audio(cls, audio: bytes, at_ms: int) -> "Entry":
        return cls(kind="audio", at_ms=at_ms, audio=audio)

    @classmethod
    def of_end(cls, at_ms: int, status_code: int | None, reason: str | None) -> "Entry":
        return cls(kind="end", at_ms=at_ms, status_code=status_code, reason=reason)

    @classmethod
    def of_action(cls, action: ServerAction, at_ms: int, token: str) -> "Entry":
        """A server action from the control API; ``token`` names its result (the caller's own)."""
        return cls(kind="action", at_ms=at_ms, token=token, action=action_data(action))

    def server_action(self) -> ServerAction | Refused:
        assert self.action is not None
        return server_action(self.action)

    @classmethod
    def of_full(cls, refused: "Entry") -> "Entry":
        """The small marker an invocation parks instead of its input when the mailbox is full."""
        return cls(kind="full", at_ms=refused.at_ms, seq=refused.seq, token=refused.token)

    @property
    def size(self) -> int:
        return len(self.to_json())

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, data: str) -> "Entry":
        return cls.model_validate_json(data)

    def message(self) -> ClientMessage | Violation:
        if self.text is not None:
            return parse_client_message(self.text)
        return Violation(self.info or "unreadable message", self.seq)


def action_data(action: ServerAction) -> dict[str, Any]:
    """A server action as JSON data (what an ``action`` entry stores)."""
    data: dict[str, Any] = {"name": action.name}
    if isinstance(action, SendEvent):
        data["entities"] = list(action.entities) if isinstance(action.entities, (list, tuple)) else action.entities
    elif isinstance(action, Disconnect):
        data |= {"reason": action.reason, "info": action.info}
    elif isinstance(action, Reconnect):
        data["info"] = action.info
    return data


def server_action(data: dict[str, Any]) -> ServerAction | Refused:
    """The inverse of :func:`action_data`; a Refused for data no action reads."""
    name = data.get("name")
    if name == "pause":
        return Pause()
    if name == "resume":
        return Resume()
    if name == "event":
        return SendEvent(data.get("entities", []))
    if name == "disconnect":
        return Disconnect(data.get("reason", "completed"), data.get("info"))
    if name == "reconnect":
        return Reconnect(data.get("info"))
    return Refused("bad_request", f"unknown action {name!r}")


def continued_ids(session: Session, entries: list[Entry]) -> list[str]:
    """The sessions an ``open`` waiting in ``entries`` continues: what the holder looks up and
    passes to :func:`drain` as ``continued`` (nothing once the session is opened)."""
    if session.state is not State.PREPARING:
        return []
    return [session_id for entry in entries if entry.kind == "text" and entry.text is not None
            for session_id in continued_session_ids(parse_client_message(entry.text))]


@dataclass
class Step:
    """One entry applied (or dropped), in the order it happened."""

    entry: Entry
    outcome: Outcome = field(default_factory=Outcome)
    audio_position: int | None = None  # accepted audio: its first sample's position
    duplicate: bool = False
    after_end: bool = False  # arrived once the session had ended: dropped, nothing recorded
    refused: Refused | None = None  # an action the core refused (nothing changed)


@dataclass
class Drained:
    steps: list[Step]
    remaining: list[Entry]  # still waiting (for a predecessor), in mailbox order
    recent: dict[str, str]
    ended: bool  # the end of the connection was applied (finish ran)


def _over(session: Session) -> bool:
    """The numbering no longer matters: only close is answered, whatever its seq."""
    return session.state in (State.ERROR, State.UNAUTHORIZED)


def flood_info(session: Session, waiting: list[Entry], limit_bytes: int) -> str:
    return (f"client seq {session.clientseq + 1} is missing and {len(waiting)} later inputs "
            f"({sum(entry.size for entry in waiting)} bytes) wait for it, more than the {limit_bytes} bytes "
            f"a session may hold")


def drain(session: Session, recent: dict[str, str], entries: list[Entry], policy: Policy, now_s: float,
          *, gap_wait_ms: int, limit_bytes: int, continued: ContinuedLookup | None = None,
          reconnect_at_s: float | None = None) -> Drained:
    """Apply every entry that may be applied now (see the module docstring); ``session`` is mutated."""
    steps: list[Step] = []
    pending = list(entries)
    now_ms = int(now_s * 1000)
    ended = session.disconnected_at is not None

    def apply_text(entry: Entry) -> None:
        nonlocal recent
        outcome = receive(session, entry.message(), policy, now_s, continued)
        if entry.seq is not None and session.clientseq == entry.seq and entry.digest is not None:
            recent = remember(recent, entry.seq, entry.digest)
        steps.append(Step(entry, outcome))

    def apply(entry: Entry) -> None:
        if ended:
            steps.append(Step(entry, after_end=True))
        elif entry.kind == "text":
            apply_text(entry)
        elif entry.kind == "audio":
            assert entry.audio is not None
            position = session.position
            problem = receive_audio(session, len(entry.audio))
            steps.append(Step(entry, problem or Outcome(), None if problem else position))
        elif entry.kind == "action":
            action = entry.server_action()
            outcome = action if isinstance(action, Refused) else act(session, action)
            if isinstance(outcome, Refused):
                steps.append(Step(entry, refused=outcome))
            else:
                steps.append(Step(entry, outcome))
        elif entry.kind == "full":
            steps.append(Step(entry, protocol_error(session, flood_info(session, pending, limit_bytes))))

    def ready(entry: Entry) -> bool:
        if entry.kind != "text" or entry.seq is None or _over(session) or ended:
            return entry.kind != "end"
        return entry.seq <= session.clientseq + 1

    while True:
        progress = False
        for entry in list(pending):
            if entry.kind == "end" or not ready(entry):
                continue
            pending.remove(entry)
            progress = True
            if (entry.kind == "text" and entry.seq is not None and entry.seq <= session.clientseq
                    and recent.get(str(entry.seq)) == entry.digest and not ended):
                steps.append(Step(entry, duplicate=True))
                continue
            apply(entry)
        if progress:
            continue
        waiting = sorted((e for e in pending if e.kind == "text"), key=lambda e: e.seq or 0)
        end = next((e for e in pending if e.kind == "end"), None)
        if waiting and not ended and sum(entry.size for entry in waiting) > limit_bytes:
            steps.append(Step(waiting[0], protocol_error(session, flood_info(session, waiting, limit_bytes))))
            continue  # the numbering is over now: the waiting inputs are applied next round
        if waiting and (end is not None or waiting[0].at_ms + gap_wait_ms <= now_ms):
            # A real gap: the predecessor never came. The core names it in its protocol error.
            pending.remove(waiting[0])
            apply(waiting[0])
            continue
        if (reconnect_at_s is not None and now_s >= reconnect_at_s and not ended
                and session.state in OPEN_STATES and session.reconnect_seq is None):
            # The connection is about to reach API Gateway's limit: move the call, once.
            apply(Entry.of_action(Reconnect(CONNECTION_LIMIT), now_ms, LIMIT_TOKEN))
            continue
        if end is not None:
            pending.remove(end)
            steps.append(Step(end, finish(session, now_s, end.status_code, end.reason)))
            ended = True
            for entry in pending:  # only later ends (a repeated $disconnect) can be left
                steps.append(Step(entry, after_end=True))
            pending = []
        return Drained(steps, pending, recent, ended)
