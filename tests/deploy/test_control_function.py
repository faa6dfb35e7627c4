"""The Control function as Lambda runs it: handlers/on_control.py with the template's environment
(moto for every AWS service), one JSON payload in, one JSON answer out."""

from __future__ import annotations

import importlib.util
import os

from conftest import DOMAIN, REPO, STAGE, Client, open_parameters

CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"


def load_handler():
    spec = importlib.util.spec_from_file_location("on_control", REPO / "handlers" / "on_control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def test_the_control_function_pauses_a_live_session_and_says_so(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters(CONVERSATION, CONVERSATION)))
    os.environ.update({"SESSIONS_TABLE": aws.settings.sessions_table, "AUDIO_STREAM": aws.settings.audio_stream,
                       "CONNECTIONS_ENDPOINT": f"https://{DOMAIN}/{STAGE}"})
    handler = load_handler()
    answer = handler({"action": "pause", "sessionId": client.session_id}, None)
    assert answer == {
        "action": "pause", "sessionId": client.session_id, "delivered": True, "code": "delivered",
        "reason": "posted to the client", "state": "ACTIVE",
        "message": {"version": "2", "type": "pause", "seq": 2, "clientseq": 1, "id": client.session_id,
                    "parameters": {}},
    }
    assert aws.posted(client.connection.connection_id)[-1]["type"] == "pause"
    again = handler({"action": "pause", "sessionId": client.session_id}, None)
    assert (again["delivered"], again["code"], again["reason"]) == (
        False, "wrong_state", "cannot pause: the server already paused the session")
