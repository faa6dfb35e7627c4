"""The conformance checker judges server frames the way the Genesys client does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from audiohook.tools.conformance import Finding, ServerFrameChecker, check_transcript
from conftest import FIXTURES

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
PCMU_STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
PCMU_EXTERNAL = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
PCMU_INTERNAL = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}


def fixture_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def client_message(kind: str, seq: int, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": "2",
        "id": SESSION_ID,
        "type": kind,
        "seq": seq,
        "position": "PT0S",
        "parameters": parameters or {},
        "serverseq": 0,
    }


def server_message(
    kind: str, seq: int, clientseq: int, parameters: Any = None, **overrides: Any
) -> dict[str, Any]:
    message = {
        "version": "2",
        "type": kind,
        "seq": seq,
        "clientseq": clientseq,
        "id": SESSION_ID,
        "parameters": {} if parameters is None else parameters,
    }
    return message | overrides


def opened(seq: int = 1, clientseq: int = 1, media: Any = None, **overrides: Any) -> dict[str, Any]:
    parameters = {"startPaused": False, "media": [PCMU_STEREO] if media is None else media}
    return server_message("opened", seq, clientseq, parameters, **overrides)


def opened_checker(now: float = 0.0) -> ServerFrameChecker:
    """A checker after the client's `open` with the usual three offers."""
    checker = ServerFrameChecker(SESSION_ID)
    checker.client_sent(
        client_message("open", 1, {"media": [PCMU_STEREO, PCMU_EXTERNAL, PCMU_INTERNAL]}), now
    )
    return checker


def active_checker() -> ServerFrameChecker:
    """A checker after `open` and an accepted `opened`."""
    checker = opened_checker()
    assert checker.check(False, json.dumps(opened()), 0.1).accepted
    return checker


def check_text(
    checker: ServerFrameChecker, payload: str | bytes, now: float = 0.1, is_binary: bool = False
) -> list[str]:
    return [finding.message for finding in checker.check(is_binary, payload, now).findings]


def check(checker: ServerFrameChecker, message: dict[str, Any], now: float = 0.1) -> list[str]:
    return check_text(checker, json.dumps(message), now)


# --- the fixtures -----------------------------------------------------------------------


def test_ok_probe_fixture_has_no_findings() -> None:
    assert check_transcript(fixture_lines("probe-exchange-ok.jsonl")) == []


def test_ok_probe_fixture_frame_by_frame_is_accepted() -> None:
    lines = fixture_lines("probe-exchange-ok.jsonl")
    checker = ServerFrameChecker(SESSION_ID)
    for line in lines:
        if line["direction"] == "client":
            checker.client_sent(line["message"], 0.0)
        else:
            verdict = checker.check(False, json.dumps(line["message"]), 0.01)
            assert verdict.findings == ()
            assert verdict.accepted
    assert checker.opened and checker.closed
    assert checker.accepted_server_seq == 2


def test_failed_probe_fixture_closed_has_wrong_seq_and_clientseq() -> None:
    assert check_transcript(fixture_lines("probe-exchange-failed.jsonl")) == [
        Finding("seq_not_consecutive", "`closed.seq` is 3 but the previous server seq was 1; expected 2"),
        Finding("clientseq_wrong", "`closed.clientseq` is 1 but the last client message had seq 3"),
    ]


def test_failed_probe_fixture_findings_belong_to_the_closed_frame() -> None:
    lines = fixture_lines("probe-exchange-failed.jsonl")
    checker = ServerFrameChecker(lines[0]["message"]["id"])
    verdicts = []
    for line in lines:
        if line["direction"] == "client":
            checker.client_sent(line["message"], 0.0)
        else:
            verdicts.append(checker.check(False, json.dumps(line["message"]), 0.0))
    logged_opened, closed = verdicts
    assert logged_opened.accepted
    assert closed.type == "closed" and not closed.accepted
    assert [finding.code for finding in closed.findings] == ["seq_not_consecutive", "clientseq_wrong"]


# --- the frame's form -------------------------------------------------------------------


def test_binary_frame_is_refused_but_its_message_is_recovered() -> None:
    checker = opened_checker()
    payload = json.dumps(opened()).encode()
    verdict = checker.check(True, payload, 0.1)
    assert [finding.message for finding in verdict.findings] == [
        f"`opened` arrived as a binary frame ({len(payload)} bytes); AudioHook messages must be text frames"
    ]
    assert verdict.type == "opened" and not verdict.accepted
    assert checker.accepted_server_seq == 0  # Genesys did not take it
    assert checker.last_server_seq == 1  # but the server did send seq 1


