"""Conformance of an AudioHook server's frames, judged from the client's side like Genesys does.

Sans-I/O and independent of the server's own models: raw frames go in, findings come out.
The checker follows one session. Tell it what the client sent (``client_sent``) and hand it
every server frame (``check``); time is passed in. A frame Genesys would refuse yields
findings whose wording says what is wrong and how to fix it. When the AudioHook message can
still be dug out of a faulty frame (binary, enveloped, double-encoded, Python repr), it is,
so that later frames are judged against what the server meant to send.

Example::

    checker = ServerFrameChecker(session_id)
    checker.client_sent(open_message, now=time.time())
    verdict = checker.check(is_binary=False, payload=text, now=time.time())
    for finding in verdict.findings:
        print(finding.code, finding.message)
"""

from __future__ import annotations

import ast
import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

VERSION = "2"
MAX_TEXT_BYTES = 64 * 1024
OPENED_WITHIN_S = 5.0
CLOSED_WITHIN_S = 10.0

SERVER_TYPES = ("opened", "closed", "pong", "updated", "pause", "resume", "event", "disconnect", "reconnect")
CLIENT_TYPES = (
    "open",
    "close",
    "ping",
    "update",
    "paused",
    "resumed",
    "discarded",
    "error",
    "dtmf",
    "playback_started",
    "playback_completed",
)
SERVER_FIELDS = ("version", "id", "type", "seq", "clientseq", "parameters")
CLIENT_ONLY_FIELDS = {
    "position": "only client messages carry `position`",
    "serverseq": "servers carry `clientseq`",
}
# Server reply type -> the client request it answers.
REPLY_TO = {"opened": "open", "closed": "close", "pong": "ping", "updated": "update"}
DISCONNECT_REASONS = ("completed", "unauthorized", "error")
# Keys under which wrappers (API Gateway proxy responses, message buses, SDKs) put a payload.
ENVELOPE_KEYS = ("body", "data", "message", "payload", "detail")
# What API Gateway itself sends a WebSocket client when a route's integration fails: the
# Lambda function raised, ran past its Timeout or was throttled ("Internal server error"), or
# API Gateway's own 29 s integration timeout passed ("Endpoint request timed out").
API_GATEWAY_ERROR_KEYS = frozenset({"message", "connectionId", "requestId"})
_DURATION = re.compile(r"^PT\d+(\.\d+)?S$")
_MAX_UNWRAP = 3


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the server did that Genesys would not accept. ``code`` is stable for machines."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one server frame amounts to.

    ``message`` is the AudioHook message the frame carries, recovered when possible even from
    a faulty frame; ``accepted`` says whether Genesys would have taken the frame as it is.
    """

    findings: tuple[Finding, ...]
    message: dict[str, Any] | None

    @property
    def accepted(self) -> bool:
        return self.message is not None and not self.findings

    @property
    def type(self) -> str | None:
        kind = self.message.get("type") if self.message is not None else None
        return kind if isinstance(kind, str) else None


@dataclass
class _Transaction:
    """A client request that expects exactly one reply within a time limit (open, close)."""

    limit_s: float
    sent_at: float | None = None
    answered_at: float | None = None

    @property
    def deadline(self) -> float | None:
        return None if self.sent_at is None else self.sent_at + self.limit_s

    @property
    def waiting(self) -> bool:
        return self.sent_at is not None and self.answered_at is None

    @property
    def elapsed_s(self) -> float | None:
        if self.sent_at is None or self.answered_at is None:
            return None
        return self.answered_at - self.sent_at


@dataclass
class ServerFrameChecker:
    """Checks one session's server frames strictly, as the Genesys client does."""

    session_id: str
    opened_within_s: float = OPENED_WITHIN_S
    closed_within_s: float = CLOSED_WITHIN_S
    last_client_seq: int = 0
    last_server_seq: int = 0
    accepted_server_seq: int = 0
    """The seq of the last frame Genesys would accept: what the client reports as ``serverseq``."""
    offers: list[Any] = field(default_factory=list)
    opened_media: list[Any] | None = None
    _languages_asked: bool = False
    _last_clientseq: int = 0
    _opened_seen: bool = False
    _closed_seen: bool = False
    _pending: dict[str, deque[int]] = field(default_factory=dict)
    _opening: _Transaction = field(init=False)
    _closing: _Transaction = field(init=False)

    def __post_init__(self) -> None:
        self._opening = _Transaction(self.opened_within_s)
        self._closing = _Transaction(self.closed_within_s)

    # --- the client's side ---------------------------------------------------------------

    def client_sent(self, message: Mapping[str, Any], now: float) -> None:
        """Record a message the client sent (its seq, and what it asks the server for)."""
        seq, kind = message.get("seq"), message.get("type")
        if isinstance(seq, int):
            self.last_client_seq = seq
        parameters = message.get("parameters")
        parameters = parameters if isinstance(parameters, Mapping) else {}
        if isinstance(kind, str) and kind in REPLY_TO.values() and isinstance(seq, int):
            self._pending.setdefault(kind, deque()).append(seq)
        if kind == "open":
            media = parameters.get("media")
            self.offers = list(media) if isinstance(media, list) else []
            self._languages_asked = parameters.get("supportedLanguages") is True
            self._opening.sent_at = now
        elif kind == "close":
            self._closing.sent_at = now

    # --- transactions --------------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """An ``opened`` arrived (even in a frame Genesys would refuse)."""
        return self._opened_seen

    @property
    def closed(self) -> bool:
        return self._closed_seen

    @property
    def opened_deadline(self) -> float | None:
        """When Genesys stops waiting for ``opened`` (None before ``open`` is sent)."""
        return self._opening.deadline

    @property
    def closed_deadline(self) -> float | None:
        return self._closing.deadline

    @property
    def open_to_opened_s(self) -> float | None:
        return self._opening.elapsed_s

    @property
    def close_to_closed_s(self) -> float | None:
        return self._closing.elapsed_s

    def expect_opened(self, now: float) -> Finding | None:
        """The timeout finding when ``opened`` is still missing at ``now``, past its deadline."""
        deadline = self._opening.deadline
        if self._opening.waiting and deadline is not None and now >= deadline:
            return Finding(
                "opened_timeout",
                f"no `opened` within {self.opened_within_s:g} s of `open`; "
                'Genesys gives up (408 "Timed out waiting for opened response")',
            )
        return None

    def expect_closed(self, now: float) -> Finding | None:
        """The timeout finding when ``closed`` is still missing at ``now``, past its deadline."""
        deadline = self._closing.deadline
        if self._closing.waiting and deadline is not None and now >= deadline:
            return Finding(
                "closed_timeout",
                f"no `closed` within {self.closed_within_s:g} s of `close`; "
                'Genesys gives up (408 "Close transaction timed out")',
            )
        return None

    # --- the server's side ---------------------------------------------------------------

    def check(self, is_binary: bool, payload: bytes | str, now: float) -> Verdict:
        """Judge one server frame."""
        findings, message = _decode_frame(is_binary, payload)
        if message is not None:
            findings.extend(self._check_message(message, now))
        verdict = Verdict(tuple(findings), message)
        if verdict.accepted and message is not None:
            self.accepted_server_seq = message["seq"]
        return verdict

    def _check_message(self, message: dict[str, Any], now: float) -> list[Finding]:
        kind = message.get("type")
        name = kind if isinstance(kind, str) and kind else "message"
        findings = [
            *self._check_envelope_fields(message, name),
            *self._check_sequencing(message, name),
        ]
        parameters = message.get("parameters")
        if "parameters" in message and not isinstance(parameters, dict):
            findings.append(
                Finding(
                    "parameters_not_object",
                    f"`{name}.parameters` is {_show(parameters)} but must be an object ({{}} when empty)",
                )
            )
        if isinstance(kind, str) and kind in SERVER_TYPES:
            findings.extend(self._check_state(kind, now))
            if isinstance(parameters, dict):
                findings.extend(self._check_parameters(kind, parameters))
            if kind == "opened":
                self._opened_seen = True
                if self._opening.answered_at is None:
                    self._opening.answered_at = now
                if isinstance(parameters, dict) and isinstance(parameters.get("media"), list):
                    self.opened_media = parameters["media"]
            elif kind == "closed":
                self._closed_seen = True
                if self._closing.answered_at is None:
                    self._closing.answered_at = now
        return findings

    def _check_envelope_fields(self, message: dict[str, Any], name: str) -> list[Finding]:
        findings = [
            Finding("missing_field", f"`{name}.{key}` is missing")
            for key in SERVER_FIELDS
            if key not in message
        ]
        for key in message:
            if key in CLIENT_ONLY_FIELDS:
                findings.append(
                    Finding(
                        "client_field_on_server_message",
                        f"`{name}.{key}` must not appear on a server message ({CLIENT_ONLY_FIELDS[key]})",
                    )
                )
            elif key not in SERVER_FIELDS:
                findings.append(Finding("unknown_field", f"`{name}` has unknown top-level field `{key}`"))

        version = message.get("version", VERSION)
        if version == 2 and not isinstance(version, bool):
            findings.append(
                Finding("wrong_version", f'`{name}.version` is 2 (a number) but must be the string "2"')
            )
        elif version != VERSION:
            findings.append(Finding("wrong_version", f'`{name}.version` is {_show(version)} but must be "2"'))

        session_id = message.get("id", self.session_id)
        if not isinstance(session_id, str) or session_id.lower() != self.session_id.lower():
            findings.append(
                Finding(
                    "wrong_id",
                    f'`{name}.id` is {_show(session_id)} but the session id is "{self.session_id}"',
                )
            )

        kind = message.get("type")
        if "type" in message and not isinstance(kind, str):
            findings.append(Finding("unknown_type", f"`message.type` is {_show(kind)} but must be a string"))
        elif isinstance(kind, str) and kind in CLIENT_TYPES:
            findings.append(
                Finding(
                    "unknown_type",
                    f'"{kind}" is a client message type; a server sends {_either(SERVER_TYPES)}',
                )
            )
        elif isinstance(kind, str) and kind not in SERVER_TYPES:
            findings.append(
                Finding(
                    "unknown_type",
                    f'unknown server message type "{kind}"; a server sends {_either(SERVER_TYPES)}',
                )
            )
        return findings

    def _check_sequencing(self, message: dict[str, Any], name: str) -> list[Finding]:
        findings = []
        seq = message.get("seq")
        if "seq" in message and not _is_int(seq):
            findings.append(
                Finding("seq_not_integer", f"`{name}.seq` is {_show(seq)} but must be an integer")
            )
        elif _is_int(seq):
            expected = self.last_server_seq + 1
            if seq != expected:
                previous = (
                    "this is the server's first message"
                    if self.last_server_seq == 0
                    else f"the previous server seq was {self.last_server_seq}"
                )
                findings.append(
                    Finding(
                        "seq_not_consecutive", f"`{name}.seq` is {seq} but {previous}; expected {expected}"
                    )
                )
            # Follow what the server sent, so that one jump is reported once.
            self.last_server_seq = seq

        clientseq = message.get("clientseq")
        if "clientseq" in message and not _is_int(clientseq):
            findings.append(
                Finding(
                    "clientseq_not_integer",
                    f"`{name}.clientseq` is {_show(clientseq)} but must be an integer",
                )
            )
        elif _is_int(clientseq):
            findings.extend(self._check_clientseq(name, clientseq))
            self._last_clientseq = max(self._last_clientseq, clientseq)
        return findings

    def _check_clientseq(self, name: str, clientseq: int) -> list[Finding]:
        last = self.last_client_seq
        if clientseq > last:
            return [
                Finding(
                    "clientseq_wrong",
                    f"`{name}.clientseq` is {clientseq} but the last client message had seq {last}",
                )
            ]
        request = REPLY_TO.get(name)
        waiting = self._pending.get(request or "")
        if waiting:
            # A reply cannot predate its request; messages sent after it may still be in flight.
            answered = waiting[0]
            if clientseq < answered:
                detail = (
                    f"the last client message had seq {last}"
                    if answered == last
                    else f"it answers `{request}` seq {answered}"
                )
                return [Finding("clientseq_wrong", f"`{name}.clientseq` is {clientseq} but {detail}")]
        if clientseq < self._last_clientseq:
            return [
                Finding(
                    "clientseq_wrong",
                    f"`{name}.clientseq` is {clientseq} but an earlier server message had clientseq "
                    f"{self._last_clientseq}; it never goes down",
                )
            ]
        return []

    def _check_state(self, kind: str, now: float) -> list[Finding]:
        findings = []
        if self._closed_seen:
            findings.append(
                Finding("after_closed", f"`{kind}` arrived after `closed`; nothing may follow `closed`")
            )
        if kind == "opened" and self._opened_seen:
            findings.append(
                Finding(
                    "unexpected_opened",
                    "Unexpected opened message: `opened` already arrived once (Genesys answers 409)",
                )
            )
            return findings
        request = REPLY_TO.get(kind)
        if request is not None:
            waiting = self._pending.get(request)
            if waiting:
                waiting.popleft()
            elif not (kind == "closed" and self._closed_seen):
                hint = "; to end the session a server sends `disconnect`" if kind == "closed" else ""
                findings.append(
                    Finding(
                        "unsolicited_reply", f"`{kind}` arrived but the client has not sent `{request}`{hint}"
                    )
                )
        if not self._opened_seen and kind not in ("opened", "disconnect", "closed"):
            findings.append(
                Finding(
                    "before_opened",
                    f"`{kind}` arrived before `opened`; the server's first message must be `opened`",
                )
            )
        transaction = {"opened": self._opening, "closed": self._closing}.get(kind)
        if transaction is not None and transaction.sent_at is not None and transaction.answered_at is None:
            took = now - transaction.sent_at
            if took > transaction.limit_s:
                findings.append(
                    Finding(
                        f"{kind}_late",
                        f"`{kind}` arrived {took:.1f} s after `{REPLY_TO[kind]}`; "
                        f"Genesys waits at most {transaction.limit_s:g} s",
                    )
                )
        return findings

    def _check_parameters(self, kind: str, parameters: dict[str, Any]) -> list[Finding]:
        if kind == "opened":
            return self._check_opened_parameters(parameters)
        if kind == "disconnect":
            reason = parameters.get("reason")
            if reason not in DISCONNECT_REASONS:
                shown = "missing" if "reason" not in parameters else _show(reason)
                return [
                    Finding(
                        "bad_parameter",
                        f"`disconnect.parameters.reason` is {shown} but must be {_either(DISCONNECT_REASONS, quote=True)}",
                    )
                ]
        if kind == "event" and not isinstance(parameters.get("entities"), list):
            shown = "missing" if "entities" not in parameters else _show(parameters.get("entities"))
            return [Finding("bad_parameter", f"`event.parameters.entities` is {shown} but must be a list")]
        return []

    def _check_opened_parameters(self, parameters: dict[str, Any]) -> list[Finding]:
        findings = []
        media = parameters.get("media")
        if "media" not in parameters:
            findings.append(
                Finding(
                    "missing_field",
                    "`opened.parameters.media` is missing; send one of the offers (or [] for no audio)",
                )
            )
        elif not isinstance(media, list):
            findings.append(
                Finding(
                    "media_not_offered",
                    f"`opened.parameters.media` is {_show(media, limit=200)} but must be a list holding one of the offers "
                    "(or [] for no audio)",
                )
            )
        elif len(media) > 1:
            findings.append(
                Finding(
                    "media_not_offered",
                    f"`opened.parameters.media` has {len(media)} entries; select exactly one of the offers "
                    "(or [] for no audio)",
                )
            )
        elif media and media[0] not in self.offers:
            findings.append(
                Finding(
                    "media_not_offered",
                    f"`opened.parameters.media[0]` {_show(media[0], limit=200)} is not one of the offered media; "
                    "return one offer unchanged",
                )
            )
        if "startPaused" in parameters and not isinstance(parameters["startPaused"], bool):
            findings.append(
                Finding(
                    "bad_parameter",
                    f"`opened.parameters.startPaused` is {_show(parameters['startPaused'])} but must be true or false",
                )
            )
        discard_to = parameters.get("discardTo")
        if "discardTo" in parameters and not (isinstance(discard_to, str) and _DURATION.match(discard_to)):
            findings.append(
                Finding(
                    "bad_parameter",
                    f'`opened.parameters.discardTo` is {_show(discard_to)} but must be a duration like "PT2.5S"',
                )
            )
        if "supportedLanguages" in parameters and not self._languages_asked:
            findings.append(
                Finding(
                    "bad_parameter",
                    "`opened.parameters.supportedLanguages` is present but `open` did not ask for it "
                    "(`supportedLanguages` was not true)",
                )
            )
        return findings


