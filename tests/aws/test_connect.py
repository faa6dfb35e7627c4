"""$connect: the signed request target with a query string, and session ids unique while live."""

from __future__ import annotations

from dataclasses import replace

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from audiohook.aws import service as service_module
from audiohook.aws.service import request_target
from conftest import STAGE, Client


def items(aws, prefix: str) -> list[dict]:
    return [item for item in aws.dynamodb.scan(TableName=aws.settings.sessions_table)["Items"]
            if item["pk"]["S"].startswith(prefix)]


# --- @request-target with a query string -------------------------------------------------

def test_signed_upgrade_to_a_url_with_a_query_is_accepted(aws, service):
    client = Client(service)
    assert client.connect(query="tenant=acme&route=a&route=b&note=hello%20world&empty=") == {"statusCode": 200}


def test_request_target_is_the_stage_plus_the_query_rebuilt_from_the_event():
    # The shape API Gateway gives $connect: the query decoded, every value of a repeated name.
    event = APIGatewayWebSocketEvent({
        "queryStringParameters": {"tenant": "acme", "route": "b", "note": "hello world"},
        "multiValueQueryStringParameters": {"tenant": ["acme"], "route": ["a", "b"], "note": ["hello world"]},
        "requestContext": {"stage": STAGE, "connectionId": "c"},
    })
    assert request_target(event) == f"/{STAGE}?tenant=acme&route=a&route=b&note=hello%20world"


def test_request_target_without_a_query_is_the_stage():
    event = APIGatewayWebSocketEvent({"requestContext": {"stage": STAGE, "connectionId": "c"}})
    assert request_target(event) == f"/{STAGE}"


def test_query_percent_encoded_where_it_need_not_be_cannot_be_rebuilt(aws, service):
    """API Gateway decodes the query: an encoding other than the canonical one is lost."""
    client = Client(service)
    assert client.connect(query="route=a%2Fb") == {"statusCode": 401}


def test_request_target_setting_overrides_the_event(aws, service):
    service.settings = replace(aws.settings, request_target="/audiohook?route=a%2Fb")
    client = Client(service)
    assert client.connect(query="route=a%2Fb", signed_target="/audiohook?route=a%2Fb") == {"statusCode": 200}


# --- session ids are unique while live -------------------------------------------------------

def test_second_upgrade_for_a_live_session_id_is_refused_with_409(aws, service, monkeypatch):
    warnings: list[tuple[str, dict]] = []
    monkeypatch.setattr(service_module.logger, "warning", lambda message, extra: warnings.append((message, extra)))
    first = Client(service)
    assert first.connect() == {"statusCode": 200}
    second = Client(service, session_id=first.session_id)
    assert second.connect() == {"statusCode": 409}
    assert [item["pk"]["S"] for item in items(aws, "conn#")] == [f"conn#{first.connection.connection_id}"]
    assert service.metrics.counts["SessionIdConflicts"] == 1
    assert warnings == [("upgrade refused: the session id is live on another connection", {
        "connection_id": second.connection.connection_id, "session_id": first.session_id,
        "holder_connection_id": first.connection.connection_id})]


def test_session_id_is_free_again_once_its_connection_is_gone(aws, service):
    first = Client(service)
    first.connect()
    first.disconnect()
    assert items(aws, "session#") == []
    again = Client(service, session_id=first.session_id.upper())  # compared case-insensitively
    assert again.connect() == {"statusCode": 200}
    assert Client(service, session_id=first.session_id).connect() == {"statusCode": 409}


def test_only_the_holder_releases_the_session_id(aws, service):
    first = Client(service)
    first.connect()
    assert not service.store.release_session_id(first.session_id, "some-other-connection")
    assert Client(service, session_id=first.session_id).connect() == {"statusCode": 409}


def test_refused_upgrade_keeps_no_session_id(aws, service):
    client = Client(service)
    assert client.connect(secret="c29tZSBvdGhlciBzZWNyZXQ=") == {"statusCode": 401}
    assert items(aws, "session#") == []


@pytest.mark.parametrize("fail", ["create"])
def test_session_id_is_released_when_the_session_item_cannot_be_written(aws, service, fail):
    def broken(*args, **kwargs):
        raise RuntimeError("DynamoDB unavailable")

    service.store.create = broken
    client = Client(service)
    with pytest.raises(RuntimeError):
        client.connect()
    assert items(aws, "session#") == []
