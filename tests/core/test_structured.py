"""Typed sub-calls and structured answers end to end: the scripted backend, the real handler,
the local REPL (``llm_query(..., schema=...)``, ``completion(..., schema=...)``)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Literal, TypedDict

import pydantic
import pytest

from rlm import RLM, RLMResult
from rlm.backends.scripted import ScriptedBackend
from rlm.bridge.schema import to_json_schema
from rlm.core.handler import LMHandler
from rlm.core.limits import Budget, Limits
from rlm.core.routing import ModelRouter
from rlm.trace.sinks import MemorySink
from rlm.trace.tracer import Tracer
from rlm.types import NodeRef
from tests.conftest import repl


class Invoice(pydantic.BaseModel):
    number: str
    total: float
    status: Literal["paid", "open"]


class Span(TypedDict):
    start: int
    end: int


@dataclass
class Point:
    x: int
    y: int = 0


def scripted_tree(root_blocks, sub_reply):
    """A backend whose root replies are ``root_blocks`` in order (each a ```repl block or
    text) and whose sub-calls are ``sub_reply(last_user_message) -> str``."""
    turns = iter(root_blocks)
    sub_prompts: list[list[dict]] = []

    def reply(messages, depth):
        if depth == 0 and messages[0]["role"] == "system":
            turn = next(turns, None)
            assert turn is not None, f"the root asked again after: {messages[-1]['content']}"
            return turn
        sub_prompts.append(messages)
        return sub_reply(messages[-1]["content"])

    backend = ScriptedBackend(reply)
    backend.sub_prompts = sub_prompts  # type: ignore[attr-defined]
    return backend


def run_code(code: str, sub_reply, **kwargs) -> tuple[RLMResult, ScriptedBackend]:
    backend = scripted_tree([repl(code), repl("FINAL(out)")], sub_reply)
    result = RLM(backend=backend, **kwargs).completion("q", context="ctx")
    return result, backend


# -- llm_query(schema=) -------------------------------------------------------------------------
def test_a_typed_llm_query_returns_an_int():
    result, backend = run_code(
        "n = llm_query('How many items? ' + context, schema=int)\n"
        "out = f'{type(n).__name__} {n + 1}'", lambda prompt: "There are 41 items.")
    assert result.response == "int 42"
    [messages] = backend.sub_prompts  # type: ignore[attr-defined]
    assert messages[0]["content"].startswith("How many items? ctx\n\nAnswer format: reply "
                                             "with only an integer")
    [request] = [r for r in backend.calls if r.response_schema is not None]
    assert request.response_schema == {"type": "integer"}


def test_the_reply_is_turned_into_the_python_form_of_the_spec():
    result, _ = run_code(
        "from dataclasses import dataclass\n@dataclass\nclass Point:\n    x: int\n    y: int = 0\n"
        "p = llm_query('where?', schema=Point)\nt = llm_query('pair?', schema=tuple[int, str])\n"
        "out = repr((p, t))",
        lambda prompt: '{"x": 3}' if "where" in prompt else '```json\n[1, "a"]\n```')
    assert result.response == "(Point(x=3, y=0), (1, 'a'))"


def test_a_json_schema_dict_works_too():
    result, _ = run_code(
        "v = llm_query('go', schema={'type': 'object', 'properties': {'ok': {'type': "
        "'boolean'}}, 'required': ['ok']})\nout = repr(v)",
        lambda prompt: 'Result: {"ok": true}')
    assert result.response == "{'ok': True}"


def test_a_bad_reply_gets_one_repair_call_that_can_succeed():
    def sub(prompt):
        return "[\"a\", \"b\"]" if "does not match" in prompt else "a, b"

    result, backend = run_code(
        "out = repr(llm_query('Label each line as a or b:\\nx\\ny', "
        "schema=list[Literal['a', 'b']]))", sub)
    assert result.response == "['a', 'b']"
    first, repair = backend.sub_prompts  # type: ignore[attr-defined]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[0] == first[0] and repair[1]["content"] == "a, b"
    assert "does not match the required format" in repair[2]["content"]
    assert "Reply with only JSON matching the schema" in repair[2]["content"]
    purposes = [e.data["purpose"] for e in result_events(result) if e.type == "lm_call"]
    assert purposes.count("llm_query") == 1 and purposes.count("llm_query_repair") == 1


def result_events(result: RLMResult):
    found = []

    def walk(node):
        found.extend(node.events)
        for child in node.children:
            walk(child)

    walk(result.trace)
    return found


def test_a_repair_that_fails_is_a_schema_error_in_the_cell():
    result, backend = run_code(
        "try:\n    llm_query('How many?', schema=int)\n    out = 'no error'\n"
        "except LMQueryError as exc:\n    out = f'{exc.kind}: {exc}'",
        lambda prompt: "I cannot count.")
    assert result.response.startswith("SchemaError: SchemaError: the reply does not match the "
                                      "schema, even after a repair call")
    assert len(backend.sub_prompts) == 2  # type: ignore[attr-defined]


def test_a_batch_with_one_invalid_slot_keeps_the_others():
    def sub(prompt):
        if "chunk 2" in prompt or "does not match" in prompt:  # the slot and its repair
            return "no idea"
        return '["spam", "ham"]' if "chunk 1" in prompt else '["ham"]'

    result, _ = run_code(
        "labels = llm_query_batched([f'Label each line, chunk {i}' for i in range(3)],\n"
        "                           schema=list[Literal['spam', 'ham']])\n"
        "import json\n"
        "out = json.dumps([l if not isinstance(l, QueryFailed) else l.error_kind "
        "for l in labels])", sub)
    assert json.loads(result.response) == [["ham"], ["spam", "ham"], "SchemaError"]


def test_labelling_many_items_per_call_with_a_list_schema():
    """The cheap way to label N items: several per call, one list-typed answer each."""
    items = [f"item {i}: {'buy now' if i % 3 == 0 else 'meeting at noon'}" for i in range(12)]

    def sub(prompt):
        lines = [line for line in prompt.split("\n") if line.startswith("item ")]
        return json.dumps(["spam" if "buy" in line else "ham" for line in lines])

    code = ("lines = context.split('\\n')\n"
            "chunks = ['\\n'.join(lines[i:i + 4]) for i in range(0, len(lines), 4)]\n"
            "labels = llm_query_batched(['Label each line as spam or ham, one label per "
            "line:\\n' + c for c in chunks], schema=list[Literal['spam', 'ham']])\n"
            "flat = [l for chunk in labels for l in chunk]\n"
            "out = f\"{len(flat)} labels, {flat.count('spam')} spam\"")
    backend = scripted_tree([repl(code), repl("FINAL(out)")], sub)
    result = RLM(backend=backend).completion("Count the spam.", context="\n".join(items))
    assert result.response == "12 labels, 4 spam"
    assert len(backend.sub_prompts) == 3  # type: ignore[attr-defined]


def test_a_spec_that_is_not_a_schema_fails_in_the_cell_before_any_request():
    result, backend = run_code(
        "try:\n    llm_query('x', schema=set)\nexcept TypeError as exc:\n    out = str(exc)",
        lambda prompt: "never asked")
    assert result.response.startswith("schema: cannot turn <class 'set'> into a JSON Schema")
    assert backend.sub_prompts == []  # type: ignore[attr-defined]


def test_the_handler_refuses_a_malformed_schema_from_the_repl():
    backend = ScriptedBackend(["never used"])
    handler = LMHandler(ModelRouter(backend), Budget(Limits()), Tracer(MemorySink()))
    node = NodeRef("root", None, 0)
    for schema, kind in (("int", "BridgeProtocolError"), ({"type": "integr"}, "TypeError"),
                         ({"$ref": "#/nowhere"}, "TypeError"),
                         # a model-written regular expression never runs on the host
                         ({"type": "string", "pattern": "(a+)+$"}, "BridgeProtocolError"),
                         ({"type": "array", "items": {"type": "string", "pattern": "x"}},
                          "BridgeProtocolError")):
        reply = handler.handle({"op": "llm_query", "prompt": "p", "schema": schema}, node)
        assert reply["error"]["type"] == kind
    assert backend.calls == []


def test_an_untyped_call_still_gets_text():
    result, backend = run_code("out = llm_query('hi')", lambda prompt: "42")
    assert result.response == "42"
    assert all(r.response_schema is None for r in backend.calls)


# -- rlm_query(schema=) -------------------------------------------------------------------------
def test_a_typed_rlm_query_tells_the_child_the_format_and_checks_its_answers():
    seen_by_child: list[str] = []

    def reply(messages, depth):
        if depth == 0:
            if len(messages) == 2:
                return repl("from typing import TypedDict\n"
                            "class Span(TypedDict):\n    start: int\n    end: int\n"
                            "span = rlm_query('Where is the word?', context, schema=Span)\n"
                            "print(type(span).__name__, span['end'] - span['start'])")
            return repl("FINAL('done')")
        if len(messages) == 2:
            seen_by_child.append(messages[1]["content"])
            return repl("FINAL('from 3 to 7')")  # the wrong shape: refused
        seen_by_child.append(messages[-1]["content"])
        return repl("FINAL({'start': 3, 'end': 7})")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply},
                 max_depth=2).completion("q", context="ctx")
    assert result.response == "done"
    assert 'Answer format: a JSON object with keys "start" (an integer)' in seen_by_child[0]
    assert "Your answer was not accepted" in seen_by_child[1]
    assert "dict 4" in json.dumps([e.data for e in result_events(result)])


def test_a_child_answer_that_never_matches_gets_a_plain_repair_call():
    calls = []

    def reply(messages, depth):
        if depth == 0 and messages[0]["role"] == "system" and len(messages) == 2:
            return repl("try:\n    v = rlm_query('count', context, schema=int)\n"
                        "except LMQueryError as exc:\n    v = exc.kind\nFINAL(repr(v))")
        if depth == 1 and messages[0]["role"] == "system":
            return repl("FINAL('lots')")  # refused each time, until the iterations run out
        calls.append(messages)
        return "7"  # the repair: a plain LM call at the child's depth

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}, max_depth=2,
                 max_iterations=3).completion("q", context="ctx")
    assert result.response == "7"
    [repair] = calls
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[0]["content"].startswith("count\n\nAnswer format:")


def test_rlm_query_at_max_depth_is_a_typed_plain_call():
    result, backend = run_code("out = repr(rlm_query('which?', 'a or b', "
                               "schema=Literal['a', 'b']))", lambda prompt: "b")
    assert result.response == "'b'"
    [messages] = backend.sub_prompts  # type: ignore[attr-defined]
    assert "--- context ---\na or b" in messages[0]["content"]


# -- completion(schema=) ------------------------------------------------------------------------
def test_completion_with_a_pydantic_model_gives_an_instance():
    backend = scripted_tree(
        [repl("FINAL({'number': 'A-1', 'total': 12.5, 'status': 'paid'})")], str)
    seen = []
    original = backend._reply

    def spy(request):
        seen.append(request.messages)
        return original(request)

    backend._reply = spy  # type: ignore[method-assign]
    result = RLM(backend=backend).completion("Read the invoice", context="...", schema=Invoice)
    assert result.output == Invoice(number="A-1", total=12.5, status="paid")
    assert result.output_error is None
    assert "Answer format: a JSON object with keys" in seen[0][1]["content"]
    data = result.to_dict()
    assert data["output"] == {"number": "A-1", "total": 12.5, "status": "paid"}
    assert json.loads(json.dumps(data))["output_error"] is None


def test_a_final_answer_that_does_not_match_is_refused_and_submitted_again():
    seen = []

    def reply(messages, depth):
        seen.append(messages[-1]["content"])
        if len(messages) == 2:
            return repl("FINAL('twelve')")
        return repl("FINAL([12, 13])")

    result = RLM(backend="scripted", backend_kwargs={"responses": reply}).completion(
        "q", context="c", schema=list[int])
    assert result.output == [12, 13] and result.iterations == 2
    assert "Your answer was not accepted" in seen[1]
    assert "a JSON list of integers" in seen[1]


def test_output_is_none_with_the_reason_when_the_answer_never_matches():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL('x')")] * 2},
                 max_iterations=2, extract_on_limit=False).completion(
        "q", context="c", schema=int)
    assert result.output is None and result.stop_reason == "max_iterations"
    assert result.output_error is not None and "does not match" in result.output_error
    assert result.to_dict()["output"] is None


def test_completion_builds_dataclasses_typeddicts_and_plain_types():
    for spec, answer, expected in ((Point, "{'x': 1}", Point(1)),
                                   (Span, "{'start': 1, 'end': 2}", {"start": 1, "end": 2}),
                                   (tuple[int, str], "[1, 'a']", (1, "a")),
                                   (Literal["yes", "no"], "'yes'", "yes")):
        result = RLM(backend="scripted",
                     backend_kwargs={"responses": [repl(f"FINAL({answer})")]}).completion(
            "q", context="c", schema=spec)
        assert result.output == expected, spec
    assert result.to_dict()["output"] == "yes"


def test_a_pydantic_validator_that_refuses_leaves_output_error():
    class Positive(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def positive(cls, value: int) -> int:
            if value <= 0:
                raise ValueError("must be positive")
            return value

    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL({'n': -1})")]}).completion(
        "q", context="c", schema=Positive)
    assert result.output is None and "must be positive" in (result.output_error or "")


def test_acompletion_takes_a_schema_too():
    async def main():
        async with RLM(backend="scripted",
                       backend_kwargs={"responses": [repl("FINAL([1, 2])")]}) as rlm:
            return await rlm.acompletion("q", context="c", schema=list[int])

    assert asyncio.run(main()).output == [1, 2]


def test_a_bad_schema_is_refused_before_the_run():
    backend = ScriptedBackend([repl("FINAL(1)")])
    with pytest.raises(TypeError, match="cannot turn"):
        RLM(backend=backend).completion("q", context="c", schema=object())
    assert backend.calls == []


def test_completion_without_a_schema_has_no_output():
    result = RLM(backend="scripted",
                 backend_kwargs={"responses": [repl("FINAL([1])")]}).completion("q", context="c")
    assert result.output is None and result.output_error is None
    assert to_json_schema(int) == {"type": "integer"}
