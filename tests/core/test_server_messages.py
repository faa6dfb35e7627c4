"""Server-originated messages as inputs of the state machine (PROTOCOL.md 2, 3, 3a).

``act`` numbers them with the same counter as replies, checks the state, and either returns
the message and its lifecycle record or a ``Refused`` that changed nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from test_session import (
    CONVERSATION_ID,
    NOW,
    ORG_ID,
    POLICY,
    SESSION_ID,
    STEREO_PCMU,
    Genesys,
    open_parameters,
    sent,
    server,
)

from audiohook.protocol import MAX_TEXT_BYTES, parse_client_message, validate_entities
from audiohook.session import (
    ContinuedSessionInfo,
    Disconnect,
    Lifecycle,
    Outcome,
    Pause,
    Reconnect,
    Refused,
    Resume,
    SendEvent,
    Session,
    State,
    act,
    continued_session_ids,
    receive_text,
)

TRANSCRIPT = {
    "type": "transcript",
    "data": {
        "id": "8c5b7c8e-2a0b-4c8f-9d6a-1f0e2d3c4b5a", "channelId": 0, "isFinal": True,
        "offset": "PT1.2S", "duration": "PT0.8S",
        "alternatives": [{
            "confidence": 0.92, "languages": ["en-US"],
            "interpretations": [{"type": "display", "transcript": "card number", "tokens": [
                {"type": "word", "value": "card", "confidence": 0.95, "offset": "PT1.2S", "duration": "PT0.3S"},
                {"type": "word", "value": "number", "confidence": 0.9, "offset": "PT1.5S", "duration": "PT0.5S",
                 "language": "en-US"},
            ]}],
        }],
    },
}
AGENT_ASSIST = {
    "type": "agentassist",
    "data": {
        "id": "aa-1",
        "utterances": [{"id": "u1", "position": "PT3S", "text": "I lost my card", "language": "en-US",
                        "confidence": 0.8, "channel": "external", "isFinal": True}],
        "suggestions": [
            {"type": "faq", "id": "f1", "confidence": 0.7, "question": "Lost card?", "answer": "Block it."},
            {"type": "article", "id": "a1", "confidence": 0.6, "title": "Cards", "excerpts": ["Block it"],
             "documentUri": "https://kb.example.com/cards"},
        ],
    },
}
OTHER_SESSION = "e160e428-53e2-487c-977d-96989bf5c99d"


def acted(genesys: Genesys, action: Any) -> Outcome:
    outcome = act(genesys.session, action)
    assert isinstance(outcome, Outcome), outcome
    return genesys.got(outcome)


def unchanged(genesys: Genesys, action: Any) -> Refused:
    before = copy.deepcopy(genesys.session)
    refused = act(genesys.session, action)
    assert isinstance(refused, Refused)
    assert genesys.session == before
    return refused


# --- pause / resume -----------------------------------------------------------------------

def test_server_pause_and_resume_are_numbered_with_replies_while_the_client_pings() -> None:
    genesys = Genesys()
    genesys.open()                                                     # client seq 1
    genesys.send("ping")                                               # 2
    pause = acted(genesys, Pause())
    genesys.send("ping")                                               # 3 (sent before it saw pause)
    genesys.send("paused")                                             # 4
    resume = acted(genesys, Resume())
    genesys.send("ping")                                               # 5
    genesys.send("resumed", {"start": "PT0.2S", "discarded": "PT0S"})  # 6
    assert genesys.received == [
        server("opened", 1, 1, {"startPaused": False, "media": [STEREO_PCMU]}),
        server("pong", 2, 2),
        server("pause", 3, 2),
        server("pong", 4, 3),
        server("resume", 5, 4),
        server("pong", 6, 5),
    ]
    assert pause.lifecycle == [Lifecycle("pausing", {"seq": 3})]
    assert resume.lifecycle == [Lifecycle("resuming", {"seq": 5})]
    assert genesys.session.state is State.ACTIVE


def test_records_say_the_server_initiated_the_pause_and_the_resume() -> None:
    genesys = Genesys()
    genesys.open()
    acted(genesys, Pause())
    assert genesys.send("paused").lifecycle == [Lifecycle("paused", {"initiator": "server"})]
    acted(genesys, Resume())
    resumed = genesys.send("resumed", {"start": "PT0S", "discarded": "PT2S"})
    assert resumed.lifecycle == [Lifecycle("resumed", {"start": "PT0S", "discarded": "PT2S", "samples": 16000,
                                                       "initiator": "server", "pausedBy": "server"})]
    assert genesys.session.position == 16000


def test_audio_sent_before_the_client_saw_our_pause_is_accepted_and_positioned() -> None:
    genesys = Genesys()
    genesys.open()
    assert genesys.audio(3200) is None
    acted(genesys, Pause())
    assert genesys.audio(3200) is None  # in flight when pause went out: still ACTIVE
    assert genesys.session.position == 3200
    genesys.send("paused", position="PT0.4S")
    assert genesys.session.state is State.PAUSED
    refused = genesys.audio(3200)
    assert refused is not None and refused.violation == "audio frame received while PAUSED"
    assert genesys.received[-1] == server("disconnect", 3, 2, {"reason": "error",
                                                              "info": "audio frame received while PAUSED"})


def test_late_audio_applied_after_paused_is_accepted_when_the_client_position_covers_it() -> None:
    genesys = Genesys()
    genesys.open()
    acted(genesys, Pause())
    genesys.send("paused", position="PT0.2S")  # the client had streamed one frame before pausing
    assert genesys.audio(3200) is None       # that frame, applied late by a concurrent front
    assert genesys.session.position == 1600
    assert genesys.audio(3200) is not None   # one more is a protocol error


def test_pause_is_refused_before_opened_twice_and_after_close() -> None:
    genesys = Genesys()
    assert unchanged(genesys, Pause()) == Refused(
        "wrong_state", "cannot pause: the session is not opened yet (PREPARING)", "PREPARING")
    genesys.open()
    acted(genesys, Pause())
    assert unchanged(genesys, Pause()) == Refused(
        "wrong_state", "cannot pause: the server already paused the session", "ACTIVE")
    genesys.send("close", {"reason": "end"})
    assert unchanged(genesys, Pause()) == Refused("wrong_state", "cannot pause: the session is CLOSED", "CLOSED")


def test_resume_only_when_paused_by_us() -> None:
    genesys = Genesys()
    genesys.open()
    assert unchanged(genesys, Resume()) == Refused(
        "wrong_state", "cannot resume: the session is not paused by the server", "ACTIVE")
    genesys.send("paused")  # the client's own pause (hold)
    assert unchanged(genesys, Resume()) == Refused(
        "wrong_state", "cannot resume: the session is not paused by the server (the client paused it itself)",
        "PAUSED")


def test_server_pause_on_top_of_a_client_pause_then_resume() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("paused")
    acted(genesys, Pause())
    assert genesys.send("paused").lifecycle == [Lifecycle("ignored", {"type": "paused", "seq": 3})]
    acted(genesys, Resume())
    resumed = genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    assert resumed.lifecycle[0].data["initiator"] == "server"
    assert resumed.lifecycle[0].data["pausedBy"] == "client"


def test_a_client_that_lifts_our_pause_without_resume_is_recorded_plainly() -> None:
    genesys = Genesys()
    genesys.open()
    acted(genesys, Pause())
    genesys.send("paused")
    resumed = genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    assert resumed.lifecycle[0].data == {"start": "PT0S", "discarded": "PT0S", "samples": 0, "initiator": "client",
                                         "pausedBy": "server", "serverPauseLifted": True}
    assert genesys.session.state is State.ACTIVE and not genesys.session.server_paused


def test_start_paused_is_a_server_pause_that_resume_lifts() -> None:
    genesys = Genesys(policy=replace(POLICY, start_paused=True))
    genesys.open()
    assert genesys.session.state is State.PAUSED
    acted(genesys, Resume())
    assert genesys.received[-1] == server("resume", 2, 1)


def test_no_action_once_closing_or_in_error() -> None:
    genesys = Genesys()
    genesys.open()
    acted(genesys, Disconnect("completed", "done"))
    for action in (Pause(), SendEvent([TRANSCRIPT]), Reconnect(), Disconnect()):
        assert unchanged(genesys, action).state == "CLOSING"
    errored = Genesys()
    errored.open()
    errored.send("ping", seq=9)
    assert unchanged(errored, Pause()) == Refused("wrong_state", "cannot pause: the session is ERROR", "ERROR")


# --- event --------------------------------------------------------------------------------

def test_event_with_a_transcript_and_agent_assist_goes_out_exactly_and_is_recorded() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("ping")
    outcome = acted(genesys, SendEvent([TRANSCRIPT, AGENT_ASSIST, {"type": "sentiment", "data": {"score": None}}]))
    entities = [TRANSCRIPT, AGENT_ASSIST, {"type": "sentiment", "data": {"score": None}}]
    assert genesys.received[-1] == server("event", 3, 2, {"entities": entities})
    assert outcome.lifecycle == [Lifecycle("event", {"seq": 3, "entities": entities})]


def test_event_while_paused_is_sent() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("paused")
    acted(genesys, SendEvent([TRANSCRIPT]))
    assert genesys.types[-1] == "event"


@pytest.mark.parametrize(("entities", "reason"), [
    ([], "entities must be a non-empty JSON array of {type, data} objects"),
    ("x", "entities must be a non-empty JSON array of {type, data} objects"),
    ([1], "entities[0] is not a JSON object but a JSON number"),
    ([{"type": "custom", "data": [1]}], "entities[0] (custom): data: Input should be a valid dictionary"),
    ([{"data": {}}], "entities[0]: type: Field required"),
    ([TRANSCRIPT | {"data": TRANSCRIPT["data"] | {"channelId": 2}}],
     "entities[0] (transcript): data.channelId: Input should be 0 or 1"),
    ([TRANSCRIPT | {"data": TRANSCRIPT["data"] | {"channel": 0}}],
     "entities[0] (transcript): data.channel: Extra inputs are not permitted"),
    ([TRANSCRIPT, {"type": "agentassist", "data": {"id": "a", "suggestions": [{"type": "video", "id": "v",
                                                                                "confidence": 1}]}}],
     "entities[1] (agentassist): data.suggestions.0: Input tag 'video' found using 'type' does not match any "
     "of the expected tags: 'faq', 'article'"),
])
def test_bad_entities_are_refused_with_the_exact_problem(entities: Any, reason: str) -> None:
    genesys = Genesys()
    genesys.open()
    assert unchanged(genesys, SendEvent(entities)) == Refused("bad_entity", reason)


def test_an_event_over_64_kib_is_refused_and_one_just_under_is_sent() -> None:
    genesys = Genesys()
    genesys.open()
    envelope = len(json.dumps(server("event", 2, 1, {"entities": [{"type": "blob", "data": {"t": ""}}]}),
                              separators=(",", ":")))
    fits = [{"type": "blob", "data": {"t": "x" * (MAX_TEXT_BYTES - envelope)}}]
    too_big = [{"type": "blob", "data": {"t": "x" * (MAX_TEXT_BYTES - envelope + 1)}}]
    assert unchanged(genesys, SendEvent(too_big)) == Refused(
        "oversize_event", f"the event message would be {MAX_TEXT_BYTES + 1} bytes; the limit is {MAX_TEXT_BYTES}",
        "ACTIVE")
    outcome = acted(genesys, SendEvent(fits))
    assert len(outcome.replies[0].to_json().encode()) == MAX_TEXT_BYTES


def test_validate_entities_keeps_known_shapes_and_drops_nothing_given() -> None:
    assert validate_entities([TRANSCRIPT, AGENT_ASSIST]) == [TRANSCRIPT, AGENT_ASSIST]


# --- disconnect / reconnect -----------------------------------------------------------------

def test_disconnect_then_close_transaction_with_reason_disconnect() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = acted(genesys, Disconnect("completed", "business rule"))
    assert outcome.lifecycle == [Lifecycle("disconnecting", {"seq": 2, "reason": "completed",
                                                             "info": "business rule"})]
    genesys.send("close", {"reason": "disconnect"})
    assert genesys.received[1:] == [server("disconnect", 2, 1, {"reason": "completed", "info": "business rule"}),
                                    server("closed", 3, 2)]


def test_disconnect_with_an_unknown_reason_is_refused() -> None:
    genesys = Genesys()
    genesys.open()
    assert unchanged(genesys, Disconnect("bored")) == Refused(
        "bad_request", "disconnect reason 'bored' is not one of completed, unauthorized, error")


def test_reconnect_is_sent_once_and_the_old_session_closes_with_reason_reconnect() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = acted(genesys, Reconnect("task stopping"))
    assert genesys.received[-1] == server("reconnect", 2, 1, {"info": "task stopping"})
    assert outcome.lifecycle == [Lifecycle("reconnecting", {"seq": 2, "info": "task stopping"})]
    assert unchanged(genesys, Reconnect()) == Refused(
        "wrong_state", "cannot reconnect: a reconnect was already sent (seq 2)", "ACTIVE")
    assert genesys.audio(3200) is None  # audio continues on the old session until the move
    closed = genesys.send("close", {"reason": "reconnect"})
    assert sent(closed) == [server("closed", 3, 2)]
    assert closed.lifecycle == [Lifecycle("closed", {"reason": "reconnect", "from": "ACTIVE"})]


# --- open with continuedSessions ------------------------------------------------------------

NEW_SESSION = "0d1c3b9a-43c5-4bd7-9d68-5b3f5a1f2e77"
CONTINUED = [{"id": SESSION_ID, "serverseq": 4, "clientseq": 6}]


def previous(**overrides: Any) -> ContinuedSessionInfo:
    values: dict[str, Any] = dict(session_id=SESSION_ID, organization_id=ORG_ID, conversation_id=CONVERSATION_ID,
                                  seq=4, clientseq=6, state="ACTIVE")
    return ContinuedSessionInfo(**(values | overrides))


class NewGenesys(Genesys):
    def message(self, type: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        return super().message(type, parameters, **fields) | {"id": NEW_SESSION}


def open_continuing(found: Any, **overrides: Any) -> tuple[NewGenesys, Outcome]:
    genesys = NewGenesys(session=Session(session_id=NEW_SESSION, organization_id=ORG_ID))

    text = json.dumps(genesys.message("open", open_parameters(continuedSessions=CONTINUED, **overrides)))
    assert continued_session_ids(parse_client_message(text)) == [SESSION_ID]
    return genesys, genesys.got(receive_text(genesys.session, text, genesys.policy, NOW, found))


def test_open_continuing_a_session_of_the_same_conversation_links_it_in_the_opened_record() -> None:
    genesys, outcome = open_continuing({SESSION_ID.upper(): previous()})
    assert genesys.types == ["opened"]
    assert outcome.lifecycle[0].data["continuedSessions"] == [CONTINUED[0] | {"verified": True}]


@pytest.mark.parametrize(("found", "info"), [
    ({}, f"open.parameters.continuedSessions[0].id {SESSION_ID} is not a session this server knows"),
    ({SESSION_ID: None}, f"open.parameters.continuedSessions[0].id {SESSION_ID} is not a session this server knows"),
    ({SESSION_ID: previous(organization_id=OTHER_SESSION)},
     f"open.parameters.continuedSessions[0].id {SESSION_ID} belongs to organization {OTHER_SESSION}, not {ORG_ID}"),
    ({SESSION_ID: previous(conversation_id=OTHER_SESSION)},
     f"open.parameters.continuedSessions[0].id {SESSION_ID} belongs to conversation {OTHER_SESSION}, "
     f"not {CONVERSATION_ID}"),
    ({SESSION_ID: previous(seq=3)},
     "open.parameters.continuedSessions[0].serverseq is 4 but that session's last server seq was 3"),
])
def test_open_continuing_a_foreign_or_unknown_session_is_a_protocol_error(found: Any, info: str) -> None:
    genesys, outcome = open_continuing(found)
    assert genesys.received == [server("disconnect", 1, 1, {"reason": "error", "info": info}, session_id=NEW_SESSION)]
    assert outcome.violation == info and genesys.session.state is State.ERROR


def test_open_continuing_itself_is_a_protocol_error() -> None:
    self_continuing = NewGenesys(session=Session(session_id=NEW_SESSION, organization_id=ORG_ID))

    text = json.dumps(self_continuing.message("open", open_parameters(
        continuedSessions=[{"id": NEW_SESSION, "serverseq": 0, "clientseq": 0}])))
    refused = receive_text(self_continuing.session, text, self_continuing.policy, NOW, {})
    assert refused.violation == f"open.parameters.continuedSessions[0].id {NEW_SESSION} is this session's own id"
