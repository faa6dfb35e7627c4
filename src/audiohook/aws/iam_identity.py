"""Proving who calls with IAM alone: a signed STS ``GetCallerIdentity`` request.

The caller (the Control function) signs, with its own role credentials, an STS
``GetCallerIdentity`` request that it does not send. Two extra signed headers bind it to one
use: the relay task it is meant for (``audience``) and the SHA-256 of the control request it
accompanies. The receiver (a relay task's control listener) checks those headers and the
request's age, sends the request to STS itself, and accepts the caller when STS answers with an
allowed role. The signature cannot be altered without the caller's secret key, so STS's answer
is the caller's identity; no password is shared (the technique of Vault's AWS auth method and
the Kubernetes IAM authenticator). ``GetCallerIdentity`` needs no IAM permission on either side.

Hand-written on botocore's SigV4 signer (in the Lambda runtime): no library packages this
exchange for Python servers.
"""

from __future__ import annotations

import hashlib
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

AUDIENCE_HEADER = "x-audiohook-audience"
DIGEST_HEADER = "x-audiohook-payload-sha256"
ACTION_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
_STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"

Post = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


def sts_endpoint(region: str) -> str:
    return f"https://sts.{region}.amazonaws.com/"


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    """The signed, unsent STS request, as it travels with a control request (JSON-able)."""

    url: str
    headers: dict[str, str]
    body: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "headers": self.headers, "body": self.body}

    @classmethod
    def from_dict(cls, data: Any) -> SignedIdentity | None:
        if not isinstance(data, dict):
            return None
        url, headers, body = data.get("url"), data.get("headers"), data.get("body")
        if not (isinstance(url, str) and isinstance(body, str) and isinstance(headers, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            return None
        return cls(url, dict(headers), body)


def sign_identity(credentials: Any, region: str, audience: str, payload: bytes,
                  endpoint: str | None = None) -> SignedIdentity:
    """Sign (not send) ``GetCallerIdentity`` for ``audience`` and this exact ``payload``.

    ``credentials``: botocore credentials (``botocore.session.get_session().get_credentials()``).
    """
    url = endpoint or sts_endpoint(region)
    request = AWSRequest(method="POST", url=url, data=ACTION_BODY, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        AUDIENCE_HEADER: audience, DIGEST_HEADER: payload_digest(payload),
    })
    SigV4Auth(credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials")
              else credentials, "sts", region).add_auth(request)
    return SignedIdentity(url, {name: str(value) for name, value in request.headers.items()}, ACTION_BODY)


@dataclass(frozen=True, slots=True)
class IdentityVerdict:
    ok: bool
    reason: str
    arn: str | None = None  # the caller's ARN as STS reported it


def role_of(arn: str) -> str | None:
    """``arn:aws:sts::123:assumed-role/Name/session`` -> ``arn:aws:iam::123:role/Name``."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "sts" or not parts[5].startswith("assumed-role/"):
        return None
    name = parts[5].split("/")[1]
    return f"arn:{parts[1]}:iam::{parts[4]}:role/{name}"


def _same_role(role: str, allowed: str) -> bool:
    """Role ARNs may carry a path (``role/service-role/Name``); an assumed-role ARN does not."""
    head, _, rest = allowed.partition(":role/")
    return role == f"{head}:role/{rest.rsplit('/', 1)[-1]}"


def _post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the pinned STS URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def verify_identity(
    signed: SignedIdentity | None, *, audience: str, payload: bytes, allowed_roles: frozenset[str],
    endpoint: str, now: datetime, max_age_s: int = 60, post: Post = _post,
) -> IdentityVerdict:
    """Accept the caller only if STS confirms an allowed role for a request meant for us."""
    if signed is None:
        return IdentityVerdict(False, "no signed identity request")
    if signed.url != endpoint:
        return IdentityVerdict(False, f"the identity request goes to {signed.url}, not {endpoint}")
    if signed.body != ACTION_BODY:
        return IdentityVerdict(False, "the identity request is not GetCallerIdentity")
    headers = {name.lower(): value for name, value in signed.headers.items()}
    signed_headers = headers.get("authorization", "").partition("SignedHeaders=")[2].split(",")[0].split(";")
    for name, expected, what in ((AUDIENCE_HEADER, audience, "audience"),
                                 (DIGEST_HEADER, payload_digest(payload), "payload digest")):
        if name not in signed_headers:
            return IdentityVerdict(False, f"the {what} header is not signed")
        if headers.get(name) != expected:
            return IdentityVerdict(False, f"the signed {what} does not match this request")
    try:
        signed_at = datetime.strptime(headers.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return IdentityVerdict(False, "the identity request has no valid X-Amz-Date")
    age = (now - signed_at).total_seconds()
    if not -5 <= age <= max_age_s:
        return IdentityVerdict(False, f"the identity request was signed {age:.0f} s ago (at most {max_age_s} s)")
    status, answer = post(signed.url, signed.headers, signed.body.encode())
    if status != 200:
        return IdentityVerdict(False, f"STS refused the identity request (HTTP {status})")
    try:
        arn = ElementTree.fromstring(answer).findtext(f".//{_STS_NS}Arn")
    except ElementTree.ParseError:
        arn = None
    if not arn:
        return IdentityVerdict(False, "STS answered without an Arn")
    role = role_of(arn)
    # A role's sessions are accepted by the role's ARN; any other principal (the local stack's
    # IAM user) only by its exact ARN.
    if arn not in allowed_roles and (role is None or not any(_same_role(role, allowed) for allowed in allowed_roles)):
        return IdentityVerdict(False, f"{arn} is not an allowed control role", arn)
    return IdentityVerdict(True, "caller verified by STS", arn)
