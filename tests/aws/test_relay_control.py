"""A control action reaching the relay task that holds the session: private HTTP, caller proven by
IAM (moto's STS over HTTP), the session's own state machine deciding, the exact message back."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from test_iam_identity import REGION, role_credentials, sts_server  # noqa: F401 - the `sts` fixture

from audiohook.aws.control import Controller, ControlResult, SessionLocation
from audiohook.aws.relay_control import InvokedRelayFront, RelayFront, forward, serve_request
from audiohook.config import Settings
from audiohook.media import parse_preference
from audiohook.session import Outcome, Pause, Policy, SendEvent, Session, act, receive_text

SESSION_ID = "5f020a60-a9cf-4a0a-add7-717401f04817"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
OPEN = {"version": "2", "id": SESSION_ID, "type": "open", "seq": 1, "serverseq": 0, "position": "PT0S",
        "parameters": {"organizationId": ORG_ID, "conversationId": ORG_ID, "participant": {"id": ORG_ID},
                       "media": [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]}}


class Task:
    """A relay task's control port in miniature: one live session, applied in memory."""

    def __init__(self, sts_url: str, allowed_role: str) -> None:
        self.session = Session(session_id=SESSION_ID, organization_id=ORG_ID)
        receive_text(self.session, json.dumps(OPEN), Policy(parse_preference(Settings().media_preference)), 0.0)
        task = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = serve_request(
                    body, dict(self.headers), audience=task.address, allowed_roles=frozenset({allowed_role}),
                    endpoint=sts_url, now=datetime.now(timezone.utc), apply=task.apply)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def apply(self, session_id: str, action) -> ControlResult:
        outcome = act(self.session, action)
        if not isinstance(outcome, Outcome):
            return ControlResult(action.name, session_id, False, outcome.code, outcome.reason, outcome.state)
        return ControlResult(action.name, session_id, True, "delivered", "written to the socket",
                             self.session.state.value, json.loads(outcome.replies[0].to_json()))


@pytest.fixture
def task(sts: str) -> Iterator[tuple[Task, str, object]]:
    arn, credentials = role_credentials(sts, f"control-{uuid.uuid4().hex[:12]}")
    running = Task(sts, arn)
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    yield running, arn, credentials
    running.server.shutdown()
    running.server.server_close()


def location(task: Task) -> SessionLocation:
    return SessionLocation(SESSION_ID, "conn-1", ORG_ID, "ACTIVE", owner=task.address)


def test_the_owning_task_applies_the_action_and_answers_the_exact_message(task, sts):
    running, _, credentials = task
    front = RelayFront(lambda: credentials, REGION, endpoint=sts)
    result = front.apply(location(running), Pause())
    assert result == ControlResult("pause", SESSION_ID, True, "delivered", "written to the socket", "ACTIVE",
                                   {"version": "2", "type": "pause", "seq": 2, "clientseq": 1, "id": SESSION_ID,
                                    "parameters": {}})
    again = front.apply(location(running), Pause())
    assert (again.code, again.reason) == ("wrong_state", "cannot pause: the server already paused the session")
    bad = front.apply(location(running), SendEvent([{"type": "transcript", "data": {}}]))
    assert bad.code == "bad_entity" and running.session.seq == 2


def test_a_caller_without_the_control_role_is_refused_and_nothing_is_sent(task, sts):
    running, _, _ = task
    _, stranger = role_credentials(sts, f"stranger-{uuid.uuid4().hex[:12]}")
    result = RelayFront(lambda: stranger, REGION, endpoint=sts).apply(location(running), Pause())
    assert (result.delivered, result.code) == (False, "unreachable")
    assert result.reason.startswith(f"relay task {running.address} answered HTTP 403: arn:aws:sts::")
    assert result.reason.endswith("is not an allowed control role")
    assert running.session.seq == 1


def test_a_task_that_does_not_answer_is_unreachable(sts):
    _, credentials = role_credentials(sts, f"control-{uuid.uuid4().hex[:12]}")
    gone = SessionLocation(SESSION_ID, "conn-1", ORG_ID, "ACTIVE", owner="127.0.0.1:9")
    result = RelayFront(lambda: credentials, REGION, endpoint=sts, timeout_s=1).apply(gone, Pause())
    assert (result.delivered, result.code) == (False, "unreachable")
    assert result.reason.startswith("relay task 127.0.0.1:9 did not answer:")


class Recording:
    """A front that records what it was handed (the controller's dispatch is under test)."""

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, []

    def apply(self, where: SessionLocation, action) -> ControlResult:
        self.seen.append((where.owner, action))
        return ControlResult(action.name, where.session_id, True, "delivered", self.name)


class Directory:
    def __init__(self, found: SessionLocation) -> None:
        self.found = found

    def find(self, session_id: str) -> SessionLocation:
        return self.found


def test_the_controller_hands_a_relay_session_to_the_relay_front_and_says_so_without_one():
    api, relay = Recording("api"), Recording("relay")
    owned = SessionLocation(SESSION_ID, "c", ORG_ID, "ACTIVE", owner="10.0.1.23:8081")
    assert Controller(Directory(owned), api, relay).pause(SESSION_ID).reason == "relay"
    assert relay.seen == [("10.0.1.23:8081", Pause())] and api.seen == []
    alone = Controller(Directory(owned), api).pause(SESSION_ID)
    assert (alone.code, alone.reason) == ("unreachable", "the session is held by relay task 10.0.1.23:8081, and no "
                                                         "relay control path is configured")
    on_api = SessionLocation(SESSION_ID, "c", ORG_ID, "ACTIVE")
    assert Controller(Directory(on_api), api, relay).pause(SESSION_ID).reason == "api"


def test_the_control_function_outside_the_vpc_reaches_the_task_through_the_function_inside(task, sts):
    running, _, credentials = task
    inside = RelayFront(lambda: credentials, REGION, endpoint=sts)
    # What Lambda does between the two: the payload and the answer travel as JSON.
    outside = InvokedRelayFront(lambda payload: json.loads(json.dumps(forward(inside, json.loads(json.dumps(payload))))))
    result = outside.apply(location(running), Pause())
    assert (result.delivered, result.code, result.message["type"]) == (True, "delivered", "pause")
    assert running.session.server_paused


def test_the_function_inside_the_vpc_takes_one_action_for_a_located_session_only(task, sts):
    running, _, credentials = task
    inside = RelayFront(lambda: credentials, REGION, endpoint=sts)
    answer = forward(inside, {"location": {"sessionId": SESSION_ID},
                              "request": {"action": "pause", "sessionId": SESSION_ID}})
    assert (answer["code"], answer["reason"]) == (
        "bad_request", "the relay control function takes a location with an owner and one action")
    assert not running.session.server_paused


def test_a_failed_invocation_is_unreachable_with_its_reason(task):
    running, _, _ = task

    def invoke(payload):
        raise RuntimeError("Task timed out after 10.00 seconds")

    result = InvokedRelayFront(invoke).apply(location(running), Pause())
    assert (result.delivered, result.code, result.reason) == (
        False, "unreachable", "the relay control function failed: RuntimeError: Task timed out after 10.00 seconds")
