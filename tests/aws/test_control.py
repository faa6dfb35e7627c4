"""The control API on the API Gateway path, against moto: actions reach the client in seq order
with the replies, invalid actions change nothing and say why."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from audiohook.aws.control import Controller, build_controller, handle
from audiohook.aws.store import RESULTS_KEPT
from audiohook.records import LifecycleRecord, decode_record
from audiohook.sequencing import CONNECTION_LIMIT
from conftest import DOMAIN, STAGE, Client, open_parameters

CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
PARTICIPANT = "883efee8-3d6c-4537-b500-6d7ca4b92fa0"
UNKNOWN = "e160e428-53e2-487c-977d-96989bf5c99d"


@pytest.fixture
def controller(aws, service) -> Controller:
    settings = replace(aws.settings, connections_endpoint=f"https://{DOMAIN}/{STAGE}")
    return build_controller(settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)


@pytest.fixture
def live(client: Client) -> Client:
    client.connect()
    client.send(client.message("open", open_parameters(CONVERSATION, PARTICIPANT)))
    client.serverseq = 1
    return client


def server(type: str, seq: int, clientseq: int, session_id: str, parameters: dict | None = None) -> dict:
    return {"version": "2", "type": type, "seq": seq, "clientseq": clientseq, "id": session_id,
            "parameters": parameters or {}}


def lifecycle(aws) -> list[LifecycleRecord]:
    return [r for r in map(decode_record, aws.stream_records()) if isinstance(r, LifecycleRecord)]


def test_pause_and_resume_reach_the_client_numbered_with_the_replies(aws, controller, live):
    sid = live.session_id
    live.send(live.message("ping"))
    paused = controller.pause(sid)
    assert (paused.delivered, paused.code, paused.state) == (True, "delivered", "ACTIVE")
    assert paused.message == server("pause", 3, 2, sid)
    live.send(live.message("paused", serverseq=3))
    resumed = controller.resume(sid)
    assert resumed.message == server("resume", 4, 3, sid)
    live.send(live.message("resumed", {"start": "PT0S", "discarded": "PT1S"}, serverseq=4))
    live.send(live.message("ping", serverseq=4))
    assert aws.posted(live.connection.connection_id) == [
        server("opened", 1, 1, sid, {"startPaused": False, "media": [open_parameters()["media"][0]]}),
        server("pong", 2, 2, sid),
        server("pause", 3, 2, sid),
        server("resume", 4, 3, sid),
        server("pong", 5, 5, sid),
    ]
    events = [(r.event, r.data.get("initiator")) for r in lifecycle(aws)]
    assert events == [("opened", None), ("pausing", None), ("paused", "server"), ("resuming", None),
                      ("resumed", "server")]


def test_event_is_posted_and_written_to_the_stream(aws, controller, live):
    entities = [{"type": "sentiment", "data": {"score": 0.4}}]
    result = controller.send_event(live.session_id, entities)
    assert result.delivered and result.message == server("event", 2, 1, live.session_id, {"entities": entities})
    assert lifecycle(aws)[-1].event == "event" and lifecycle(aws)[-1].data == {"seq": 2, "entities": entities}


def items(aws) -> list[dict]:
    """The table, less the release counter (a refused action still takes and releases the lease)."""
    return [{k: v for k, v in item.items() if k != "version"}
            for item in aws.dynamodb.scan(TableName=aws.settings.sessions_table)["Items"]]


def test_invalid_actions_say_why_and_change_nothing(aws, controller, live):
    before = items(aws)
    unknown = controller.pause(UNKNOWN)
    assert (unknown.delivered, unknown.code, unknown.reason) == (
        False, "unknown_session", f"no live session {UNKNOWN} in the sessions table")
    wrong = controller.resume(live.session_id)
    assert (wrong.code, wrong.reason, wrong.state) == (
        "wrong_state", "cannot resume: the session is not paused by the server", "ACTIVE")
    bad = controller.send_event(live.session_id, [{"type": "transcript", "data": {"id": "x"}}])
    assert (bad.code, bad.reason) == ("bad_entity", "entities[0] (transcript): data.id: String should match "
                                                    "pattern '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                                                    "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'")
    big = controller.send_event(live.session_id, [{"type": "blob", "data": {"t": "x" * 70000}}])
    assert big.code == "oversize_event" and not big.delivered
    assert big.reason == "the event message would be 70156 bytes; the limit is 65536"
    assert items(aws) == before
    assert len(aws.posted(live.connection.connection_id)) == 1  # only opened


def test_disconnect_then_the_close_transaction_and_no_action_after_it(aws, controller, live):
    sid = live.session_id
    result = controller.disconnect(sid, "completed", "business rule")
    assert result.message == server("disconnect", 2, 1, sid, {"reason": "completed", "info": "business rule"})
    assert result.state == "CLOSING"
    live.send(live.message("close", {"reason": "disconnect"}, serverseq=2))
    assert aws.posted(live.connection.connection_id)[-1] == server("closed", 3, 2, sid)
    late = controller.reconnect(sid)
    assert (late.code, late.reason, late.state) == ("wrong_state", "cannot reconnect: the session is CLOSED",
                                                    "CLOSED")


def test_the_lambda_payload_runs_the_same_actions_and_finds_sessions_by_conversation(aws, controller, live):
    sid = live.session_id
    found = handle(controller, {"action": "lookup", "conversationId": CONVERSATION})
    assert found == {"action": "lookup", "sessions": [{
        "sessionId": sid, "connectionId": live.connection.connection_id, "conversationId": CONVERSATION,
        "state": "ACTIVE", "owner": None}]}
    answer = handle(controller, {"action": "reconnect", "sessionId": sid, "info": "moving"})
    assert answer == {"action": "reconnect", "sessionId": sid, "delivered": True, "code": "delivered",
                      "reason": "posted to the client", "state": "ACTIVE",
                      "message": server("reconnect", 2, 1, sid, {"info": "moving"})}
    assert handle(controller, {"action": "pause"})["reason"] == "pause needs a sessionId"
    assert handle(controller, {"action": "shout", "sessionId": sid})["reason"] == (
        "action: Input should be 'pause', 'resume', 'event', 'disconnect', 'reconnect' or 'lookup'")
    assert json.dumps(handle(controller, {"action": "disconnect", "sessionId": sid, "reason": "bored"}))


def test_a_session_is_found_whatever_the_case_of_its_id(aws, controller, live):
    location = controller.directory.find(live.session_id.upper())
    assert location is not None and location.session_id == live.session_id


def test_the_directory_says_what_a_continuing_open_needs_checked(aws, controller, live):
    from audiohook.session import ContinuedSessionInfo
    from conftest import ORG_ID

    live.send(live.message("ping"))
    assert controller.directory.continued([live.session_id, UNKNOWN]) == {
        live.session_id: ContinuedSessionInfo(live.session_id, ORG_ID, CONVERSATION, seq=2, clientseq=2,
                                              state="ACTIVE"),
        UNKNOWN: None,
    }


def test_an_action_parked_behind_a_busy_holder_is_applied_and_posted_by_it_in_seq_order(aws, service, live):
    """The control call parks its action while a $default invocation holds the lease; the holder
    applies it after the ping, posts pong then pause, and writes the result the call reads back."""
    settings = replace(aws.settings, connections_endpoint=f"https://{DOMAIN}/{STAGE}")
    controller = build_controller(settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)
    inner = controller.api_gateway.service.poster_for(None)  # posts through @connections (moto)
    answers = []

    class ActionDuringThePost:
        calls = 0

        def post_all(self, connection_id, texts):
            if not answers:
                answers.append(None)
                thread = threading.Thread(target=lambda: answers.append(controller.pause(live.session_id)))
                thread.start()
                while not json.loads(item(aws, live)["mailbox"]["L"][-1]["S"]).get("kind") == "action":
                    time.sleep(0.005)  # the test waits for the parked action, not the code under test
            return inner.post_all(connection_id, texts)

    service.poster_for = lambda _event: ActionDuringThePost()
    live.send(live.message("ping"))
    deadline = time.time() + 5
    while len(answers) < 2 and time.time() < deadline:
        time.sleep(0.01)
    paused = answers[1]
    assert (paused.delivered, paused.code, paused.message) == (True, "delivered", server("pause", 3, 2, live.session_id))
    assert [m["type"] for m in aws.posted(live.connection.connection_id)] == ["opened", "pong", "pause"]
    stored = item(aws, live)
    assert (stored["mailbox"], stored["leaseUntil"], stored["seq"]) == ({"L": []}, {"N": "0"}, {"N": "3"})
    assert len(stored["results"]["M"]) == 1  # the parked action's result, for its caller


def test_results_kept_in_the_item_are_bounded():
    from audiohook.aws.store import keep_results

    results: dict[str, str] = {}
    for n in range(RESULTS_KEPT + 5):
        results = keep_results(results, {f"t{n}": {"code": "delivered"}}, now_ms=1_000_000 + n)
    assert sorted(results) == sorted(f"t{n}" for n in range(5, RESULTS_KEPT + 5))
    assert keep_results(results, {"late": {"code": "gone"}}, now_ms=2_000_000) == {
        "late": '{"code":"gone","at":2000000}'}


def test_an_uncontended_action_costs_two_dynamodb_calls_and_one_post(aws, controller, live):
    store, poster = controller.api_gateway.service.store, controller.api_gateway.service.poster_for(None)
    before_store, before_posts, before_lookup = store.calls, poster.calls, controller.directory.calls
    assert controller.pause(live.session_id).delivered
    assert (store.calls - before_store, poster.calls - before_posts, controller.directory.calls - before_lookup) == (
        2, 1, 2)  # TAKE + RELEASE, the post; the marker and the connection's item to find the session


def test_a_connection_near_api_gateways_limit_gets_one_reconnect_with_the_next_input(aws, live):
    """API Gateway cuts a connection after 2 hours: past RECONNECT_AFTER_S, the holder moves it."""
    from audiohook.aws.wiring import build_service

    later = time.time() + 61
    service = build_service(replace(aws.settings, reconnect_after_s=60), dynamodb=aws.dynamodb, kinesis=aws.kinesis)
    service.clock = lambda: later
    live.service = service
    sid = live.session_id
    live.send(live.message("ping"))
    live.send(live.message("ping"))
    assert aws.posted(live.connection.connection_id)[1:] == [
        server("pong", 2, 2, sid), server("reconnect", 3, 2, sid, {"info": CONNECTION_LIMIT}), server("pong", 4, 3, sid)]
    assert [(r.event, r.data) for r in lifecycle(aws)][-1] == ("reconnecting", {"seq": 3, "info": CONNECTION_LIMIT})


def test_a_continuing_open_is_checked_against_the_session_it_continues(aws, controller, service, live):
    old = live.session_id
    assert controller.reconnect(old, "moving").delivered
    new = Client(service)
    new.connect()
    continuing = open_parameters(CONVERSATION, PARTICIPANT) | {
        "continuedSessions": [{"id": old, "serverseq": 2, "clientseq": 1}]}
    new.send(new.message("open", continuing))
    assert aws.posted(new.connection.connection_id)[0]["type"] == "opened"
    opened = next(r for r in lifecycle(aws) if r.event == "opened" and r.session_id == new.session_id)
    assert opened.data["continuedSessions"] == [{"id": old, "serverseq": 2, "clientseq": 1, "verified": True}]

    other = Client(service)
    other.connect()
    elsewhere = open_parameters("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b", PARTICIPANT) | {
        "continuedSessions": [{"id": old, "serverseq": 2, "clientseq": 1}]}
    other.send(other.message("open", elsewhere))
    assert aws.posted(other.connection.connection_id) == [server("disconnect", 1, 1, other.session_id, {
        "reason": "error", "info": f"open.parameters.continuedSessions[0].id {old} belongs to conversation "
                                   f"{CONVERSATION}, not 5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"})]


def item(aws, client: Client) -> dict:
    return aws.dynamodb.get_item(TableName=aws.settings.sessions_table,
                                 Key={"pk": {"S": f"conn#{client.connection.connection_id}"}})["Item"]


def test_an_action_no_holder_applies_in_time_is_pending_and_goes_out_with_the_next_input(aws, controller, live):
    """A holder that stopped (its drain budget spent, or dead until its lease expires) leaves the
    parked action for the connection's next input; the call answers pending after its bound."""
    from audiohook.aws.control import LambdaFront

    key = {"pk": {"S": f"conn#{live.connection.connection_id}"}}
    aws.dynamodb.update_item(TableName=aws.settings.sessions_table, Key=key,
                             UpdateExpression="SET leaseUntil = :until, leaseOwner = :other",
                             ExpressionAttributeValues={":until": {"N": str(int(time.time() * 1000) + 400)},
                                                        ":other": {"S": "another"}})
    front = controller.api_gateway
    controller.api_gateway = LambdaFront(front.service, wait_s=0.1)
    result = controller.pause(live.session_id)
    assert (result.delivered, result.code, result.reason) == (
        False, "pending", "the action waits in the session's mailbox after 0.1 s: the connection's next input "
                          "applies it")
    time.sleep(0.5)  # the other holder's lease expires
    live.send(live.message("ping"))
    assert aws.posted(live.connection.connection_id)[1:] == [server("pause", 2, 1, live.session_id),
                                                            server("pong", 3, 2, live.session_id)]