def test_binary_frame_that_is_not_text() -> None:
    assert check_text(opened_checker(), b"\xff\x00\x01", is_binary=True) == [
        "binary frame (3 bytes, not UTF-8 text) from the server; AudioHook messages must be text frames"
    ]


def test_text_that_is_not_json() -> None:
    assert check_text(opened_checker(), "opened OK") == [
        "the text frame is not JSON (Expecting value at line 1 column 1): 'opened OK'"
    ]


def test_long_non_json_text_is_shortened() -> None:
    assert check_text(opened_checker(), "<html>" + "x" * 100) == [
        "the text frame is not JSON (Expecting value at line 1 column 1): '<html>" + "x" * 34 + "...'"
    ]


def test_python_repr_with_single_quotes() -> None:
    checker = opened_checker()
    verdict = checker.check(False, str(opened()), 0.1)
    assert [finding.message for finding in verdict.findings] == [
        "`opened` looks like a Python repr (single quotes); serialise with json.dumps"
    ]
    assert verdict.message == opened()


def test_python_repr_without_quotes_still_named() -> None:
    assert check_text(opened_checker(), "{1: True, 2: None}") == [
        "the text frame looks like a Python repr (True/False/None); serialise with json.dumps",
        "`message.version` is missing",
        "`message.id` is missing",
        "`message.type` is missing",
        "`message.seq` is missing",
        "`message.clientseq` is missing",
        "`message.parameters` is missing",
        "`message` has unknown top-level field `1`",
        "`message` has unknown top-level field `2`",
    ]


@pytest.mark.parametrize(
    ("envelope", "wording"),
    [
        (
            lambda message: {"statusCode": 200, "body": json.dumps(message)},
            (
                "`opened` is wrapped in an envelope (keys: body, statusCode); send the bare AudioHook message "
                "as the frame, not an object holding it in `body`"
            ),
        ),
        (
            lambda message: {"body": message},
            (
                "`opened` is wrapped in an envelope (keys: body); send the bare AudioHook message "
                "as the frame, not an object holding it in `body`"
            ),
        ),
        (
            lambda message: {"data": message},
            (
                "`opened` is wrapped in an envelope (keys: data); send the bare AudioHook message "
                "as the frame, not an object holding it in `data`"
            ),
        ),
        (
            lambda message: {"connectionId": "ITbAHeRmIAMCF3g=", "Data": json.dumps(message)},
            (
                "`opened` is wrapped in an envelope (keys: Data, connectionId); send the bare AudioHook message "
                "as the frame, not an object holding it in `Data`"
            ),
        ),
    ],
)
def test_envelope_is_named_with_its_keys(envelope: Any, wording: str) -> None:
    checker = opened_checker()
    verdict = checker.check(False, json.dumps(envelope(opened())), 0.1)
    assert [finding.message for finding in verdict.findings] == [wording]
    assert verdict.message == opened()


def test_double_encoded_json_string() -> None:
    checker = opened_checker()
    verdict = checker.check(False, json.dumps(json.dumps(opened())), 0.1)
    assert [finding.message for finding in verdict.findings] == [
        (
            "`opened` is double-encoded: the frame is a JSON string containing JSON; serialise the message "
            "once (json.dumps the dict, not its JSON text)"
        )
    ]
    assert verdict.message == opened()


def test_json_that_is_not_an_object() -> None:
    assert check_text(opened_checker(), "[1, 2]") == [
        "the frame holds a JSON array, not an AudioHook message object"
    ]
    assert check_text(opened_checker(), '"hello"') == [
        "the frame holds a JSON string, not an AudioHook message object"
    ]


def test_text_over_64_kib() -> None:
    big = opened(customData="x" * 70_000)
    size = len(json.dumps(big))
    assert check(opened_checker(), big) == [
        f"`opened` is {size} bytes; AudioHook text messages are at most 65536 bytes",
        "`opened` has unknown top-level field `customData`",
    ]


# --- the message's fields ---------------------------------------------------------------


def test_version_as_number() -> None:
    assert check(opened_checker(), opened(version=2)) == [
        '`opened.version` is 2 (a number) but must be the string "2"'
    ]


