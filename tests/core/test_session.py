"""The session state machine against the protocol's rules (PROTOCOL.md sections 2-6).

A ``Genesys`` double numbers its messages the way the real client does (``seq`` from 1,
``serverseq`` = the last server ``seq`` it received) and keeps every server message it got,
so each test can assert the exact conversation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from audiohook.config import Settings
from audiohook.media import parse_preference
from audiohook.protocol import NULL_UUID
from audiohook.session import (
    Lifecycle,
    Outcome,
    Policy,
    Refused,
    Session,
    State,
    accept_audio,
    disconnect,
    finish,
    receive_audio,
    receive_text,
    send_event,
    streaming_sample_bytes,
)
from conftest import FIXTURES

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION_ID = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
PARTICIPANT_ID = "883efee8-3d6c-4537-b500-6d7ca4b92fa0"
NOW = 1_800_000_000.0
POLICY = Policy(media_preference=parse_preference(Settings().media_preference))

STEREO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
EXTERNAL_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
INTERNAL_PCMU = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
STEREO_L16 = {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000}
EXTERNAL_L16 = {"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}
GENESYS_OFFERS = [STEREO_PCMU, EXTERNAL_PCMU, INTERNAL_PCMU]


def load_exchange(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def server(type: str, seq: int, clientseq: int, parameters: dict[str, Any] | None = None,
           session_id: str = SESSION_ID) -> dict[str, Any]:
    """A server message exactly as it must reach the client."""
    return {"version": "2", "type": type, "seq": seq, "clientseq": clientseq, "id": session_id,
            "parameters": parameters or {}}


def sent(outcome: Outcome | None) -> list[dict[str, Any]]:
    return [json.loads(reply.to_json()) for reply in (outcome.replies if outcome else [])]


def open_parameters(**overrides: Any) -> dict[str, Any]:
    """A real call (not a probe) offering what Genesys offers."""
    return {
        "organizationId": ORG_ID,
        "conversationId": CONVERSATION_ID,
        "participant": {"id": PARTICIPANT_ID, "ani": "+13175551234", "aniName": "John Doe", "dnis": "+18005550100"},
        "media": GENESYS_OFFERS,
        "language": "en-US",
    } | overrides


class Genesys:
    """The client side of one session, talking straight to the core."""

    def __init__(self, policy: Policy = POLICY, session: Session | None = None) -> None:
        self.session = session or Session(session_id=SESSION_ID, organization_id=ORG_ID)
        self.policy = policy
        self.seq = 0
        self.serverseq = 0
        self.received: list[dict[str, Any]] = []

    def message(self, type: str, parameters: Any = None, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        message = {
            "version": "2", "id": SESSION_ID, "type": type, "seq": self.seq, "serverseq": self.serverseq,
            "position": "PT0S", "parameters": {} if parameters is None else parameters,
        } | fields
        return {name: value for name, value in message.items() if value is not ...}

    def send(self, type: str, parameters: Any = None, **fields: Any) -> Outcome:
        return self.text(json.dumps(self.message(type, parameters, **fields)))

    def text(self, text: str | bytes) -> Outcome:
        return self.got(receive_text(self.session, text, self.policy, NOW))

    def garbled(self, text: str) -> Outcome:
        """Text the client numbered (its seq moves on) but that we cannot read."""
        self.seq += 1
        return self.text(text)

    def audio(self, size: int) -> Outcome | None:
        outcome = receive_audio(self.session, size)
        return self.got(outcome) if outcome is not None else None

    def open(self, **overrides: Any) -> Outcome:
        return self.send("open", open_parameters(**overrides))

    def got(self, outcome: Outcome) -> Outcome:
        self.received.extend(sent(outcome))
        if outcome.replies:
            self.serverseq = outcome.replies[-1].seq
        return outcome

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.received]


# --- the connection probe (sections 3 and 5) --------------------------------------------

def test_probe_exchange_is_answered_with_exactly_the_fixture_server_messages() -> None:
    exchange = load_exchange("probe-exchange-ok.jsonl")
    session_id = exchange[0]["message"]["id"]
    genesys = Genesys(session=Session(session_id=session_id, organization_id=exchange[0]["message"]["parameters"][
        "organizationId"]))
    for step in exchange:
        if step["direction"] == "client":
            genesys.text(json.dumps(step["message"]))
    expected = [step["message"] for step in exchange if step["direction"] == "server"]
    assert genesys.received == expected
    assert genesys.session.state is State.CLOSED
    assert genesys.session.probe is True


def test_probe_replies_are_the_fixture_text_byte_for_byte() -> None:
    exchange = load_exchange("probe-exchange-ok.jsonl")
    session = Session(session_id=exchange[0]["message"]["id"], organization_id=None)
    texts = []
    for step in exchange:
        if step["direction"] == "client":
            texts += [reply.to_json() for reply in receive_text(session, json.dumps(step["message"]), POLICY, NOW).replies]
    assert texts == [json.dumps(step["message"], separators=(",", ":")) for step in exchange
                     if step["direction"] == "server"]


def test_failed_probe_replayed_gets_closed_with_seq_2_and_clientseq_3() -> None:
    exchange = load_exchange("probe-exchange-failed.jsonl")
    open_message, client_error, close = [step["message"] for step in exchange if step["direction"] == "client"][:3]
    bad_opened, bad_closed = [step["message"] for step in exchange if step["direction"] == "server"]
    session = Session(session_id=open_message["id"], organization_id=open_message["parameters"]["organizationId"])

    opened = receive_text(session, json.dumps(open_message), POLICY, NOW)
    assert sent(opened) == [bad_opened]  # that opened was right; what reached the client was not

    recorded = receive_text(session, json.dumps(client_error), POLICY, NOW)
    assert recorded.replies == []
    assert recorded.violation is None
    assert recorded.lifecycle == [
        Lifecycle("client_error", {"code": 400, "message": "Connection probe error: Message is malformed"}),
    ]

    closed = receive_text(session, json.dumps(close), POLICY, NOW)
    assert sent(closed) == [server("closed", 2, 3, session_id=open_message["id"])]
    assert sent(closed) != [bad_closed]
    assert (bad_closed["seq"], bad_closed["clientseq"]) == (3, 1)
    assert closed.lifecycle == [Lifecycle("closed", {"reason": "error", "from": "ACTIVE"})]


def test_probe_is_flagged_by_its_null_conversation_and_participant_ids() -> None:
    genesys = Genesys()
    outcome = genesys.open(conversationId=NULL_UUID, participant={"id": NULL_UUID, "ani": "", "aniName": "",
                                                                  "dnis": ""}, language=None, customConfig={})
    assert genesys.session.probe is True
    assert outcome.lifecycle == [Lifecycle("opened", {
        "organizationId": ORG_ID,
        "conversationId": NULL_UUID,
        "participant": {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""},
        "media": STEREO_PCMU,
        "offers": GENESYS_OFFERS,
        "language": None,
        "customConfig": {},
        "inputVariables": None,
        "continuedSessions": [],
    })]


def test_real_call_is_not_flagged_as_a_probe() -> None:
    genesys = Genesys()
    genesys.open()
    assert genesys.session.probe is False
    assert (genesys.session.conversation_id, genesys.session.participant_id) == (CONVERSATION_ID, PARTICIPANT_ID)


def test_only_the_conversation_id_null_is_not_a_probe() -> None:
    genesys = Genesys()
    genesys.open(conversationId=NULL_UUID)
    assert genesys.session.probe is False


# --- numbering: seq, clientseq, id, version (sections 2 and 5) --------------------------

def test_seq_counts_every_server_message_and_clientseq_is_the_last_client_seq() -> None:
    genesys = Genesys()
    genesys.open()                                                     # client seq 1
    genesys.send("ping", {"rtt": "PT0.05S"})                           # 2
    genesys.send("update", {"language": "de-DE"})                      # 3
    genesys.got(send_event(genesys.session, [{"type": "custom", "data": {"id": "t1"}}]))
    genesys.send("paused")                                             # 4
    genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})    # 5
    genesys.send("ping")                                               # 6
    genesys.got(disconnect(genesys.session, "completed"))
    genesys.send("close", {"reason": "disconnect"})                    # 7
    assert genesys.received == [
        server("opened", 1, 1, {"startPaused": False, "media": [STEREO_PCMU]}),
        server("pong", 2, 2),
        server("updated", 3, 3),
        server("event", 4, 3, {"entities": [{"type": "custom", "data": {"id": "t1"}}]}),
        server("pong", 5, 6),
        server("disconnect", 6, 6, {"reason": "completed"}),
        server("closed", 7, 7),
    ]


def test_close_reply_carries_last_client_seq() -> None:
    genesys = Genesys()
    genesys.open()
    for _ in range(3):
        genesys.send("discarded", {"start": "PT0S", "discarded": "PT0S"})
    assert sent(genesys.send("close", {"reason": "end"})) == [server("closed", 2, 5)]


def test_server_messages_never_carry_position_or_serverseq() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("ping", position="PT3.2S")
    genesys.send("close", {"reason": "end"}, position="PT3.2S")
    assert genesys.types == ["opened", "pong", "closed"]
    for message in genesys.received:
        assert list(message) == ["version", "type", "seq", "clientseq", "id", "parameters"]
        assert message["version"] == "2"
        assert message["id"] == SESSION_ID


def test_uppercase_uuids_are_accepted_and_compared_case_insensitively() -> None:
    genesys = Genesys()
    upper = SESSION_ID.upper()
    genesys.open(organizationId=ORG_ID.upper(), conversationId=CONVERSATION_ID.upper(), id=upper)
    genesys.send("ping", id=upper)
    genesys.send("close", {"reason": "end"}, id=upper)
    assert genesys.types == ["opened", "pong", "closed"]
    assert {message["id"] for message in genesys.received} == {SESSION_ID}  # the header's spelling


def test_without_a_session_id_header_the_open_names_the_session() -> None:
    genesys = Genesys(session=Session())
    genesys.open()
    assert genesys.session.session_id == SESSION_ID
    assert genesys.received == [server("opened", 1, 1, {"startPaused": False, "media": [STEREO_PCMU]})]


# --- open / opened (sections 2 and 3) ----------------------------------------------------

def test_opened_echoes_one_offer_unchanged_with_its_unknown_fields() -> None:
    unusual = STEREO_PCMU | {"channels": ["internal", "external"], "vendorHint": "x"}
    genesys = Genesys()
    genesys.open(media=[EXTERNAL_PCMU, unusual])
    assert genesys.received == [server("opened", 1, 1, {"startPaused": False, "media": [unusual]})]
    assert genesys.session.media == unusual


def test_opened_takes_stereo_l16_before_mono_pcmu() -> None:
    genesys = Genesys()
    genesys.open(media=[EXTERNAL_PCMU, STEREO_L16])
    assert genesys.received[0]["parameters"]["media"] == [STEREO_L16]


def test_opened_takes_no_audio_when_no_offer_is_acceptable() -> None:
    genesys = Genesys()
    genesys.open(media=[STEREO_PCMU | {"rate": 16000}])
    assert genesys.received == [server("opened", 1, 1, {"startPaused": False, "media": []})]
    assert genesys.session.media is None
    assert genesys.session.state is State.ACTIVE


def test_opened_follows_the_configured_preference() -> None:
    genesys = Genesys(policy=Policy(media_preference=parse_preference("PCMU/mono")))
    genesys.open()
    assert genesys.received[0]["parameters"]["media"] == [EXTERNAL_PCMU]


def test_null_language_is_accepted() -> None:
    genesys = Genesys()
    genesys.open(language=None)
    assert genesys.types == ["opened"]
    assert genesys.session.language is None


def test_language_of_open_is_recorded() -> None:
    genesys = Genesys()
    genesys.open(language="fr-CA")
    assert genesys.session.language == "fr-CA"


@pytest.mark.parametrize(("asked", "languages", "expected"), [
    (None, ("en-US", "de-DE"), None),
    (False, ("en-US", "de-DE"), None),
    (True, ("en-US", "de-DE"), ["en-US", "de-DE"]),
    (True, (), []),
], ids=["not-asked", "asked-false", "asked", "asked-none-configured"])
def test_supported_languages_are_sent_only_when_open_asks(asked: bool | None, languages: tuple[str, ...],
                                                           expected: list[str] | None) -> None:
    genesys = Genesys(policy=replace(POLICY, supported_languages=languages))
    genesys.open(**({} if asked is None else {"supportedLanguages": asked}))
    parameters = {"startPaused": False, "media": [STEREO_PCMU]}
    if expected is not None:
        parameters["supportedLanguages"] = expected
    assert genesys.received == [server("opened", 1, 1, parameters)]


def test_start_paused_policy_opens_paused_until_the_client_resumes() -> None:
    genesys = Genesys(policy=replace(POLICY, start_paused=True))
    genesys.open()
    assert genesys.received == [server("opened", 1, 1, {"startPaused": True, "media": [STEREO_PCMU]})]
    assert genesys.session.state is State.PAUSED
    resumed = genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    assert resumed.replies == []
    assert genesys.session.state is State.ACTIVE
    assert genesys.audio(3200) is None
    assert genesys.session.position == 1600


def test_continued_sessions_custom_config_and_input_variables_are_accepted_and_recorded() -> None:
    continued = [{"id": "e160e428-53e2-487c-977d-96989bf5c99d", "serverseq": 10, "clientseq": 12}]
    genesys = Genesys()
    outcome = genesys.open(continuedSessions=continued, customConfig={"tenant": "a"},
                           inputVariables={"customerTier": "gold"})
    assert genesys.types == ["opened"]
    record = outcome.lifecycle[0].data
    # No lookup by the front: accepted, and the link says it was not verified.
    assert (record["continuedSessions"], record["customConfig"], record["inputVariables"]) == (
        [continued[0] | {"verified": False}], {"tenant": "a"}, {"customerTier": "gold"}
    )


def test_organization_id_that_differs_from_the_header_is_unauthorized() -> None:
    other = "aec04f7c-8108-4e07-a9d6-67a8d5df7b3e"
    info = (f"open.parameters.organizationId {other} does not match the "
            f"Audiohook-Organization-Id header {ORG_ID}")
    genesys = Genesys()
    outcome = genesys.open(organizationId=other)
    assert genesys.received == [server("disconnect", 1, 1, {"reason": "unauthorized", "info": info})]
    assert outcome.violation == info
    assert outcome.lifecycle == [Lifecycle("error", {"info": info, "state": "PREPARING"})]
    assert genesys.session.state is State.UNAUTHORIZED
    assert genesys.audio(3200) is not None and genesys.send("ping").replies == []
    assert sent(genesys.send("close", {"reason": "error"})) == [server("closed", 2, 3)]
    assert genesys.types == ["disconnect", "closed"]


# --- messages while open (sections 2 and 3) ----------------------------------------------

def test_ping_gets_pong() -> None:
    genesys = Genesys()
    genesys.open()
    assert sent(genesys.send("ping", {"rtt": "PT0.123S"})) == [server("pong", 2, 2)]


def test_update_gets_updated_and_the_language_is_recorded() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = genesys.send("update", {"language": "de-DE"})
    assert sent(outcome) == [server("updated", 2, 2)]
    assert outcome.lifecycle == [Lifecycle("updated", {"language": "de-DE"})]
    assert genesys.session.language == "de-DE"


def test_client_error_is_recorded_not_answered() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = genesys.send("error", {"code": 429, "message": "Too many requests", "retryAfter": "PT2S"})
    assert outcome == Outcome(lifecycle=[
        Lifecycle("client_error", {"code": 429, "message": "Too many requests", "retryAfter": "PT2S"}),
    ])
    assert genesys.session.state is State.ACTIVE


@pytest.mark.parametrize(("type", "parameters"), [
    ("dtmf", {"digit": "5", "duration": "PT0.2S"}),
    ("dtmf", {"digit": "#"}),
    ("playback_started", {}),
    ("playback_completed", {"id": "p1", "outcome": "completed"}),
])
def test_audio_connector_messages_are_accepted_and_recorded(type: str, parameters: dict[str, Any]) -> None:
    genesys = Genesys()
    genesys.open()
    assert genesys.send(type, parameters) == Outcome(lifecycle=[Lifecycle(type, parameters)])
    assert genesys.session.state is State.ACTIVE
    assert sent(genesys.send("ping")) == [server("pong", 2, 3)]


def test_client_pause_and_resume_moves_the_position_past_the_discarded_audio() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.audio(3200)  # 200 ms of stereo PCMU
    paused = genesys.send("paused")
    assert paused == Outcome(lifecycle=[Lifecycle("paused", {"initiator": "client"})])
    assert genesys.session.state is State.PAUSED
    resumed = genesys.send("resumed", {"start": "PT0.2S", "discarded": "PT1.5S"})
    assert resumed == Outcome(lifecycle=[Lifecycle("resumed", {"start": "PT0.2S", "discarded": "PT1.5S",
                                                               "samples": 12000, "initiator": "client",
                                                               "pausedBy": "client"})])
    assert genesys.session.state is State.ACTIVE
    assert genesys.session.position == 1600 + 12000
    assert genesys.audio(3200) is None
    assert genesys.session.position == 1600 + 12000 + 1600


def test_discarded_moves_the_position_on() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = genesys.send("discarded", {"start": "PT0S", "discarded": "PT0.25S"})
    assert outcome == Outcome(lifecycle=[Lifecycle("discarded", {"start": "PT0S", "discarded": "PT0.25S",
                                                                 "samples": 2000})])
    assert genesys.session.position == 2000


def test_events_are_numbered_like_replies_and_only_sent_while_open() -> None:
    genesys = Genesys()
    entities = [{"type": "custom", "data": {}}]
    assert send_event(genesys.session, entities) == Refused(
        "wrong_state", "cannot event: the session is not opened yet (PREPARING)", "PREPARING")
    genesys.open()
    event = send_event(genesys.session, entities)
    assert sent(event) == [server("event", 2, 1, {"entities": entities})]
    genesys.send("close", {"reason": "end"})
    assert send_event(genesys.session, entities) == Refused(
        "wrong_state", "cannot event: the session is CLOSED", "CLOSED")


# --- server-initiated disconnect and the end of the session ------------------------------

def test_server_disconnect_then_client_close_with_reason_disconnect_gets_closed() -> None:
    genesys = Genesys()
    genesys.open()
    outcome = genesys.got(disconnect(genesys.session, "completed", "draining"))
    assert sent(outcome) == [server("disconnect", 2, 1, {"reason": "completed", "info": "draining"})]
    assert outcome.lifecycle == [Lifecycle("disconnecting", {"seq": 2, "reason": "completed", "info": "draining"})]
    assert genesys.session.state is State.CLOSING
    assert disconnect(genesys.session, "completed") == Outcome()  # only once
    assert genesys.audio(3200) == Outcome(violation="audio frame ignored in state CLOSING")
    closed = genesys.send("close", {"reason": "disconnect"})
    assert sent(closed) == [server("closed", 3, 2)]
    assert closed.lifecycle == [Lifecycle("closed", {"reason": "disconnect", "from": "CLOSING"})]
    assert genesys.session.state is State.CLOSED
    assert genesys.types == ["opened", "disconnect", "closed"]


def test_server_disconnect_before_open_sends_nothing() -> None:
    genesys = Genesys()
    assert disconnect(genesys.session, "completed") == Outcome()
    assert genesys.session.state is State.PREPARING


def test_close_before_open_gets_closed() -> None:
    genesys = Genesys()
    assert sent(genesys.send("close", {"reason": "end"})) == [server("closed", 1, 1)]


def test_messages_and_audio_after_closed_are_ignored() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("close", {"reason": "end"})
    assert genesys.send("ping") == Outcome(lifecycle=[Lifecycle("ignored", {"type": "ping", "seq": 3})])
    assert genesys.audio(3200) == Outcome(violation="audio frame ignored in state CLOSED")
    assert genesys.send("close", {"reason": "end"}).replies == []
    assert genesys.types == ["opened", "closed"]


def test_finish_after_close_reports_closed_once() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.audio(3200)
    genesys.send("close", {"reason": "end"})
    first = finish(genesys.session, NOW + 5, 1000, "Client-side close frame status set to '1000'")
    assert first == Outcome(lifecycle=[Lifecycle("disconnected", {
        "outcome": "closed", "state": "CLOSED", "statusCode": 1000,
        "reason": "Client-side close frame status set to '1000'", "frames": 1, "audioBytes": 3200, "emptyFrames": 0,
        "position": 1600,
        "seq": 2, "clientseq": 2, "error": None,
    })])
    assert genesys.session.disconnected_at == NOW + 5
    assert finish(genesys.session, NOW + 6, 1000, None) == Outcome()


def test_finish_without_close_reports_abandoned_once() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.audio(3200)
    genesys.audio(3200)
    first = finish(genesys.session, NOW + 5, 1006, None)
    assert first == Outcome(lifecycle=[Lifecycle("disconnected", {
        "outcome": "abandoned", "state": "ACTIVE", "statusCode": 1006, "reason": None, "frames": 2,
        "audioBytes": 6400, "emptyFrames": 0, "position": 3200, "seq": 1, "clientseq": 1, "error": None,
    })])
    assert genesys.session.state is State.CLOSED
    assert finish(genesys.session, NOW + 6, 1006, None) == Outcome()


def test_finish_after_a_protocol_error_reports_the_error() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("hello")
    record = finish(genesys.session, NOW, 1000, None).lifecycle[0].data
    assert (record["outcome"], record["state"], record["error"]) == ("abandoned", "ERROR", 'unknown message type "hello"')


def test_session_survives_a_round_trip_through_its_dict() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.audio(3200)
    restored = Session.from_dict(json.loads(json.dumps(genesys.session.to_dict())))
    assert restored == genesys.session
    assert sent(receive_text(restored, json.dumps(genesys.message("ping", serverseq=1)), POLICY, NOW)) == [
        server("pong", 2, 2)
    ]


# --- audio accounting (section 4) --------------------------------------------------------

@pytest.mark.parametrize(("preference", "offers", "frame_bytes", "samples"), [
    ("PCMU/stereo", [STEREO_PCMU], 3200, 1600),
    ("PCMU/mono", [EXTERNAL_PCMU], 1600, 1600),
    ("L16/stereo", [STEREO_L16], 6400, 1600),
    ("L16/mono", [EXTERNAL_L16], 3200, 1600),
    ("PCMU/stereo", [STEREO_PCMU], 2, 1),
    ("L16/stereo", [STEREO_L16], 4, 1),
], ids=["pcmu-stereo", "pcmu-mono", "l16-stereo", "l16-mono", "pcmu-stereo-1-sample", "l16-stereo-1-sample"])
def test_position_advances_by_samples_per_channel(preference: str, offers: list[dict[str, Any]], frame_bytes: int,
                                                  samples: int) -> None:
    genesys = Genesys(policy=Policy(media_preference=parse_preference(preference)))
    genesys.open(media=offers)
    assert genesys.audio(frame_bytes) is None
    assert genesys.audio(frame_bytes) is None
    assert (genesys.session.position, genesys.session.frames, genesys.session.audio_bytes) == (
        2 * samples, 2, 2 * frame_bytes
    )
    assert genesys.types == ["opened"]


@pytest.mark.parametrize(("preference", "offers", "sample_bytes"), [
    ("PCMU/stereo", [STEREO_PCMU], 2),
    ("PCMU/mono", [EXTERNAL_PCMU], 1),
    ("L16/stereo", [STEREO_L16], 4),
    ("L16/mono", [EXTERNAL_L16], 2),
], ids=["pcmu-stereo", "pcmu-mono", "l16-stereo", "l16-mono"])
def test_frames_stream_unchecked_only_while_active_with_media(preference: str, offers: list[dict[str, Any]],
                                                              sample_bytes: int) -> None:
    genesys = Genesys(policy=Policy(media_preference=parse_preference(preference)))
    seen = [streaming_sample_bytes(genesys.session)]
    genesys.open(media=offers)
    seen.append(streaming_sample_bytes(genesys.session))
    genesys.send("paused")
    seen.append(streaming_sample_bytes(genesys.session))
    genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    seen.append(streaming_sample_bytes(genesys.session))
    disconnect(genesys.session, "completed")
    seen.append(streaming_sample_bytes(genesys.session))
    genesys.send("close", {"reason": "disconnect"})
    seen.append(streaming_sample_bytes(genesys.session))
    assert seen == [0, sample_bytes, 0, sample_bytes, 0, 0]


def test_no_frame_streams_unchecked_when_opened_selected_no_media_or_after_an_error() -> None:
    genesys = Genesys()
    genesys.open(media=[{"type": "audio", "format": "OPUS", "channels": ["external"], "rate": 48000}])
    assert (genesys.session.state, streaming_sample_bytes(genesys.session)) == (State.ACTIVE, 0)
    genesys = Genesys()
    genesys.open()
    genesys.audio(3)
    assert (genesys.session.state, streaming_sample_bytes(genesys.session)) == (State.ERROR, 0)


@pytest.mark.parametrize("sizes", [[3200], [3200, 3200, 3200], [2, 3200, 64 * 1024, 6]], ids=["one", "three", "mixed"])
def test_frames_accepted_together_count_exactly_as_one_by_one(sizes: list[int]) -> None:
    one_by_one, together = Genesys(), Genesys()
    for genesys in (one_by_one, together):
        genesys.open()
        genesys.send("discarded", {"start": "PT0S", "discarded": "PT0.5S"})
    for size in sizes:
        assert one_by_one.audio(size) is None
    accept_audio(together.session, sum(sizes), len(sizes))
    assert together.session.to_dict() == one_by_one.session.to_dict()
    assert (together.session.position, together.session.frames, together.session.audio_bytes) == (
        4000 + sum(sizes) // 2, len(sizes), sum(sizes))


# --- bad input: one disconnect(error), then only close is answered (section 6) -----------

def opened(genesys: Genesys) -> object:
    return genesys.open()


def nothing(genesys: Genesys) -> object:
    return None


def oversized_ping(genesys: Genesys) -> Outcome:
    return genesys.text(json.dumps(genesys.message("ping", {"pad": "x" * 65536})))


# The same text oversized_ping sends after open (seq 2, serverseq 1: one digit each, like here).
OVERSIZED_BYTES = len(json.dumps(Genesys().message("ping", {"pad": "x" * 65536})))


@dataclass(frozen=True)
class BadInput:
    provoke: Callable[[Genesys], Outcome | None]
    info: str
    clientseq: int  # of the disconnect: the last client seq received in order
    setup: Callable[[Genesys], object] = opened
    policy: Policy = POLICY
    state: str = "ACTIVE"  # when the error happened


BAD_INPUT = [
    pytest.param(BadInput(
        lambda g: g.garbled("not json"),
        "message is not valid JSON: Expecting value: line 1 column 1 (char 0)", 1,
    ), id="invalid-json"),
    pytest.param(BadInput(
        lambda g: g.garbled("[]"), "message is not a JSON object but a JSON array", 1,
    ), id="json-array"),
    pytest.param(BadInput(
        lambda g: g.send("ping", position=...), "invalid ping message: position: Field required", 2,
    ), id="missing-position"),
    pytest.param(BadInput(
        lambda g: g.send("ping", parameters=...), "invalid ping message: parameters: Field required", 2,
    ), id="missing-parameters"),
    pytest.param(BadInput(
        lambda g: g.send("ping", seq=...), "invalid ping message: seq: Field required", 1,
    ), id="missing-seq"),
    pytest.param(BadInput(
        lambda g: g.send("ping", version=2), 'unsupported version 2; expected "2"', 2,
    ), id="version-as-number"),
    pytest.param(BadInput(
        lambda g: g.send("ping", version="1"), 'unsupported version "1"; expected "2"', 2,
    ), id="version-1"),
    pytest.param(BadInput(
        lambda g: g.send("ping", seq=3), "ping.seq is 3 but the previous client seq was 1; expected 2", 1,
    ), id="seq-gap"),
    pytest.param(BadInput(
        lambda g: g.send("ping", seq=1), "ping.seq is 1 but the previous client seq was 1; expected 2", 1,
    ), id="seq-repeated"),
    pytest.param(BadInput(
        lambda g: g.send("ping", serverseq=5), "ping.serverseq is 5 but the last server seq sent was 1", 2,
    ), id="serverseq-above-ours"),
    pytest.param(BadInput(
        lambda g: g.send("ping", id="e160e428-53e2-487c-977d-96989bf5c99d"),
        f"ping.id e160e428-53e2-487c-977d-96989bf5c99d does not match the session id {SESSION_ID}", 2,
    ), id="wrong-id"),
    pytest.param(BadInput(
        lambda g: g.send("close", {"reason": "bye"}),
        "invalid close message: parameters.reason: Input should be 'end', 'error', 'disconnect' or 'reconnect'", 2,
    ), id="close-reason-bye"),
    pytest.param(BadInput(
        lambda g: g.send("hello"), 'unknown message type "hello"', 2,
    ), id="unknown-type"),
    pytest.param(BadInput(
        oversized_ping, f"text message of {OVERSIZED_BYTES} bytes exceeds the 65536-byte limit", 1,
    ), id="text-over-64-kib"),
    pytest.param(BadInput(
        lambda g: g.open(), "unexpected open: the session is already ACTIVE", 2,
    ), id="second-open"),
    pytest.param(BadInput(
        lambda g: g.send("ping"), "unexpected ping before open", 1, setup=nothing, state="PREPARING",
    ), id="ping-before-open"),
    pytest.param(BadInput(
        lambda g: g.audio(3200), "audio frame received before open", 0, setup=nothing, state="PREPARING",
    ), id="audio-before-open"),
    pytest.param(BadInput(
        lambda g: g.audio(3200), "audio frame received while PAUSED", 2,
        setup=lambda g: (g.open(), g.send("paused")), state="PAUSED",
    ), id="audio-while-paused"),
    pytest.param(BadInput(
        lambda g: g.audio(3200), "audio frame received while PAUSED", 1,
        policy=replace(POLICY, start_paused=True), state="PAUSED",
    ), id="audio-while-start-paused"),
    pytest.param(BadInput(
        lambda g: g.audio(3200), "audio frame received but opened selected no media", 1,
        setup=lambda g: g.open(media=[STEREO_PCMU | {"rate": 16000}]),
    ), id="audio-without-media"),
    pytest.param(BadInput(
        lambda g: g.audio(3201),
        "audio frame of 3201 bytes is not a whole number of samples: stereo PCMU needs a multiple of 2 bytes", 1,
    ), id="pcmu-stereo-odd-length"),
    pytest.param(BadInput(
        lambda g: g.audio(3199),
        "audio frame of 3199 bytes is not a whole number of samples: mono L16 needs a multiple of 2 bytes", 1,
        setup=lambda g: g.open(media=[EXTERNAL_L16]), policy=Policy(media_preference=parse_preference("L16/mono")),
    ), id="l16-mono-odd-length"),
    pytest.param(BadInput(
        lambda g: g.audio(6402),
        "audio frame of 6402 bytes is not a whole number of samples: stereo L16 needs a multiple of 4 bytes", 1,
        setup=lambda g: g.open(media=[STEREO_L16]),
    ), id="l16-stereo-half-sample"),
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gets_one_disconnect_error_then_only_close_is_answered(case: BadInput) -> None:
    genesys = Genesys(policy=case.policy)
    case.setup(genesys)
    seq = genesys.session.seq

    outcome = case.provoke(genesys)

    assert outcome is not None
    assert sent(outcome) == [server("disconnect", seq + 1, case.clientseq, {"reason": "error", "info": case.info})]
    assert outcome.violation == case.info
    assert outcome.lifecycle == [Lifecycle("error", {"info": case.info, "state": case.state})]
    assert (genesys.session.state, genesys.session.error_info) == (State.ERROR, case.info)

    # Further input is ignored: no second disconnect, no pong, no audio taken.
    position = genesys.session.position
    assert genesys.send("ping").replies == []
    assert genesys.send("hello").replies == []
    assert genesys.garbled("not json").replies == []
    assert genesys.audio(3200) == Outcome(violation="audio frame ignored in state ERROR")
    assert genesys.session.position == position

    # ... except close, answered with the next seq and the close's own seq.
    closed = genesys.send("close", {"reason": "error"})
    assert sent(closed) == [server("closed", seq + 2, genesys.seq)]
    assert genesys.types.count("disconnect") == 1
    assert genesys.types[-2:] == ["disconnect", "closed"]
    assert genesys.session.state is State.CLOSED


def test_offers_in_an_unknown_format_are_skipped_not_refused() -> None:
    genesys = Genesys()
    outcome = genesys.open(media=[STEREO_PCMU | {"format": "OPUS"}, STEREO_L16])
    assert outcome.violation is None
    assert sent(outcome)[0]["parameters"]["media"] == [STEREO_L16]


def test_repeated_pause_confirmations_are_ignored_not_errors() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("paused")
    assert genesys.send("paused") == Outcome(lifecycle=[Lifecycle("ignored", {"type": "paused", "seq": 3})])
    genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    again = genesys.send("resumed", {"start": "PT0S", "discarded": "PT0S"})
    assert again == Outcome(lifecycle=[Lifecycle("ignored", {"type": "resumed", "seq": 5})])
    assert genesys.session.state is State.ACTIVE


def test_audio_sent_before_close_but_applied_after_it_is_kept() -> None:
    # API Gateway may run the close invocation before the last frame's: the close's own
    # position (PT0.4S) says two 200 ms frames were streamed, so the second one still counts.
    genesys = Genesys()
    genesys.open()
    assert genesys.audio(3200) is None
    genesys.send("close", {"reason": "end"}, position="PT0.4S")
    assert genesys.audio(3200) is None
    assert genesys.session.position == 3200
    assert genesys.audio(3200) == Outcome(violation="audio frame ignored in state CLOSED")
    assert genesys.session.position == 3200


def test_audio_sent_before_paused_but_applied_after_it_is_kept() -> None:
    genesys = Genesys()
    genesys.open()
    genesys.send("paused", position="PT0.2S")
    assert genesys.audio(3200) is None
    outcome = genesys.audio(3200)
    assert outcome is not None and outcome.violation == "audio frame received while PAUSED"


@pytest.mark.parametrize("setup", [
    pytest.param(lambda g: g.open(), id="active"),
    pytest.param(lambda g: None, id="before-open"),
    pytest.param(lambda g: (g.open(), g.send("paused")), id="paused"),
])
def test_empty_audio_frame_is_ignored_and_counted(setup: Any) -> None:
    genesys = Genesys()
    setup(genesys)
    state, position = genesys.session.state, genesys.session.position
    assert genesys.audio(0) == Outcome()
    assert genesys.audio(0) == Outcome()
    assert (genesys.session.state, genesys.session.position, genesys.session.frames) == (state, position, 0)
    assert genesys.session.empty_frames == 2
    final = finish(genesys.session, NOW + 1, 1000, None)
    assert final.lifecycle[0].data["emptyFrames"] == 2


@pytest.mark.parametrize(("media", "size", "info"), [
    pytest.param(STEREO_PCMU, 5, "audio frame of 5 bytes is not a whole number of samples: "
                 "stereo PCMU needs a multiple of 2 bytes", id="stereo-pcmu"),
    pytest.param(STEREO_L16, 6, "audio frame of 6 bytes is not a whole number of samples: "
                 "stereo L16 needs a multiple of 4 bytes", id="stereo-l16"),
])
def test_frame_length_error_states_the_rule(media: dict[str, Any], size: int, info: str) -> None:
    genesys = Genesys()
    genesys.open(media=[media])
    outcome = genesys.audio(size)
    assert outcome is not None and outcome.violation == info
    assert outcome.replies[0].parameters.info == info
