"""CodeQA over a real source tree found on every machine: the Python standard library.

The context is whole ``.py`` files of ``sysconfig.get_paths()["stdlib"]`` (tests and
``site-packages`` left out), chosen by the seed, each under a header line
``# ===== module json.decoder (file json/decoder.py) =====``.  Answers are computed with
``ast`` over exactly the files in the context.  The standard library differs between
Python versions, so an instance is the same on every run of one interpreter, not across
versions (record ``python --version`` next to the results).
"""

from __future__ import annotations

import ast
import functools
import os
import random
import sysconfig
from collections import Counter
from pathlib import Path

from rlm import ConfigError

__all__ = ["HEADER", "callers", "generate", "module_name", "stdlib_files"]

HEADER = "# ===== module {module} (file {path}) =====\n"
_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[tuple[str, int], ...]:
    """``(relative path, size in bytes)`` of every standard-library module, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        for name in files:
            if name.endswith(".py"):
                path = Path(folder, name)
                found.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return tuple(sorted(found))


def module_name(path: str) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _own_nodes(function: ast.AST) -> list[ast.AST]:
    """The nodes of ``function``'s own body: nested ``def`` and ``class`` bodies excluded."""
    out: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))
    return out


def callers(tree: ast.AST) -> Counter[str]:
    """For each callee name, how many functions (every ``def``) call it in their own body."""
    counts: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names = {_callee(n) for n in _own_nodes(node) if isinstance(n, ast.Call)}
            counts.update(n for n in names if n)
    return counts


def _pick(rng: random.Random, n_chars: int) -> list[tuple[str, str, ast.Module]]:
    files = list(stdlib_files())
    total = sum(size for _, size in files)
    if total < n_chars * 0.95:
        raise ConfigError(f"the standard library holds {total:,} characters of source; "
                          f"codeqa cannot reach {n_chars:,} (use a shorter length)")
    rng.shuffle(files)
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen: list[tuple[str, str, ast.Module]] = []
    size = 0
    for path, nbytes in files:
        if size >= n_chars * 0.97:
            break
        if size + nbytes > n_chars * 1.03 or nbytes < 200:
            continue
        source = (root / path).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        chosen.append((path, source, tree))
        size += len(source) + 80
    return chosen


def _defines(rng: random.Random, chosen: list[tuple[str, str, ast.Module]]
             ) -> tuple[str, str] | None:
    defined: dict[str, set[str]] = {}
    for path, _, tree in chosen:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.setdefault(node.name, set()).add(module_name(path))
    candidates = sorted(
        (node.name, module_name(path)) for path, _, tree in chosen for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and len(node.name) >= 6 and len(defined[node.name]) == 1
    )
    if not candidates:
        return None
    name, module = rng.choice(candidates)
    return (f"Which module defines the top-level function `{name}`? Answer with the dotted "
            "module name only, as written in the module header lines.", module)


def _calls(rng: random.Random, chosen: list[tuple[str, str, ast.Module]]
           ) -> tuple[str, str] | None:
    packages = Counter(module_name(p).split(".")[0] for p, _, _ in chosen)
    scopes = sorted(p for p, n in packages.items() if n >= 2)
    scope = rng.choice(scopes) if scopes and rng.random() < 0.6 else None
    counts: Counter[str] = Counter()
    for path, _, tree in chosen:
        if scope is None or module_name(path).split(".")[0] == scope:
            counts.update(callers(tree))
    candidates = sorted(n for n, c in counts.items() if 2 <= c <= 60 and len(n) >= 4)
    if not candidates:
        return None
    name = rng.choice(candidates)
    where = "in the whole input" if scope is None else f"in the modules of package `{scope}`"
    return (f"How many functions and methods {where} call `{name}` (written `{name}(...)` or "
            f"`something.{name}(...)`) in their own body? Every `def` counts once, nested "
            "ones on their own; a call inside a nested def belongs to that def only. "
            "Answer with a number only.", str(counts[name]))


def _most(chosen: list[tuple[str, str, ast.Module]]) -> tuple[str, str] | None:
    counts = Counter({module_name(p): sum(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in tree.body)
        for p, _, tree in chosen})
    ranked = counts.most_common(2)
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ("Which module defines the most top-level functions (`def` statements directly "
            "in the module, not in classes)? Answer with the dotted module name only.",
            ranked[0][0])


def generate(rng: random.Random, n_chars: int) -> tuple[str, str, str, str]:
    """A question about the standard-library files in the context, answered with ``ast``.

    Questions: which module defines top-level function ``X`` (``exact``); how many
    functions in package ``Y`` (or in the whole input) call ``Z`` (``numeric``); which
    module defines the most top-level functions (``exact``).  Ideal answers:
    ``json.decoder``, ``14``.
    """
    chosen = _pick(rng, n_chars)
    makers = [lambda: _defines(rng, chosen), lambda: _calls(rng, chosen),
              lambda: _most(chosen)]
    rng.shuffle(makers)
    for make in makers:
        made = make()
        if made is not None:
            break
    else:
        raise ConfigError("no question could be asked about so few files; use a longer length")
    question, answer = made
    context = "".join(HEADER.format(module=module_name(p), path=p) + source.rstrip("\n") + "\n\n"
                      for p, source, _ in chosen)
    scorer = "numeric" if answer.isdigit() else "exact"
    return ("The context is Python source files of the standard library, each starting with "
            "a header line naming its module. " + question), context, answer, scorer
