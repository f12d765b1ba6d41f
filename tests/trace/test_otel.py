"""The OpenTelemetry sink, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import os

import pytest

from rlm import RLM
from rlm.trace import load
from rlm.trace.fixtures import fixture_path
from tests.conftest import repl

if not os.environ.get("CI"):  # CI installs the extra and must run these
    pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rlm.trace.otel import OTelSink


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def sink(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OTelSink(provider)


def test_a_span_per_node_call_and_block_with_the_tree_as_parents(sink, exporter):
    tree = load(fixture_path("tree"))
    for event in sorted((e for n in tree.walk() for e in n.events), key=lambda e: e.seq):
        sink.emit(event)
    sink.close()
    spans = exporter.get_finished_spans()
    nodes = {s.attributes["gen_ai.agent.id"]: s for s in spans if s.name == "invoke_agent rlm"}
    assert set(nodes) == {n.run_id for n in tree.walk()}
    for node in tree.walk():
        span = nodes[node.run_id]
        parent = nodes.get(node.parent_run_id)
        assert (span.parent.span_id if span.parent else None) == \
            (parent.context.span_id if parent else None)
        assert span.attributes["rlm.stop_reason"] == node.stop_reason
        own = [s for s in spans if s.parent and s.parent.span_id == span.context.span_id]
        chats = [s for s in own if s.name == "chat scripted"]
        blocks = [s for s in own if s.name == "execute_tool repl"]
        assert len(chats) == len(node.lm_calls) and len(blocks) == len(node.code_executions)
        usage = node.own_usage["scripted"]
        assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == \
            usage.input_tokens
        assert sum(s.attributes["rlm.cost_usd"] for s in chats) == pytest.approx(usage.cost_usd)
        assert all(s.start_time <= s.end_time for s in [*own, span])
    failing = [s for s in spans if s.status.status_code == StatusCode.ERROR]
    assert len(failing) == 1 and "ZeroDivisionError" in failing[0].status.description
    assert failing[0].attributes["rlm.code"] == "ratio = len(context) / 0"


def test_a_live_run_reports_to_the_sink(sink, exporter):
    with RLM(backend="scripted", trace=sink,
             backend_kwargs={"responses": [repl("x = llm_query('hi')"), "hello",
                                           repl("FINAL(x)")], "model": "m1"}) as model:
        result = model.completion("question", context="data")
    spans = exporter.get_finished_spans()
    assert result.response == "hello"
    assert [s.name for s in spans].count("chat m1") == 3
    root = next(s for s in spans if s.name == "invoke_agent rlm")
    assert root.parent is None and root.attributes["rlm.question"] == "question"
    assert root.attributes["gen_ai.request.model"] == "m1"
    sub = next(s for s in spans if s.attributes.get("rlm.purpose") == "llm_query")
    assert sub.parent.span_id == root.context.span_id


def test_a_node_left_open_is_ended_on_close(sink, exporter):
    tree = load(fixture_path("batch"))
    sink.emit(tree.start)
    assert exporter.get_finished_spans() == ()
    sink.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["invoke_agent rlm"]
