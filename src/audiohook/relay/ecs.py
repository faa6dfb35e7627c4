"""What a relay task learns from ECS: its private address and whether it is being stopped.

ECS sets ``ECS_CONTAINER_METADATA_URI_V4`` in every container. ``GET ${uri}`` describes the
container (``Networks[].IPv4Addresses``: the task's private address in ``awsvpc`` mode, the
one the Control function reaches); ``GET ${uri}/task`` describes the task, whose
``DesiredStatus`` turns ``STOPPED`` as soon as ECS decided to stop it (scale-in, deploy,
StopTask), while its target is still draining from the load balancer and well before SIGTERM
(docs/operations.md). Plain HTTP on a link-local address, answered by the ECS agent.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

TIMEOUT_S = 2.0


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - the ECS agent's endpoint
        return json.loads(response.read())


def task_address(metadata_uri: str) -> str:
    """The container's private IPv4 address (``Networks[0].IPv4Addresses[0]``)."""
    container = _get(metadata_uri)
    for network in container.get("Networks") or ():
        for address in network.get("IPv4Addresses") or ():
            return str(address)
    raise ValueError(f"{metadata_uri} names no IPv4 address of the task (Networks[].IPv4Addresses)")


def desired_status(metadata_uri: str) -> str:
    """The task's ``DesiredStatus`` (``RUNNING``; ``STOPPED`` once ECS is stopping it)."""
    return str(_get(metadata_uri.rstrip("/") + "/task").get("DesiredStatus", ""))
