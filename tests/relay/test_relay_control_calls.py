"""Control actions reach a live call with audio on the relay, over real sockets.

`audiohook serve`'s stack (one embedded AWS, the relay in this process with its control port)
and the Genesys-like client (`audiohook call`: pings, streams, confirms pause/resume, shows
events, answers disconnect). The actions go through the control API as the Control function
runs them: the sessions table names the relay task that owns the session, the request goes to
that task's control port with a presigned GetCallerIdentity, checked by the embedded STS.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from array import array
from typing import Any

from botocore.credentials import Credentials

from audiohook.aws.control import Controller, SessionDirectory
from audiohook.aws.relay_control import RelayFront
from audiohook.aws.stream import read_stream
from audiohook.local.gateway import LocalStack
from audiohook.tools.client import CallReport, call
from audiohook.tools.export import rebuild_session
from audiohook.tools.wav import AudioSource, mulaw_decode
from conftest import REPO

FRAME_SAMPLES = 1600  # 200 ms at 8 kHz
ENTITIES = [{"type": "transcript", "data": {
    "id": "8a7c2b52-0f84-4e7e-9f53-3a4e07f5ad2b", "channelId": 0, "isFinal": True,
    "offset": "PT1.2S", "duration": "PT0.8S",
    "alternatives": [{"confidence": 0.93, "languages": ["en-US"], "interpretations": [
        {"type": "display", "transcript": "my card number is", "tokens": []}]}]}}]


def controller_for(stack: LocalStack) -> Controller:
    """The control API as the Control function builds it, against the local stack."""
    aws = stack.aws
    relay = RelayFront(lambda: Credentials("testing", "testing"), aws.region, endpoint=aws.endpoint_url + "/")
    return Controller(SessionDirectory(aws.client("dynamodb"), aws.resources.table_name), api_gateway=None,  # type: ignore[arg-type]
                      relay=relay)


async def live_session(stack: LocalStack) -> str:
    for _ in range(200):
        ids = stack.relay.session_ids()
        if ids and stack.relay.metrics()["frames"] >= 3:
            return str(ids[0])
        await asyncio.sleep(0.02)
    raise AssertionError("no call with audio on the relay")


def server_messages(report: CallReport) -> list[dict[str, Any]]:
    return [json.loads(entry.text) for entry in report.transcript if entry.direction == "server" and entry.text]


def test_pause_resume_event_and_disconnect_reach_a_call_with_audio_in_seq_order_and_refusals_change_nothing():
    audio = AudioSource.tone(440.0, 8.0, channels=2)

    async def scenario() -> dict[str, Any]:
        async with LocalStack(REPO / "template.yaml", stack_name=f"ctl-{uuid.uuid4().hex[:8]}") as stack:
            demo = stack.demo
            calling = asyncio.create_task(call(stack.relay_url, demo.api_key, demo.client_secret, audio=audio,
                                               speed=2.0, ping_interval_s=0.3))
            session_id = await live_session(stack)
            controller = controller_for(stack)

            async def do(method: str, *args: Any) -> dict[str, Any]:
                result = await asyncio.to_thread(getattr(controller, method), *args)
                return result.to_dict()

            refused = {
                "unknown": await do("pause", "0b5bd5d4-6f0b-4d6f-a0f1-3a9a1f0c7e11"),
                "resume": await do("resume", session_id),
                "entity": await do("send_event", session_id, [{"type": "transcript", "data": {"id": 1}}]),
                "oversize": await do("send_event", session_id, [{"type": "note", "data": {"x": "a" * 70000}}]),
            }
            await asyncio.sleep(0.4)
            paused = await do("pause", session_id)
            await asyncio.sleep(0.8)
            resumed = await do("resume", session_id)
            await asyncio.sleep(0.4)
            event = await do("send_event", session_id, ENTITIES)
            await asyncio.sleep(0.4)
            ended = await do("disconnect", session_id, "completed", "business rule")
            report = await asyncio.wait_for(calling, 30)
            for _ in range(50):
                records = await asyncio.to_thread(
                    read_stream, stack.aws.client("kinesis"), stack.aws.resources.stream_name)
                export = rebuild_session((data for _, data in records), session_id)
                if any(r.event == "disconnected" for r in export.lifecycle):
                    break
                await asyncio.sleep(0.1)
            return {"report": report, "refused": refused, "paused": paused, "resumed": resumed, "event": event,
                    "ended": ended, "export": export, "session_id": session_id,
                    "ignored": stack.relay.metrics()["frames_ignored"]}

    got = asyncio.run(asyncio.wait_for(scenario(), 90))
    report = got["report"]

    assert report.passed, report.findings
    assert {name: (r["delivered"], r["code"], r["reason"]) for name, r in got["refused"].items()} == {
        "unknown": (False, "unknown_session",
                    "no live session 0b5bd5d4-6f0b-4d6f-a0f1-3a9a1f0c7e11 in the sessions table"),
        "resume": (False, "wrong_state", "cannot resume: the session is not paused by the server"),
        "entity": (False, "bad_entity", got["refused"]["entity"]["reason"]),
        "oversize": (False, "oversize_event", got["refused"]["oversize"]["reason"]),
    }
    assert got["refused"]["entity"]["reason"].startswith("entities[0]")
    assert got["refused"]["oversize"]["reason"].endswith("bytes; the limit is 65536")
    for name in ("paused", "resumed", "event", "ended"):
        assert (got[name]["delivered"], got[name]["code"], got[name]["reason"]) == (
            True, "delivered", "written to the client's socket")
    # Every server message in seq order, the refusals took no seq, pongs interleaved with ours.
    messages = server_messages(report)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    ours = [m for m in messages if m["type"] not in ("opened", "pong", "closed")]
    assert [m["type"] for m in ours] == ["pause", "resume", "event", "disconnect"]
    assert [m for m in messages if m["seq"] == got["paused"]["message"]["seq"]] == [got["paused"]["message"]]
    assert ours[2]["parameters"] == {"entities": ENTITIES}
    assert ours[3]["parameters"] == {"reason": "completed", "info": "business rule"}
    assert report.events == [ENTITIES]
    assert sum(m["type"] == "pong" for m in messages) >= 3

    # The records say who paused; the audio is exact around the pause: the client's frames where
    # it sent them, silence for what it skipped while paused (its `resumed.discarded`).
    export = got["export"]
    events = [r.event for r in export.lifecycle]
    assert events == ["opened", "pausing", "paused", "resuming", "resumed", "event", "disconnecting", "closed",
                      "disconnected"]
    by_event = {r.event: r for r in export.lifecycle}
    assert by_event["paused"].data["initiator"] == "server"
    assert (by_event["resumed"].data["initiator"], by_event["resumed"].data["pausedBy"]) == ("server", "server")
    assert by_event["event"].data["entities"] == ENTITIES
    skipped_from = by_event["paused"].position
    skipped = by_event["resumed"].data["samples"]
    assert skipped > 0 and skipped % FRAME_SAMPLES == 0
    sent = mulaw_decode(b"".join(audio.frames("PCMU", ["external", "internal"], FRAME_SAMPLES)))
    stored = export.audio
    assert stored is not None and export.channel_names == ("external", "internal")
    length = stored.sample_count
    # Everything the client sent, but the frames already on their way when our disconnect made
    # the session CLOSING (ignored, and counted).
    assert round(report.audio_seconds_sent * 8000) + skipped - length == got["ignored"] * FRAME_SAMPLES
    for index, channel in enumerate(stored.channels):
        expected = sent[index::2][:length]
        expected[skipped_from:skipped_from + skipped] = array("h", bytes(2 * skipped))
        assert channel == expected


def test_audiohook_control_acts_on_a_relay_session_of_the_local_stack(capsys):
    from audiohook.tools.cli import main
    from audiohook.tools.client import upgrade_headers
    from conftest import ORG_ID, open_parameters

    conversation = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any], str | None]:
        import time

        import websockets

        async with LocalStack(REPO / "template.yaml", stack_name=f"cli-{uuid.uuid4().hex[:8]}") as stack:
            aws, demo, sid = stack.aws, stack.demo, str(uuid.uuid4())
            headers = upgrade_headers(stack.relay_url, demo.api_key, demo.client_secret, organization_id=ORG_ID,
                                      session_id=sid, correlation_id=str(uuid.uuid4()), now=time.time())
            async with websockets.connect(stack.relay_url, additional_headers=headers) as ws:
                await ws.send(json.dumps({"version": "2", "id": sid, "type": "open", "seq": 1, "serverseq": 0,
                                          "position": "PT0S", "parameters": open_parameters(conversation)}))
                assert json.loads(await ws.recv())["type"] == "opened"
                item = aws.client("dynamodb").get_item(TableName=aws.resources.table_name, Key={
                    "pk": {"S": f"session#{sid}"}})["Item"]
                owner = aws.client("dynamodb").get_item(TableName=aws.resources.table_name, Key={
                    "pk": {"S": f"conn#{item['connectionId']['S']}"}})["Item"]["owner"]["S"]
                status = await asyncio.to_thread(main, [
                    "control", "event", "--session-id", sid, "--entities", json.dumps(ENTITIES),
                    "--endpoint-url", aws.endpoint_url, "--table", aws.resources.table_name,
                    "--stream", aws.resources.stream_name, "--connections-endpoint", stack.connections_endpoint])
                received = json.loads(await ws.recv())
                return status, received, {"owner": owner, "control": stack.relay.control_address}, sid

    status, received, where, sid = asyncio.run(asyncio.wait_for(scenario(), 60))
    out = capsys.readouterr().out  # the relay's log lines (one line each) and the CLI's answer (indented)
    answer, _ = json.JSONDecoder().raw_decode(out, out.index("{\n"))
    assert status == 0
    assert where["owner"] == where["control"] and where["owner"].startswith("127.0.0.1:")
    expected = {"version": "2", "type": "event", "seq": 2, "clientseq": 1, "id": sid,
                "parameters": {"entities": ENTITIES}}
    assert received == expected
    assert answer == {"action": "event", "sessionId": sid, "delivered": True, "code": "delivered",
                      "reason": "written to the client's socket", "state": "ACTIVE", "message": expected}