# --- frame decoding ---------------------------------------------------------------------


def _decode_frame(is_binary: bool, payload: bytes | str) -> tuple[list[Finding], dict[str, Any] | None]:
    """Findings about the frame's form, and the AudioHook message in it when one can be found."""
    if is_binary or isinstance(payload, bytes):
        raw = payload if isinstance(payload, bytes) else payload.encode()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return [
                Finding(
                    "binary_frame",
                    f"binary frame ({len(raw)} bytes, not UTF-8 text) from the server; "
                    "AudioHook messages must be text frames",
                )
            ], None
        findings, message = _decode_text(text)
        subject = _subject(message, "a server message")
        findings.insert(
            0,
            Finding(
                "binary_frame",
                f"{subject} arrived as a binary frame ({len(raw)} bytes); AudioHook messages must be text frames",
            ),
        )
        return findings, message
    return _decode_text(payload)


def _decode_text(text: str) -> tuple[list[Finding], dict[str, Any] | None]:
    findings: list[Finding] = []
    size = len(text.encode("utf-8", "replace"))
    try:
        value = json.loads(text)
    except ValueError as error:
        message = _python_literal(text)
        if message is None:
            reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
            where = (
                f" at line {error.lineno} column {error.colno}"
                if isinstance(error, json.JSONDecodeError)
                else ""
            )
            return [
                Finding("not_json", f"the text frame is not JSON ({reason}{where}): {_snippet(text)}")
            ], None
        quirk = "single quotes" if "'" in text else "True/False/None"
        findings.append(
            Finding(
                "python_repr",
                f"{_subject(message, 'the text frame')} looks like a Python repr ({quirk}); serialise with json.dumps",
            )
        )
        value = message
    else:
        value, depth = _unwrap_strings(value)
        if depth and isinstance(value, dict):
            findings.append(
                Finding(
                    "double_encoded",
                    f"{_subject(value, 'the message')} is double-encoded: the frame is a JSON string "
                    "containing JSON; serialise the message once (json.dumps the dict, not its JSON text)",
                )
            )
    if not isinstance(value, dict):
        return findings + [
            Finding(
                "not_object", f"the frame holds a JSON {_json_kind(value)}, not an AudioHook message object"
            )
        ], None
    if set(value) == API_GATEWAY_ERROR_KEYS and all(isinstance(item, str) for item in value.values()):
        return findings + [api_gateway_error(value)], None

    unwrapped = _unwrap_envelope(value)
    if unwrapped is not None:
        key, inner = unwrapped
        keys = ", ".join(sorted(value))
        findings.append(
            Finding(
                "envelope",
                f"{_subject(inner, 'the message')} is wrapped in an envelope (keys: {keys}); send the bare "
                f"AudioHook message as the frame, not an object holding it in `{key}`",
            )
        )
        value = inner
    if size > MAX_TEXT_BYTES:
        findings.append(
            Finding(
                "too_large",
                f"{_subject(value, 'the message')} is {size} bytes; AudioHook text messages are at most "
                f"{MAX_TEXT_BYTES} bytes",
            )
        )
    return findings, value


