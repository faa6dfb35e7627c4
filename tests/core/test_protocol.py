"""AudioHook v2 message shapes (PROTOCOL.md section 2): parsing client text, writing server text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from audiohook.protocol import (
    MAX_TEXT_BYTES,
    NULL_UUID,
    ClientError,
    Close,
    Discarded,
    DisconnectParameters,
    Dtmf,
    EventParameters,
    Open,
    OpenedParameters,
    Paused,
    Ping,
    PlaybackCompleted,
    PlaybackStarted,
    Resumed,
    Update,
    Violation,
    duration_seconds,
    format_duration,
    parse_client_message,
    server_message,
)
from conftest import FIXTURES

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DURATION_PATTERN = r"^PT([0-9]{1,9}(?:\.[0-9]+)?)S$"
STEREO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


def fixture_messages(name: str, direction: str) -> list[dict[str, Any]]:
    lines = (FIXTURES / name).read_text().splitlines()
    return [step["message"] for step in map(json.loads, filter(None, lines)) if step["direction"] == direction]


def client(type: Any, parameters: Any = None, **fields: Any) -> dict[str, Any]:
    """A well-formed client message; ``fields`` override or (with ``...``) remove envelope fields."""
    message = {
        "version": "2", "id": SESSION_ID, "type": type, "seq": 2, "serverseq": 1, "position": "PT0S",
        "parameters": {} if parameters is None else parameters,
    } | fields
    return {name: value for name, value in message.items() if value is not ...}


def open_parameters(**overrides: Any) -> dict[str, Any]:
    return {
        "organizationId": ORG_ID,
        "conversationId": "090eaa2f-72fa-480a-83e0-8667ff89c0ec",
        "participant": {"id": "883efee8-3d6c-4537-b500-6d7ca4b92fa0", "ani": "+13175551234",
                        "aniName": "John Doe", "dnis": "+18005550100"},
        "media": [STEREO_PCMU],
        "language": "en-US",
    } | overrides


def parse(message: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(message))


# --- client messages we accept ----------------------------------------------------------

def test_probe_open_from_the_fixture_parses_with_null_uuids_and_null_language() -> None:
    open_message = fixture_messages("probe-exchange-ok.jsonl", "client")[0]
    message = parse(open_message)
    assert isinstance(message, Open)
    assert message.id == "5f020a60-a9cf-4a0a-add7-717401f04817"
    assert message.parameters.conversationId == NULL_UUID
    assert message.parameters.participant.id == NULL_UUID
    assert message.parameters.language is None
    assert message.parameters.customConfig == {}
    assert [entry.as_offer() for entry in message.parameters.media] == open_message["parameters"]["media"]


def test_every_client_message_of_both_fixtures_parses() -> None:
    for name in ("probe-exchange-ok.jsonl", "probe-exchange-failed.jsonl"):
        for raw in fixture_messages(name, "client"):
            assert not isinstance(parse(raw), Violation), raw


def test_uppercase_uuids_are_accepted_as_sent() -> None:
    upper = SESSION_ID.upper()
    message = parse(client("open", open_parameters(organizationId=ORG_ID.upper()), id=upper, seq=1, serverseq=0))
    assert isinstance(message, Open)
    assert (message.id, message.parameters.organizationId) == (upper, ORG_ID.upper())


def test_open_accepts_the_optional_and_audio_connector_parameters() -> None:
    parameters = open_parameters(
        language=None,
        supportedLanguages=True,
        continuedSessions=[{"id": "e160e428-53e2-487c-977d-96989bf5c99d", "serverseq": 10, "clientseq": 12}],
        customConfig={"tenant": "a", "nested": {"x": [1, 2]}},
        inputVariables={"customerTier": "gold"},
        somethingNew={"kept": True},
    )
    message = parse(client("open", parameters, seq=1, serverseq=0))
    assert isinstance(message, Open)
    assert message.parameters.supportedLanguages is True
    assert message.parameters.continuedSessions is not None
    assert [c.model_dump() for c in message.parameters.continuedSessions] == parameters["continuedSessions"]
    assert message.parameters.customConfig == {"tenant": "a", "nested": {"x": [1, 2]}}
    assert message.parameters.inputVariables == {"customerTier": "gold"}
    assert message.parameters.model_dump()["somethingNew"] == {"kept": True}


def test_media_offer_keeps_unknown_fields_for_the_echo() -> None:
    offer = STEREO_PCMU | {"vendorHint": "x", "extra": None}
    message = parse(client("open", open_parameters(media=[offer]), seq=1, serverseq=0))
    assert isinstance(message, Open)
    assert message.parameters.media[0].as_offer() == offer


@pytest.mark.parametrize(("type", "parameters", "model"), [
    ("close", {"reason": "end"}, Close),
    ("close", {"reason": "disconnect"}, Close),
    ("ping", {}, Ping),
    ("ping", {"rtt": "PT0.123S"}, Ping),
    ("update", {"language": "de-DE"}, Update),
    ("paused", {}, Paused),
    ("resumed", {"start": "PT1.5S", "discarded": "PT3S"}, Resumed),
    ("discarded", {"start": "PT1.5S", "discarded": "PT0.25S"}, Discarded),
    ("error", {"code": 429, "message": "Too many requests", "retryAfter": "PT2S"}, ClientError),
    ("dtmf", {"digit": "5", "duration": "PT0.2S"}, Dtmf),
    ("playback_started", {"id": "p1"}, PlaybackStarted),
    ("playback_completed", {"id": "p1", "reason": "done"}, PlaybackCompleted),
])
def test_every_client_message_type_parses(type: str, parameters: dict[str, Any], model: Any) -> None:
    message = parse(client(type, parameters))
    assert isinstance(message, model)
    assert message.type == type


def test_client_position_is_read_as_seconds() -> None:
    message = parse(client("ping", position="PT12.34S"))
    assert isinstance(message, Ping)
    assert message.position_seconds == 12.34


def test_text_of_exactly_64_kib_is_accepted() -> None:
    message = client("ping")
    padding = MAX_TEXT_BYTES - len(json.dumps(client("ping", {"pad": ""})))
    message["parameters"] = {"pad": "x" * padding}
    assert len(json.dumps(message).encode()) == MAX_TEXT_BYTES
    assert isinstance(parse(message), Ping)


def test_utf8_bytes_are_accepted_like_text() -> None:
    assert isinstance(parse_client_message(json.dumps(client("update", {"language": "fr-CA"})).encode()), Update)


# --- client messages we refuse: the info names the exact problem ------------------------

def oversized() -> str:
    return json.dumps(client("ping", {"pad": "x" * MAX_TEXT_BYTES}))


@pytest.mark.parametrize(("text", "info", "seq"), [
    pytest.param("not json", "message is not valid JSON: Expecting value: line 1 column 1 (char 0)", None,
                 id="invalid-json"),
    pytest.param('{"version": "2"', "message is not valid JSON: Expecting ',' delimiter: line 1 column 16 (char 15)",
                 None, id="truncated-json"),
    pytest.param(b"\xff", "message is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: "
                 "invalid start byte", None, id="not-utf8"),
    pytest.param("[]", "message is not a JSON object but a JSON array", None, id="json-array"),
    pytest.param('"open"', "message is not a JSON object but a JSON string", None, id="json-string"),
    pytest.param("2", "message is not a JSON object but a JSON number", None, id="json-number"),
    pytest.param("null", "message is not a JSON object but a JSON null", None, id="json-null"),
    pytest.param(oversized(), f"text message of {len(oversized())} bytes exceeds the 65536-byte limit", None,
                 id="over-64-kib"),
    pytest.param(client("ping", version=2), 'unsupported version 2; expected "2"', 2, id="version-number"),
    pytest.param(client("ping", version="1"), 'unsupported version "1"; expected "2"', 2, id="version-1"),
    pytest.param(client("ping", version=...), 'unsupported version null; expected "2"', 2, id="version-missing"),
    pytest.param(client("hello"), 'unknown message type "hello"', 2, id="unknown-type"),
    pytest.param(client("pong"), 'unknown message type "pong"', 2, id="server-type-from-client"),
    pytest.param(client(...), "unknown message type null", 2, id="type-missing"),
    pytest.param(client("ping", seq=...), "invalid ping message: seq: Field required", None, id="seq-missing"),
    pytest.param(client("ping", seq="2"), "invalid ping message: seq: Input should be a valid integer", None,
                 id="seq-string"),
    pytest.param(client("ping", seq=0), "invalid ping message: seq: Input should be greater than or equal to 1", 0,
                 id="seq-zero"),
    pytest.param(client("ping", serverseq=-1),
                 "invalid ping message: serverseq: Input should be greater than or equal to 0", 2,
                 id="serverseq-negative"),
    pytest.param(client("ping", position=...), "invalid ping message: position: Field required", 2,
                 id="position-missing"),
    *(pytest.param(client("ping", position=position),
                   f"invalid ping message: position: String should match pattern '{DURATION_PATTERN}'", 2, id=name)
      for name, position in [("position-not-a-duration", "12s"),
                             ("position-in-arabic-indic-digits", "PT\u0661S"),
                             ("position-in-kawi-digits", "PT\U00011F50S"),
                             ("position-beyond-31-years", "PT1000000000S")]),
    pytest.param(client("resumed", {"start": "PT0S", "discarded": "PT" + "9" * 309 + "S"}),
                 f"invalid resumed message: parameters.discarded: String should match pattern '{DURATION_PATTERN}'", 2,
                 id="discarded-beyond-a-double"),
    pytest.param(client("ping", parameters=...), "invalid ping message: parameters: Field required", 2,
                 id="parameters-missing"),
    pytest.param(client("ping", id="5f020a60"), f"invalid ping message: id: String should match pattern '{UUID_PATTERN}'",
                 2, id="id-not-a-uuid"),
    pytest.param(client("open", {k: v for k, v in open_parameters().items() if k != "organizationId"}),
                 "invalid open message: parameters.organizationId: Field required", 2, id="open-no-organization"),
    pytest.param(client("open", open_parameters(conversationId="not-a-uuid")),
                 f"invalid open message: parameters.conversationId: String should match pattern '{UUID_PATTERN}'", 2,
                 id="open-bad-conversation-id"),
    pytest.param(client("open", open_parameters(language=7)),
                 "invalid open message: parameters.language: Input should be a valid string", 2,
                 id="open-language-number"),
    pytest.param(client("close", {"reason": "bye"}),
                 "invalid close message: parameters.reason: Input should be 'end', 'error', 'disconnect' or 'reconnect'",
                 2, id="close-reason-bye"),
    pytest.param(client("update", {}), "invalid update message: parameters.language: Field required", 2,
                 id="update-without-language"),
    pytest.param(client("resumed", {"start": "PT1S"}), "invalid resumed message: parameters.discarded: Field required",
                 2, id="resumed-without-discarded"),
    pytest.param(client("error", {"code": 401, "message": "x"}),
                 "invalid error message: parameters.code: Input should be 400, 405, 408, 409, 413, 415, 429, 500 or 503",
                 2, id="error-unknown-code"),
    pytest.param(client("ping", {"rtt": "12ms"}),
                 f"invalid ping message: parameters.rtt: String should match pattern '{DURATION_PATTERN}'", 2,
                 id="ping-rtt-not-a-duration"),
])
def test_bad_client_text_becomes_a_violation_naming_the_problem(text: Any, info: str, seq: int | None) -> None:
    raw = text if isinstance(text, (str, bytes)) else json.dumps(text)
    assert parse_client_message(raw) == Violation(info, seq)


# --- server messages --------------------------------------------------------------------

def test_probe_replies_serialise_to_exactly_the_fixture_text() -> None:
    opened, closed = fixture_messages("probe-exchange-ok.jsonl", "server")
    session_id = opened["id"]
    assert server_message(
        "opened", session_id=session_id, seq=1, clientseq=1, parameters=OpenedParameters(media=[STEREO_PCMU]),
    ).to_json() == json.dumps(opened, separators=(",", ":"))
    assert server_message("closed", session_id=session_id, seq=2, clientseq=2).to_json() == json.dumps(
        closed, separators=(",", ":")
    )


@pytest.mark.parametrize("type", ["opened", "closed", "pong", "updated", "pause", "resume", "event", "disconnect",
                                  "reconnect"])
def test_server_messages_carry_clientseq_and_never_position_or_serverseq(type: Any) -> None:
    text = server_message(type, session_id=SESSION_ID, seq=7, clientseq=5).to_json()
    assert json.loads(text) == {
        "version": "2", "type": type, "seq": 7, "clientseq": 5, "id": SESSION_ID, "parameters": {},
    }


def test_server_text_is_compact_json_with_the_version_as_a_string() -> None:
    text = server_message("pong", session_id=SESSION_ID, seq=3, clientseq=4).to_json()
    assert text == f'{{"version":"2","type":"pong","seq":3,"clientseq":4,"id":"{SESSION_ID}","parameters":{{}}}}'


def test_disconnect_leaves_out_the_info_it_does_not_have() -> None:
    without = server_message("disconnect", session_id=SESSION_ID, seq=2, clientseq=2,
                             parameters=DisconnectParameters(reason="completed"))
    with_info = server_message("disconnect", session_id=SESSION_ID, seq=2, clientseq=2,
                               parameters=DisconnectParameters(reason="error", info="ping.seq is 3"))
    assert json.loads(without.to_json())["parameters"] == {"reason": "completed"}
    assert json.loads(with_info.to_json())["parameters"] == {"reason": "error", "info": "ping.seq is 3"}


def test_event_entities_are_sent_as_given() -> None:
    entities = [{"type": "transcript", "data": {"id": "t1", "channelId": 0, "isFinal": True, "offset": "PT1S",
                                               "duration": "PT0.5S", "alternatives": [], "extra": None}}]
    message = server_message("event", session_id=SESSION_ID, seq=2, clientseq=1,
                             parameters=EventParameters(entities=entities))
    assert json.loads(message.to_json())["parameters"] == {"entities": entities}


def test_server_message_refuses_a_session_id_that_is_not_a_uuid() -> None:
    with pytest.raises(ValueError):
        server_message("pong", session_id="not-a-uuid", seq=1, clientseq=1)


# --- durations --------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [(0, "PT0S"), (12.34, "PT12.34S"), (1.5, "PT1.5S"), (0.2, "PT0.2S"),
                                               (3600, "PT3600S"), (1 / 3, "PT0.333S")])
def test_durations_are_written_as_iso8601_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("PT0S", 0.0), ("PT12.34S", 12.34), ("PT1800S", 1800.0)])
def test_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_a_duration_in_another_form_is_refused() -> None:
    with pytest.raises(ValueError, match="not an AudioHook duration: 'PT1M'"):
        duration_seconds("PT1M")


def test_a_position_of_nine_digits_of_seconds_is_read() -> None:
    message = parse(client("ping", position="PT999999999.125S"))
    assert isinstance(message, Ping) and message.position_seconds == 999999999.125
