"""A Genesys-like AudioHook client: probe any AudioHook server, or stream calls to it.

``probe`` does what Genesys does when an integration is saved: a signed upgrade, ``open``
with null ids, ``close`` right after ``opened``. ``call`` streams a whole session of audio;
``run_calls`` runs many at once. Every server frame goes through
:class:`~audiohook.conformance.ServerFrameChecker`, so the reports say exactly what Genesys
would refuse and why.

Example::

    report = asyncio.run(probe("wss://abc.execute-api.us-east-1.amazonaws.com/prod", key, secret))
    print(report.to_text())
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from audiohook.tools.conformance import Finding, ServerFrameChecker, Verdict
from audiohook.tools.wav import AUDIOHOOK_RATE, AudioSource

GENESYS_USER_AGENT = "GenesysCloud-AudioHook-Client"
NULL_UUID = "00000000-0000-0000-0000-000000000000"
UPGRADE_TIMEOUT_S = 10.0
PROBE_ERROR_PREFIX = "Connection probe error: "
GENESYS_OFFERS: tuple[dict[str, Any], ...] = (
    {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": AUDIOHOOK_RATE},
    {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": AUDIOHOOK_RATE},
    {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": AUDIOHOOK_RATE},
)
# What Genesys says in its `error` message for each kind of refusal.
MALFORMED = (400, "Message is malformed")
UNEXPECTED_OPENED = (409, 'Unexpected "opened" message.')
OPENED_TIMED_OUT = (408, "Timed out waiting for opened response")
CLOSE_TIMED_OUT = (408, "Close transaction timed out.")

Clock = Callable[[], float]


# --- reports ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One frame as it went over the wire; ``t_ms`` counts from the start of the session."""

    direction: Literal["client", "server"]
    t_ms: float
    text: str | None = None
    data: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"direction": self.direction, "t_ms": self.t_ms}
        if self.text is not None:
            entry["text"] = self.text
        else:
            entry["base64"] = base64.b64encode(self.data or b"").decode()
        return entry

    def to_line(self) -> str:
        if self.text is not None:
            shown = self.text
        else:
            data = self.data or b""
            shown = f"<binary frame, {len(data)} bytes> {data[:200].decode('utf-8', 'replace')}".rstrip()
        return f"{self.t_ms:9.1f} ms  {self.direction:<6}  {shown}"