def api_gateway_error(frame: Mapping[str, str]) -> Finding:
    """What API Gateway's own error frame means, and where to look."""
    return Finding(
        "api_gateway_error",
        f"API Gateway's own error frame ({json.dumps(frame['message'])}), not an AudioHook message: the "
        f"$default Lambda function failed, timed out or was throttled, so API Gateway answered in its place "
        f"and Genesys refuses the frame as malformed; look up requestId {frame['requestId']} (connection "
        f"{frame['connectionId']}) in the $default function's logs (key api_request_id) and API Gateway's "
        f"execution logs",
    )


def _python_literal(text: str) -> dict[str, Any] | None:
    """The dict a Python ``repr``/``str`` of a dict spells, made JSON-compatible; None otherwise."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return None


def _unwrap_strings(value: Any) -> tuple[Any, int]:
    """A JSON string holding JSON, decoded as many times as it was encoded (bounded)."""
    depth = 0
    while isinstance(value, str) and depth < _MAX_UNWRAP:
        try:
            value = json.loads(value)
        except ValueError:
            break
        depth += 1
    return value, depth


def _unwrap_envelope(value: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(key, message) when ``value`` is not itself a message but holds one under a wrapper key."""
    if "type" in value or "version" in value:
        return None
    for key, inner in value.items():
        if key.lower() not in ENVELOPE_KEYS:
            continue
        if isinstance(inner, str):
            inner, _ = _unwrap_strings(inner)
        if isinstance(inner, dict) and ("type" in inner or "version" in inner):
            return key, inner
    return None


