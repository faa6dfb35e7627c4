"""Fault injection on real boto3 clients (moto never fails on its own).

Kinesis PutRecords faults go through botocore's event hooks:

- ``before-parameter-build`` drops the entries a scenario fails, so moto never stores them;
- ``after-call`` splices per-entry error results back in at their original indices,
  exactly as Kinesis reports a partially failed batch;
- ``before-call`` short-circuits a whole call with a crafted error response (botocore then
  raises the modelled ``ClientError``) or raises a connection error.

``fail_calls`` does the last for any operation (e.g. GoneException on PostToConnection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Faults:
    """Scripted failures on a real client; call numbers start at 1."""

    entry_errors: Callable[[int, int, bytes], str | None] = lambda call, index, data: None
    call_error: Callable[[int], tuple[str, int] | None] = lambda call: None
    connection_error_calls: set[int] = field(default_factory=set)
    truncate_results_calls: set[int] = field(default_factory=set)
    calls: int = 0
    sent: list[list[bytes]] = field(default_factory=list)
    _dropped: dict[int, str] = field(default_factory=dict)

    def install(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.kinesis.PutRecords", self._before_build)
        client.meta.events.register("before-call.kinesis.PutRecords", self._before_call)
        client.meta.events.register("after-call.kinesis.PutRecords", self._after_call)

    def _before_build(self, params: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        records = params["Records"]
        self.sent.append([record["Data"] for record in records])
        self._dropped = {}
        if self.call_error(self.calls) or self.calls in self.connection_error_calls:
            return
        for index, record in enumerate(records):
            code = self.entry_errors(self.calls, index, record["Data"])
            if code:
                self._dropped[index] = code
        if len(self._dropped) < len(records):  # Kinesis refuses an empty Records list
            params["Records"] = [record for index, record in enumerate(records) if index not in self._dropped]

    def _before_call(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if self.calls in self.connection_error_calls:
            raise EndpointConnectionError(endpoint_url="https://kinesis.us-east-1.amazonaws.com/")
        failure = self.call_error(self.calls)
        if failure is None:
            if self._dropped and len(self._dropped) == len(self.sent[-1]):
                # Every entry fails: answer without reaching moto, so nothing is stored.
                ok = AWSResponse("https://kinesis.us-east-1.amazonaws.com/", 200, {}, None)
                return ok, {
                    "FailedRecordCount": 0,
                    "Records": [],
                    "ResponseMetadata": {"HTTPStatusCode": 200},
                }
            return None
        code, status = failure
        parsed = {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return AWSResponse("https://kinesis.us-east-1.amazonaws.com/", status, {}, None), parsed

    def _after_call(self, parsed: dict[str, Any], **_: Any) -> None:
        if "Error" in parsed:
            return
        if self.calls in self.truncate_results_calls:
            parsed["Records"] = parsed["Records"][:-1]
            return
        stored = iter(parsed["Records"])
        total = len(parsed["Records"]) + len(self._dropped)
        parsed["Records"] = [
            {"ErrorCode": self._dropped[index], "ErrorMessage": f"injected {self._dropped[index]}"}
            if index in self._dropped
            else next(stored)
            for index in range(total)
        ]
        parsed["FailedRecordCount"] = len(self._dropped)


def fail_calls(client: Any, operation: str, code: str, status: int, calls: int | None = None) -> list[int]:
    """Make the first ``calls`` (None: every) calls of ``operation`` fail with ``code``.

    ``operation`` is botocore's event suffix, e.g. ``"apigatewaymanagementapi.PostToConnection"``.
    Returns a list that counts the calls made.
    """
    made: list[int] = []

    def short_circuit(**_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        made.append(1)
        if calls is not None and len(made) > calls:
            return None
        parsed = {"Error": {"Code": code, "Message": f"injected {code}"}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return AWSResponse("https://injected.invalid/", status, {}, None), parsed

    client.meta.events.register(f"before-call.{operation}", short_circuit)
    return made


def function_timeouts() -> dict[str, int]:
    """Each Lambda function's Timeout (s), as template.yaml sets it."""
    from cfnlint.decode import decode

    from conftest import REPO

    template, matches = decode(str(REPO / "template.yaml"))
    assert not matches
    default = template["Globals"]["Function"]["Timeout"]
    return {name: int(resource["Properties"].get("Timeout", default))
            for name, resource in template["Resources"].items() if resource["Type"] == "AWS::Serverless::Function"}
