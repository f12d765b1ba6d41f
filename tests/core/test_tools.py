"""Tools: given as functions or as code, checked up front, shipped as self-contained code."""

import json
import re
import textwrap

import pytest

from rlm import RLM
from rlm.errors import ConfigError
from rlm.tools import make_tools, shipped_tools
from tests.conftest import repl

STOP = ("the", "a")


def _words(text):
    return [w for w in re.findall(r"\w+", text.lower()) if w not in STOP]


def keywords(text: str, top: int = 2) -> str:
    """The most frequent words that are not stop words."""
    counts: dict[str, int] = {}
    for word in _words(text):
        counts[word] = counts.get(word, 0) + 1
    return json.dumps(sorted(counts, key=lambda w: (-counts[w], w))[:top])


def _run(source: str, name: str):
    space: dict = {}
    exec(source, space)
    return space[name]


def test_a_shipped_function_behaves_like_the_original():
    tool = make_tools({"kw": keywords})["kw"]
    assert tool.summary.startswith("kw(text: str, top: int = 2) -> str: The most frequent")
    copy = _run(tool.source, "kw")
    text = "The cat and the dog; a cat, a dog, a cat."
    assert copy(text) == keywords(text) == '["cat", "dog"]'
    assert "import re" in tool.source and "STOP = ('the', 'a')" in tool.source


def test_standard_library_callables_are_imported_in_the_guest():
    source = make_tools({"dumps": json.dumps})["dumps"].source
    assert source.strip() == "from json import dumps"
    assert _run(source, "dumps")({"a": 1}) == '{"a": 1}'


def test_code_tools_are_checked_and_summarised():
    code = textwrap.dedent('''
        def add(a, b=2):
            """Add two numbers."""
            return a + b
    ''')
    tool = make_tools({"add": code})["add"]
    assert tool.summary == "add(a, b=2): Add two numbers."
    assert _run(tool.source, "add")(1) == 3
    with pytest.raises(ConfigError, match="must define 'add'"):
        make_tools({"add": "def other(): pass"})
    with pytest.raises(ConfigError, match="does not parse"):
        make_tools({"add": "def add(:"})
    with pytest.raises(ConfigError, match="function or a string"):
        make_tools({"add": 3})
    with pytest.raises(ConfigError, match="identifier"):
        make_tools({"no good": "x = 1"})


def _closure():
    offset = 1

    def bump(x):
        return x + offset

    return bump


class _Thing:
    pass


THING = _Thing()


def uses_an_object():
    return THING


@pytest.mark.parametrize(("tool", "why"), [
    (_closure(), "closure over offset"),
    (lambda x: x, "lambda"),
    (uses_an_object, r"global 'THING' \(_Thing\)"),
    (pytest.raises, "global|closure|source|decorated"),
])
def test_functions_that_cannot_travel_say_why(tool, why):
    made = make_tools({"t": tool})["t"]
    assert made.source is None and re.search(why, made.unshippable)
    with pytest.raises(ConfigError, match=r"cannot run in the 'subprocess' environment.*as code"):
        shipped_tools({"t": made}, "subprocess")


def test_the_environment_is_checked_when_the_rlm_is_built():
    bump = _closure()
    with pytest.raises(ConfigError, match="tool 'bump' cannot run in the 'subprocess'"):
        RLM(backend="scripted", environment="subprocess", tools={"bump": bump})
    # In-process, any callable works, closures included.
    result = RLM(backend="scripted", tools={"bump": bump},
                 backend_kwargs={"responses": [repl("FINAL(bump(41))")]}).completion("q")
    assert result.response == "42"


def test_tools_are_listed_in_the_system_prompt():
    seen = []

    def reply(messages, depth):
        seen.append(messages[0]["content"])
        return repl("FINAL(1)")

    RLM(backend="scripted", tools={"kw": keywords, "add": "def add(a, b):\n    return a + b"},
        backend_kwargs={"responses": reply}).completion("q")
    assert "- `kw(text: str, top: int = 2) -> str`: The most frequent" in seen[0]
    assert "- `add(a, b)`" in seen[0]
