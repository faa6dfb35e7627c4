"""The Lambda layer holds what the three functions import and nothing else.

The layer is built as SAM builds it (template.yaml: BuildMethod makefile): a copy of src/, then
layers/audiohook/Makefile's code step into ARTIFACTS_DIR. The dependency step is pip's; the
layer's third-party imports are checked against requirements.txt instead of installed here.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

from conftest import REPO

LAYER_DIR = REPO / "layers" / "audiohook"
# What the Lambda runtime itself provides besides the standard library.
LAMBDA_RUNTIME = {"boto3", "botocore"}
# Import names of the layer's requirements (distribution name -> module name where they differ).
IMPORT_NAMES = {"aws-lambda-powertools": "aws_lambda_powertools", "http-sf": "http_sf"}


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    resources = decode(str(REPO / "template.yaml"))[0]["Resources"]
    (name,) = [n for n, r in resources.items() if r["Type"] == "AWS::Serverless::LayerVersion"]
    scratch = tmp_path_factory.mktemp("scratch")
    artifacts = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(REPO / str(resources[name]["Properties"]["ContentUri"]), scratch, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(["make", "-f", str(LAYER_DIR / "Makefile"), "layer-code", f"ARTIFACTS_DIR={artifacts}"],
                   cwd=scratch, check=True, capture_output=True)
    return artifacts / "python"


def layer_modules(layer: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(layer).with_suffix("").parts): p for p in layer.rglob("*.py")}


def imported_top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def requirement_import_names() -> set[str]:
    lines = (LAYER_DIR / "requirements.txt").read_text().splitlines()
    dists = {re.split(r"[<>=!~ \[]", line.strip())[0] for line in lines if line.strip() and not line.startswith("#")}
    return {IMPORT_NAMES.get(d, d.replace("-", "_")) for d in dists}


def test_the_layer_holds_the_core_and_the_aws_package_only(layer: Path):
    packages = {name.rsplit(".", 1)[0] for name in layer_modules(layer) if "." in name}
    assert packages == {"audiohook", "audiohook.aws"}
    assert {"audiohook.protocol", "audiohook.session", "audiohook.aws.service", "audiohook.aws.wiring"} <= set(
        layer_modules(layer))


def test_every_module_the_handlers_import_is_in_the_layer(layer: Path):
    for handler in (REPO / "handlers").glob("on_*.py"):
        for node in ast.walk(ast.parse(handler.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audiohook"):
                assert node.module in layer_modules(layer), (handler.name, node.module)


def test_no_layer_module_imports_a_package_the_layer_does_not_have(layer: Path):
    available = set(sys.stdlib_module_names) | LAMBDA_RUNTIME | requirement_import_names() | {"audiohook"}
    for name, path in layer_modules(layer).items():
        missing = imported_top_level_names(path) - available
        assert not missing, (name, missing)
    for name, path in layer_modules(layer).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audiohook."):
                assert node.module in layer_modules(layer), (name, node.module)


def test_the_layer_imports_with_websockets_and_moto_unavailable(layer: Path):
    probe = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'websockets', 'moto', 'picows', 'uvloop', 'pybase64'}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.path.insert(0, {str(layer)!r})\n"
        "import importlib\n"
        f"for name in {sorted(layer_modules(layer))!r}: importlib.import_module(name)\n"
        "print(sys.modules['audiohook'].__file__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().startswith(str(layer))