def _findings_text(findings: Sequence[Finding]) -> list[str]:
    return [f"  {index}. [{finding.code}] {finding.message}" for index, finding in enumerate(findings, 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _show_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


@dataclass
class ProbeReport:
    """The outcome of one connection probe."""

    url: str
    session_id: str
    findings: list[Finding] = field(default_factory=list)
    transcript: list[TranscriptEntry] = field(default_factory=list)
    open_to_opened_ms: float | None = None
    close_to_closed_ms: float | None = None

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_text(self) -> str:
        verdict = (
            "PASSED"
            if self.passed
            else f"FAILED ({len(self.findings)} finding{'s' * (len(self.findings) != 1)})"
        )
        lines = [
            f"AudioHook connection probe of {self.url}",
            f"session {self.session_id}: {verdict}",
            (
                f"  open -> opened: {_show_ms(self.open_to_opened_ms)}; "
                f"close -> closed: {_show_ms(self.close_to_closed_ms)}"
            ),
        ]
        if self.findings:
            lines += ["findings:", *_findings_text(self.findings)]
        lines += ["transcript:", *(f"  {entry.to_line()}" for entry in self.transcript)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "session_id": self.session_id,
            "passed": self.passed,
            "findings": [{"code": finding.code, "message": finding.message} for finding in self.findings],
            "timings_ms": {
                "open_to_opened": self.open_to_opened_ms,
                "close_to_closed": self.close_to_closed_ms,
            },
            "transcript": [entry.to_dict() for entry in self.transcript],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class CallReport:
    """The outcome of one streamed session."""

    url: str
    session_id: str
    conversation_id: str
    media: dict[str, Any] | None = None
    messages_sent: int = 0
    messages_received: int = 0
    audio_frames_sent: int = 0
    audio_seconds_sent: float = 0.0
    events_received: int = 0
    events: list[Any] = field(default_factory=list)
    """``parameters.entities`` of every ``event`` the server sent, in order."""
    continued_sessions: list[str] = field(default_factory=list)
    """Sessions opened to follow the server's ``reconnect``, each continuing the one before."""
    open_to_opened_ms: float | None = None
    close_to_closed_ms: float | None = None
    ping_rtts_ms: list[float] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    transcript: list[TranscriptEntry] = field(default_factory=list)
    """Text frames both ways and any binary frame from the server; the client's audio is only counted."""

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "passed": self.passed,
            "media": self.media,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "audio_frames_sent": self.audio_frames_sent,
            "audio_seconds_sent": round(self.audio_seconds_sent, 3),
            "events_received": self.events_received,
            "events": self.events,
            "continued_sessions": self.continued_sessions,
            "timings_ms": {
                "open_to_opened": self.open_to_opened_ms,
                "close_to_closed": self.close_to_closed_ms,
                "ping_rtts": self.ping_rtts_ms,
            },
            "findings": [{"code": finding.code, "message": finding.message} for finding in self.findings],
            "transcript": [entry.to_dict() for entry in self.transcript],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.findings)} findings)"
        media = (
            "none"
            if not self.media
            else f"{self.media.get('format')} {'+'.join(self.media.get('channels', []))}"
        )
        rtts = ", ".join(f"{rtt:.1f}" for rtt in self.ping_rtts_ms) or "-"
        lines = [
            f"AudioHook call to {self.url}",
            f"session {self.session_id} (conversation {self.conversation_id}): {verdict}",
            f"  media {media}; {self.audio_seconds_sent:.1f} s of audio in {self.audio_frames_sent} frames",
            (
                f"  messages sent {self.messages_sent}, received {self.messages_received}, "
                f"events {self.events_received}"
            ),
            (
                f"  open -> opened: {_show_ms(self.open_to_opened_ms)}; "
                f"close -> closed: {_show_ms(self.close_to_closed_ms)}; ping rtts (ms): {rtts}"
            ),
        ]
        for moved in self.continued_sessions:
            lines.append(f"  reconnected: continued in session {moved}")
        for entities in self.events:
            lines.append(f"  event: {json.dumps(entities)}")
        if self.findings:
            lines += ["findings:", *_findings_text(self.findings)]
        return "\n".join(lines)


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=None)}