def test_version_other_than_2() -> None:
    assert check(opened_checker(), opened(version="1")) == ['`opened.version` is "1" but must be "2"']


def test_wrong_session_id() -> None:
    assert check(opened_checker(), opened(id="11111111-2222-4333-8444-555555555555")) == [
        f'`opened.id` is "11111111-2222-4333-8444-555555555555" but the session id is "{SESSION_ID}"'
    ]


def test_session_id_compares_case_insensitively() -> None:
    assert check(opened_checker(), opened(id=SESSION_ID.upper())) == []


def test_first_server_seq_must_be_1() -> None:
    assert check(opened_checker(), opened(seq=2)) == [
        "`opened.seq` is 2 but this is the server's first message; expected 1"
    ]


def test_seq_jump_is_reported_once() -> None:
    checker = active_checker()
    checker.client_sent(client_message("ping", 2), 1.0)
    checker.client_sent(client_message("close", 3), 1.1)
    assert check(checker, server_message("pong", 3, 2), 1.2) == [
        "`pong.seq` is 3 but the previous server seq was 1; expected 2"
    ]
    assert check(checker, server_message("closed", 4, 3), 1.3) == []


@pytest.mark.parametrize("bad_seq", ["1", 1.0, True, None])
def test_seq_must_be_an_integer(bad_seq: Any) -> None:
    assert check(opened_checker(), opened(seq=bad_seq)) == [
        f"`opened.seq` is {json.dumps(bad_seq)} but must be an integer"
    ]


def test_reply_clientseq_older_than_its_request() -> None:
    checker = active_checker()
    checker.client_sent(client_message("close", 2), 1.0)
    assert check(checker, server_message("closed", 2, 1), 1.1) == [
        "`closed.clientseq` is 1 but the last client message had seq 2"
    ]


def test_clientseq_ahead_of_the_client() -> None:
    assert check(opened_checker(), opened(clientseq=4)) == [
        "`opened.clientseq` is 4 but the last client message had seq 1"
    ]


def test_pong_answers_the_oldest_ping() -> None:
    checker = active_checker()
    checker.client_sent(client_message("ping", 2), 1.0)
    checker.client_sent(client_message("ping", 3), 2.0)
    assert check(checker, server_message("pong", 2, 1), 2.1) == [
        "`pong.clientseq` is 1 but it answers `ping` seq 2"
    ]


def test_server_message_may_cross_a_client_message_in_flight() -> None:
    checker = active_checker()
    checker.client_sent(client_message("ping", 2), 1.0)
    # The server sent this event before it read the ping: clientseq 1 is right for it.
    assert check(checker, server_message("event", 2, 1, {"entities": []}), 1.01) == []
    assert check(checker, server_message("pong", 3, 2), 1.02) == []


def test_clientseq_never_goes_down() -> None:
    checker = active_checker()
    checker.client_sent(client_message("ping", 2), 1.0)
    assert check(checker, server_message("pong", 2, 2), 1.1) == []
    assert check(checker, server_message("event", 3, 1, {"entities": []}), 1.2) == [
        "`event.clientseq` is 1 but an earlier server message had clientseq 2; it never goes down"
    ]


def test_position_and_serverseq_belong_to_client_messages() -> None:
    assert check(opened_checker(), opened(position="PT0S", serverseq=1)) == [
        "`opened.position` must not appear on a server message (only client messages carry `position`)",
        "`opened.serverseq` must not appear on a server message (servers carry `clientseq`)",
    ]


def test_unknown_top_level_field() -> None:
    assert check(opened_checker(), opened(timestamp=123)) == [
        "`opened` has unknown top-level field `timestamp`"
    ]


def test_missing_fields() -> None:
    message = opened()
    del message["clientseq"], message["parameters"]
    assert check(opened_checker(), message) == [
        "`opened.clientseq` is missing",
        "`opened.parameters` is missing",
    ]


def test_parameters_must_be_an_object() -> None:
    checker = active_checker()
    checker.client_sent(client_message("close", 2), 1.0)
    assert check(checker, server_message("closed", 2, 2, parameters=[])) == [
        "`closed.parameters` is [] but must be an object ({} when empty)"
    ]


def test_unknown_server_message_type() -> None:
    assert check(active_checker(), server_message("ack", 2, 1)) == [
        (
            'unknown server message type "ack"; a server sends opened, closed, pong, updated, pause, resume, '
            "event, disconnect or reconnect"
        )
    ]


