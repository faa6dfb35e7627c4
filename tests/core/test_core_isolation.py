"""The sans-I/O core imports nothing of AWS, sockets or the other subpackages."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import audiohook

FORBIDDEN = ("boto3", "botocore", "websockets", "moto", "picows", "uvloop",
             "audiohook.aws", "audiohook.relay", "audiohook.local", "audiohook.tools")


def core_modules() -> list[str]:
    """Every module at the top of the package (subpackages are the adapters, fronts and tools)."""
    return sorted(f"audiohook.{m.name}" for m in pkgutil.iter_modules(audiohook.__path__) if not m.ispkg)


def test_the_core_is_the_top_level_modules():
    assert {"audiohook.protocol", "audiohook.session", "audiohook.sequencing", "audiohook.auth",
            "audiohook.records", "audiohook.media"} <= set(core_modules())


def test_importing_the_core_loads_no_aws_socket_or_subpackage_module():
    # A fresh interpreter: what the core pulls in, not what this test process already has.
    probe = (
        "import importlib, sys\n"
        f"for name in {core_modules()!r}: importlib.import_module(name)\n"
        f"print('\\n'.join(m for m in sys.modules if m.startswith({FORBIDDEN!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": audiohook.__path__[0].rsplit("/", 1)[0]})
    assert result.stdout.split() == []