@dataclass
class CallsSummary:
    """Totals over concurrent calls."""

    reports: list[CallReport]

    @property
    def passed(self) -> int:
        return sum(report.passed for report in self.reports)

    def to_dict(self) -> dict[str, Any]:
        findings = Counter(
            (f.code, f.message) for report in self.reports for f in dict.fromkeys(report.findings)
        )
        opened = [r.open_to_opened_ms for r in self.reports if r.open_to_opened_ms is not None]
        return {
            "sessions": len(self.reports),
            "passed": self.passed,
            "failed": len(self.reports) - self.passed,
            "messages_sent": sum(r.messages_sent for r in self.reports),
            "messages_received": sum(r.messages_received for r in self.reports),
            "audio_seconds_sent": round(sum(r.audio_seconds_sent for r in self.reports), 3),
            "open_to_opened_ms": _spread(opened),
            "ping_rtt_ms": _spread([rtt for r in self.reports for rtt in r.ping_rtts_ms]),
            "findings": [
                {"code": code, "message": message, "sessions": count}
                for (code, message), count in findings.most_common()
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        totals = self.to_dict()

        def spread(name: str) -> str:
            return ", ".join(f"{key} {_show_ms(value)}" for key, value in totals[name].items())

        lines = [
            f"{totals['sessions']} sessions: {totals['passed']} passed, {totals['failed']} failed",
            (
                f"  messages sent {totals['messages_sent']}, received {totals['messages_received']}; "
                f"audio sent {totals['audio_seconds_sent']:.1f} s"
            ),
            f"  open -> opened: {spread('open_to_opened_ms')}",
            f"  ping rtt: {spread('ping_rtt_ms')}",
        ]
        for finding in totals["findings"]:
            lines.append(f"  {finding['sessions']} x [{finding['code']}] {finding['message']}")
        return "\n".join(lines)


# --- the upgrade ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What the signature covers about the URL: ``@request-target`` and ``@authority``."""

    request_target: str
    authority: str

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        default_port = 443 if parts.scheme == "wss" else 80
        # Like the Host header websockets sends: the port only when it is not the default.
        authority = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(target, authority)


def upgrade_headers(
    url: str,
    api_key: str,
    client_secret: str,
    *,
    organization_id: str,
    session_id: str,
    correlation_id: str,
    now: float,
) -> dict[str, str]:
    """The headers Genesys sends on the upgrade request; signed when a client secret is given.

    Raises ValueError when the client secret is not base64.
    """
    if client_secret and not _is_base64(client_secret):
        raise ValueError("the client secret is not valid base64 (use it as the Genesys integration shows it)")
    headers = {
        "Audiohook-Organization-Id": organization_id,
        "Audiohook-Correlation-Id": correlation_id,
        "Audiohook-Session-Id": session_id,
        "X-API-KEY": api_key,
    }
    if client_secret:
        from audiohook.auth import sign_upgrade  # imported here: only clients that sign need it

        target = Target.of(url)
        headers |= sign_upgrade(
            {**headers, "Host": target.authority},
            target.request_target,
            api_key,
            client_secret,
            now=now,
            nonce=secrets.token_urlsafe(24),
        )
    return headers


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return False
    return True


def _rejection(status: int) -> str:
    hints = {
        401: "check the API key and client secret",
        403: "check the API key and client secret",
        404: "check the URL path (the API Gateway stage or the custom domain's base path)",
        429: "the server is throttling upgrades",
    }
    hint = hints.get(status, "the server failed; check its logs" if status >= 500 else "")
    wording = f"the server rejected the WebSocket upgrade with HTTP {status}"
    return f"{wording}: {hint}" if hint else wording


async def _connect(url: str, headers: dict[str, str], timeout_s: float) -> ClientConnection | Finding:
    try:
        return await connect(
            url,
            additional_headers=headers,
            user_agent_header=GENESYS_USER_AGENT,
            open_timeout=timeout_s,
            ping_interval=None,  # liveness is AudioHook's ping/pong
            compression=None,
            max_size=None,  # the checker reports oversized messages itself
        )
    except InvalidStatus as error:
        return Finding("upgrade_rejected", _rejection(error.response.status_code))
    except InvalidURI as error:
        return Finding("bad_url", f"cannot connect to {url!r}: {error.msg}")
    except TimeoutError:
        return Finding("upgrade_timeout", f"no answer to the WebSocket upgrade within {timeout_s:g} s")
    except InvalidHandshake as error:
        return Finding("upgrade_failed", f"the WebSocket upgrade failed: {error}")
    except OSError as error:
        return Finding("connect_failed", f"could not connect to {Target.of(url).authority}: {error}")


def _connection_closed(error: ConnectionClosed, waiting_for: str) -> Finding:
    if error.rcvd is None:
        how = "the connection dropped without a close frame"
    else:
        reason = f'reason "{error.rcvd.reason}"' if error.rcvd.reason else "no reason"
        how = f"the server closed the connection (code {error.rcvd.code}, {reason})"
    return Finding("connection_closed", f"{how} while the client was {waiting_for}")


# --- one session on the wire ------------------------------------------------------------


def duration(seconds: float) -> str:
    """AudioHook duration: 12.34 -> ``PT12.34S``."""
    return f"PT{f'{seconds:.3f}'.rstrip('0').rstrip('.')}S"


class _Session:
    """The client's half of one session: numbering, sending, receiving, recording."""

    def __init__(
        self,
        ws: ClientConnection,
        checker: ServerFrameChecker,
        clock: Clock,
        transcript: list[TranscriptEntry],
        error_prefix: str = "",
    ) -> None:
        self.ws = ws
        self.checker = checker
        self.clock = clock
        self.transcript = transcript
        self.error_prefix = error_prefix
        self.started = clock()
        self.seq = 0
        self.samples_sent = 0
        self.frames_sent = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.waiting_for = "waiting for `opened`"
        self._send_lock = asyncio.Lock()
        self._loss_reported = False

    @property
    def session_id(self) -> str:
        return self.checker.session_id

    @property
    def position_s(self) -> float:
        return self.samples_sent / AUDIOHOOK_RATE

    def _elapsed_ms(self) -> float:
        return round((self.clock() - self.started) * 1000, 1)

    def at_least(self, deadline: float | None) -> float:
        """Now, or ``deadline`` if the timer woke a hair before it by this clock."""
        return max(self.clock(), deadline or 0.0)

    def connection_lost(self, error: ConnectionClosed, findings: list[Finding]) -> None:
        """Report a connection the server closed before ``closed``; once, whoever notices it."""
        if not self.checker.closed and not self._loss_reported:
            self._loss_reported = True
            findings.append(_connection_closed(error, self.waiting_for))

    async def send(self, kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
        async with self._send_lock:
            self.seq += 1
            message = {
                "version": "2",
                "id": self.session_id,
                "type": kind,
                "seq": self.seq,
                "position": duration(self.position_s),
                "parameters": parameters,
                "serverseq": self.checker.accepted_server_seq,
            }
            text = json.dumps(message, separators=(",", ":"))
            self.checker.client_sent(message, self.clock())
            self.transcript.append(TranscriptEntry("client", self._elapsed_ms(), text=text))
            self.messages_sent += 1
            await self.ws.send(text)
            return message

    async def send_error(self, code_and_text: tuple[int, str]) -> None:
        """Tell the server what the client refused, as Genesys does; best effort."""
        code, text = code_and_text
        try:
            await self.send("error", {"code": code, "message": self.error_prefix + text})
        except ConnectionClosed:
            pass

    async def send_audio(self, frame: bytes, samples: int) -> None:
        async with self._send_lock:
            await self.ws.send(frame)
            self.samples_sent += samples
            self.frames_sent += 1

    async def receive(self, deadline: float | None) -> Verdict | None:
        """The next server frame, judged; None when ``deadline`` passes first."""
        timeout = None if deadline is None else deadline - self.clock()
        if timeout is not None and timeout <= 0:
            return None
        try:
            payload = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return None
        is_binary = isinstance(payload, bytes)
        self.transcript.append(
            TranscriptEntry(
                "server",
                self._elapsed_ms(),
                text=None if is_binary else str(payload),
                data=payload if isinstance(payload, bytes) else None,
            )
        )
        self.messages_received += 1
        return self.checker.check(is_binary, payload, self.clock())

    async def await_opened(self, findings: list[Finding]) -> tuple[str, Verdict | None]:
        """Wait for ``opened``: (close reason to use next, the accepted opened verdict)."""
        self.waiting_for = "waiting for `opened`"
        while True:
            verdict = await self.receive(self.checker.opened_deadline)
            if verdict is None:
                timeout = self.checker.expect_opened(self.at_least(self.checker.opened_deadline))
                if timeout is not None:
                    findings.append(timeout)
                await self.send_error(OPENED_TIMED_OUT)
                return "error", None
            findings.extend(verdict.findings)
            if not verdict.accepted:
                await self.send_error(_refusal(verdict))
                return "error", None
            if verdict.type == "opened":
                return "end", verdict
            if verdict.type in ("disconnect", "reconnect"):
                assert verdict.message is not None
                findings.append(_disconnected_instead_of_opened(verdict.message))
                return str(verdict.type), None

    async def close_transaction(self, reason: str, findings: list[Finding]) -> None:
        """Send ``close`` and wait for ``closed``, reporting what Genesys would refuse."""
        await self.send("close", {"reason": reason})
        self.waiting_for = "waiting for `closed`"
        await self.await_closed(findings)

    async def await_closed(self, findings: list[Finding]) -> None:
        while True:
            verdict = await self.receive(self.checker.closed_deadline)
            if verdict is None:
                timeout = self.checker.expect_closed(self.at_least(self.checker.closed_deadline))
                if timeout is not None:
                    findings.append(timeout)
                await self.send_error(CLOSE_TIMED_OUT)
                return
            findings.extend(verdict.findings)
            if not verdict.accepted:
                await self.send_error(_refusal(verdict))
            if verdict.type == "closed":
                return


def _refusal(verdict: Verdict) -> tuple[int, str]:
    if any(finding.code == "unexpected_opened" for finding in verdict.findings):
        return UNEXPECTED_OPENED
    return MALFORMED


def _disconnected_instead_of_opened(message: dict[str, Any]) -> Finding:
    parameters = message.get("parameters") or {}
    details = ", ".join(
        f"{key} {json.dumps(parameters[key])}" for key in ("reason", "info") if key in parameters
    )
    return Finding(
        "disconnected",
        f"the server sent `{message.get('type')}` ({details or 'no reason'}) instead of `opened`",
    )


async def _start(
    url: str,
    api_key: str,
    client_secret: str,
    *,
    organization_id: str,
    session_id: str,
    timeout_open: float,
    timeout_close: float,
    timeout_upgrade: float,
    clock: Clock,
    findings: list[Finding],
    transcript: list[TranscriptEntry],
    error_prefix: str = "",
) -> _Session | None:
    """Upgrade and wrap the connection; None (with a finding) when the upgrade fails."""
    try:
        headers = upgrade_headers(
            url,
            api_key,
            client_secret,
            organization_id=organization_id,
            session_id=session_id,
            correlation_id=str(uuid.uuid4()),
            now=clock(),
        )
    except ValueError as error:  # auth.SigningError
        findings.append(Finding("bad_client_secret", f"cannot sign the upgrade: {error}"))
        return None
    connected = await _connect(url, headers, timeout_upgrade)
    if isinstance(connected, Finding):
        findings.append(connected)
        return None
    checker = ServerFrameChecker(session_id, opened_within_s=timeout_open, closed_within_s=timeout_close)
    return _Session(connected, checker, clock, transcript, error_prefix)


# --- probe ------------------------------------------------------------------------------


def probe_open_parameters(organization_id: str) -> dict[str, Any]:
    """``open`` of a Genesys connection probe: null conversation and participant, the usual offers."""
    return {
        "organizationId": organization_id,
        "conversationId": NULL_UUID,
        "participant": {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""},
        "media": [dict(offer, channels=list(offer["channels"])) for offer in GENESYS_OFFERS],
        "language": None,
        "customConfig": {},
    }


async def probe(
    url: str,
    api_key: str,
    client_secret: str,
    *,
    organization_id: str | None = None,
    session_id: str | None = None,
    timeout_open: float = 5.0,
    timeout_close: float = 10.0,
    timeout_upgrade: float = UPGRADE_TIMEOUT_S,
    now: Clock = time.time,
) -> ProbeReport:
    """Run the connection probe Genesys runs when an AudioHook integration is saved."""
    organization_id = organization_id or str(uuid.uuid4())
    report = ProbeReport(url=url, session_id=session_id or str(uuid.uuid4()))
    session = await _start(
        url,
        api_key,
        client_secret,
        organization_id=organization_id,
        session_id=report.session_id,
        timeout_open=timeout_open,
        timeout_close=timeout_close,
        timeout_upgrade=timeout_upgrade,
        clock=now,
        findings=report.findings,
        transcript=report.transcript,
        error_prefix=PROBE_ERROR_PREFIX,
    )
    if session is None:
        return report
    try:
        await session.send("open", probe_open_parameters(organization_id))
        reason, _ = await session.await_opened(report.findings)
        await session.close_transaction(reason, report.findings)
    except ConnectionClosed as error:
        session.connection_lost(error, report.findings)
    finally:
        await session.ws.close()
    report.open_to_opened_ms = _ms(session.checker.open_to_opened_s)
    report.close_to_closed_ms = _ms(session.checker.close_to_closed_s)
    return report


# --- call -------------------------------------------------------------------------------


def call_open_parameters(
    organization_id: str,
    conversation_id: str,
    offers: Sequence[dict[str, Any]],
    language: str | None,
) -> dict[str, Any]:
    return {
        "organizationId": organization_id,
        "conversationId": conversation_id,
        "participant": {
            "id": str(uuid.uuid4()),
            "ani": "tel:+13175550123",
            "aniName": "Test Caller",
            "dnis": "tel:+18005550199",
        },
        "media": [dict(offer) for offer in offers],
        "language": language,
        "customConfig": {},
    }


@dataclass
class _Streaming:
    """What the audio loop and the server's messages share during a call."""

    paused_by: set[str] = field(default_factory=set)
    skipped_while_paused_s: float = 0.0
    stop_reason: str | None = None
    pings_in_flight: deque[float] = field(default_factory=deque)
    last_rtt_s: float | None = None
    reconnect_requested: bool = False


async def call(
    url: str,
    api_key: str,
    client_secret: str,
    *,
    audio: AudioSource,
    frame_ms: int = 200,
    speed: float = 1.0,
    ping_interval_s: float = 5.0,
    pause_at: float | None = None,
    resume_at: float | None = None,
    language: str | None = "en-US",
    language_update: tuple[float, str] | None = None,
    discard: tuple[float, float] | None = None,
    organization_id: str | None = None,
    offers: Sequence[dict[str, Any]] = GENESYS_OFFERS,
    timeout_open: float = 5.0,
    timeout_close: float = 10.0,
    timeout_upgrade: float = UPGRADE_TIMEOUT_S,
    now: Clock = time.time,
) -> CallReport:
    """Stream one session of ``audio`` like Genesys: open, audio at real-time pace / ``speed``, close.

    Times (``pause_at``, ``resume_at``, ``language_update=(at, language)``,
    ``discard=(at, seconds)``, pings every ``ping_interval_s``) are seconds into ``audio``.
    The audio goes in the format the server selected in ``opened``.
    """
    organization_id = organization_id or str(uuid.uuid4())
    report = CallReport(url=url, session_id=str(uuid.uuid4()), conversation_id=str(uuid.uuid4()))
    session = await _start(
        url,
        api_key,
        client_secret,
        organization_id=organization_id,
        session_id=report.session_id,
        timeout_open=timeout_open,
        timeout_close=timeout_close,
        timeout_upgrade=timeout_upgrade,
        clock=now,
        findings=report.findings,
        transcript=report.transcript,
    )
    if session is None:
        return report
    state = _Streaming()
    reader: asyncio.Task[None] | None = None
    totals = [0, 0, 0.0, 0]  # messages sent/received, audio seconds, frames of sessions left by reconnect
    open_parameters = call_open_parameters(organization_id, report.conversation_id, offers, language)

    async def move() -> _Session | None:
        """Follow the server's ``reconnect`` as Genesys does: a new connection and session whose
        ``open`` lists the old one in ``continuedSessions``; once it is ``opened``, close the old
        session with reason ``reconnect``. None (with findings) when the move failed."""
        nonlocal session, reader
        assert session is not None and reader is not None
        old = session
        state.reconnect_requested = False
        new = await _start(url, api_key, client_secret, organization_id=organization_id,
                           session_id=str(uuid.uuid4()), timeout_open=timeout_open, timeout_close=timeout_close,
                           timeout_upgrade=timeout_upgrade, clock=now, findings=report.findings,
                           transcript=report.transcript)
        if new is None:
            return None
        continued = {"id": old.session_id, "serverseq": old.checker.accepted_server_seq, "clientseq": old.seq}
        await new.send("open", open_parameters | {"continuedSessions": [continued]})
        _, opened = await new.await_opened(report.findings)
        if opened is None:
            await new.ws.close()
            return None
        report.continued_sessions.append(new.session_id)
        state.paused_by.discard("server")  # the new session's server has not paused it
        await old.send("close", {"reason": "reconnect"})
        old.waiting_for = "waiting for `closed` (reconnect)"
        await _await_reader(reader, old, report)
        await old.ws.close()
        for index, value in enumerate((old.messages_sent, old.messages_received, old.position_s, old.frames_sent)):
            totals[index] += value
        session = new
        new.waiting_for = "streaming audio"
        reader = asyncio.create_task(_read_during_call(new, state, report))
        return new

    try:
        await session.send("open", open_parameters)
        reason, opened = await session.await_opened(report.findings)
        if opened is not None:
            parameters = opened.message["parameters"] if opened.message else {}
            report.media = (parameters.get("media") or [None])[0]
            if parameters.get("startPaused") is True:
                state.paused_by.add("server")
            session.waiting_for = "streaming audio"
            reader = asyncio.create_task(_read_during_call(session, state, report))
            await _stream(
                session,
                state,
                audio,
                report.media,
                frame_ms=frame_ms,
                speed=speed,
                ping_interval_s=ping_interval_s,
                pause_at=pause_at,
                resume_at=resume_at,
                language_update=language_update,
                discard=discard,
                move=move,
            )
            reason = state.stop_reason or "end"
        await session.send("close", {"reason": reason})
        session.waiting_for = "waiting for `closed`"
        if reader is not None:
            await _await_reader(reader, session, report)
            reader = None
        else:
            await session.await_closed(report.findings)
    except ConnectionClosed as error:
        session.connection_lost(error, report.findings)
    finally:
        if reader is not None:
            reader.cancel()
        await session.ws.close()
    report.messages_sent = session.messages_sent + int(totals[0])
    report.messages_received = session.messages_received + int(totals[1])
    report.open_to_opened_ms = _ms(session.checker.open_to_opened_s)
    report.close_to_closed_ms = _ms(session.checker.close_to_closed_s)
    report.audio_seconds_sent = session.position_s + totals[2]
    report.audio_frames_sent = session.frames_sent + int(totals[3])
    return report


async def _await_reader(reader: asyncio.Task[None], session: _Session, report: CallReport) -> None:
    """Let the reader see ``closed`` until the close deadline; report a timeout."""
    deadline = session.checker.closed_deadline
    timeout = None if deadline is None else max(0.0, deadline - session.clock())
    done, _ = await asyncio.wait({reader}, timeout=timeout)
    if not done:
        reader.cancel()
        finding = session.checker.expect_closed(session.at_least(deadline))
        if finding is not None:
            report.findings.append(finding)
        await session.send_error(CLOSE_TIMED_OUT)
        return
    reader.result()


async def _read_during_call(session: _Session, state: _Streaming, report: CallReport) -> None:
    """Judge every server frame after ``opened`` and act on the ones the client must answer."""
    try:
        while not session.checker.closed:
            verdict = await session.receive(None)
            if verdict is None:
                continue
            report.findings.extend(verdict.findings)
            kind = verdict.type
            if kind == "pong" and state.pings_in_flight:
                state.last_rtt_s = session.clock() - state.pings_in_flight.popleft()
                report.ping_rtts_ms.append(round(state.last_rtt_s * 1000, 1))
            elif kind == "event":
                report.events_received += 1
                report.events.append(((verdict.message or {}).get("parameters") or {}).get("entities"))
            elif kind == "pause" and "server" not in state.paused_by:
                was_paused = bool(state.paused_by)
                state.paused_by.add("server")
                if not was_paused:
                    state.skipped_while_paused_s = 0.0
                await session.send("paused", {})
            elif kind == "resume" and "server" in state.paused_by:
                state.paused_by.discard("server")
                if not state.paused_by:
                    await _send_resumed(session, state)
            elif kind == "reconnect":
                state.reconnect_requested = True  # the audio loop moves the session (see `call`)
            elif kind == "disconnect" and state.stop_reason is None:
                state.stop_reason = kind  # the audio stops; `call` runs the close transaction
    except ConnectionClosed as error:
        session.connection_lost(error, report.findings)
        state.stop_reason = state.stop_reason or "error"


async def _send_resumed(session: _Session, state: _Streaming) -> None:
    await session.send(
        "resumed",
        {"start": duration(session.position_s), "discarded": duration(state.skipped_while_paused_s)},
    )


async def _stream(
    session: _Session,
    state: _Streaming,
    audio: AudioSource,
    media: dict[str, Any] | None,
    *,
    frame_ms: int,
    speed: float,
    ping_interval_s: float,
    pause_at: float | None,
    resume_at: float | None,
    language_update: tuple[float, str] | None,
    discard: tuple[float, float] | None,
    move: Callable[[], Awaitable[_Session | None]] | None = None,
) -> None:
    """Send ``audio`` frame by frame at real-time pace / ``speed``, with the scheduled messages.

    After a ``reconnect`` from the server, ``move`` opens the continuing session and the audio
    goes on there from the next frame."""
    samples_per_frame = AUDIOHOOK_RATE * frame_ms // 1000
    frame_s = samples_per_frame / AUDIOHOOK_RATE
    frame_count = math.ceil(audio.audio.sample_count / samples_per_frame)
    frames = (
        audio.frames(media["format"], media["channels"], samples_per_frame)
        if media
        else iter([b""] * frame_count)  # no media selected: the call still runs its course
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_ping_s = ping_interval_s
    language_sent = False
    discarded_s = 0.0
    for index, frame in enumerate(frames):
        at_s = index * frame_s
        if state.reconnect_requested and move is not None and state.stop_reason is None:
            moved = await move()
            if moved is None:
                state.stop_reason = "error"
                return
            session = moved
        if state.stop_reason is not None or session.checker.closed:
            return
        if at_s >= next_ping_s:
            next_ping_s += ping_interval_s
            ping: dict[str, Any] = {} if state.last_rtt_s is None else {"rtt": duration(state.last_rtt_s)}
            state.pings_in_flight.append(session.clock())
            await session.send("ping", ping)
        if language_update is not None and not language_sent and at_s >= language_update[0]:
            language_sent = True
            await session.send("update", {"language": language_update[1]})
        pausing = pause_at is not None and pause_at <= at_s and (resume_at is None or at_s < resume_at)
        if pausing and "client" not in state.paused_by:
            if not state.paused_by:
                state.skipped_while_paused_s = 0.0
            state.paused_by.add("client")
            await session.send("paused", {})
        if resume_at is not None and at_s >= resume_at and "client" in state.paused_by:
            state.paused_by.discard("client")
            if not state.paused_by:
                await _send_resumed(session, state)

        discarding = discard is not None and discard[0] <= at_s < discard[0] + discard[1]
        if discarded_s and not discarding:
            await _send_discarded(session, discarded_s)
            discarded_s = 0.0

        await asyncio.sleep(max(0.0, started + (index + 1) * frame_s / speed - loop.time()))
        samples = len(frame) // max(1, _bytes_per_sample_frame(media))
        if state.paused_by:
            state.skipped_while_paused_s += samples / AUDIOHOOK_RATE
        elif discarding:
            discarded_s += samples / AUDIOHOOK_RATE
        elif media:
            await session.send_audio(frame, samples)
    if discarded_s:
        await _send_discarded(session, discarded_s)


async def _send_discarded(session: _Session, seconds: float) -> None:
    await session.send("discarded", {"start": duration(session.position_s), "discarded": duration(seconds)})


def _bytes_per_sample_frame(media: dict[str, Any] | None) -> int:
    if not media:
        return 1
    return (2 if media.get("format") == "L16" else 1) * len(media.get("channels", ()))


async def run_calls(
    n: int,
    url: str,
    api_key: str,
    client_secret: str,
    *,
    stagger_s: float = 0.0,
    **call_options: Any,
) -> CallsSummary:
    """``n`` concurrent ``call``s (the i-th starting ``i * stagger_s`` later), with totals."""

    async def one(index: int) -> CallReport:
        await asyncio.sleep(index * stagger_s)
        return await call(url, api_key, client_secret, **call_options)

    return CallsSummary(list(await asyncio.gather(*(one(index) for index in range(n)))))
