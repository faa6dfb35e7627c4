"""The metric set's bounded breakdowns: every problem the core can report has its kind."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from audiohook import auth
from audiohook import metrics as M
from audiohook.media import parse_preference
from audiohook.protocol import parse_client_message
from audiohook.session import Policy, Session, receive, receive_audio
from conftest import API_KEY, CLIENT_SECRET, ORG_ID, open_parameters

SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
POLICY = Policy(media_preference=parse_preference("PCMU/stereo,PCMU/mono"))


def client(type: str, seq: int, parameters: dict | None = None, **fields: object) -> str:
    return json.dumps({"version": "2", "id": SESSION_ID, "type": type, "seq": seq, "serverseq": 0,
                       "position": "PT0S", "parameters": parameters or {}} | fields)


def violation_of(*texts: str) -> str:
    session = Session(session_id=SESSION_ID, organization_id=ORG_ID)
    outcome = None
    for text in texts:
        parsed = parse_client_message(text)
        outcome = receive(session, parsed, POLICY, 0.0)
    assert outcome is not None and outcome.violation, outcome
    return outcome.violation


OPEN = client("open", 1, open_parameters())


@pytest.mark.parametrize(("texts", "kind"), [
    (("x" * 70_000,), "too_large"),
    (("{not json",), "malformed"),
    (("[1, 2]",), "malformed"),
    ((client("ping", 1, version="3"),), "version"),
    ((client("shout", 1),), "unknown_type"),
    ((client("open", 1, {"organizationId": ORG_ID}),), "invalid_message"),
    ((OPEN, client("ping", 3)), "sequence"),
    ((OPEN, client("ping", 2, serverseq=5)), "sequence"),
    ((OPEN, client("ping", 2, id=str(uuid.uuid4()))), "session_id"),
    ((client("open", 1, open_parameters() | {"organizationId": str(uuid.uuid4())}),), "organization"),
    ((OPEN, client("open", 2, open_parameters())), "state"),
    ((client("ping", 1),), "state"),
])
def test_every_protocol_error_of_the_core_has_a_named_kind(texts: tuple[str, ...], kind: str) -> None:
    assert M.protocol_error_kind(violation_of(*texts)) == kind


def test_audio_problems_are_of_kind_audio() -> None:
    session = Session(session_id=SESSION_ID, organization_id=ORG_ID)
    before_open = receive_audio(session, 3200)
    assert before_open is not None and M.protocol_error_kind(before_open.violation or "") == "audio"
    session = Session(session_id=SESSION_ID, organization_id=ORG_ID)
    receive(session, parse_client_message(OPEN), POLICY, 0.0)
    odd = receive_audio(session, 3201)
    assert odd is not None and M.protocol_error_kind(odd.violation or "") == "audio"


def test_unknown_wording_is_other_and_every_kind_is_declared() -> None:
    assert M.protocol_error_kind("something new") == "other"
    assert set(M.PROTOCOL_ERROR_KINDS) == {
        "too_large", "malformed", "version", "unknown_type", "invalid_message", "sequence", "session_id",
        "organization", "audio", "state", "other"}


def signed(now: float, secret: str = CLIENT_SECRET, api_key: str = API_KEY, **params: object) -> dict[str, str]:
    headers = {"Host": "a.example.com", "Audiohook-Organization-Id": ORG_ID,
               "Audiohook-Correlation-Id": str(uuid.uuid4()), "Audiohook-Session-Id": SESSION_ID,
               "X-API-KEY": api_key}
    return headers | auth.sign_upgrade(headers, "/prod", api_key, secret, now=now, nonce=uuid.uuid4().hex)


@pytest.mark.parametrize(("make", "reason_class"), [
    (lambda now: signed(now, secret="d3Jvbmcgc2VjcmV0"), "bad_signature"),
    (lambda now: signed(now, api_key="unknown-key"), "bad_signature"),
    (lambda now: signed(now - 3600), "clock"),
    (lambda now: signed(now + 3600), "clock"),
    (lambda now: {k: v for k, v in signed(now).items() if k != "X-API-KEY"}, "missing_key"),
    (lambda now: {k: v for k, v in signed(now).items() if not k.startswith("Signature")}, "unsigned"),
    (lambda now: signed(now) | {"Signature-Input": "sig1=(\"@request-target\");keyid=\"x\""}, "malformed"),
])
def test_every_refused_upgrade_has_a_reason_class(make, reason_class: str) -> None:
    now = time.time()
    verdict = auth.verify_upgrade(make(now), "/prod", {API_KEY: CLIENT_SECRET}, now=now)
    assert not verdict.ok
    assert M.upgrade_rejection_class(verdict.reason) == reason_class, verdict.reason


def test_a_replayed_nonce_is_its_own_class() -> None:
    assert M.upgrade_rejection_class("signature nonce was already used (replay)") == "replay"
    assert {"replay", "draining", "internal", "malformed"} <= set(M.UPGRADE_REJECTION_CLASSES)


def test_metric_names_are_unique_and_units_are_cloudwatch_units() -> None:
    assert len(M.BY_NAME) == len(M.ALL)
    assert {metric.unit for metric in M.ALL} <= {"Count", "Bytes", "Milliseconds"}
    assert M.RELAY_ONLY == {"ActiveSessions", "BufferedBytes"}
