"""Connection poster: sends server messages to one connection through @connections.

Messages are posted one by one in the order given (the caller hands them over in
``seq`` order); a gone connection (410) ends the session quietly instead of failing the
invocation; throttling is retried with backoff.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Iterable

_RETRYABLE = ("LimitExceededException", "TooManyRequestsException", "ThrottlingException", "InternalServerError")


class ConnectionPoster:
    def __init__(self, client: Any, *, max_attempts: int = 5, base_delay_s: float = 0.05,
                 sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._sleep = sleep
        self.calls = 0

    def post_all(self, connection_id: str, texts: Iterable[str]) -> bool:
        """Post each text as one text frame, in order. False: the connection is gone."""
        return all(self._post(connection_id, text) for text in texts)

    def _post(self, connection_id: str, text: str) -> bool:
        for attempt in range(1, self._max_attempts + 1):
            self.calls += 1
            try:
                self.client.post_to_connection(ConnectionId=connection_id, Data=text.encode("utf-8"))
                return True
            except self.client.exceptions.GoneException:
                return False
            except Exception as error:  # botocore ClientError: retry only throttling and 5xx
                code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
                if code not in _RETRYABLE or attempt == self._max_attempts:
                    raise
                self._sleep(random.uniform(0, self._base_delay_s * 2 ** attempt))
        return False  # pragma: no cover - the loop always returns or raises
