"""HTTP message signature (hmac-sha256) of the AudioHook upgrade request, sans-I/O.

Two layers:

* a generic part that any HMAC-signed request can use: parse ``Signature-Input`` and
  ``Signature``, build the signature base, sign and verify;
* the AudioHook policy on top: ``verify_upgrade`` (which key, which components, how fresh,
  which nonce) and ``sign_upgrade`` for our Genesys-like client.

Time is passed in (``now``, float epoch seconds); nothing here reads a clock or talks to AWS.
The nonce replay guard lives in the store: ``verify_upgrade`` only says which nonce to
remember and until when.

Structured fields are parsed and serialised with ``http_sf`` (the maintained successor of
``http_sfv``, which is marked deprecated). The signature base is built here rather than with
``http_message_signatures``: that library derives ``@request-target`` and ``@authority`` from
a request object's URL, reads the wall clock itself, cannot mimic an unknown key, and pulls
``cryptography`` into the Lambda layer. Behind API Gateway the request target Genesys signed
is not visible in the event and must come from configuration, and the base for an
HMAC-only, six-component signature is a dozen lines.

Example::

    result = verify_upgrade(event_headers, "/prod", {"my-api-key": "c2VjcmV0"}, now=time.time())
    if not result.ok:
        logger.warning("upgrade rejected", extra={"reason": result.reason})
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import http_sf
from http_sf.types import ParamsType

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

SIGNATURE_ALGORITHM = "hmac-sha256"
AUDIOHOOK_COVERED_COMPONENTS = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
MIN_NONCE_LENGTH = 16
DEFAULT_LABEL = "sig1"

# One answer for "unknown key" and "wrong secret", so a caller cannot probe for valid keys.
BAD_SIGNATURE_REASON = (
    "signature does not verify: check the X-API-KEY and the client secret configured for it"
)

# HMAC key for requests naming an unknown API key: the signature is still computed and
# compared so that an unknown key costs the same time as a wrong secret; the request is
# rejected whatever the comparison says.
_UNKNOWN_KEY_SECRET = secrets.token_bytes(32)

_DERIVED_COMPONENTS = ("@request-target", "@authority")


class SigningError(ValueError):
    """A request that cannot be signed: on the client side that is a programming error."""


@dataclass(frozen=True)
class SignatureProblem:
    """Why a signature could not be parsed, built or verified."""

    reason: str


@dataclass(frozen=True)
class MessageSignature:
    """One signature of a request: its ``Signature-Input`` member and ``Signature`` bytes."""

    label: str
    covered_components: tuple[str, ...]
    keyid: str | None
    alg: str | None
    created: int | None
    expires: int | None
    nonce: str | None
    # The ``@signature-params`` value: the member serialised again from its parsed form, as
    # RFC 9421 section 2.3 asks (and the AudioHook reference does), not the raw header text.
    signature_params: str
    signature: bytes


@dataclass(frozen=True)
class AuthResult:
    """Outcome of ``verify_upgrade``.

    ``reason`` is for logs and operators; answer the client with a bare 401.
    ``api_key`` and ``nonce`` are only set when ``ok``; the AudioHook ids are set whenever
    the headers carry them so that rejections can be logged with them.
    """

    ok: bool
    reason: str
    api_key: str | None = None
    organization_id: str | None = None
    session_id: str | None = None
    nonce: str | None = None
    # Epoch second after which the signature can no longer be accepted, so the nonce
    # no longer needs remembering.
    nonce_expires_at: int | None = None


def lowercase_header_names(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def parse_message_signature(
    headers: Mapping[str, str], label: str | None = None
) -> MessageSignature | SignatureProblem | None:
    """The signature with ``label`` (default: the first ``Signature-Input`` member).

    ``None`` when the request carries neither ``Signature-Input`` nor ``Signature``.
    """
    fields = lowercase_header_names(headers)
    raw_input, raw_signature = fields.get("signature-input"), fields.get("signature")
    if raw_input is None and raw_signature is None:
        return None
    if raw_input is None:
        return SignatureProblem("Signature header present without Signature-Input header")
    if raw_signature is None:
        return SignatureProblem("Signature-Input header present without Signature header")

    inputs = _parse_dictionary("Signature-Input", raw_input)
    if isinstance(inputs, SignatureProblem):
        return inputs
    signatures = _parse_dictionary("Signature", raw_signature)
    if isinstance(signatures, SignatureProblem):
        return signatures
    if not inputs:
        return SignatureProblem("Signature-Input header has no members")

    chosen = label if label is not None else next(iter(inputs))
    if chosen not in inputs:
        return SignatureProblem(f"Signature-Input header has no member labelled {chosen!r}")
    if chosen not in signatures:
        return SignatureProblem(f"Signature header has no member labelled {chosen!r}")

    member = inputs[chosen]
    if not (isinstance(member, tuple) and isinstance(member[0], list)):
        return SignatureProblem(f"Signature-Input member {chosen!r} is not an inner list of components")
    items, params = member
    components: list[str] = []
    for item in items:
        name, component_params = item if isinstance(item, tuple) else (item, {})
        if not isinstance(name, str):
            return SignatureProblem(
                f"Signature-Input member {chosen!r} lists a component that is not a string"
            )
        if component_params:
            return SignatureProblem(f"component {http_sf.ser(name)} has parameters, which are not supported")
        if name in components:
            return SignatureProblem(f"component {http_sf.ser(name)} is covered twice")
        components.append(name)

    signature_value = signatures[chosen]
    if not (isinstance(signature_value, tuple) and isinstance(signature_value[0], bytes)):
        return SignatureProblem(f"Signature member {chosen!r} is not a byte sequence")

    string_params: dict[str, str | None] = {}
    for param in ("keyid", "alg", "nonce"):
        text = params.get(param)
        if text is not None and not isinstance(text, str):
            return SignatureProblem(f"Signature-Input parameter {param} must be a quoted string")
        string_params[param] = text
    integer_params: dict[str, int | None] = {}
    for param in ("created", "expires"):
        number = params.get(param)
        # bool is an int subclass in Python; the structured field "?1" must not pass as 1.
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            return SignatureProblem(f"Signature-Input parameter {param} must be an integer")
        integer_params[param] = number

    return MessageSignature(
        label=chosen,
        covered_components=tuple(components),
        keyid=string_params["keyid"],
        alg=string_params["alg"],
        created=integer_params["created"],
        expires=integer_params["expires"],
        nonce=string_params["nonce"],
        signature_params=_serialize_member(chosen, member),
        signature=signature_value[0],
    )


def build_signature_base(
    covered_components: tuple[str, ...],
    signature_params: str,
    headers: Mapping[str, str],
    request_target: str | None,
) -> str | SignatureProblem:
    """The signature base: one ``"<component>": <value>`` line per component, then the params.

    ``@request-target`` is the configured ``request_target`` (path and query Genesys
    connected to); ``@authority`` is the lower-cased Host header; any other component is the
    trimmed value of the header of that name.
    """
    fields = lowercase_header_names(headers)
    lines: list[str] = []
    for component in covered_components:
        value = _component_value(component, fields, request_target)
        if isinstance(value, SignatureProblem):
            return value
        lines.append(f"{http_sf.ser(component)}: {value}")
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines)


def compute_signature(signature_base: str, key: bytes) -> bytes:
    return hmac.new(key, signature_base.encode(), hashlib.sha256).digest()


def signature_matches(signature_base: str, key: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(compute_signature(signature_base, key), signature)


def decode_client_secret(client_secret_b64: str) -> bytes | SignatureProblem:
    try:
        return base64.b64decode(client_secret_b64, validate=True)
    except (binascii.Error, ValueError):
        return SignatureProblem("the client secret configured for this X-API-KEY is not valid base64")


def verify_message_signature(
    headers: Mapping[str, str],
    request_target: str | None,
    client_secret_b64: str,
    label: str | None = None,
) -> MessageSignature | SignatureProblem:
    """Check only that the signature matches the request; no policy on components or time."""
    key = decode_client_secret(client_secret_b64)
    if isinstance(key, SignatureProblem):
        return key
    signature = parse_message_signature(headers, label)
    if signature is None:
        return SignatureProblem("request is not signed (no Signature-Input and Signature headers)")
    if isinstance(signature, SignatureProblem):
        return signature
    base = build_signature_base(
        signature.covered_components, signature.signature_params, headers, request_target
    )
    if isinstance(base, SignatureProblem):
        return base
    if not signature_matches(base, key, signature.signature):
        return SignatureProblem(BAD_SIGNATURE_REASON)
    return signature


def verify_upgrade(
    headers: Mapping[str, str],
    request_target: str,
    client_secrets: Mapping[str, str],
    now: float,
    max_age_s: int = 10,
    clock_skew_s: int = 5,
) -> AuthResult:
    """Apply AudioHook's rules to the WebSocket upgrade request.

    ``client_secrets`` maps each API key to its base64 client secret; an empty secret means
    the key may connect unsigned. For such a key any signature is ignored: there is no secret
    to check it against, and its nonce would be unauthenticated, so none is returned.
    An unknown key runs every check a known one does, HMAC included, and ends with the same
    reason as a wrong secret.
    """
    fields = lowercase_header_names(headers)
    organization_id = _trimmed(fields.get("audiohook-organization-id"))
    session_id = _trimmed(fields.get("audiohook-session-id"))

    def reject(reason: str) -> AuthResult:
        return AuthResult(ok=False, reason=reason, organization_id=organization_id, session_id=session_id)

    if session_id is not None and _UUID.fullmatch(session_id) is None:
        # Every reply names the session by this id, so it must be what open.id may be.
        return reject(f"Audiohook-Session-Id header {session_id[:64]!r} is not a UUID")
    api_key = _trimmed(fields.get("x-api-key"))
    if not api_key:
        return reject("missing X-API-KEY header")
    configured_secret = client_secrets.get(api_key)
    if configured_secret == "":
        return AuthResult(
            ok=True,
            reason="X-API-KEY is configured for unsigned requests",
            api_key=api_key,
            organization_id=organization_id,
            session_id=session_id,
        )

    signature = parse_message_signature(fields)
    if signature is None:
        return reject(
            "request is not signed (no Signature-Input and Signature headers) "
            "but this X-API-KEY requires a signature"
        )
    if isinstance(signature, SignatureProblem):
        return reject(signature.reason)
    policy_problem = _audiohook_policy_problem(signature, api_key, now, max_age_s, clock_skew_s)
    if policy_problem is not None:
        return reject(policy_problem)

    key = _UNKNOWN_KEY_SECRET if configured_secret is None else decode_client_secret(configured_secret)
    if isinstance(key, SignatureProblem):
        return reject(key.reason)
    base = build_signature_base(
        signature.covered_components, signature.signature_params, fields, request_target
    )
    if isinstance(base, SignatureProblem):
        return reject(base.reason)
    if not signature_matches(base, key, signature.signature) or configured_secret is None:
        return reject(BAD_SIGNATURE_REASON)

    assert signature.created is not None  # checked by the policy
    last_acceptable = signature.created + max_age_s
    if signature.expires is not None:
        last_acceptable = min(last_acceptable, signature.expires)
    return AuthResult(
        ok=True,
        reason="signature verified",
        api_key=api_key,
        organization_id=organization_id,
        session_id=session_id,
        nonce=signature.nonce,
        nonce_expires_at=last_acceptable + clock_skew_s,
    )


def sign_upgrade(
    headers: Mapping[str, str],
    request_target: str,
    api_key: str,
    client_secret_b64: str,
    now: float,
    nonce: str,
    lifetime_s: int | None = 10,
    label: str = DEFAULT_LABEL,
) -> dict[str, str]:
    """``Signature-Input`` and ``Signature`` headers for an upgrade request, as Genesys sends them.

    ``headers`` must hold Host and the three Audiohook-* headers (any case); X-API-KEY is
    taken from ``api_key`` when absent. ``created`` is ``now`` rounded down and ``expires`` is
    ``created + lifetime_s`` (omitted when ``lifetime_s`` is None). Raises SigningError (a
    ValueError) for inputs that cannot be signed.
    """
    fields = lowercase_header_names(headers)
    if fields.setdefault("x-api-key", api_key) != api_key:
        raise SigningError("headers carry an X-API-KEY different from api_key")
    key = decode_client_secret(client_secret_b64)
    if isinstance(key, SignatureProblem):
        raise SigningError(key.reason)

    created = int(now)
    params: ParamsType = {"keyid": api_key, "nonce": nonce, "alg": SIGNATURE_ALGORITHM, "created": created}
    if lifetime_s is not None:
        params["expires"] = created + lifetime_s
    components: list[http_sf.ItemType] = [(component, {}) for component in AUDIOHOOK_COVERED_COMPONENTS]
    member: http_sf.InnerListType = (components, params)
    base = build_signature_base(
        AUDIOHOOK_COVERED_COMPONENTS, _serialize_member(label, member), fields, request_target
    )
    if isinstance(base, SignatureProblem):
        raise SigningError(base.reason)
    return {
        "Signature-Input": http_sf.ser({label: member}),
        "Signature": http_sf.ser({label: (compute_signature(base, key), {})}),
    }


def _audiohook_policy_problem(
    signature: MessageSignature, api_key: str, now: float, max_age_s: int, clock_skew_s: int
) -> str | None:
    if signature.keyid is None:
        return "Signature-Input has no keyid parameter"
    if signature.keyid != api_key:
        return "Signature-Input keyid does not match the X-API-KEY header"
    if signature.alg is None:
        return f"Signature-Input has no alg parameter (expected {SIGNATURE_ALGORITHM})"
    if signature.alg != SIGNATURE_ALGORITHM:
        return f"signature algorithm {signature.alg!r} is not supported (expected {SIGNATURE_ALGORITHM})"
    missing = [c for c in AUDIOHOOK_COVERED_COMPONENTS if c not in signature.covered_components]
    if missing:
        listed = " ".join(http_sf.ser(c) for c in missing)
        return f"Signature-Input does not cover required components: {listed}"
    if signature.nonce is None:
        return "Signature-Input has no nonce parameter"
    if len(signature.nonce) < MIN_NONCE_LENGTH:
        return f"nonce is {len(signature.nonce)} characters long; at least {MIN_NONCE_LENGTH} are required"
    if signature.created is None:
        return "Signature-Input has no created parameter"
    shown_now = int(now)
    if signature.created > now + clock_skew_s:
        return (
            f"signature created at {signature.created} is in the future "
            f"(now {shown_now}, allowed clock skew {clock_skew_s} s)"
        )
    if now > signature.created + max_age_s + clock_skew_s:
        return (
            f"signature created at {signature.created} is older than {max_age_s} s "
            f"(now {shown_now}, allowed clock skew {clock_skew_s} s)"
        )
    if signature.expires is not None and now > signature.expires + clock_skew_s:
        return f"signature expired at {signature.expires} (now {shown_now})"
    return None


def _component_value(
    component: str, fields: Mapping[str, str], request_target: str | None
) -> str | SignatureProblem:
    if component == "@request-target":
        if request_target is None:
            return SignatureProblem("@request-target is covered but no request target is configured")
        return request_target
    if component == "@authority":
        host = _trimmed(fields.get("host"))
        if not host:
            return SignatureProblem("@authority is covered but the Host header is missing")
        return host.lower()
    if component.startswith("@"):
        supported = ", ".join(_DERIVED_COMPONENTS)
        return SignatureProblem(f"derived component {component} is not supported (only {supported})")
    value = fields.get(component)
    if value is None:
        return SignatureProblem(f"covered header {component} is missing from the request")
    return value.strip(" \t")


def _parse_dictionary(header_name: str, raw: str) -> http_sf.DictionaryType | SignatureProblem:
    try:
        parsed = http_sf.parse(raw.encode("ascii"), tltype="dictionary")
    except UnicodeEncodeError:
        return SignatureProblem(f"{header_name} header contains non-ASCII characters")
    except ValueError as error:
        return SignatureProblem(f"{header_name} header is not a structured field dictionary: {error}")
    assert isinstance(parsed, dict)
    return parsed


def _serialize_member(label: str, member: http_sf.InnerListType) -> str:
    # http_sf serialises whole fields; the member's own serialisation follows "<label>=".
    serialized = http_sf.ser({label: member})
    return serialized[len(label) + 1 :]


def _trimmed(value: str | None) -> str | None:
    return None if value is None else value.strip(" \t")
