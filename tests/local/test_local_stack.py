"""The whole product locally, over real sockets: `audiohook serve` as a user runs it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
import websockets

from audiohook.aws.stream import read_stream
from audiohook.local.gateway import LocalStack
from audiohook.tools.cli import main as cli
from audiohook.tools.client import call, probe
from audiohook.tools.export import rebuild_session
from audiohook.tools.wav import Audio, AudioSource, mulaw_decode, mulaw_encode, read_wav, write_wav
from conftest import REPO

TEMPLATE = REPO / "template.yaml"


def run(coroutine):
    return asyncio.run(coroutine)


async def settled_export(stack: LocalStack, session_id: str):
    """The session's records once its $disconnect has run."""
    for _ in range(100):
        export = rebuild_session((data for _, data in read_stream(
            stack.aws.client("kinesis"), stack.aws.resources.stream_name)), session_id)
        if any(record.event == "disconnected" for record in export.lifecycle):
            return export
        await asyncio.sleep(0.05)
    raise AssertionError(f"no disconnected record for {session_id}")


def test_the_genesys_probe_passes_against_serve():
    async def scenario():
        async with LocalStack(TEMPLATE) as stack:
            return await probe(stack.url, stack.demo.api_key, stack.demo.client_secret)

    report = run(scenario())
    assert report.passed, report.to_text()
    assert [entry.direction for entry in report.transcript] == ["client", "server", "client", "server"]


def test_a_wav_call_lands_in_kinesis_and_export_returns_the_same_samples(tmp_path: Path):
    # PCMU codes decoded to PCM are exactly representable, so encode(decode(x)) == x: the
    # exported WAV must hold precisely the samples the caller sent.
    codes = bytes((n * 37) % 256 for n in range(8000 * 2))
    samples = mulaw_decode(codes)
    wav = tmp_path / "call.wav"
    write_wav(wav, Audio(8000, (samples[0::2], samples[1::2])))

    exported = tmp_path / "exported.wav"

    async def scenario():
        # Through the relay, the front a Genesys call with audio reaches in production.
        async with LocalStack(TEMPLATE) as stack:
            report = await call(stack.relay_url, stack.demo.api_key, stack.demo.client_secret,
                                audio=AudioSource.from_wav(wav), speed=8.0, ping_interval_s=0.4)
            export = await settled_export(stack, report.session_id)
            # The CLI, as a user runs it against the embedded AWS (the stack's env is in os.environ).
            assert cli(["export", "--session", report.session_id, "--out", str(exported),
                        "--stream", stack.aws.resources.stream_name]) == 0
            return report, export

    report, export = run(scenario())
    assert read_wav(exported) == export.audio
    assert report.passed, report.to_text()
    assert export.channel_names == ("external", "internal")
    assert export.audio.channels[0] == samples[0::2] and export.audio.channels[1] == samples[1::2]
    assert mulaw_encode(export.audio.channels[0]) == codes[0::2]
    assert [r.event for r in export.lifecycle] == ["opened", "closed", "disconnected"]


def test_the_api_gateway_front_closes_with_1003_on_the_first_audio_frame():
    async def scenario():
        async with LocalStack(TEMPLATE) as stack:
            report = await call(stack.url, stack.demo.api_key, stack.demo.client_secret,
                                audio=AudioSource.tone(440, 0.4, channels=2), speed=8.0)
            return report

    report = run(scenario())
    assert not report.passed
    assert any("1003" in finding.message for finding in report.findings), report.to_text()


def test_an_oversize_frame_is_refused_like_api_gateway():
    async def scenario():
        async with LocalStack(TEMPLATE) as stack:
            from audiohook.tools.client import upgrade_headers

            headers = upgrade_headers(
                stack.url, stack.demo.api_key, stack.demo.client_secret, organization_id=str(uuid.uuid4()),
                session_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4()), now=time.time())
            async with websockets.connect(stack.url, additional_headers=headers, max_size=None) as socket:
                await socket.send("x" * (33 * 1024))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await socket.recv()
                return closed.value.rcvd.code

    assert run(scenario()) == 1009


def test_replay_of_the_recorded_events(capsys):
    events = sorted(str(path) for path in (REPO / "events").glob("*.json"))
    assert cli(["replay", *events, "--template", str(TEMPLATE)]) == 0
    out = capsys.readouterr().out
    assert '01-connect-signed.json: $connect -> {\'statusCode\': 200}' in out
    posted = [json.loads(line.split("posted: ", 1)[1]) for line in out.splitlines() if "posted: " in line]
    assert [(m["type"], m["seq"], m["clientseq"]) for m in posted] == [
        ("opened", 1, 1), ("pong", 2, 2), ("updated", 3, 3), ("closed", 4, 6)]
    assert "audio position 3200, 3200 bytes" in out


def test_the_first_readme_command_probes_via_api_gateway_and_calls_via_the_relay(capsys, tmp_path):
    assert cli(["serve", "--demo", "--exit-after-demo", "--port", "0", "--relay-port", "0",
                "--template", str(TEMPLATE), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    gateway_url = re.search(r"API Gateway front: +(ws://127\.0\.0\.1:\d+/prod)\n", out).group(1)
    relay_url = re.search(r"relay front: +(ws://127\.0\.0\.1:\d+/)\n", out).group(1)
    assert gateway_url != relay_url
    assert f"AudioHook connection probe of {gateway_url}\n" in out
    assert re.search(r"probe session [0-9a-f-]{36}: opened, closed, disconnected\n", out)
    assert f"through the relay ({relay_url})" in out
    assert "PASSED" in out and "FAILED" not in out
    landed = re.search(r"Kinesis stream 'audiohook-local-AudioStream': (\d+) audio records, 4 lifecycle records "
                       r"\(opened, updated, closed, disconnected\)\n", out)
    assert landed is not None and int(landed.group(1)) >= 1, out
    assert "rebuilt from the stream" in out
    (wav,) = tmp_path.glob("*.wav")
    assert read_wav(wav).sample_count == 3 * 8000


def test_serve_help_labels_every_mode_that_is_not_aws(capsys):
    with pytest.raises(SystemExit):
        cli(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("aws (default): a binary frame closes the connection with 1003, as API Gateway does; "
            "base64: NOT AWS, binary frames reach $default as base64 events, in order per connection") in help_text
    assert "--serialize NOT AWS: run a connection's $default invocations one at a time" in help_text


def test_handler_logs_carry_api_gateways_request_id_the_error_frame_names():
    # The handlers' powertools logger, read through a stream of our own with its JSON formatter.
    handlers_logger = logging.getLogger("audiohook")
    lines = io.StringIO()
    reader = logging.StreamHandler(lines)
    reader.setFormatter(handlers_logger.handlers[0].formatter)
    handlers_logger.addHandler(reader)

    async def scenario():
        async with LocalStack(TEMPLATE, relay=False) as stack:
            return await probe(stack.url, stack.demo.api_key, stack.demo.client_secret)

    try:
        assert run(scenario()).passed
    finally:
        handlers_logger.removeHandler(reader)
    handler_lines = [line for line in map(json.loads, lines.getvalue().splitlines()) if "route" in line]
    # $disconnect logs only when it applies the end itself (a $default holder may apply it instead).
    assert {"connect"} <= {line["route"] for line in handler_lines} <= {"connect", "message", "disconnect"}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{15}=", line["api_request_id"]) for line in handler_lines)
