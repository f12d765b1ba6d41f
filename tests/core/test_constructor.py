"""RLM(...): the seed's keywords, the Limits and LoopConfig value objects, one trace=,
and the renamed keywords that still work for one release."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rlm import RLM, Limits, LoopConfig, ScriptedBackend, load_trace, registry
from rlm.core import prompts
from rlm.errors import BackendError, BadResponseError, ConfigError, UnknownBackendError
from rlm.trace import MemorySink, load_all
from tests.conftest import repl

FINAL_LEN = repl("FINAL(len(context))")


def scripted(responses, **kwargs) -> RLM:
    return RLM(backend="scripted", backend_kwargs={"responses": responses}, **kwargs)


# -- limits -----------------------------------------------------------------------------------
def test_limits_object_with_keywords_that_replace_its_fields():
    rlm = scripted([FINAL_LEN], limits=Limits(max_depth=3, max_iterations=7, max_errors=2),
                   max_iterations=5, max_errors=None)
    assert rlm.limits == Limits(max_depth=3, max_iterations=5, max_errors=2)
    assert scripted([FINAL_LEN]).limits == Limits()


def test_limits_object_is_what_the_tree_spends():
    rlm = scripted([repl("print(1)")] * 10, limits=Limits(max_iterations=3),
                   extract_on_limit=False)
    result = rlm.completion("abc")
    assert (result.iterations, result.stop_reason) == (3, "max_iterations")


# -- loop options -----------------------------------------------------------------------------
def _recording(replies: list[str]):
    seen: list[list[dict[str, str]]] = []

    def reply(messages, depth):
        seen.append(list(messages))
        return replies[len(seen) - 1]
    return reply, seen


def test_loop_config_reaches_every_turn_and_keywords_win():
    reply, seen = _recording([repl("print('x' * 1000)"), FINAL_LEN])
    rlm = scripted(reply, loop=LoopConfig(max_output_chars=5_000, temperature=0.5),
                   max_output_chars=100)
    assert rlm.loop == LoopConfig(max_output_chars=100, temperature=0.5)
    assert rlm.completion("abc").response == "3"
    feedback = seen[1][-1]["content"]
    assert "x" * 100 not in feedback and "output truncated" in feedback


def test_prompt_profile_chooses_the_system_prompt():
    reply, seen = _recording([FINAL_LEN])
    scripted(reply, loop=LoopConfig(prompt_profile="small")).completion("abc")
    assert seen[0][0]["content"] == prompts.system_prompt(depth=0, max_depth=1,
                                                          prompt_profile="small")
    assert seen[0][0]["content"] != prompts.system_prompt(depth=0, max_depth=1)


@pytest.mark.parametrize("bad", [{"prompt_profile": "tiny"}, {"max_output_chars": 0},
                                 {"max_concurrency": True}, {"block_time_share": 0}])
def test_bad_loop_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        LoopConfig(**bad)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        scripted([FINAL_LEN], **bad)


def test_an_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="max_output_char"):
        scripted([FINAL_LEN], max_output_char=5)


# -- trace= -----------------------------------------------------------------------------------
def test_trace_directory_gets_one_file_per_call(tmp_path: Path):
    folder = tmp_path / "traces"  # not there yet, no suffix: a directory
    rlm = scripted([FINAL_LEN, FINAL_LEN], trace=folder)
    first, second = rlm.completion("abc"), rlm.completion("abcd")
    files = sorted(folder.glob("rlm-*.jsonl"))
    assert len(files) == 2 and {first.trace_path, second.trace_path} == set(map(str, files))
    assert load_trace(first.trace_path).run_id == first.run_id


def test_trace_file_is_appended_to_and_a_sink_gets_the_events(tmp_path: Path):
    path, sink = tmp_path / "run.jsonl", MemorySink()
    rlm = scripted([FINAL_LEN, FINAL_LEN], trace=[path, sink])
    runs = [rlm.completion("abc").run_id, rlm.completion("abcd").run_id]
    assert [tree.run_id for tree in load_all(path)] == runs
    assert {e.run_id for e in sink.events if e.type == "run_start"} == set(runs)


def test_an_existing_file_without_suffix_is_a_file(tmp_path: Path):
    path = tmp_path / "trace"
    path.touch()
    result = scripted([FINAL_LEN], trace=path).completion("abc")
    assert result.trace_path == str(path) and load_trace(path).run_id == result.run_id


@pytest.mark.parametrize("bad", [42, ["a.jsonl", "b.jsonl"]])
def test_bad_trace_is_a_config_error(bad, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="trace"):
        scripted([FINAL_LEN], trace=bad)


# -- renamed keywords -------------------------------------------------------------------------
def test_renamed_trace_keywords_still_work_with_a_warning(tmp_path: Path):
    sink = MemorySink()
    with pytest.warns(DeprecationWarning, match=r"trace_path=\.\.\.\) is deprecated"):
        rlm = scripted([FINAL_LEN], trace_path=tmp_path / "t.jsonl")
    assert load_trace(rlm.completion("abc").trace_path).response == "3"
    with pytest.warns(DeprecationWarning, match="trace_dir"):
        rlm = scripted([FINAL_LEN], trace_dir=tmp_path / "d")
    assert Path(rlm.completion("abc").trace_path).parent == tmp_path / "d"
    with pytest.warns(DeprecationWarning, match="trace_sink"):
        rlm = scripted([FINAL_LEN], trace_sink=sink)
    rlm.completion("abc")
    assert any(e.type == "final" for e in sink.events)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="not also"):
        scripted([FINAL_LEN], trace=sink, trace_sink=sink)


def test_sub_backend_as_a_mapping_and_the_renamed_kwargs():
    code = repl("FINAL(llm_query('hi'))")
    rlm = RLM(backend="scripted", backend_kwargs={"responses": [code]},
              sub_backend={"backend": "scripted", "responses": ["from the sub"],
                           "model": "sub-model"})
    assert rlm.completion("abc").response == "from the sub"
    assert rlm.router.sub is not None and rlm.router.sub.model_name == "sub-model"
    with pytest.warns(DeprecationWarning, match="sub_backend_kwargs"):
        rlm = RLM(backend="scripted", backend_kwargs={"responses": [code]},
                  sub_backend="scripted", sub_backend_kwargs={"responses": ["old form"]})
    assert rlm.completion("abc").response == "old form"


# -- checks with their owners -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["history", "QueryFailed", "LimitReached", "llm_query"])
def test_tools_may_not_shadow_what_the_repl_defines(name):
    with pytest.raises(ConfigError, match=f"clash with REPL names: {name}"):
        scripted([FINAL_LEN], tools={name: f"def {name}():\n    return 1"})


def test_an_unpriced_model_under_max_budget_is_refused():
    class Unpriced(ScriptedBackend):
        def estimate_cost(self, request):
            return None

    assert not Unpriced([FINAL_LEN], model="free?").prices_known
    with pytest.raises(ConfigError, match="price of free\\? is unknown"):
        RLM(backend=Unpriced([FINAL_LEN], model="free?"), max_budget=1.0)


# -- the run ----------------------------------------------------------------------------------
def test_a_failed_run_keeps_the_whole_last_reply_as_its_partial_answer():
    long_reply = "thinking " * 20_000  # 180,000 characters: longer than a trace preview
    calls = []

    def reply(messages, depth):
        calls.append(1)
        if len(calls) > 1:
            raise BadResponseError("the model went away")
        return long_reply

    with pytest.raises(BackendError, match="went away") as info:
        scripted(reply).completion("abc")
    partial = info.value.partial
    assert partial.response == long_reply and partial.stop_reason == "error"
    assert partial.iterations == 2


def test_async_and_sync_runs_give_the_same_result():
    script = [repl("x = len(context)\nprint(x)"), repl("FINAL(x * 2)")]
    sync = scripted(list(script)).completion("abcdef")

    async def run():
        async with scripted(list(script)) as rlm:
            return await rlm.acompletion("abcdef")

    done = asyncio.run(run())
    assert (done.response, done.iterations, done.stop_reason, done.usage) == (
        sync.response, sync.iterations, sync.stop_reason, sync.usage)


def test_backends_built_before_a_bad_one_are_closed(monkeypatch):
    closed: list[str] = []

    class Closing(ScriptedBackend):
        def close(self) -> None:
            closed.append(self.model_name)

    monkeypatch.setitem(registry._BACKENDS, "closing", Closing)
    with pytest.raises(UnknownBackendError):
        RLM(backend="closing", backend_kwargs={"responses": [FINAL_LEN], "model": "root"},
            sub_backend={"backend": "closing", "responses": [], "model": "sub"},
            models={"broken": {"backend": "no-such-backend"}})
    assert closed == ["root", "sub"]


def test_the_keyword_shortcuts_are_exactly_the_loop_config_fields():
    from dataclasses import fields

    from rlm.api import LoopOptions

    assert set(LoopOptions.__annotations__) == {field.name for field in fields(LoopConfig)}