def test_client_message_type_from_the_server() -> None:
    assert check(active_checker(), server_message("close", 2, 1)) == [
        (
            '"close" is a client message type; a server sends opened, closed, pong, updated, pause, resume, '
            "event, disconnect or reconnect"
        )
    ]


# --- opened -----------------------------------------------------------------------------


def test_opened_media_must_be_an_offer_unchanged() -> None:
    reordered = dict(PCMU_STEREO, channels=["internal", "external"])
    assert check(opened_checker(), opened(media=[reordered])) == [
        (
            '`opened.parameters.media[0]` {"type": "audio", "format": "PCMU", "channels": ["internal", '
            '"external"], "rate": 8000} is not one of the offered media; return one offer unchanged'
        )
    ]


def test_opened_media_takes_one_entry() -> None:
    assert check(opened_checker(), opened(media=[PCMU_STEREO, PCMU_EXTERNAL])) == [
        "`opened.parameters.media` has 2 entries; select exactly one of the offers (or [] for no audio)"
    ]


def test_opened_media_may_be_empty() -> None:
    checker = opened_checker()
    assert check(checker, opened(media=[])) == []
    assert checker.opened_media == []


def test_opened_media_must_be_a_list() -> None:
    assert check(opened_checker(), opened(media=PCMU_STEREO)) == [
        (
            '`opened.parameters.media` is {"type": "audio", "format": "PCMU", "channels": ["external", '
            '"internal"], "rate": 8000} but must be a list holding one of the offers (or [] for no audio)'
        )
    ]


def test_opened_media_missing() -> None:
    assert check(opened_checker(), server_message("opened", 1, 1, {})) == [
        "`opened.parameters.media` is missing; send one of the offers (or [] for no audio)"
    ]


def test_opened_optional_parameters_are_typed() -> None:
    message = opened()
    message["parameters"] |= {"startPaused": "no", "discardTo": 2.5, "supportedLanguages": ["en-US"]}
    assert check(opened_checker(), message) == [
        '`opened.parameters.startPaused` is "no" but must be true or false',
        '`opened.parameters.discardTo` is 2.5 but must be a duration like "PT2.5S"',
        (
            "`opened.parameters.supportedLanguages` is present but `open` did not ask for it "
            "(`supportedLanguages` was not true)"
        ),
    ]


def test_second_opened_is_unexpected() -> None:
    checker = active_checker()
    assert check(checker, opened(seq=2)) == [
        "Unexpected opened message: `opened` already arrived once (Genesys answers 409)"
    ]


def test_opened_later_than_5_seconds() -> None:
    checker = opened_checker(now=100.0)
    assert check(checker, opened(), now=105.25) == [
        "`opened` arrived 5.2 s after `open`; Genesys waits at most 5 s"
    ]
    assert checker.open_to_opened_s == pytest.approx(5.25)


def test_opened_within_5_seconds() -> None:
    checker = opened_checker(now=100.0)
    assert check(checker, opened(), now=104.9) == []


# --- transactions -----------------------------------------------------------------------


def test_expect_opened_times_out_at_the_deadline() -> None:
    checker = opened_checker(now=100.0)
    assert checker.opened_deadline == 105.0
    assert checker.expect_opened(104.99) is None
    assert checker.expect_opened(105.0) == Finding(
        "opened_timeout",
        'no `opened` within 5 s of `open`; Genesys gives up (408 "Timed out waiting for opened response")',
    )
    check(checker, opened(), now=106.0)
    assert checker.expect_opened(107.0) is None


def test_expect_closed_uses_its_own_limit() -> None:
    checker = ServerFrameChecker(SESSION_ID, closed_within_s=0.5)
    assert checker.expect_closed(1000.0) is None  # no close sent yet
    checker.client_sent(client_message("close", 1), 10.0)
    assert checker.closed_deadline == 10.5
    assert checker.expect_closed(10.6) == Finding(
        "closed_timeout",
        'no `closed` within 0.5 s of `close`; Genesys gives up (408 "Close transaction timed out")',
    )


def test_closed_later_than_10_seconds() -> None:
    checker = active_checker()
    checker.client_sent(client_message("close", 2), 50.0)
    assert check(checker, server_message("closed", 2, 2), now=61.0) == [
        "`closed` arrived 11.0 s after `close`; Genesys waits at most 10 s"
    ]
    assert checker.close_to_closed_s == pytest.approx(11.0)


