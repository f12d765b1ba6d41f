"""The package's shape: public names, light imports, one-way dependencies."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import rlm

SRC = Path(rlm.__file__).parent


def test_all_lists_every_public_name_sorted():
    public = {n for n in dir(rlm)
              if not n.startswith("_") and not inspect.ismodule(getattr(rlm, n))}
    assert set(rlm.__all__) == public
    assert rlm.__all__ == sorted(rlm.__all__, key=lambda n: (n != "RLM", n))


def test_import_rlm_is_light():
    code = "import sys, json, rlm; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code])))
    for heavy in ("rich", "httpx", "openai", "anthropic", "llama_cpp", "click", "dotenv",
                  "rlm.backends.openai_compat", "rlm.cli"):
        assert heavy not in loaded, heavy


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_core_names_no_concrete_backend_environment_or_cli():
    allowed_concrete = {"rlm.backends.base", "rlm.environments.base"}
    for path in (SRC / "core").glob("*.py"):
        for name in _imports(path):
            if name.startswith(("rlm.backends.", "rlm.environments.")):
                assert name in allowed_concrete, f"{path.name} imports {name}"
            assert not name.startswith(("rlm.cli", "rlm.api", "rlm.registry")), path.name


def test_guest_runtime_uses_only_the_standard_library():
    from rlm.environments.files import RUNNER_FILES

    shipped = {name.removesuffix(".py") for name in RUNNER_FILES}
    for file in RUNNER_FILES:  # each imports the others as package modules or as files
        for name in _imports(SRC / "bridge" / file):
            top = name.split(".")[0]
            if name == "rlm.bridge" or top in shipped:
                continue
            assert top in sys.stdlib_module_names | {"__future__"}, (file, name)


def test_modules_stay_small():
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) < 500, path
