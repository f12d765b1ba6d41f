"""Traces: one event per line, rebuilt into the call tree by ``load``."""

from rlm.trace.events import SCHEMA_VERSION, TraceEvent
from rlm.trace.sinks import JsonlSink, MemorySink, MultiSink, NullSink, TraceSink
from rlm.trace.tree import TraceNode, build_tree, load, load_all

__all__ = [
    "SCHEMA_VERSION",
    "JsonlSink",
    "MemorySink",
    "MultiSink",
    "NullSink",
    "TraceEvent",
    "TraceNode",
    "TraceSink",
    "build_tree",
    "load",
    "load_all",
]
