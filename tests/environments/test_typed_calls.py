"""Typed sub-calls in every environment: ``schema.py`` is shipped with the guest runtime."""

from __future__ import annotations

import json

import pytest

from rlm import RLM
from tests.conftest import repl


def host(message):
    """Answers a typed ``llm_query`` with a value, recording the schema it was sent."""
    if message.get("op") == "llm_query" and "schema" in message:
        return {"value": {"schema": message["schema"], "n": 2}}
    if message.get("op") == "llm_query_batched":
        return {"results": [{"value": [1, "a"]}, {"error": {"type": "SchemaError",
                                                            "message": "no"}}]}
    return {"error": {"type": "BridgeProtocolError", "message": "unsupported in this test"}}


@pytest.fixture
def env(env_factory):
    environment = env_factory()
    environment.start(host)
    return environment


def test_a_typed_llm_query_sends_the_schema_and_gets_a_value(env):
    result = env.execute(
        "import json\n"
        "v = llm_query('p', schema=dict[str, int] | list[Literal['x']])\n"
        "print(json.dumps(v['schema']), type(v['n']).__name__)")
    assert result.error is None, result.error
    schema, kind = result.stdout.rsplit(" ", 1)
    assert json.loads(schema) == {"anyOf": [
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"type": "array", "items": {"enum": ["x"]}}]}
    assert kind.strip() == "int"


def test_a_typed_batch_builds_each_slot_and_keeps_failed_ones(env):
    result = env.execute("r = llm_query_batched(['a', 'b'], schema=tuple[int, str])\n"
                         "print(repr(r[0]), isinstance(r[1], QueryFailed), r[1].error_kind)")
    assert result.error is None, result.error
    assert result.stdout.strip() == "(1, 'a') True SchemaError"


def test_a_bad_spec_is_a_type_error_in_the_cell(env):
    result = env.execute("llm_query('p', schema=bytes)")
    assert result.error is not None and "TypeError: schema: cannot turn" in result.error


@pytest.mark.parametrize("environment", ["subprocess", "sandbox", "docker"])
def test_typed_calls_end_to_end_in_a_process(environment):
    def reply(messages, depth):
        if depth == 0 and messages[0]["role"] == "system":
            if len(messages) == 2:
                return repl("n = llm_query('How many?', schema=int)\nprint(n * 2)")
            return repl("FINAL({'double': n * 2})")
        return "It is 21." if "does not match" not in messages[-1]["content"] else "21"

    with RLM(backend="scripted", backend_kwargs={"responses": reply},
             environment=environment) as rlm:
        result = rlm.completion("q", context="c", schema=dict[str, int])
    assert result.output == {"double": 42}
