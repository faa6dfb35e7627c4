"""Rules of the signed AudioHook upgrade request (PROTOCOL.md section 1)."""

from __future__ import annotations

import json
from base64 import b64decode
from typing import Any

import http_sf
import pytest
from http_sf.types import ParamsType

from audiohook.auth import (
    BAD_SIGNATURE_REASON,
    AuthResult,
    MessageSignature,
    SignatureProblem,
    build_signature_base,
    compute_signature,
    sign_upgrade,
    verify_message_signature,
    verify_upgrade,
)
from conftest import FIXTURES

VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text())["valid"]
AUDIOHOOK_VECTOR = VECTORS[0]

API_KEY = AUDIOHOOK_VECTOR["api_key"]
SECRET = AUDIOHOOK_VECTOR["client_secret_base64"]
OTHER_API_KEY = "another-configured-api-key"
OTHER_SECRET = "c29tZSBvdGhlciBjbGllbnQgc2VjcmV0IGJ5dGVz"
UNSIGNED_API_KEY = "key-allowed-without-signature"
CLIENT_SECRETS = {API_KEY: SECRET, OTHER_API_KEY: OTHER_SECRET, UNSIGNED_API_KEY: ""}

REQUEST_TARGET = "/prod"
NOW = 1_700_000_000.25
CREATED = 1_700_000_000
NONCE = "bm9uY2UtZm9yLXRlc3RzLTAx"
UNSIGNED_HEADERS = {
    name: value for name, value in AUDIOHOOK_VECTOR["headers"].items() if not name.startswith("signature")
}


def signed(headers: dict[str, str] = UNSIGNED_HEADERS, **sign_args: Any) -> dict[str, str]:
    args: dict[str, Any] = {
        "request_target": REQUEST_TARGET,
        "api_key": API_KEY,
        "client_secret_b64": SECRET,
        "now": NOW,
        "nonce": NONCE,
        **sign_args,
    }
    signature_headers = sign_upgrade(headers, **args)
    return {**headers, **{name.lower(): value for name, value in signature_headers.items()}}


def signed_with_params(components: tuple[str, ...], params: ParamsType) -> dict[str, str]:
    """A correctly signed request with any components and parameters, to test the policy alone."""
    key = b64decode(SECRET)
    items: list[http_sf.ItemType] = [(component, {}) for component in components]
    serialized = http_sf.ser({"sig1": (items, params)})
    base = build_signature_base(components, serialized[len("sig1=") :], UNSIGNED_HEADERS, REQUEST_TARGET)
    assert isinstance(base, str)
    signature = http_sf.ser({"sig1": (compute_signature(base, key), {})})
    return {**UNSIGNED_HEADERS, "signature-input": serialized, "signature": signature}


def verify(
    headers: dict[str, str], now: float = NOW, request_target: str = REQUEST_TARGET, **kwargs: Any
) -> AuthResult:
    return verify_upgrade(headers, request_target, CLIENT_SECRETS, now, **kwargs)


ALL_SIX = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
GOOD_PARAMS: ParamsType = {
    "keyid": API_KEY,
    "nonce": NONCE,
    "alg": "hmac-sha256",
    "created": CREATED,
    "expires": CREATED + 10,
}


# Test vectors


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["name"] for vector in VECTORS])
def test_every_vector_verifies_with_the_generic_signature_check(vector: dict[str, Any]) -> None:
    result = verify_message_signature(
        vector["headers"], vector["request_target"], vector["client_secret_base64"]
    )

    assert isinstance(result, MessageSignature), result
    assert result.keyid == vector["api_key"]


def test_rfc_vector_fails_the_generic_check_with_another_secret() -> None:
    vector = VECTORS[1]

    result = verify_message_signature(vector["headers"], None, SECRET)

    assert result == SignatureProblem(BAD_SIGNATURE_REASON)


def test_audiohook_vector_passes_the_upgrade_policy_at_its_clock() -> None:
    vector = AUDIOHOOK_VECTOR

    result = verify_upgrade(vector["headers"], vector["request_target"], {API_KEY: SECRET}, vector["now"])

    assert result.ok, result.reason
    assert result.reason == "signature verified"
    assert result.api_key == API_KEY
    assert result.organization_id == "d7934305-0972-4844-938e-9060eef73d05"
    assert result.session_id == "30b0e395-84d3-4570-ac13-9a62d8f514c0"
    assert result.nonce == "VGhpc0lzQVVuaXF1ZU5vbmNl"
    # created + max age (10) + skew (5): earlier than the far-future expires of the vector.
    assert result.nonce_expires_at == 1641013215


def test_signing_the_vector_inputs_reproduces_the_vector_headers() -> None:
    vector = AUDIOHOOK_VECTOR
    created, expires = 1641013200, 3282026430

    headers = sign_upgrade(
        UNSIGNED_HEADERS,
        vector["request_target"],
        API_KEY,
        SECRET,
        now=created + 0.9,
        nonce="VGhpc0lzQVVuaXF1ZU5vbmNl",
        lifetime_s=expires - created,
    )

    assert headers == {
        "Signature-Input": vector["headers"]["signature-input"],
        "Signature": vector["headers"]["signature"],
    }


