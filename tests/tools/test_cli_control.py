"""`audiohook control` against a stack's table and @connections (moto), and the payload it sends
to a deployed Control function."""

from __future__ import annotations

import json

from audiohook.tools.cli import build_parser, control_payload, main
from conftest import DOMAIN, STAGE, Client, open_parameters

CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"


def stack_arguments(aws) -> list[str]:
    return ["--table", aws.settings.sessions_table, "--stream", aws.settings.audio_stream,
            "--connections-endpoint", f"https://{DOMAIN}/{STAGE}"]


def test_control_event_reaches_the_live_session_and_prints_the_result(aws, service, capsys):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters(CONVERSATION, CONVERSATION)))
    entities = '[{"type":"note","data":{"text":"card read"}}]'
    assert main(["control", "event", "--session-id", client.session_id, "--entities", entities,
                 *stack_arguments(aws)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["delivered"], answer["message"]["type"], answer["message"]["seq"]) == (True, "event", 2)
    assert aws.posted(client.connection.connection_id)[-1]["parameters"] == {"entities": json.loads(entities)}

    assert main(["control", "resume", "--session-id", client.session_id, *stack_arguments(aws)]) == 1
    refused = json.loads(capsys.readouterr().out)
    assert (refused["code"], refused["reason"]) == ("wrong_state",
                                                    "cannot resume: the session is not paused by the server")

    assert main(["control", "lookup", "--conversation-id", CONVERSATION, *stack_arguments(aws)]) == 0
    assert [s["sessionId"] for s in json.loads(capsys.readouterr().out)["sessions"]] == [client.session_id]


def test_the_payload_for_a_deployed_control_function():
    args = build_parser().parse_args(["control", "disconnect", "--session-id", "s", "--reason", "error",
                                      "--info", "fraud rule", "--function", "stack-ControlFunction-1"])
    assert control_payload(args) == {"action": "disconnect", "sessionId": "s", "reason": "error",
                                     "info": "fraud rule"}
