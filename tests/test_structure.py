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
                  "rlm.backends.openai_compat", "rlm.cli", "ray", "rlm.distributed"):
        assert heavy not in loaded, heavy


def test_a_local_rlm_and_its_batch_never_import_ray():
    code = ("import sys, json\nfrom rlm import RLM\n"
            "rlm = RLM(backend='scripted', backend_kwargs={'responses': "
            "lambda m, d: '```repl\\nFINAL(1)\\n```'})\n"
            "assert [r.response for r in rlm.batch(['a', 'b'])] == ['1', '1']\n"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code])))
    assert "ray" not in loaded and "rlm.distributed" not in loaded


#: The packages from the bottom up.  A module may import its own package and the tiers
#: below its own, never a tier above nor a sibling in the same tier (docs/concepts.md).
RANKS: list[set[str]] = [
    {"errors"},
    {"types", "config"},
    {"context", "trace"},
    {"backends", "bridge", "result"},
    {"tools"},  # checks tool names against the REPL's own (bridge.guest)
    {"environments"},
    {"core", "registry"},  # core never looks a backend or environment up by name
    {"batch"},  # many completions over one ledger (api's batch(); distributed's runner)
    {"api"},
    {"rlm"},  # the package's __init__: the public names
    {"bench", "serve", "distributed"},  # distributed: found by name (registry), extra ray
    {"cli"},
]
TIER = {unit: rank for rank, units in enumerate(RANKS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The package (or top-level module) a module of rlm belongs to."""
    parts = module.split(".")
    return "rlm" if len(parts) == 1 else parts[1]


def _rlm_imports(path: Path) -> list[tuple[str, int]]:
    """Every ``rlm`` module imported anywhere in ``path`` (top level, in functions, under
    TYPE_CHECKING), resolved from relative form, with its line."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]).strip(".")
            found += [(f"{base}.{alias.name}" if base == "rlm" else base, node.lineno)
                      for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "rlm"]


def test_every_package_has_a_rank():
    units = {_unit(_module_name(path)) for path in SRC.rglob("*.py")}
    assert units == set(TIER), units ^ set(TIER)


def test_imports_point_down_the_ranks():
    wrong = []
    for path in SRC.rglob("*.py"):
        importer = _unit(_module_name(path))
        for name, line in _rlm_imports(path):
            imported = _unit(name) if name != "rlm" else "rlm"
            if name.startswith("rlm.") and name.split(".")[1] not in TIER and name != "rlm":
                imported = "rlm"  # ``from rlm import X`` of a public name
            if imported != importer and TIER[imported] >= TIER[importer]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({importer}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_modules_import_no_cycle():
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        graph[_module_name(path)] = {name for name, _ in _rlm_imports(path)}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, trail: list[str]) -> None:
        seen[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph or target == module:
                continue
            assert seen.get(target) != 1, " -> ".join([*trail, module, target])
            if target not in seen:
                visit(target, [*trail, module])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [])


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
