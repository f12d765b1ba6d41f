"""``llm_map``: many items labelled in few typed calls, one value per item, in order."""

from __future__ import annotations

import re

from rlm import RLM
from tests.conftest import repl


def labeller(messages, depth):
    """A sub-model that labels each numbered item by its first letter; the root's code."""
    if depth == 0:
        return repl(CODE)
    prompt = messages[-1]["content"]
    items = re.findall(r"^\d+\. (.*)$", prompt, re.M)
    if "broken" in prompt:
        return "not json"
    return "[" + ", ".join('"a"' if item.startswith("a") else '"b"' for item in items) + "]"


CODE = """
items = [f"{'a' if n % 3 else 'b'}-item {n}" for n in range(45)]
labels = llm_map("Label each item: a or b.", items, schema=Literal["a", "b"], per_call=20)
print(len(labels), labels[:4], labels[-1])
FINAL_VAR("labels")
"""


def test_llm_map_labels_every_item_in_order_with_one_call_per_chunk():
    backend_calls: list[str] = []

    def reply(messages, depth):
        if depth:
            backend_calls.append(messages[-1]["content"])
        return labeller(messages, depth)

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion(
        "label", context="c")
    expected = ["a" if n % 3 else "b" for n in range(45)]
    assert result.response == str(expected).replace("'", '"')
    assert len(backend_calls) == 3  # 20 + 20 + 5 items
    assert all(p.startswith("Label each item: a or b.\n\nAnswer for each of the")
               for p in backend_calls)
    assert sorted(p.count("\n") for p in backend_calls)[0] < 12  # the last chunk: 5 items
    assert any("with a JSON list of 5 values" in p for p in backend_calls)


def test_a_failed_chunk_gives_query_failed_for_its_items_only():
    code = ("out = llm_map('Label', ['a1', 'broken', 'a2'], schema=Literal['a', 'b'], "
            "per_call=2)\nFINAL(str([type(v).__name__ for v in out]))")

    def reply(messages, depth):
        return repl(code) if depth == 0 else labeller(messages, depth)

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion(
        "q", context="c")
    assert result.response == "['QueryFailed', 'QueryFailed', 'str']"


def test_per_call_must_be_positive():
    code = "try:\n    llm_map('x', ['a'], per_call=0)\nexcept ValueError as e:\n    FINAL(str(e))"
    result = RLM(backend="scripted", backend_kwargs={"responses": [repl(code)]}).completion(
        "q", context="c")
    assert "per_call must be a positive int" in result.response