# Round trip and header names


def test_signed_request_round_trips_through_verification() -> None:
    result = verify(signed())

    assert result.ok, result.reason
    assert result.nonce == NONCE
    assert result.nonce_expires_at == CREATED + 10 + 5


def test_header_names_are_matched_in_any_case() -> None:
    shouted = {name.upper(): value for name, value in signed().items()}
    titled = {name.title(): value for name, value in signed().items()}

    assert verify(shouted).ok
    assert verify(titled).ok


def test_authority_is_the_host_header_in_lower_case() -> None:
    headers = signed()
    headers["host"] = headers["host"].upper()

    assert verify(headers).ok


def test_nonce_is_remembered_until_the_earlier_of_expiry_and_age_limit() -> None:
    result = verify(signed(lifetime_s=3))

    assert result.nonce_expires_at == CREATED + 3 + 5


# Tampering


@pytest.mark.parametrize(
    "header", ["host", "audiohook-organization-id", "audiohook-session-id", "audiohook-correlation-id"]
)
def test_changing_a_covered_header_breaks_the_signature(header: str) -> None:
    headers = signed()
    headers[header] = headers[header].replace("e", "f").replace("0", "1")

    result = verify(headers)

    assert not result.ok
    assert result.reason == BAD_SIGNATURE_REASON


def test_changing_the_request_target_breaks_the_signature() -> None:
    result = verify(signed(), request_target="/other-stage")

    assert result.reason == BAD_SIGNATURE_REASON


def test_changing_the_api_key_header_no_longer_matches_keyid() -> None:
    headers = signed()
    headers["x-api-key"] = OTHER_API_KEY

    result = verify(headers)

    assert not result.ok
    assert result.reason == "Signature-Input keyid does not match the X-API-KEY header"


def test_changing_the_signature_is_rejected() -> None:
    headers = signed()
    headers["signature"] = "sig1=:" + "A" * 43 + "=:"

    result = verify(headers)

    assert result.reason == BAD_SIGNATURE_REASON


def test_signature_made_with_another_keys_secret_is_rejected() -> None:
    result = verify(signed(client_secret_b64=OTHER_SECRET))

    assert result.reason == BAD_SIGNATURE_REASON


def test_unknown_api_key_gets_the_same_answer_as_a_bad_signature() -> None:
    unknown_key_headers = signed(
        {**UNSIGNED_HEADERS, "x-api-key": "never-configured"}, api_key="never-configured"
    )

    result = verify(unknown_key_headers)

    assert result == verify(signed(client_secret_b64=OTHER_SECRET))
    assert result.reason == BAD_SIGNATURE_REASON
    assert result.api_key is None


# Time


def test_expired_signature_is_rejected() -> None:
    result = verify(signed(lifetime_s=2), now=CREATED + 2 + 5 + 1)

    assert result.reason == f"signature expired at {CREATED + 2} (now {CREATED + 8})"


def test_signature_created_in_the_future_beyond_skew_is_rejected() -> None:
    result = verify(signed(), now=CREATED - 6)

    assert result.reason == (
        f"signature created at {CREATED} is in the future (now {CREATED - 6}, allowed clock skew 5 s)"
    )


def test_signature_created_in_the_future_within_skew_is_accepted() -> None:
    assert verify(signed(), now=CREATED - 5).ok


def test_signature_older_than_max_age_plus_skew_is_rejected() -> None:
    headers = signed(lifetime_s=None)

    assert verify(headers, now=CREATED + 15).ok
    result = verify(headers, now=CREATED + 16)

    assert result.reason == (
        f"signature created at {CREATED} is older than 10 s (now {CREATED + 16}, allowed clock skew 5 s)"
    )


# Signature-Input contents


def test_signature_input_must_cover_all_six_components() -> None:
    headers = signed_with_params(ALL_SIX[:-1], GOOD_PARAMS)

    result = verify(headers)

    assert result.reason == 'Signature-Input does not cover required components: "x-api-key"'


def test_algorithm_other_than_hmac_sha256_is_rejected() -> None:
    headers = signed_with_params(ALL_SIX, {**GOOD_PARAMS, "alg": "rsa-pss-sha512"})

    result = verify(headers)

    assert result.reason == "signature algorithm 'rsa-pss-sha512' is not supported (expected hmac-sha256)"


def test_algorithm_must_be_stated() -> None:
    params = {name: value for name, value in GOOD_PARAMS.items() if name != "alg"}

    result = verify(signed_with_params(ALL_SIX, params))

    assert result.reason == "Signature-Input has no alg parameter (expected hmac-sha256)"


def test_nonce_is_required() -> None:
    params = {name: value for name, value in GOOD_PARAMS.items() if name != "nonce"}

    result = verify(signed_with_params(ALL_SIX, params))

    assert result.reason == "Signature-Input has no nonce parameter"