def test_nothing_may_follow_closed() -> None:
    checker = active_checker()
    checker.client_sent(client_message("close", 2), 1.0)
    assert check(checker, server_message("closed", 2, 2), 1.1) == []
    assert check(checker, server_message("event", 3, 2, {"entities": []}), 1.2) == [
        "`event` arrived after `closed`; nothing may follow `closed`"
    ]


def test_closed_without_close() -> None:
    assert check(active_checker(), server_message("closed", 2, 1)) == [
        "`closed` arrived but the client has not sent `close`; to end the session a server sends `disconnect`"
    ]


def test_pong_without_ping() -> None:
    assert check(active_checker(), server_message("pong", 2, 1)) == [
        "`pong` arrived but the client has not sent `ping`"
    ]


def test_first_message_must_be_opened() -> None:
    assert check(opened_checker(), server_message("event", 1, 1, {"entities": []})) == [
        "`event` arrived before `opened`; the server's first message must be `opened`"
    ]


def test_disconnect_before_opened_is_allowed() -> None:
    message = server_message("disconnect", 1, 1, {"reason": "unauthorized", "info": "unknown organization"})
    assert check(opened_checker(), message) == []


def test_disconnect_reason_is_one_of_three() -> None:
    assert check(active_checker(), server_message("disconnect", 2, 1, {"reason": "bye"})) == [
        '`disconnect.parameters.reason` is "bye" but must be "completed", "unauthorized" or "error"'
    ]


def test_event_carries_entities() -> None:
    assert check(active_checker(), server_message("event", 2, 1, {})) == [
        "`event.parameters.entities` is missing but must be a list"
    ]


def test_only_accepted_frames_advance_the_clients_serverseq() -> None:
    checker = active_checker()
    assert checker.accepted_server_seq == 1
    checker.client_sent(client_message("ping", 2), 1.0)
    assert not checker.check(False, json.dumps(server_message("pong", 2, 2, position="PT0S")), 1.1).accepted
    assert checker.accepted_server_seq == 1


def test_raw_transcript_entries_are_checked_too() -> None:
    open_line = fixture_lines("probe-exchange-ok.jsonl")[0]
    entries = [
        {"direction": "client", "t_ms": 0, "text": json.dumps(open_line["message"])},
        {"direction": "server", "t_ms": 6000, "base64": "eyJ0eXBlIjogIm9wZW5lZCJ9"},  # {"type": "opened"}
    ]
    assert [finding.message for finding in check_transcript(entries)] == [
        "`opened` arrived as a binary frame (18 bytes); AudioHook messages must be text frames",
        "`opened.version` is missing",
        "`opened.id` is missing",
        "`opened.seq` is missing",
        "`opened.clientseq` is missing",
        "`opened.parameters` is missing",
        "`opened` arrived 6.0 s after `open`; Genesys waits at most 5 s",
    ]


@pytest.mark.parametrize("message", ["Internal server error", "Endpoint request timed out"])
def test_api_gateway_error_frame_is_named_with_its_request_id(message: str) -> None:
    # API Gateway's exact bytes (one space after the first colon only).
    frame = f'{{"message": "{message}", "connectionId":"VNRUSeldSwMCIRQ=", "requestId":"VNRXVFJOywMF3-Q="}}'
    verdict = opened_checker().check(False, frame, 0.1)
    assert verdict.message is None and not verdict.accepted
    assert [(finding.code, finding.message) for finding in verdict.findings] == [(
        "api_gateway_error",
        f"API Gateway's own error frame (\"{message}\"), not an AudioHook message: the $default Lambda function "
        "failed, timed out or was throttled, so API Gateway answered in its place and Genesys refuses the frame "
        "as malformed; look up requestId VNRXVFJOywMF3-Q= (connection VNRUSeldSwMCIRQ=) in the $default "
        "function's logs (key api_request_id) and API Gateway's execution logs",
    )]


def test_an_object_with_more_keys_than_the_api_gateway_error_is_not_taken_for_it() -> None:
    frame = {"message": "Internal server error", "connectionId": "a", "requestId": "b", "type": "opened"}
    assert "api_gateway_error" not in [finding.code for finding in opened_checker().check(
        False, json.dumps(frame), 0.1).findings]
