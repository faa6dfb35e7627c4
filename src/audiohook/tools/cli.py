"""``audiohook``: run the product locally and test any AudioHook server the way Genesys does.

    audiohook serve   [--demo] [--port 8000] [--relay-port 8001] [--binary aws|base64] [--serialize]
    audiohook probe   URL --api-key K --client-secret S [--json]
    audiohook call    URL --api-key K --client-secret S [--wav F | --tone HZ] [--sessions N] ...
    audiohook replay  events/*.json [--env events/env.json] [--api-keys events/api-keys.json]
    audiohook export  --session ID | --conversation ID --out call.wav [--summary call.json]
    audiohook control pause|resume|event|disconnect|reconnect|lookup --session-id ID [--entities JSON] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

DEFAULT_TEMPLATE = "template.yaml"


def _seconds_and_value(text: str) -> tuple[float, str]:
    at, _, value = text.partition(":")
    return float(at), value


# --- serve ---------------------------------------------------------------------------------

async def _demo(stack: Any, out_dir: Path) -> None:
    """What the README's first command shows, wired as Genesys is in production: the probe
    through the API Gateway front, a call with audio through the relay, where both landed."""
    from audiohook.tools.client import call, probe
    from audiohook.tools.wav import AudioSource, write_wav

    demo = stack.demo
    print(f"\n== Genesys connection probe, through the API Gateway front ({stack.url}) ==")
    report = await probe(stack.url, demo.api_key, demo.client_secret)
    print(report.to_text())
    probe_export = await _settled_export(stack, report.session_id)
    print(f"Kinesis stream {stack.aws.resources.stream_name!r}: probe session {report.session_id}: "
          f"{', '.join(r.event for r in probe_export.lifecycle)}")
    print(f"\n== A 3 s call with audio, through the relay ({stack.relay_url}): 440 Hz stereo tone, "
          "pings every second and a language update ==")
    result = await call(stack.relay_url, demo.api_key, demo.client_secret,
                        audio=AudioSource.tone(440.0, 3.0, channels=2), speed=4.0, ping_interval_s=1.0,
                        language_update=(1.0, "es-ES"))
    print(result.to_text())
    session_id = result.session_id
    export = await _settled_export(stack, session_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path = out_dir / f"{session_id}.wav"
    if export.audio is not None:
        write_wav(wav_path, export.audio)
    (out_dir / f"{session_id}.json").write_text(json.dumps(export.summary(), indent=2))
    print("\n== Where the audio landed ==")
    print(f"Kinesis stream {stack.aws.resources.stream_name!r}: {export.audio_records} audio records, "
          f"{len(export.lifecycle)} lifecycle records ({', '.join(r.event for r in export.lifecycle)})")
    print(f"rebuilt from the stream: {wav_path} ({export.summary()['seconds']} s, "
          f"channels {', '.join(export.channel_names)}); lifecycle summary {out_dir / (session_id + '.json')}")


async def _settled_export(stack: Any, session_id: str) -> Any:
    """The session's records once its ``disconnected`` record is in the stream (5 s at most)."""
    for _ in range(50):  # $disconnect and the relay's last flush may still be running
        export = _export(stack.aws.client("kinesis"), stack.aws.resources.stream_name, session_id)
        if any(record.event == "disconnected" for record in export.lifecycle):
            break
        await asyncio.sleep(0.1)
    return export


