"""The servers' pure parts, without a server: config files, limit caps, request parsing,
the spending ledger, the bearer check and the progress lines."""

from __future__ import annotations

import base64

import pytest

from rlm.core.limits import Limits
from rlm.errors import ConfigError
from rlm.serve.chat import parse_chat
from rlm.serve.guard import Refused, SpendLedger, check_token, merge_limits
from rlm.serve.profiles import Catalog, load_profiles
from rlm.serve.progress import summarise
from rlm.trace.events import TraceEvent

USER = {"role": "user", "content": "Q?"}


def test_a_config_file_makes_profiles_with_scripts_relative_to_it(tmp_path):
    (tmp_path / "s.json").write_text('["```repl\\nFINAL(1)\\n```"]')
    config = tmp_path / "c.toml"
    config.write_text('[profiles.a]\nbackend = "scripted"\nscript = "s.json"\nmax_depth = 2\n'
                      '[profiles.a.backend_options]\nlatency_s = 0.5\n')
    [profile] = load_profiles(config)
    assert profile.name == "a" and profile.limits.max_depth == 2
    assert profile.backend_kwargs == {"latency_s": 0.5,
                                      "responses": ["```repl\nFINAL(1)\n```"]}
    catalog = Catalog([profile])
    with catalog.open(profile, profile.limits) as model:
        assert model.completion("x").response == "1"
    catalog.close()


@pytest.mark.parametrize(("text", "message"), [
    ('[profiles.a]\nbackend = "scripted"\nscirpt = "s.json"\n', "unknown key 'scirpt'"),
    ('[profiles.a]\nmodel = "m"\n', "needs a backend name"),
    ("title = 'no profiles'\n", r"no \[profiles.NAME\] table"),
    ('[profiles.a]\nbackend = "scripted"\nscript = "missing.json"\n', "missing.json"),
])
def test_a_bad_config_file_is_a_config_error(tmp_path, text, message):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profiles(config)


def test_request_limits_lower_the_caps_but_never_raise_them():
    cap = Limits(max_depth=2, max_iterations=10, max_budget=1.0)
    merged = merge_limits(cap, {"max_depth": 5, "max_budget": 0.25, "max_timeout": 30})
    assert (merged.max_depth, merged.max_budget, merged.max_timeout) == (2, 0.25, 30)
    assert merged.max_iterations == 10
    with pytest.raises(Refused, match="max_budget"):
        merge_limits(cap, {"max_budget": -1})
    with pytest.raises(Refused, match="must be an object"):
        merge_limits(cap, [1, 2])


def test_parse_chat_refuses_what_it_cannot_read():
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    bad_file = {"type": "file", "file": {"file_data": "data:text/plain;base64,@@@"}}
    binary = {"type": "file", "file": {"file_data": "data:application/octet-stream;base64,"
                                       + base64.b64encode(b"\xff\xfe\x00").decode()}}
    for content, message in ((image, "unsupported content part"),
                             (bad_file, "not base64 UTF-8 text"),
                             (binary, "not base64 UTF-8 text")):
        with pytest.raises(Refused, match=message):
            parse_chat({"messages": [{"role": "user", "content": [content]}]})
    with pytest.raises(Refused, match="not both"):
        parse_chat({"messages": [USER], "context": "a", "context_path": "b"})
    with pytest.raises(Refused, match="no text"):
        parse_chat({"messages": [{"role": "user", "content": "  "}]})


def test_a_lone_question_is_its_own_input_and_a_json_context_stays_json():
    assert parse_chat({"messages": [USER]}).context is None
    assert parse_chat({"messages": [USER], "context": {"rows": [1, 2]}}).context == {
        "rows": [1, 2]}


def test_the_ledger_reserves_settles_and_remembers_the_day(tmp_path):
    path = tmp_path / "spend.json"
    ledger = SpendLedger(0.05, path)
    assert ledger.reserve(0.03) == 0.03
    assert ledger.reserve(0.03) == pytest.approx(0.02)  # only what is left unreserved
    with pytest.raises(Refused) as refused:
        ledger.reserve(0.01)
    assert refused.value.status == 429 and refused.value.retry_after_s == 5  # runs hold it
    ledger.settle(0.03, 0.01)
    ledger.settle(0.02, 0.02)
    assert ledger.spent_today == pytest.approx(0.03)
    assert SpendLedger(0.05, path).spent_today == pytest.approx(0.03)  # after a restart
    assert SpendLedger(None).reserve(None) is None


def test_the_bearer_check():
    assert check_token("Bearer k-123", "k-123")
    assert check_token("bearer k-123", "k-123")
    assert not check_token("Bearer k-124", "k-123")
    assert not check_token("k-123", "k-123")
    assert not check_token(None, "k-123")
    assert check_token(None, None)


def test_progress_lines_hold_sizes_not_the_input():
    question = "What is the code? " + "padding " * 100
    start = TraceEvent("run_start", "r1", None, 0, 0, 1, 0.0,
                       {"question": question, "context_type": "str",
                        "context_length": 5_000_000})
    line = summarise(start).text
    assert line.startswith("d0 started: «What is the code?") and len(line) < 140
    assert "5,000,000" in line
    failed = TraceEvent("code_exec", "r1", None, 1, 3, 2, 0.0,
                        {"code": "secret_code()", "error": "Traceback...\nNameError: x"})
    assert summarise(failed).text == "d1 code 3: NameError"
    assert summarise(TraceEvent("note", "r1", None, 0, 1, 3, 0.0, {})) is None
