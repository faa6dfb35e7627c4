"""API key -> client secret map, kept in Secrets Manager as one JSON object.

``{"<api key>": "<base64 client secret>", ...}``; an empty secret allows unsigned
upgrades for that key. Fetched with powertools parameters, cached for ``max_age`` seconds
so a warm Lambda does not call Secrets Manager on every ``$connect``.
"""

from __future__ import annotations

from typing import Mapping


class KeyMapError(ValueError):
    pass


def parse_key_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(secret, str) for key, secret in value.items()
    ):
        raise KeyMapError('the API key secret must be a JSON object {"<api key>": "<base64 client secret>"}')
    return dict(value)


def fetch_client_secrets(secret_name: str, max_age_s: int) -> Mapping[str, str]:
    from aws_lambda_powertools.utilities import parameters

    return parse_key_map(parameters.get_secret(secret_name, transform="json", max_age=max_age_s))
