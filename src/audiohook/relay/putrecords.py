"""PutRecords for the relay, without botocore's per-call and per-record machinery.

The relay sends a few PutRecords calls a second, each up to 5 MiB. Through a boto3 client,
every call resolves the endpoint from botocore's rule set, validates, base64-encodes and
JSON-serialises every record through the service model, emits a dozen events, prepares the
request, and parses every result through the model again: about 3 ms of CPU per call before
the first byte is hashed (measured here), more than the relay's own work on the audio.

:class:`PutRecordsClient` keeps from the boto3 client it wraps what matters (endpoint URL,
region, credentials as botocore refreshes them, its HTTP session with its pool, TLS, proxies
and timeouts) and the documented events others hook (``before-parameter-build``,
``before-call``, ``before-send``, ``after-call``: moto answers on ``before-send``, fault
injection uses the others), and does the rest itself: one body built by hand (base64 by
pybase64's SIMD encoder: the standard library's costs ~40x more per byte), one SigV4 signature
(botocore's ``SigV4Auth``), one ``json.loads`` of a 2xx answer. Error answers are parsed by
botocore and raised as the client's own modelled ``ClientError``, so :class:`KinesisWriter`'s
retries see exactly what a boto3 client raises.

Hand-written because botocore offers no pre-serialised request for JSON protocols.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import pybase64
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.endpoint import convert_to_response_dict
from botocore.parsers import create_parser

OPERATION = "PutRecords"
TARGET = "Kinesis_20131202.PutRecords"
CONTENT_TYPE = "application/x-amz-json-1.1"


class PutRecordsClient:
    """``put_records(StreamName=…, Records=[{"Data": bytes, "PartitionKey": str}, …])`` with
    the contract of a boto3 Kinesis client's (same answer, same exceptions), for the relay."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._meta = client.meta
        self._events = client.meta.events
        self._model = client.meta.service_model.operation_model(OPERATION)
        self._url = client.meta.endpoint_url.rstrip("/") + "/"
        # Not public API: the signer's credentials (refreshed by botocore) and the endpoint's
        # HTTP session are what every call of the wrapped client uses; a boto3 upgrade that
        # renames them fails the relay's tests, not silently.
        self._signer = client._request_signer
        self._http = client._endpoint.http_session
        self._error_parser = create_parser(client.meta.service_model.protocol)

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        params = {"StreamName": StreamName, "Records": Records}
        context: dict[str, Any] = {"client_region": self._meta.region_name, "client_config": self._meta.config}
        self._events.emit(f"before-parameter-build.kinesis.{OPERATION}", params=params, model=self._model,
                          context=context)
        _, answered = self._events.emit_until_response(
            f"before-call.kinesis.{OPERATION}", model=self._model, params=params, request_signer=self._signer,
            context=context)
        if answered is not None:
            http, parsed = answered
        else:
            http, parsed = self._send(_body(params))
        self._events.emit(f"after-call.kinesis.{OPERATION}", http_response=http, parsed=parsed, model=self._model,
                          context=context)
        if http.status_code >= 300:
            code = parsed.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(parsed, OPERATION)
        return parsed

    def _send(self, body: bytes) -> tuple[AWSResponse, dict[str, Any]]:
        request = AWSRequest("POST", self._url, data=body,
                             headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET})
        credentials = self._signer._credentials
        SigV4Auth(credentials.get_frozen_credentials() if credentials is not None else None,
                  self._signer.signing_name, self._signer.region_name).add_auth(request)
        prepared = request.prepare()
        _, http = self._events.emit_until_response(f"before-send.kinesis.{OPERATION}", request=prepared)
        if http is None:
            http = self._http.send(prepared)
        metadata = {"HTTPStatusCode": http.status_code, "HTTPHeaders": dict(http.headers),
                    "RequestId": http.headers.get("x-amzn-RequestId", "")}
        if 200 <= http.status_code < 300:
            parsed = json.loads(http.content)
            parsed["ResponseMetadata"] = metadata
            return http, parsed
        parsed = self._error_parser.parse(convert_to_response_dict(http, self._model), self._model.output_shape)
        parsed.setdefault("ResponseMetadata", metadata)
        return http, parsed


def _body(params: dict[str, Any]) -> bytes:
    """``{"StreamName":…,"Records":[{"Data":"<base64>","PartitionKey":…},…]}``, what the service
    model would produce; each record's bytes are copied once, by base64."""
    # quote() is what json.dumps does to a str, without its two Python-level calls per record.
    b64, quote = pybase64.b64encode, encode_basestring_ascii
    parts = [b'{"StreamName":', quote(params["StreamName"]).encode(), b',"Records":[']
    separator = b'{"Data":"'
    for record in params["Records"]:
        parts += (separator, b64(record["Data"]), b'","PartitionKey":', quote(record["PartitionKey"]).encode(), b"}")
        separator = b',{"Data":"'
    parts.append(b"]}")
    return b"".join(parts)