# --- transcripts ------------------------------------------------------------------------


def check_transcript(entries: Iterable[Mapping[str, Any]], session_id: str | None = None) -> list[Finding]:
    """Findings for a recorded session: fixture lines ``{"direction", "message"}`` or raw frames.

    A raw entry carries ``text`` or ``base64`` (a binary frame) instead of ``message``, and may
    carry ``t_ms``, its time since the session started. The session id defaults to the first
    client message's id.
    """
    import base64

    checker: ServerFrameChecker | None = None
    findings: list[Finding] = []
    for entry in entries:
        now = float(entry.get("t_ms", 0)) / 1000
        payload: bytes | str
        if "message" in entry:
            is_binary, payload = False, json.dumps(entry["message"])
        elif "base64" in entry:
            is_binary, payload = True, base64.b64decode(entry["base64"])
        else:
            is_binary, payload = False, entry["text"]
        if entry.get("direction") == "client":
            message = entry.get("message") if "message" in entry else _client_message(payload)
            if message is None:
                continue
            if checker is None:
                checker = ServerFrameChecker(session_id or str(message.get("id", "")))
            checker.client_sent(message, now)
        else:
            if checker is None:
                checker = ServerFrameChecker(session_id or "")
            findings.extend(checker.check(is_binary, payload, now).findings)
    return findings


def _client_message(payload: bytes | str) -> dict[str, Any] | None:
    if isinstance(payload, bytes):
        return None  # audio
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- wording helpers --------------------------------------------------------------------


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _subject(message: Mapping[str, Any] | None, fallback: str) -> str:
    kind = message.get("type") if message is not None else None
    return f"`{kind}`" if isinstance(kind, str) and kind else fallback


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snippet(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _either(options: Iterable[str], quote: bool = False) -> str:
    items = [f'"{option}"' if quote else option for option in options]
    return ", ".join(items[:-1]) + " or " + items[-1]
