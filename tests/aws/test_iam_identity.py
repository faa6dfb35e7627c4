"""Callers proven by IAM alone: a signed STS GetCallerIdentity request, checked against moto's
STS over HTTP (its server answers as STS does: the caller's ARN for the signing credentials)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

import boto3
import pytest
from botocore.credentials import Credentials
from moto.server import ThreadedMotoServer

from audiohook.aws.iam_identity import (
    AUDIENCE_HEADER,
    SignedIdentity,
    role_of,
    sign_identity,
    verify_identity,
)

REGION = "us-east-1"
TASK = "10.0.1.23:8081"
PAYLOAD = b'{"action":"pause","sessionId":"5f020a60-a9cf-4a0a-add7-717401f04817"}'
TRUST = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},' \
        '"Action":"sts:AssumeRole"}]}'


@pytest.fixture(scope="module", name="sts")
def sts_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}/"
    server.stop()


def role_credentials(endpoint: str, role_name: str) -> tuple[str, Credentials]:
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    arn = iam.create_role(RoleName=role_name, Path="/service-role/", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    client = boto3.client("sts", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    creds = client.assume_role(RoleArn=arn, RoleSessionName="control")["Credentials"]
    return arn, Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def verify(endpoint: str, signed: SignedIdentity, allowed: str, **overrides):
    options = dict(audience=TASK, payload=PAYLOAD, allowed_roles=frozenset({allowed}), endpoint=endpoint,
                   now=datetime.now(timezone.utc))
    return verify_identity(signed, **(options | overrides))


def test_the_control_role_is_verified_by_sts(sts):
    arn, credentials = role_credentials(sts, "control-ok")
    verdict = verify(sts, sign_identity(credentials, REGION, TASK, PAYLOAD, endpoint=sts), arn)
    assert (verdict.ok, verdict.reason) == (True, "caller verified by STS")
    assert role_of(verdict.arn) == arn.replace("/service-role/", "/")


def test_another_role_is_refused(sts):
    allowed, _ = role_credentials(sts, "control-allowed")
    _, other = role_credentials(sts, "someone-else")
    verdict = verify(sts, sign_identity(other, REGION, TASK, PAYLOAD, endpoint=sts), allowed)
    assert not verdict.ok and verdict.reason.endswith("is not an allowed control role")


def test_a_request_for_another_task_or_payload_is_refused_before_asking_sts(sts):
    arn, credentials = role_credentials(sts, "control-bound")
    signed = sign_identity(credentials, REGION, "10.0.9.9:8081", PAYLOAD, endpoint=sts)
    assert verify(sts, signed, arn).reason == "the signed audience does not match this request"
    signed = sign_identity(credentials, REGION, TASK, b'{"action":"disconnect"}', endpoint=sts)
    assert verify(sts, signed, arn).reason == "the signed payload digest does not match this request"
    unsigned = SignedIdentity(signed.url, signed.headers | {AUDIENCE_HEADER: TASK}, signed.body)
    assert verify(sts, unsigned, arn, post=lambda *a: pytest.fail("STS must not be asked")).reason == (
        "the signed payload digest does not match this request")


def test_the_sts_endpoint_is_pinned_and_old_requests_are_refused(sts):
    arn, credentials = role_credentials(sts, "control-pinned")
    signed = sign_identity(credentials, REGION, TASK, PAYLOAD, endpoint="https://evil.example.com/")
    assert verify(sts, signed, arn).reason == f"the identity request goes to https://evil.example.com/, not {sts}"
    signed = sign_identity(credentials, REGION, TASK, PAYLOAD, endpoint=sts)
    late = verify(sts, signed, arn, now=datetime.now(timezone.utc) + timedelta(seconds=120))
    assert not late.ok and "at most 60 s" in late.reason
    assert verify(sts, None, arn).reason == "no signed identity request"
    assert SignedIdentity.from_dict(signed.to_dict()) == signed and SignedIdentity.from_dict("x") is None


def test_sts_refusing_the_signature_is_a_refusal(sts):
    arn, credentials = role_credentials(sts, "control-forged")
    signed = sign_identity(credentials, REGION, TASK, PAYLOAD, endpoint=sts)
    verdict = verify(sts, signed, arn, post=lambda url, headers, body: (403, b"<ErrorResponse/>"))
    assert verdict.reason == "STS refused the identity request (HTTP 403)"
