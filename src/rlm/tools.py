"""Tools: user functions exposed in the REPL, and the code that recreates them elsewhere.

A tool is given as a Python function or as code (a string that defines the name).  The
in-process ``local`` environment calls functions directly; every other environment runs
model code in another process, container or WebAssembly runtime, where a host function
cannot travel, so it receives the tool's *code* and defines the tool itself.

A function can be shipped when it is self-contained: not a closure, not a lambda, not
decorated, and every global it uses is a module (imported again in the guest), a literal
constant, or another such function.  Anything else raises ``ConfigError`` up front, with
the advice to give the tool as code.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlm.bridge.guest import RESERVED_NAMES
from rlm.errors import ConfigError

__all__ = ["Tool", "ToolSpec", "in_process_tools", "make_tools", "shipped_tools"]

ToolSpec = Callable[..., Any] | str
"""What users pass in ``RLM(tools={name: ...})``: a function, or code defining ``name``."""


@dataclass(frozen=True)
class Tool:
    """One tool: its host function (if any), its code for other processes, how it is called
    (``call``, e.g. ``"add(a, b=2)"``) and the first line of its docstring (``doc``).

    ``source`` is ``None`` when the function cannot be shipped; ``unshippable`` says why.
    """

    name: str
    function: Callable[..., Any] | None
    source: str | None
    call: str
    doc: str = ""
    unshippable: str | None = None

    @property
    def summary(self) -> str:
        """``call: doc``, as the system prompt lists it."""
        return f"{self.call}: {self.doc}" if self.doc else self.call

    def require_source(self, environment: str) -> str:
        """The tool's code, or ``ConfigError`` saying why it cannot reach ``environment``."""
        if self.source is None:
            raise ConfigError(
                f"tool {self.name!r} cannot run in the {environment!r} environment: "
                f"{self.unshippable}. Give it as code instead, e.g. tools={{{self.name!r}: "
                f"'def {self.name}(...): ...'}}, or use environment='local'"
            )
        return self.source


def make_tools(specs: Mapping[str, ToolSpec] | None, environment: Any = None
               ) -> dict[str, Tool]:
    """Check and convert ``RLM(tools=...)``; raises ``ConfigError`` on bad input.

    A name the REPL already defines (``RESERVED_NAMES``) is refused.  ``environment`` is
    the ``Environment`` class the tools will run in, when known: outside the host process
    every tool must then be shippable as source, which is checked now rather than at the
    first completion.
    """
    clash = sorted(set(specs or {}) & set(RESERVED_NAMES))
    if clash:
        raise ConfigError(f"tool names clash with REPL names: {', '.join(clash)}")
    tools: dict[str, Tool] = {}
    for name, spec in (specs or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ConfigError(f"tool name {name!r} is not a public Python identifier")
        if isinstance(spec, str):
            tools[name] = _from_code(name, spec)
        elif callable(spec):
            tools[name] = _from_function(name, spec)
        else:
            raise ConfigError(f"tool {name!r} must be a function or a string of code, "
                              f"not {type(spec).__name__}")
    if environment is not None and not environment.in_process:
        shipped_tools(tools, environment.name)
    return tools


# -- tools given as code ------------------------------------------------------------------
def _from_code(name: str, code: str) -> Tool:
    source = textwrap.dedent(code).strip() + "\n"
    try:
        tree = ast.parse(source, f"<tool {name}>")
    except SyntaxError as exc:
        raise ConfigError(f"tool {name!r}: its code does not parse: {exc}") from exc
    definition = next((node for node in tree.body
                       if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                       and node.name == name), None)
    assigned = any(isinstance(node, ast.Assign | ast.AnnAssign | ast.ClassDef | ast.Import
                              | ast.ImportFrom) and name in _bound_names(node)
                   for node in tree.body)
    if definition is None and not assigned:
        raise ConfigError(f"tool {name!r}: its code must define {name!r} at top level "
                          f"(e.g. 'def {name}(...): ...')")
    call, doc = f"{name}(...)", ""
    if definition is not None:
        call = f"{name}({ast.unparse(definition.args)})"
        doc = (ast.get_docstring(definition) or "").split("\n")[0]
    return Tool(name, None, source, call, doc)


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t)
            if isinstance(n, ast.Name)}


