"""Shared fixtures: in-process moto AWS with the product's resources, and a signed client."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import boto3
import pytest
from moto import mock_aws

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
sys.path.insert(0, str(REPO / "tests"))

from audiohook import auth  # noqa: E402
from audiohook.aws.apigw import Connection  # noqa: E402
from audiohook.aws.service import AudioHookService  # noqa: E402
from audiohook.aws.stream import read_stream  # noqa: E402
from audiohook.aws.wiring import build_service, poster_for_endpoint  # noqa: E402
from audiohook.config import Settings  # noqa: E402

REGION = "us-east-1"
API_ID = "a1b2c3d4e5"
DOMAIN = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
STAGE = "prod"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
CLIENT_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="


def load_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


@dataclass
class Aws:
    settings: Settings
    dynamodb: Any
    kinesis: Any
    secrets: Any
    management: Any

    def stream_records(self) -> list[bytes]:
        """Every record in the audio stream, in shard order."""
        return [data for _, data in read_stream(self.kinesis, self.settings.audio_stream)]

    def posted(self, connection_id: str) -> list[dict[str, Any]]:
        """Messages moto's @connections received for one connection, split back into frames."""
        from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends

        connections = apigatewaymanagementapi_backends["123456789012"][REGION].connections
        raw = connections[quote(connection_id, safe="")].data.decode()  # moto keys them URL-encoded
        decoder, messages, index = json.JSONDecoder(), [], 0
        while index < len(raw):
            message, index = decoder.raw_decode(raw, index)
            messages.append(message)
        return messages


@pytest.fixture(autouse=True)
def isolated_environment() -> Iterator[None]:
    """Fronts set handler variables in os.environ (as Lambda does); no test sees another's."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield embedded_aws({API_KEY: CLIENT_SECRET, "unsigned-key": ""})


def embedded_aws(key_map: dict[str, str]) -> Aws:
    """The template's own table, stream and secret, created in moto (``mock_aws`` must be active)."""
    from audiohook.local.embedded_aws import EmbeddedAws

    embedded = EmbeddedAws(REPO / "template.yaml", in_process=True).start()
    embedded.client("secretsmanager").put_secret_value(
        SecretId=embedded.resources.secret_arn, SecretString=json.dumps(key_map)
    )
    settings = replace(Settings.from_env(embedded.env()), predecessor_wait_ms=2000)
    return Aws(
        settings,
        boto3.client("dynamodb", region_name=REGION),
        boto3.client("kinesis", region_name=REGION),
        boto3.client("secretsmanager", region_name=REGION),
        boto3.client("apigatewaymanagementapi", region_name=REGION, endpoint_url=f"https://{DOMAIN}/{STAGE}"),
    )


@pytest.fixture
def service(aws: Aws) -> AudioHookService:
    poster_for_endpoint.cache_clear()  # clients carry fault hooks; never share them between tests
    return build_service(aws.settings, dynamodb=aws.dynamodb, kinesis=aws.kinesis)


class Client:
    """A Genesys-like client talking to the routes through API Gateway-shaped events."""

    def __init__(self, service: AudioHookService, session_id: str | None = None, org_id: str = ORG_ID):
        self.service = service
        self.session_id = session_id or str(uuid.uuid4())
        self.org_id = org_id
        self.connection = Connection(domain_name=DOMAIN, stage=STAGE, api_id=API_ID)
        self.seq = 0
        self.serverseq = 0

    def connect_event(self, now: float | None = None, api_key: str = API_KEY, secret: str = CLIENT_SECRET,
                      nonce: str | None = None, query: str = "", signed_target: str | None = None,
                      **header_overrides: str) -> dict[str, Any]:
        """The $connect event of a signed upgrade to ``/<stage>?<query>`` (the target signed is
        that path + query, as Genesys signs it, unless ``signed_target`` says otherwise)."""
        now = time.time() if now is None else now
        headers = {
            "Host": DOMAIN,
            "Audiohook-Organization-Id": self.org_id,
            "Audiohook-Correlation-Id": str(uuid.uuid4()),
            "Audiohook-Session-Id": self.session_id,
            "X-API-KEY": api_key,
            "User-Agent": "GenesysCloud-AudioHook-Client",
        }
        if secret:
            target = signed_target or (f"/{STAGE}?{query}" if query else f"/{STAGE}")
            headers |= auth.sign_upgrade(headers, target, api_key, secret, now=now, nonce=nonce or uuid.uuid4().hex)
        headers |= header_overrides
        return self.connection.connect(headers, now=now, query=query)

    def connect(self, **kwargs: Any) -> dict[str, Any]:
        return self.service.on_connect(self.connect_event(**kwargs)).response

    def message(self, type: str, parameters: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        self.seq += 1
        return {
            "version": "2", "id": self.session_id, "type": type, "seq": self.seq,
            "serverseq": self.serverseq, "position": "PT0S", "parameters": parameters or {}, **overrides,
        }

    def send(self, message: dict[str, Any] | str | bytes) -> Any:
        data = json.dumps(message) if isinstance(message, dict) else message
        return self.service.on_message(self.connection.message(data))

    def disconnect(self, status_code: int = 1000, reason: str = "Client-side close frame status set to '1000'") -> Any:
        return self.service.on_disconnect(self.connection.disconnect(status_code, reason))


def open_parameters(conversation_id: str = "00000000-0000-0000-0000-000000000000",
                    participant_id: str = "00000000-0000-0000-0000-000000000000") -> dict[str, Any]:
    return {
        "organizationId": ORG_ID,
        "conversationId": conversation_id,
        "participant": {"id": participant_id, "ani": "", "aniName": "", "dnis": ""},
        "media": [
            {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
            {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
            {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000},
        ],
        "language": None,
        "customConfig": {},
    }


@pytest.fixture
def client(service: AudioHookService) -> Client:
    return Client(service)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "audiohook")
    os.environ.setdefault("POWERTOOLS_DEV", "false")


def _plain(value: Any) -> Any:
    """cfn-lint's decoder returns str/dict/list subclasses; turn them into plain ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    """template.yaml as plain dicts (the deploy tests)."""
    from cfnlint.decode import decode

    decoded, matches = decode(str(REPO / "template.yaml"))
    assert not matches, [str(m) for m in matches]
    return _plain(decoded)
