"""API key -> client secret map, kept in Secrets Manager as one JSON object.

``{"<api key>": "<base64 client secret>", ...}``; an empty secret allows unsigned
upgrades for that key. Fetched with a powertools SecretsProvider, cached for ``max_age``
seconds so a warm Lambda does not call Secrets Manager on every ``$connect``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


class KeyMapError(ValueError):
    pass


def parse_key_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(secret, str) for key, secret in value.items()
    ):
        raise KeyMapError('the API key secret must be a JSON object {"<api key>": "<base64 client secret>"}')
    return dict(value)


class ClientSecrets:
    """Callable returning the key map. One provider per service, not powertools' process-wide
    default: that one keeps the first client it made, whatever endpoint the process uses later."""

    def __init__(self, make_client: Callable[[], Any], secret_name: str, max_age_s: int):
        self._make_client = make_client
        self._secret_name = secret_name
        self._max_age_s = max_age_s
        self._provider: Any = None

    def __call__(self) -> Mapping[str, str]:
        if self._provider is None:
            # Imported here: only $connect needs it, and it pulls in boto3.
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            self._provider = SecretsProvider(boto3_client=self._make_client())
        return parse_key_map(self._provider.get(self._secret_name, transform="json", max_age=self._max_age_s))