def cmd_serve(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The handlers log JSON lines and print CloudWatch metrics; locally that buries the demo.
        os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from audiohook.local.gateway import GatewayLimits, LocalStack

    async def main() -> int:
        limits = GatewayLimits(idle_timeout_s=args.idle_timeout) if args.idle_timeout else GatewayLimits()
        async with LocalStack(args.template, port=args.port, relay_port=args.relay_port, binary=args.binary,
                              serialize=args.serialize, limits=limits) as stack:
            demo = stack.demo
            binary = ("base64 events to $default (NOT AWS: API Gateway closes with 1003)" if args.binary == "base64"
                      else "close 1003, as API Gateway does: send audio to the relay")
            order = ("one at a time per connection, in order (NOT AWS)" if args.serialize
                     else "concurrent and unordered, as Lambda runs them")
            print("AudioHook server, both production fronts over one embedded AWS:")
            print(f"  API Gateway front:  {stack.url}")
            print("      = the stack's WebSocketUrl: the Lambda handlers behind an API Gateway emulator.")
            print("        Genesys' connection probe and control messages; no audio.")
            print(f"        binary frames: {binary}; $default invocations: {order}")
            print(f"  relay front:        {stack.relay_url}")
            print("      = the stack's RelayUrl: the relay container's code, in this process.")
            print("        Calls with audio (point Genesys' Connection URI here for real calls).")
            print(f"        control port {stack.relay.control_address}: `audiohook control` reaches its sessions "
                  "(the sessions table names the owner)")
            print(f"  API key:        {demo.api_key}")
            print(f"  client secret:  {demo.client_secret}")
            print(f"  @connections:   {stack.connections_endpoint}")
            print(f"  embedded AWS:   {stack.aws.endpoint_url}  (moto; table {stack.aws.resources.table_name!r}, "
                  f"stream {stack.aws.resources.stream_name!r}; both fronts write here)")
            print(f"  export a call:  AWS_ENDPOINT_URL={stack.aws.endpoint_url} audiohook export --session ID "
                  "--out call.wav")
            if args.demo:
                await _demo(stack, Path(args.out))
            if args.exit_after_demo:
                return 0
            print("\nserving; Ctrl-C to stop", flush=True)
            await asyncio.Event().wait()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("stopped")
        return 0


# --- probe / call --------------------------------------------------------------------------

def cmd_probe(args: argparse.Namespace) -> int:
    from audiohook.tools.client import probe

    report = asyncio.run(probe(args.url, args.api_key, args.client_secret, organization_id=args.organization_id,
                               timeout_open=args.timeout_open, timeout_close=args.timeout_close))
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.passed else 1


def cmd_call(args: argparse.Namespace) -> int:
    from audiohook.tools.client import run_calls
    from audiohook.tools.wav import AudioSource

    audio = AudioSource.from_wav(args.wav) if args.wav else AudioSource.tone(args.tone, args.seconds, channels=2)
    options: dict[str, Any] = {
        "audio": audio, "speed": args.speed, "ping_interval_s": args.ping_interval,
        "pause_at": args.pause_at, "resume_at": args.resume_at,
    }
    if args.language_update:
        options["language_update"] = _seconds_and_value(args.language_update)
    if args.discard:
        at, seconds = _seconds_and_value(args.discard)
        options["discard"] = (at, float(seconds))
    summary = asyncio.run(run_calls(args.sessions, args.url, args.api_key, args.client_secret, **options))
    if args.json:
        print(summary.to_json())
    else:
        for report in summary.reports:
            print(report.to_text())
        print(summary.to_text())
    return 0 if summary.passed == len(summary.reports) else 1


# --- replay --------------------------------------------------------------------------------

def _load_env_file(path: Path) -> dict[str, str]:
    """``sam local invoke --env-vars`` format: {"Parameters": {...}} and/or {"<Function>": {...}}."""
    document = json.loads(path.read_text())
    merged: dict[str, str] = {}
    for scope in document.values():
        merged.update({name: str(value) for name, value in scope.items() if value != ""})
    return merged


def cmd_replay(args: argparse.Namespace) -> int:
    from audiohook.aws.stream import read_stream
    from audiohook.aws.wiring import build_service
    from audiohook.local.embedded_aws import EmbeddedAws
    from audiohook.records import decode_record

    files = [Path(name) for name in args.events]
    folder = files[0].parent if files else Path("events")
    env_file = Path(args.env) if args.env else folder / "env.json"
    key_file = Path(args.api_keys) if args.api_keys else folder / "api-keys.json"
    saved_environment = dict(os.environ)
    with EmbeddedAws(args.template) as aws:
        # The handlers read their settings from the environment, as in Lambda.
        os.environ.update(aws.env())
        if env_file.exists():
            os.environ.update({k: v for k, v in _load_env_file(env_file).items()
                               if k not in ("SESSIONS_TABLE", "AUDIO_STREAM", "API_KEYS_SECRET")})
        if key_file.exists():
            keys = {aws.demo.api_key: aws.demo.client_secret} | json.loads(key_file.read_text())
            aws.client("secretsmanager").put_secret_value(SecretId=aws.resources.secret_arn,
                                                          SecretString=json.dumps(keys))
        service = build_service()
        sent = _ReplayPoster()
        service.poster_for = lambda event: sent
        for path in files:
            event = json.loads(path.read_text())
            if "requestContext" not in event:
                continue  # env.json / api-keys.json sit beside the events
            route = event["requestContext"]["routeKey"]
            handler = {"$connect": service.on_connect, "$default": service.on_message,
                       "$disconnect": service.on_disconnect}[route]
            result = handler(event)
            print(f"{path.name}: {route} -> {result.response}")
            for text in sent.drain():
                print(f"    posted: {text}")
        print("\nKinesis records:")
        for partition_key, data in read_stream(aws.client("kinesis"), aws.resources.stream_name):
            record = decode_record(data)
            kind = getattr(record, "event", None) or f"audio position {record.position}, {len(record.audio)} bytes"
            print(f"    [{partition_key}] {kind}")
        print("\nDynamoDB items:")
        for item in aws.client("dynamodb").scan(TableName=aws.resources.table_name)["Items"]:
            print("    " + json.dumps({k: next(iter(v.values())) for k, v in item.items() if k != "session"}))
    os.environ.clear()
    os.environ.update(saved_environment)
    return 0


class _ReplayPoster:
    """Collects what the service would post; replay prints it (there is no socket to send to)."""

    calls = 0

    def __init__(self) -> None:
        self._texts: list[str] = []

    def post_all(self, connection_id: str, texts: list[str]) -> bool:
        self._texts.extend(texts)
        return True

    def drain(self) -> list[str]:
        texts, self._texts = self._texts, []
        return texts


# --- export --------------------------------------------------------------------------------

def _export(kinesis: Any, stream_name: str, session_id: str) -> Any:
    from audiohook.aws.stream import read_stream
    from audiohook.tools.export import rebuild_session

    return rebuild_session((data for _, data in read_stream(kinesis, stream_name)), session_id)


def cmd_export(args: argparse.Namespace) -> int:
    from audiohook.aws.wiring import client
    from audiohook.tools.wav import write_wav

    if args.conversation:
        return _export_conversation(client("kinesis"), args)
    export = _export(client("kinesis"), args.stream, args.session)
    summary = json.dumps(export.summary(), indent=2)
    if args.summary:
        Path(args.summary).write_text(summary)
    if export.audio is None:
        print(f"no audio records for session {args.session} in stream {args.stream!r}", file=sys.stderr)
        print(summary)
        return 1
    write_wav(args.out, export.audio)
    print(f"{args.out}: {export.summary()['seconds']} s, {len(export.channel_names)} channel(s) "
          f"({', '.join(export.channel_names)}) from {export.audio_records} records; "
          f"{len(export.lifecycle)} lifecycle records")
    return 0


def _export_conversation(kinesis: Any, args: argparse.Namespace) -> int:
    from audiohook.aws.stream import read_stream
    from audiohook.tools.export import rebuild_conversation
    from audiohook.tools.wav import write_wav

    export = rebuild_conversation((data for _, data in read_stream(kinesis, args.stream)), args.conversation)
    summary = json.dumps(export.summary(), indent=2)
    if args.summary:
        Path(args.summary).write_text(summary)
    if export.audio is None:
        print(f"no audio for conversation {args.conversation} in stream {args.stream!r}", file=sys.stderr)
        print(summary)
        return 1
    write_wav(args.out, export.audio)
    print(f"{args.out}: {export.audio.seconds:.3f} s stitched from {len(export.sessions)} session(s) "
          f"({', '.join(s.session_id for s in export.sessions)})")
    return 0


# --- control -------------------------------------------------------------------------------

def control_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The Control function's JSON payload for these arguments (docs/control.md)."""
    payload: dict[str, Any] = {"action": args.action}
    if args.session_id:
        payload["sessionId"] = args.session_id
    if args.conversation_id:
        payload["conversationId"] = args.conversation_id
    if args.entities is not None:
        payload["entities"] = json.loads(args.entities)
    if args.reason is not None:
        payload["reason"] = args.reason
    if args.info is not None:
        payload["info"] = args.info
    return payload


def cmd_control(args: argparse.Namespace) -> int:
    try:
        payload = control_payload(args)
    except json.JSONDecodeError as error:
        print(f"--entities is not valid JSON: {error}", file=sys.stderr)
        return 2
    if args.function:
        # A deployed stack: the Control function does it, with its own least-privilege role.
        from audiohook.aws.wiring import client

        response = client("lambda").invoke(FunctionName=args.function, Payload=json.dumps(payload).encode())
        answer = json.loads(response["Payload"].read())
        if "FunctionError" in response:
            print(json.dumps(answer, indent=2), file=sys.stderr)
            return 1
    else:
        # The Python API in this process: the local stack (--endpoint-url, the gateway's
        # @connections) or a deployed stack's table and API with the caller's own credentials.
        from audiohook.aws.control import build_controller, handle
        from audiohook.config import Settings

        overrides = {"AWS_ENDPOINT_URL": args.endpoint_url, "SESSIONS_TABLE": args.table,
                     "AUDIO_STREAM": args.stream, "CONNECTIONS_ENDPOINT": args.connections_endpoint}
        os.environ.update({name: value for name, value in overrides.items() if value})
        try:
            controller = build_controller(Settings.from_env())
        except ValueError as error:
            print(f"{error} (--connections-endpoint)", file=sys.stderr)
            return 2
        answer = handle(controller, payload)
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("delivered") or (answer.get("action") == "lookup" and "sessions" in answer) else 1


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiohook", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the product locally: embedded AWS, the API Gateway front and the relay front")
    serve.add_argument("--template", default=DEFAULT_TEMPLATE)
    serve.add_argument("--port", type=int, default=8000, help="API Gateway front (emulator)")
    serve.add_argument("--relay-port", type=int, default=8001, help="relay front")
    serve.add_argument("--binary", choices=("aws", "base64"), default="aws",
                       help="aws (default): a binary frame closes the connection with 1003, as API Gateway does; "
                            "base64: NOT AWS, binary frames reach $default as base64 events, in order per "
                            "connection (Lambda-path audio locally)")
    serve.add_argument("--serialize", action="store_true",
                       help="NOT AWS: run a connection's $default invocations one at a time, in arrival order")
    serve.add_argument("--idle-timeout", type=float, default=None, help="seconds (AWS: 600)")
    serve.add_argument("--demo", action="store_true",
                       help="run Genesys' probe through the API Gateway front and a short call with audio "
                            "through the relay, then show both in the embedded Kinesis")
    serve.add_argument("--exit-after-demo", action="store_true")
    serve.add_argument("--out", default="out", help="where --demo writes the rebuilt WAV")
    serve.add_argument("--verbose", action="store_true", help="show the handlers' JSON logs and metrics")
    serve.set_defaults(run=cmd_serve)

    def server_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("url", help="ws:// or wss:// URL of the AudioHook server")
        command.add_argument("--api-key", required=True)
        command.add_argument("--client-secret", default="", help="base64, as Genesys shows it; empty: unsigned")
        command.add_argument("--json", action="store_true", help="machine-readable output")

    probe = commands.add_parser("probe", help="what Genesys does when an integration is saved")
    server_arguments(probe)
    probe.add_argument("--organization-id", default=None)
    probe.add_argument("--timeout-open", type=float, default=5.0)
    probe.add_argument("--timeout-close", type=float, default=10.0)
    probe.set_defaults(run=cmd_probe)

    call = commands.add_parser("call", help="a full session with audio (load: --sessions N)")
    server_arguments(call)
    source = call.add_mutually_exclusive_group()
    source.add_argument("--wav", help="8 kHz PCMU or 16-bit PCM WAV, mono or stereo")
    source.add_argument("--tone", type=float, default=440.0, help="generated tone frequency (Hz)")
    call.add_argument("--seconds", type=float, default=10.0, help="tone length")
    call.add_argument("--speed", type=float, default=1.0, help="N times real time")
    call.add_argument("--sessions", type=int, default=1)
    call.add_argument("--ping-interval", type=float, default=5.0)
    call.add_argument("--pause-at", type=float, default=None)
    call.add_argument("--resume-at", type=float, default=None)
    call.add_argument("--language-update", default=None, metavar="SECONDS:LANG", help="e.g. 2:es-ES")
    call.add_argument("--discard", default=None, metavar="SECONDS:DURATION", help="e.g. 3:0.4")
    call.set_defaults(run=cmd_call)

    replay = commands.add_parser("replay", help="feed recorded API Gateway events to the handlers")
    replay.add_argument("events", nargs="+")
    replay.add_argument("--env", default=None, help="sam local --env-vars file (default: events/env.json)")
    replay.add_argument("--api-keys", default=None, help='{"key": "base64 secret"} (default: events/api-keys.json)')
    replay.add_argument("--template", default=DEFAULT_TEMPLATE)
    replay.set_defaults(run=cmd_replay)

    export = commands.add_parser("export", help="rebuild a session's audio from the stream as a WAV")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", help="one session's audio")
    which.add_argument("--conversation", help="a conversation's sessions, continued ones stitched (reconnect)")
    export.add_argument("--out", required=True)
    export.add_argument("--summary", default=None, help="write the lifecycle summary JSON here")
    export.add_argument("--stream", default=os.environ.get("AUDIO_STREAM", "audiohook-audio"))
    export.set_defaults(run=cmd_export)

    control = commands.add_parser("control", help="act on a live session: pause, resume, event, disconnect, "
                                                  "reconnect (lookup finds sessions)")
    control.add_argument("action", choices=("pause", "resume", "event", "disconnect", "reconnect", "lookup"))
    control.add_argument("--session-id", default=None)
    control.add_argument("--conversation-id", default=None, help="lookup: the sessions of a conversation")
    control.add_argument("--entities", default=None, help='event: JSON array, e.g. \'[{"type":"x","data":{}}]\'')
    control.add_argument("--reason", default=None, choices=("completed", "unauthorized", "error"),
                         help="disconnect reason (default completed)")
    control.add_argument("--info", default=None, help="disconnect/reconnect info")
    control.add_argument("--function", default=None,
                         help="a deployed stack's Control function (the ControlFunctionName output): invoke it")
    control.add_argument("--endpoint-url", default=None, help="embedded AWS of the local stack (AWS_ENDPOINT_URL)")
    control.add_argument("--table", default=None, help="sessions table (SESSIONS_TABLE)")
    control.add_argument("--stream", default=None, help="audio stream (AUDIO_STREAM)")
    control.add_argument("--connections-endpoint", default=None,
                         help="@connections endpoint (CONNECTIONS_ENDPOINT): the local gateway's, or "
                              "https://<api>.execute-api.<region>.amazonaws.com/<stage>")
    control.set_defaults(run=cmd_control)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
