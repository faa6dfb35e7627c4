"""The Lambda layer's requirements repeat pyproject's runtime ranges; they must not drift."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_layer_requirements_match_the_runtime_dependencies():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    layer = [line.strip() for line in (REPO / "layers/audiohook/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    # boto3 ships with the Lambda runtime; everything else must be in the layer, same range.
    assert sorted(layer) == sorted(d for d in declared if not d.startswith("boto3"))


def test_each_handler_is_one_route_of_the_shared_library():
    for route in ("connect", "message", "disconnect"):
        source = (REPO / "handlers" / f"on_{route}.py").read_text()
        assert f'handler = lambda_handler("{route}")' in source