# -- tools given as functions -------------------------------------------------------------
def _from_function(name: str, function: Callable[..., Any]) -> Tool:
    try:
        signature = str(inspect.signature(function))
    except (TypeError, ValueError):
        signature = "(...)"
    doc = (inspect.getdoc(function) or "").split("\n")[0]
    try:
        source = _stdlib_import(name, function) or _ship(function, name, set())
        reason = None
    except _Unshippable as exc:
        source, reason = None, str(exc)
    return Tool(name, function, source, f"{name}{signature}", doc, reason)


class _Unshippable(Exception):
    pass


def _ship(function: Callable[..., Any], bind_as: str, seen: set[str]) -> str:
    """Code that defines ``function`` (and what it uses) under the name ``bind_as``."""
    if not isinstance(function, types.FunctionType):
        raise _Unshippable(f"{type(function).__name__} objects have no Python source")
    if function.__name__ == "<lambda>":
        raise _Unshippable("it is a lambda")
    if function.__code__.co_freevars:
        raise _Unshippable("it is a closure over " + ", ".join(function.__code__.co_freevars))
    try:
        text = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise _Unshippable(f"its source is not available ({exc})") from None
    tree = ast.parse(text)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise _Unshippable("its source is not a plain def")
    if node.decorator_list:
        raise _Unshippable("it is decorated")
    seen.add(function.__name__)
    head: list[str] = []
    for global_name in sorted(_names_used(function.__code__)):
        if global_name in function.__globals__:
            head.append(_global_code(global_name, function.__globals__[global_name], seen))
        # else: a builtin, or an attribute name (``x.lower``): nothing to ship
    parts = [line for line in head if line]
    parts.append(ast.unparse(node))
    if bind_as != function.__name__:
        parts.append(f"{bind_as} = {function.__name__}")
    return "\n".join(parts) + "\n"


def _names_used(code: types.CodeType) -> set[str]:
    """Global (and attribute) names of ``code`` and of the comprehensions and nested
    functions inside it (``inspect.getclosurevars`` sees only the outer code)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _stdlib_import(name: str, value: Any) -> str | None:
    """``from module import x as name`` for a callable of the standard library, which every
    guest has; ``None`` for anything else."""
    module = getattr(value, "__module__", None) or ""
    qualname = getattr(value, "__qualname__", "")
    if not (callable(value) and module.split(".")[0] in sys.stdlib_module_names
            and qualname.isidentifier()):
        return None
    alias = "" if qualname == name else f" as {name}"
    return f"from {module} import {qualname}{alias}\n"


def _global_code(name: str, value: Any, seen: set[str]) -> str:
    if isinstance(value, types.ModuleType):
        module = value.__name__
        return f"import {module}" if module == name else f"import {module} as {name}"
    stdlib = _stdlib_import(name, value)
    if stdlib is not None:
        return stdlib.rstrip("\n")
    if isinstance(value, types.FunctionType):
        if value.__name__ in seen:
            return ""
        return _ship(value, name, seen)
    try:
        literal = repr(value)
        if ast.literal_eval(literal) == value:
            return f"{name} = {literal}"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    raise _Unshippable(f"it uses the global {name!r} ({type(value).__name__}), which is "
                       "not a module, a literal or a function")


def in_process_tools(tools: Mapping[str, Tool] | None
                     ) -> tuple[dict[str, Callable[..., Any]], dict[str, str]]:
    """For a REPL in the host process: ``(functions to expose as they are, code to run)``."""
    functions = {n: t.function for n, t in (tools or {}).items() if t.function is not None}
    sources = {n: t.source for n, t in (tools or {}).items()
               if t.function is None and t.source is not None}
    return functions, sources


def shipped_tools(tools: Mapping[str, Tool] | None, environment: str) -> dict[str, str]:
    """For a REPL in another process: every tool's code (``ConfigError`` if one has none)."""
    return {name: tool.require_source(environment) for name, tool in (tools or {}).items()}