def test_nonce_shorter_than_16_characters_is_rejected() -> None:
    result = verify(signed(nonce="fifteen-chars-x"))

    assert result.reason == "nonce is 15 characters long; at least 16 are required"


def test_created_is_required() -> None:
    params = {name: value for name, value in GOOD_PARAMS.items() if name != "created"}

    result = verify(signed_with_params(ALL_SIX, params))

    assert result.reason == "Signature-Input has no created parameter"


def test_keyid_is_required() -> None:
    params = {name: value for name, value in GOOD_PARAMS.items() if name != "keyid"}

    result = verify(signed_with_params(ALL_SIX, params))

    assert result.reason == "Signature-Input has no keyid parameter"


def test_created_must_be_an_integer() -> None:
    headers = signed()
    headers["signature-input"] = headers["signature-input"].replace(f"created={CREATED}", "created=?1")

    result = verify(headers)

    assert result.reason == "Signature-Input parameter created must be an integer"


def test_signature_input_without_signature_is_rejected() -> None:
    headers = signed()
    del headers["signature"]

    result = verify(headers)

    assert result.reason == "Signature-Input header present without Signature header"


def test_malformed_signature_input_is_rejected() -> None:
    headers = signed()
    headers["signature-input"] = 'sig1=("@request-target"'

    result = verify(headers)

    assert not result.ok
    assert result.reason.startswith("Signature-Input header is not a structured field dictionary: ")


def test_signature_label_must_match_between_the_two_headers() -> None:
    headers = signed()
    headers["signature"] = headers["signature"].replace("sig1=", "sig2=")

    result = verify(headers)

    assert result.reason == "Signature header has no member labelled 'sig1'"


# API keys and unsigned requests


def test_missing_api_key_is_rejected() -> None:
    headers = {name: value for name, value in signed().items() if name != "x-api-key"}

    result = verify(headers)

    assert result.reason == "missing X-API-KEY header"


@pytest.mark.parametrize("session_id", ["", '"' + "a" * 35, "30b0e395-84d3-4570-ac13-9a62d8f514c", "not a session"])
def test_a_session_id_header_that_is_not_a_uuid_is_refused_whatever_the_key(session_id: str) -> None:
    for headers in (signed(), {**UNSIGNED_HEADERS, "x-api-key": UNSIGNED_API_KEY}):
        result = verify({**headers, "audiohook-session-id": session_id})

        assert not result.ok
        assert result.reason == f"Audiohook-Session-Id header {session_id!r} is not a UUID"


def test_unsigned_request_is_accepted_for_a_key_with_empty_secret() -> None:
    result = verify({**UNSIGNED_HEADERS, "x-api-key": UNSIGNED_API_KEY})

    assert result.ok
    assert result.reason == "X-API-KEY is configured for unsigned requests"
    assert result.api_key == UNSIGNED_API_KEY
    assert result.organization_id == UNSIGNED_HEADERS["audiohook-organization-id"]
    assert result.nonce is None
    assert result.nonce_expires_at is None


def test_signature_is_ignored_for_a_key_with_empty_secret() -> None:
    headers = signed({**UNSIGNED_HEADERS, "x-api-key": UNSIGNED_API_KEY}, api_key=UNSIGNED_API_KEY)
    headers["signature"] = "sig1=:" + "A" * 43 + "=:"

    result = verify(headers)

    assert result.ok
    assert result.nonce is None


UNSIGNED_REJECTION = (
    "request is not signed (no Signature-Input and Signature headers) but this X-API-KEY requires a signature"
)


def test_unsigned_request_is_rejected_for_a_key_with_a_secret() -> None:
    result = verify(UNSIGNED_HEADERS)

    assert not result.ok
    assert result.reason == UNSIGNED_REJECTION
    assert result.session_id == UNSIGNED_HEADERS["audiohook-session-id"]


def test_unsigned_request_with_unknown_key_gets_the_same_answer() -> None:
    result = verify({**UNSIGNED_HEADERS, "x-api-key": "never-configured"})

    assert result.reason == UNSIGNED_REJECTION


def test_rejection_reasons_never_reveal_secrets_or_signatures() -> None:
    tampered = signed()
    tampered["audiohook-session-id"] = "00000000-0000-0000-0000-000000000000"
    reasons = [
        verify(tampered).reason,
        verify(signed(), now=CREATED + 100).reason,
        verify(signed(client_secret_b64=OTHER_SECRET)).reason,
    ]
    signature_value = signed()["signature"].split(":")[1]

    for reason in reasons:
        assert SECRET not in reason
        assert OTHER_SECRET not in reason
        assert signature_value not in reason


def test_signing_refuses_headers_whose_api_key_differs() -> None:
    with pytest.raises(ValueError, match="headers carry an X-API-KEY different from api_key"):
        signed(api_key=OTHER_API_KEY, client_secret_b64=OTHER_SECRET)
