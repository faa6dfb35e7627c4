"""The control API through the API Gateway front over real sockets: the local API Gateway
emulator runs the Lambda handlers (audio as base64 events, its opt-in mode), our Genesys-like
client (tools/client.py) streams, pings and follows what the server sends, and the control
actions go through the session's mailbox like the client's inputs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from array import array
from typing import Any

from audiohook.aws.control import Controller, build_controller
from audiohook.aws.stream import read_stream
from audiohook.config import Settings
from audiohook.local.gateway import LocalStack
from audiohook.records import AudioRecord, LifecycleRecord, decode_record
from audiohook.tools.client import call
from audiohook.tools.export import rebuild_conversation
from audiohook.tools.wav import AudioSource, mulaw_decode
from conftest import REPO

UNKNOWN = "e160e428-53e2-487c-977d-96989bf5c99d"
TONE = AudioSource.tone(440.0, seconds=8.0, channels=2)
LONG_TONE = AudioSource.tone(440.0, seconds=30.0, channels=2)  # the server's disconnect ends this call


def controller_of(stack: LocalStack) -> Controller:
    settings = Settings(sessions_table=stack.aws.resources.table_name, audio_stream=stack.aws.resources.stream_name,
                        connections_endpoint=stack.connections_endpoint)
    return build_controller(settings, dynamodb=stack.aws.client("dynamodb"), kinesis=stack.aws.client("kinesis"))


def live_items(stack: LocalStack) -> list[dict[str, Any]]:
    return stack.aws.client("dynamodb").scan(TableName=stack.aws.resources.table_name,
                                             FilterExpression="begins_with(pk, :c)",
                                             ExpressionAttributeValues={":c": {"S": "conn#"}})["Items"]


def wait_for_active_session(stack: LocalStack, not_in: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    deadline = time.time() + 10
    while time.time() < deadline:
        for item in live_items(stack):
            if item["state"]["S"] == "ACTIVE" and item["sessionId"]["S"] not in not_in:
                return item["sessionId"]["S"]
        time.sleep(0.05)
    raise AssertionError("no session became ACTIVE")


def records_of(stack: LocalStack) -> list[bytes]:
    return [data for _, data in read_stream(stack.aws.client("kinesis"), stack.aws.resources.stream_name)]


def server_messages(report: Any) -> list[dict[str, Any]]:
    return [json.loads(entry.text) for entry in report.transcript if entry.direction == "server" and entry.text]


def client_messages(report: Any) -> list[dict[str, Any]]:
    return [json.loads(entry.text) for entry in report.transcript if entry.direction == "client" and entry.text]


def run(scenario: Any) -> Any:
    async def main() -> Any:
        async with LocalStack(REPO / "template.yaml", stack_name=f"control-{uuid.uuid4().hex[:8]}",
                              binary="base64") as stack:
            return await asyncio.wait_for(scenario(stack), 120)

    return asyncio.run(main())


def test_actions_during_a_call_reach_the_client_in_seq_order_and_audio_stops_while_paused():
    """pause, event, resume, disconnect while the client streams and pings every 0.4 s; every
    invalid action is refused with its reason and changes nothing, on the item or the socket."""

    async def scenario(stack: LocalStack) -> Any:
        demo = stack.demo
        calling = asyncio.create_task(call(stack.url, demo.api_key, demo.client_secret, audio=LONG_TONE,
                                           ping_interval_s=0.4))
        controller = controller_of(stack)

        def control() -> dict[str, Any]:
            sid = wait_for_active_session(stack)
            before = [{k: v for k, v in item.items() if k not in ("version", "mailbox", "mailboxBytes", "leaseUntil",
                                                                     "leaseOwner")} for item in live_items(stack)]
            refused = {
                "unknown": controller.pause(UNKNOWN),
                "wrong_state": controller.resume(sid),
                "bad_entity": controller.send_event(sid, [{"type": "transcript", "data": {"id": "x"}}]),
                "oversize": controller.send_event(sid, [{"type": "blob", "data": {"t": "x" * 70000}}]),
            }
            time.sleep(1.0)
            pause = controller.pause(sid)
            time.sleep(1.0)
            event = controller.send_event(sid, [{"type": "note", "data": {"text": "hello"}}])
            resume = controller.resume(sid)
            time.sleep(1.0)
            disconnect = controller.disconnect(sid, "completed", "business rule")
            return {"sid": sid, "before": before, "refused": refused, "pause": pause, "event": event,
                    "resume": resume, "disconnect": disconnect}

        done = await asyncio.to_thread(control)
        report = await calling
        return done, report, await asyncio.to_thread(records_of, stack)

    done, report, records = run(scenario)
    sid = done["sid"]
    refused = done["refused"]
    assert (refused["unknown"].code, refused["unknown"].reason) == (
        "unknown_session", f"no live session {UNKNOWN} in the sessions table")
    assert (refused["wrong_state"].code, refused["wrong_state"].reason) == (
        "wrong_state", "cannot resume: the session is not paused by the server")
    assert refused["bad_entity"].code == "bad_entity" and refused["oversize"].code == "oversize_event"
    assert not any(result.delivered for result in refused.values())
    assert report.findings == []  # seq, clientseq, id, version: as Genesys checks every frame
    received = server_messages(report)
    assert [m["seq"] for m in received] == list(range(1, len(received) + 1))
    sent_types = [m["type"] for m in received if m["type"] not in ("pong",)]
    assert sent_types == ["opened", "pause", "event", "resume", "disconnect", "closed"]
    for name in ("pause", "event", "resume", "disconnect"):
        result = done[name]
        assert (result.delivered, result.code) == (True, "delivered"), (name, result)
        assert result.message in received  # exactly what the client got, with its seq and clientseq
    # clientseq names the last client message the server had applied when it was numbered
    for message in received:
        earlier = [m for m in client_messages(report) if m["seq"] <= message["clientseq"]]
        assert len(earlier) == message["clientseq"]
    confirmations = [m["type"] for m in client_messages(report) if m["type"] in ("paused", "resumed", "close")]
    assert confirmations == ["paused", "resumed", "close"]
    # no audio between the client's paused and resumed, the rest at contiguous positions
    own = [decode_record(r) for r in records]
    own = [r for r in own if r.session_id == sid]
    lifecycle = [(r.event, r.position, r.data.get("initiator")) for r in own if isinstance(r, LifecycleRecord)]
    events = [e for e, _, _ in lifecycle]
    assert events[:7] == ["opened", "pausing", "paused", "event", "resuming", "resumed", "disconnecting"]
    paused_at = next(p for e, p, _ in lifecycle if e == "paused")
    audio = [r for r in own if isinstance(r, AudioRecord)]
    position = 0
    for record in audio:
        if record.position != position:  # the one jump: what the client skipped while paused
            assert position == paused_at and record.position > position
        position = record.position + record.sample_count
    assert [i for e, _, i in lifecycle if e in ("paused", "resumed")] == ["server", "server"]


def test_a_reconnect_moves_the_call_and_the_conversation_exports_bit_exact():
    async def scenario(stack: LocalStack) -> Any:
        demo = stack.demo
        calling = asyncio.create_task(call(stack.url, demo.api_key, demo.client_secret, audio=TONE,
                                           ping_interval_s=0.4))
        controller = controller_of(stack)

        def control() -> Any:
            sid = wait_for_active_session(stack)
            time.sleep(2.0)
            return controller.reconnect(sid, "moving")

        result = await asyncio.to_thread(control)
        report = await calling
        return result, report, await asyncio.to_thread(records_of, stack)

    result, report, records = run(scenario)
    assert (result.delivered, result.code) == (True, "delivered")
    assert report.findings == [] and len(report.continued_sessions) == 1
    export = rebuild_conversation(records, report.conversation_id)
    assert [s.session_id for s in export.sessions] == [report.session_id, report.continued_sessions[0]]
    opened = [decode_record(r) for r in records]
    links = [r.data["continuedSessions"] for r in opened if isinstance(r, LifecycleRecord) and r.event == "opened"
             and r.session_id == report.continued_sessions[0]]
    (link,) = links[0]
    # The last server seq the client had seen: the reconnect, or a pong that followed it.
    assert (link["id"], link["verified"]) == (report.session_id, True)
    assert link["serverseq"] >= result.message["seq"]
    sent = b"".join(TONE.frames("PCMU", ["external", "internal"], 1600))
    decoded = mulaw_decode(sent)
    expected = (array("h", decoded[0::2]), array("h", decoded[1::2]))
    assert export.audio is not None and export.audio.channels == expected
