"""The Genesys-like client against purpose-built servers: each defect is named exactly."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import brokenservers as servers
from audiohook.tools.client import (
    GENESYS_OFFERS,
    CallReport,
    ProbeReport,
    Target,
    call,
    duration,
    percentile,
    probe,
    run_calls,
)
from audiohook.tools.conformance import Finding
from audiohook.tools.wav import AudioSource
from conftest import FIXTURES

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
NULL_UUID = "00000000-0000-0000-0000-000000000000"
T = TypeVar("T")


def run(coroutine: Awaitable[T], timeout_s: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))  # type: ignore[arg-type]


def probe_against(
    server: servers.ReferenceServer,
    api_key: str = servers.API_KEY,
    client_secret: str = servers.CLIENT_SECRET,
    **options: Any,
) -> ProbeReport:
    async def go() -> ProbeReport:
        async with servers.running(server) as url:
            return await probe(
                url, api_key, client_secret, session_id=SESSION_ID, organization_id=ORG_ID, **options
            )

    return run(go())


def call_against(server: servers.ReferenceServer, **options: Any) -> CallReport:
    async def go() -> CallReport:
        async with servers.running(server) as url:
            return await call(url, servers.API_KEY, servers.CLIENT_SECRET, **options)

    return run(go())


def fixture_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def late(kind: str, request: str, limit: str) -> re.Pattern[str]:
    return re.compile(rf"`{kind}` arrived \d+\.\d s after `{request}`; Genesys waits at most {limit} s")


def wording_matches(findings: list[Finding], expected: list[str | re.Pattern[str]]) -> bool:
    if len(findings) != len(expected):
        return False
    return all(
        finding.message == wanted
        if isinstance(wanted, str)
        else wanted.fullmatch(finding.message) is not None
        for finding, wanted in zip(findings, expected)
    )


# --- the probe against each defect ------------------------------------------------------

DEFECTS: list[
    tuple[str, Callable[[], servers.ReferenceServer], dict[str, Any], list[str | re.Pattern[str]]]
] = [
    ("correct server", servers.ReferenceServer, {}, []),
    (
        "binary frames",
        servers.BinaryFrames,
        {},
        [
            "`opened` arrived as a binary frame (244 bytes); AudioHook messages must be text frames",
            "`closed` arrived as a binary frame (124 bytes); AudioHook messages must be text frames",
        ],
    ),
    (
        "not JSON",
        servers.NotJson,
        {"timeout_close": 0.5},
        [
            "the text frame is not JSON (Expecting value at line 1 column 1): 'opened seq=1'",
            "the text frame is not JSON (Expecting value at line 1 column 1): 'closed seq=2'",
            'no `closed` within 0.5 s of `close`; Genesys gives up (408 "Close transaction timed out")',
        ],
    ),
    (
        "Python repr",
        servers.PythonRepr,
        {},
        [
            "`opened` looks like a Python repr (single quotes); serialise with json.dumps",
            "`closed` looks like a Python repr (single quotes); serialise with json.dumps",
        ],
    ),
    (
        "envelope",
        servers.Envelope,
        {},
        [
            (
                "`opened` is wrapped in an envelope (keys: body, statusCode); send the bare AudioHook message as "
                "the frame, not an object holding it in `body`"
            ),
            (
                "`closed` is wrapped in an envelope (keys: body, statusCode); send the bare AudioHook message as "
                "the frame, not an object holding it in `body`"
            ),
        ],
    ),
    (
        "double-encoded",
        servers.DoubleEncoded,
        {},
        [
            (
                "`opened` is double-encoded: the frame is a JSON string containing JSON; serialise the message "
                "once (json.dumps the dict, not its JSON text)"
            ),
            (
                "`closed` is double-encoded: the frame is a JSON string containing JSON; serialise the message "
                "once (json.dumps the dict, not its JSON text)"
            ),
        ],
    ),
    (
        "numeric version",
        servers.NumericVersion,
        {},
        [
            '`opened.version` is 2 (a number) but must be the string "2"',
            '`closed.version` is 2 (a number) but must be the string "2"',
        ],
    ),
    (
        "wrong id",
        servers.WrongId,
        {},
        [
            f'`opened.id` is "{servers.OTHER_ID}" but the session id is "{SESSION_ID}"',
            f'`closed.id` is "{servers.OTHER_ID}" but the session id is "{SESSION_ID}"',
        ],
    ),
    ("seq jump", servers.SeqJump, {}, ["`closed.seq` is 3 but the previous server seq was 1; expected 2"]),
    (
        "failed probe fixture (stale clientseq)",
        servers.FailedProbeFixture,
        {},
        [
            "`opened` arrived as a binary frame (244 bytes); AudioHook messages must be text frames",
            "`closed.seq` is 3 but the previous server seq was 1; expected 2",
            "`closed.clientseq` is 1 but the last client message had seq 3",
        ],
    ),
    (
        "position on server messages",
        servers.PositionField,
        {},
        [
            "`opened.position` must not appear on a server message (only client messages carry `position`)",
            "`closed.position` must not appear on a server message (only client messages carry `position`)",
        ],
    ),
    (
        "media not offered",
        servers.MediaNotOffered,
        {},
        [
            (
                '`opened.parameters.media[0]` {"type": "audio", "format": "L16", "channels": ["external", '
                '"internal"], "rate": 8000} is not one of the offered media; return one offer unchanged'
            )
        ],
    ),
    (
        "second opened",
        servers.SecondOpened,
        {},
        ["Unexpected opened message: `opened` already arrived once (Genesys answers 409)"],
    ),
    (
        "slow opened",
        lambda: servers.Slow("open", delay_s=1.0),
        {"timeout_open": 0.3},
        [
            'no `opened` within 0.3 s of `open`; Genesys gives up (408 "Timed out waiting for opened response")',
            late("opened", "open", "0.3"),
        ],
    ),
    (
        "slow closed",
        lambda: servers.Slow("close", delay_s=1.0),
        {"timeout_close": 0.3},
        ['no `closed` within 0.3 s of `close`; Genesys gives up (408 "Close transaction timed out")'],
    ),
    (
        "401 at upgrade",
        servers.Unauthorized,
        {},
        ["the server rejected the WebSocket upgrade with HTTP 401: check the API key and client secret"],
    ),
    (
        "disconnect instead of opened",
        servers.RefusesOrganization,
        {},
        [
            'the server sent `disconnect` (reason "unauthorized", info "unknown organization") instead of `opened`'
        ],
    ),
    (
        "hangs up",
        servers.HangsUp,
        {},
        [
            (
                'the server closed the connection (code 1011, reason "internal error") while the client was '
                "waiting for `opened`"
            )
        ],
    ),
]


@pytest.mark.parametrize(
    ("make_server", "options", "expected"),
    [pytest.param(make, options, expected, id=name) for name, make, options, expected in DEFECTS],
)
def test_probe_names_each_defect_exactly(
    make_server: Callable[[], servers.ReferenceServer],
    options: dict[str, Any],
    expected: list[str | re.Pattern[str]],
) -> None:
    report = probe_against(make_server(), **options)
    assert wording_matches(report.findings, expected), [finding.message for finding in report.findings]
    assert report.passed is (not expected)


def test_probe_passes_against_a_correct_server_with_timings() -> None:
    report = probe_against(servers.ReferenceServer())
    assert report.passed
    assert report.open_to_opened_ms is not None and report.open_to_opened_ms < 5000
    assert report.close_to_closed_ms is not None and report.close_to_closed_ms < 10000
    assert [entry.direction for entry in report.transcript] == ["client", "server", "client", "server"]


def test_probe_sends_what_genesys_sends() -> None:
    server = servers.ReferenceServer()
    probe_against(server)
    (log,) = server.sessions
    assert servers.header(log, "User-Agent") == "GenesysCloud-AudioHook-Client"
    assert servers.header(log, "Audiohook-Organization-Id") == ORG_ID
    assert servers.header(log, "Audiohook-Session-Id") == SESSION_ID
    assert re.fullmatch(r"[0-9a-f-]{36}", servers.header(log, "Audiohook-Correlation-Id") or "")
    assert servers.header(log, "X-API-KEY") == servers.API_KEY
    signature_input = servers.header(log, "Signature-Input") or ""
    assert signature_input.startswith(
        'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
        f'"audiohook-correlation-id" "x-api-key");keyid="{servers.API_KEY}";nonce="'
    )
    assert ';alg="hmac-sha256";created=' in signature_input
    assert log.request_target == servers.PATH

    open_message, close_message = log.received
    assert open_message == {
        "version": "2",
        "id": SESSION_ID,
        "type": "open",
        "seq": 1,
        "position": "PT0S",
        "parameters": {
            "organizationId": ORG_ID,
            "conversationId": NULL_UUID,
            "participant": {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""},
            "media": list(GENESYS_OFFERS),
            "language": None,
            "customConfig": {},
        },
        "serverseq": 0,
    }
    assert close_message == {
        "version": "2",
        "id": SESSION_ID,
        "type": "close",
        "seq": 2,
        "position": "PT0S",
        "parameters": {"reason": "end"},
        "serverseq": 1,
    }


def test_probe_open_matches_the_ok_fixture() -> None:
    server = servers.ReferenceServer()
    probe_against(server)
    fixture_open = fixture_lines("probe-exchange-ok.jsonl")[0]["message"]
    assert server.sessions[0].received[0] == fixture_open


def test_probe_reproduces_the_failed_fixture_transcript() -> None:
    lines = fixture_lines("probe-exchange-failed.jsonl")
    session_id = lines[0]["message"]["id"]
    organization_id = lines[0]["message"]["parameters"]["organizationId"]

    async def go() -> ProbeReport:
        async with servers.running(servers.FailedProbeFixture()) as url:
            return await probe(
                url,
                servers.API_KEY,
                servers.CLIENT_SECRET,
                session_id=session_id,
                organization_id=organization_id,
            )

    report = run(go())
    seen = [
        (entry.direction, json.loads(entry.text if entry.text is not None else (entry.data or b"").decode()))
        for entry in report.transcript
    ]
    assert seen[:5] == [(line["direction"], line["message"]) for line in lines[:5]]
    assert report.transcript[1].data is not None  # the refused opened went as a binary frame


def test_unsigned_key_connects_without_a_signature() -> None:
    server = servers.ReferenceServer()
    report = probe_against(server, api_key=servers.UNSIGNED_KEY, client_secret="")
    assert report.passed
    assert servers.header(server.sessions[0], "Signature") is None
    assert servers.header(server.sessions[0], "Signature-Input") is None


def test_wrong_secret_is_rejected_at_upgrade() -> None:
    report = probe_against(servers.ReferenceServer(), client_secret=base64.b64encode(b"wrong").decode())
    assert report.findings == [
        Finding(
            "upgrade_rejected",
            "the server rejected the WebSocket upgrade with HTTP 401: check the API key and client secret",
        )
    ]
    assert report.transcript == []


def test_secret_that_is_not_base64_is_named_before_connecting() -> None:
    report = run(probe("ws://127.0.0.1:9/", "key", "not base64!"))
    assert report.findings == [
        Finding(
            "bad_client_secret",
            "cannot sign the upgrade: the client secret is not valid base64 "
            "(use it as the Genesys integration shows it)",
        )
    ]


def test_connection_refused_is_reported() -> None:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    report = run(probe(f"ws://127.0.0.1:{port}/", "key", ""))
    (finding,) = report.findings
    assert finding.code == "connect_failed"
    assert finding.message.startswith(f"could not connect to 127.0.0.1:{port}: ")


def test_non_websocket_url_is_reported() -> None:
    report = run(probe("https://example.invalid/", "key", ""))
    assert report.findings == [
        Finding("bad_url", "cannot connect to 'https://example.invalid/': scheme isn't ws or wss")
    ]


def test_reports_render_for_people_and_machines() -> None:
    report = probe_against(servers.SeqJump())
    text = report.to_text()
    assert "FAILED (1 finding)" in text
    assert (
        "  1. [seq_not_consecutive] `closed.seq` is 3 but the previous server seq was 1; expected 2" in text
    )
    data = json.loads(report.to_json())
    assert data["passed"] is False
    assert data["session_id"] == SESSION_ID
    assert data["findings"] == [
        {
            "code": "seq_not_consecutive",
            "message": "`closed.seq` is 3 but the previous server seq was 1; expected 2",
        }
    ]
    assert set(data["timings_ms"]) == {"open_to_opened", "close_to_closed"}
    # open, opened, close, closed, then the client's error refusing that closed
    assert [entry["direction"] for entry in data["transcript"]] == [
        "client",
        "server",
        "client",
        "server",
        "client",
    ]
    assert "PASSED" in probe_against(servers.ReferenceServer()).to_text()


def test_binary_frames_are_kept_in_the_json_transcript() -> None:
    data = json.loads(probe_against(servers.BinaryFrames()).to_json())
    opened = data["transcript"][1]
    assert json.loads(base64.b64decode(opened["base64"]))["type"] == "opened"


# --- the upgrade target -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "request_target", "authority"),
    [
        (
            "wss://abc.execute-api.us-east-1.amazonaws.com/prod",
            "/prod",
            "abc.execute-api.us-east-1.amazonaws.com",
        ),
        ("wss://Hooks.Example.com:443/audiohook?x=1", "/audiohook?x=1", "hooks.example.com"),
        ("wss://hooks.example.com:8443", "/", "hooks.example.com:8443"),
        ("ws://127.0.0.1:8080/v2/ws", "/v2/ws", "127.0.0.1:8080"),
        ("ws://[::1]:9000/a", "/a", "[::1]:9000"),
    ],
)
def test_signature_covers_path_query_and_authority_as_sent(
    url: str, request_target: str, authority: str
) -> None:
    assert Target.of(url) == Target(request_target, authority)


def test_durations_are_iso_8601_seconds() -> None:
    assert [duration(value) for value in (0, 12.34, 0.2, 1 / 3)] == ["PT0S", "PT12.34S", "PT0.2S", "PT0.333S"]


# --- calls ------------------------------------------------------------------------------


def test_call_streams_the_audio_in_the_selected_format() -> None:
    server = servers.Lively(offer_index=0, event_every=4)
    audio = AudioSource.tone(440, seconds=2.0, channels=2)
    report = call_against(server, audio=audio, speed=20, ping_interval_s=0.5)
    assert report.passed, report.findings
    (log,) = server.sessions
    assert b"".join(log.audio) == b"".join(audio.frames("PCMU", ["external", "internal"], 1600))
    assert report.media == GENESYS_OFFERS[0]
    assert report.audio_frames_sent == 10
    assert report.audio_seconds_sent == 2.0
    assert report.events_received == 2
    assert len(report.ping_rtts_ms) == 3
    assert report.open_to_opened_ms is not None and report.close_to_closed_ms is not None
    kinds = [message["type"] for message in log.received]
    assert kinds == ["open", "ping", "ping", "ping", "close"]
    assert log.received[-1]["position"] == "PT2S"
    assert log.received[-1]["parameters"] == {"reason": "end"}
    assert "rtt" not in log.received[1]["parameters"] and "rtt" in log.received[2]["parameters"]
    opening = log.received[0]["parameters"]
    assert opening["conversationId"] != NULL_UUID and opening["participant"]["id"] != NULL_UUID


def test_call_converts_to_l16_mono_when_the_server_picks_it() -> None:
    l16_internal = {"type": "audio", "format": "L16", "channels": ["internal"], "rate": 8000}
    server = servers.Lively(offer_index=1)
    audio = AudioSource.tone(300, seconds=1.0, channels=2)
    report = call_against(server, audio=audio, speed=20, offers=[GENESYS_OFFERS[0], l16_internal])
    assert report.passed, report.findings
    assert report.media == l16_internal
    assert b"".join(server.sessions[0].audio) == b"".join(audio.frames("L16", ["internal"], 1600))


def test_call_pauses_resumes_updates_and_discards_on_schedule() -> None:
    server = servers.Lively()
    report = call_against(
        server,
        audio=AudioSource.tone(seconds=3.0),
        speed=20,
        ping_interval_s=100,
        pause_at=1.0,
        resume_at=1.6,
        language_update=(0.4, "es-ES"),
        discard=(2.0, 0.4),
    )
    assert report.passed, report.findings
    received = server.sessions[0].received
    assert [(m["type"], m["position"], m["parameters"]) for m in received[1:]] == [
        ("update", "PT0.4S", {"language": "es-ES"}),
        ("paused", "PT1S", {}),
        ("resumed", "PT1S", {"start": "PT1S", "discarded": "PT0.6S"}),
        ("discarded", "PT1.4S", {"start": "PT1.4S", "discarded": "PT0.4S"}),
        ("close", "PT2S", {"reason": "end"}),
    ]
    assert report.audio_seconds_sent == 2.0
    assert len(server.sessions[0].audio) == 10


def test_call_confirms_a_server_pause_and_resumes() -> None:
    server = servers.Lively(pause_after_frames=2)
    report = call_against(server, audio=AudioSource.tone(seconds=2.0), speed=10)
    assert report.passed, report.findings
    kinds = [message["type"] for message in server.sessions[0].received]
    assert kinds == ["open", "paused", "resumed", "close"]
    paused, resumed = server.sessions[0].received[1:3]
    assert paused["position"] == "PT0.4S"
    assert resumed["parameters"]["start"] == "PT0.4S"
    assert re.fullmatch(r"PT\d+(\.\d+)?S", resumed["parameters"]["discarded"])


def test_call_closes_with_reason_disconnect_when_the_server_disconnects() -> None:
    server = servers.Lively(disconnect_after_frames=3)
    report = call_against(server, audio=AudioSource.tone(seconds=2.0), speed=20)
    assert report.passed, report.findings
    close = server.sessions[0].received[-1]
    assert close["type"] == "close" and close["parameters"] == {"reason": "disconnect"}
    assert report.audio_frames_sent < 10


def test_call_reports_a_connection_dropped_mid_stream_once() -> None:
    report = call_against(
        servers.Lively(hang_up_after_frames=2), audio=AudioSource.tone(seconds=2.0), speed=20
    )
    assert report.findings == [
        Finding(
            "connection_closed",
            'the server closed the connection (code 1011, reason "internal error") while the client was '
            "streaming audio",
        )
    ]
    assert report.audio_frames_sent < 10


def test_call_against_a_faulty_server_reports_and_sends_no_audio() -> None:
    server = servers.PositionField()
    report = call_against(server, audio=AudioSource.tone(seconds=1.0), speed=20)
    assert [finding.code for finding in report.findings] == ["client_field_on_server_message"] * 2
    assert server.sessions[0].audio == []
    # refusing opened, closing with reason error, then refusing the faulty closed too
    received = server.sessions[0].received
    assert [message["type"] for message in received] == ["open", "error", "close", "error"]
    assert received[1]["parameters"] == {"code": 400, "message": "Message is malformed"}
    assert received[2]["parameters"] == {"reason": "error"}


def test_call_report_renders() -> None:
    report = call_against(servers.Lively(), audio=AudioSource.tone(seconds=1.0), speed=20)
    assert "PASSED" in report.to_text()
    data = json.loads(report.to_json())
    assert data["audio_seconds_sent"] == 1.0
    assert data["media"] == GENESYS_OFFERS[0]


def test_concurrent_calls_are_summed() -> None:
    server = servers.Lively()

    async def go() -> Any:
        async with servers.running(server) as url:
            return await run_calls(
                3,
                url,
                servers.API_KEY,
                servers.CLIENT_SECRET,
                audio=AudioSource.tone(seconds=1.0),
                speed=10,
                ping_interval_s=0.4,
            )

    summary = run(go())
    totals = summary.to_dict()
    assert totals["sessions"] == 3 and totals["passed"] == 3 and totals["failed"] == 0
    assert totals["audio_seconds_sent"] == 3.0
    assert totals["messages_sent"] == 3 * 4  # open, 2 pings, close
    assert totals["messages_received"] == 3 * 4
    assert totals["ping_rtt_ms"]["p50"] is not None
    assert len({log.received[0]["id"] for log in server.sessions}) == 3
    assert "3 sessions: 3 passed, 0 failed" in summary.to_text()


def test_percentiles_use_nearest_rank() -> None:
    values = [float(value) for value in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50.0, 95.0, 100.0)
    assert percentile([], 50) is None
