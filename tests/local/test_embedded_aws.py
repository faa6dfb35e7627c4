"""The embedded AWS builds its resources from template.yaml itself, read back from moto."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audiohook.local.embedded_aws import (
    DEMO_API_KEY,
    DEMO_CLIENT_SECRET,
    EmbeddedAws,
    Template,
    TemplateError,
    stream_request,
    table_request,
)
from conftest import REPO

TEMPLATE = REPO / "template.yaml"


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws(TEMPLATE, stack_name=f"localaws-{uuid.uuid4().hex[:8]}") as embedded:
        yield embedded


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(TEMPLATE)


def only(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (resource,) = resources.values()
    return dict(resource["Properties"])


def test_table_matches_the_template(aws: EmbeddedAws, template: Template) -> None:
    declared = only(template.resources_of_type("AWS::DynamoDB::Table"))
    table = aws.client("dynamodb").describe_table(TableName=aws.resources.table_name)["Table"]
    assert table["KeySchema"] == declared["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == declared["AttributeDefinitions"]
    assert table["BillingModeSummary"]["BillingMode"] == declared["BillingMode"]
    ttl = aws.client("dynamodb").describe_time_to_live(TableName=aws.resources.table_name)
    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": declared["TimeToLiveSpecification"]["AttributeName"],
    }
    assert declared["TimeToLiveSpecification"]["AttributeName"] == "expiresAt"


def test_stream_matches_the_template_and_is_active(aws: EmbeddedAws, template: Template) -> None:
    declared = only(template.resources_of_type("AWS::Kinesis::Stream"))
    summary = aws.client("kinesis").describe_stream_summary(StreamName=aws.resources.stream_name)
    summary = summary["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["StreamModeDetails"] == declared["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert summary["RetentionPeriodHours"] == declared["RetentionPeriodHours"]


def test_secret_is_named_from_the_stack_and_holds_the_demo_key(aws: EmbeddedAws) -> None:
    assert aws.resources.secret_name == f"{aws.template.stack_name}/api-keys"  # !Sub "${AWS::StackName}/api-keys"
    value = aws.client("secretsmanager").get_secret_value(SecretId=aws.resources.secret_arn)["SecretString"]
    assert json.loads(value) == {DEMO_API_KEY: DEMO_CLIENT_SECRET}
    assert aws.demo.api_key == DEMO_API_KEY and aws.demo.client_secret == DEMO_CLIENT_SECRET
    assert len(base64.b64decode(DEMO_CLIENT_SECRET, validate=True)) == 32


def test_env_points_the_handlers_at_the_local_resources(aws: EmbeddedAws, template: Template) -> None:
    env = aws.env()
    assert env["SESSIONS_TABLE"] == aws.resources.table_name
    assert env["AUDIO_STREAM"] == aws.resources.stream_name
    assert env["API_KEYS_SECRET"] == aws.resources.secret_arn  # Ref of a secret is its ARN
    assert env["AWS_ENDPOINT_URL"] == aws.endpoint_url.rstrip("/")
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    # Plain values and parameter defaults come from the template as they are.
    assert env["MEDIA_PREFERENCE"] == template.parameter("MediaPreference")
    assert env["POWERTOOLS_SERVICE_NAME"] == "audiohook"
    # Only meaningful once deployed (names the API id): the gateway sets its own.
    assert "CONNECTIONS_ENDPOINT" not in env


def test_starting_again_reuses_the_resources(aws: EmbeddedAws) -> None:
    with EmbeddedAws(TEMPLATE, stack_name=aws.template.stack_name, endpoint_url=aws.endpoint_url) as again:
        assert again.resources == aws.resources


def test_intrinsics_used_for_names_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(
        """
Parameters:
  Suffix: {Type: String, Default: sessions}
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-${Suffix}"
      BillingMode: PROVISIONED
      ProvisionedThroughput: {ReadCapacityUnits: "2", WriteCapacityUnits: 3}
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}, {AttributeName: sk, AttributeType: N}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      SSESpecification: {SSEEnabled: !If [Never, true, false]}
  Stream:
    Type: AWS::Kinesis::Stream
    Properties:
      Name: !Join ["-", [!Ref "AWS::StackName", audio]]
      ShardCount: 2
  Secret:
    Type: AWS::SecretsManager::Secret
    Properties:
      Description: !Sub ["keys of ${Who}", {Who: !Ref "AWS::StackName"}]
"""
    )
    with EmbeddedAws(path, stack_name="intrinsics") as aws:
        assert aws.resources.table_name == "intrinsics-sessions"
        assert aws.resources.stream_name == "intrinsics-audio"
        assert aws.resources.secret_name == "intrinsics-Secret"  # no Name: a stable generated one
        table = aws.client("dynamodb").describe_table(TableName="intrinsics-sessions")["Table"]
        assert table["ProvisionedThroughput"]["ReadCapacityUnits"] == 2
        summary = aws.client("kinesis").describe_stream_summary(StreamName="intrinsics-audio")
        assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 2
        secret = aws.client("secretsmanager").describe_secret(SecretId=aws.resources.secret_arn)
        assert secret["Description"] == "keys of intrinsics"
        assert aws.env()["SESSIONS_TABLE"] == "intrinsics-sessions"  # not wired by the template: by type


def test_unsupported_intrinsics_are_reported(template: Template) -> None:
    with pytest.raises(TemplateError, match="Fn::If"):
        template.resolve({"Fn::If": ["Cond", "a", "b"]})
    with pytest.raises(TemplateError, match="Api"):
        template.resolve({"Fn::Sub": "https://${Api}.execute-api"})


def test_cloudformation_properties_translate_to_boto3_requests() -> None:
    request = table_request("t", {
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
        "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
    })
    assert request["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert stream_request("s", {"StreamModeDetails": {"StreamMode": "ON_DEMAND"}}) == {
        "StreamName": "s", "StreamModeDetails": {"StreamMode": "ON_DEMAND"},
    }
