"""The price table, ``price_per_mtok`` and the named OpenAI-compatible services (presets),
driven against ``tests/fakes/openai_server.py``."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from rlm import RLM, registry
from rlm.backends import prices
from rlm.backends.openai_compat import OpenAIBackend
from rlm.backends.presets import PRESETS
from rlm.backends.prices import Price, price_of
from rlm.errors import ConfigError, MissingKeyError
from rlm.types import CompletionRequest
from tests.conftest import repl

NAMED = ["openrouter", "groq", "together", "deepseek", "fireworks", "azure", "vllm", "ollama",
         "llamacpp"]


def ask(text: str = "What is 2+2?") -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}])


# -- the table --------------------------------------------------------------------------------
def test_the_table_ships_in_the_package_with_its_date():
    data = json.loads(resources.files("rlm.backends").joinpath("prices.json").read_text())
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", prices.checked())
    assert {"openai", "anthropic", "gemini", "groq", "deepseek"} <= set(prices.sections())
    for section, models in data["sections"].items():
        for model in models:
            price = prices.lookup(section, model)
            assert price is not None and price.input >= 0 and price.output >= 0


def test_lookup_handles_snapshots_vendor_names_and_misses():
    sonnet = prices.lookup("anthropic", "claude-sonnet-4")
    assert sonnet == Price(3.0, 15.0, cache_write=3.75, cache_read=0.30)
    assert prices.lookup("anthropic", "claude-sonnet-4-20250514") == sonnet
    assert prices.lookup("openai", "gpt-4o-2024-08-06") == prices.lookup("openai", "gpt-4o")
    assert prices.lookup("gemini", "models/gemini-2.5-flash") == prices.lookup(
        "gemini", "gemini-2.5-flash")
    assert prices.lookup(None, "anthropic/claude-sonnet-4") == sonnet
    assert prices.lookup(None, "google/gemini-2.5-pro") == prices.lookup("gemini",
                                                                         "gemini-2.5-pro")
    assert prices.lookup(None, "gpt-4o") is None
    assert prices.lookup("openai", "no-such-model") is None
    assert prices.lookup("no-such-section", "gpt-4o") is None


def test_price_cost_charges_each_kind_at_its_own_price():
    price = Price(3.0, 15.0, cache_write=3.75, cache_read=0.30)
    # 10k prompt tokens: 6k read from the cache, 3k written to it, 1k plain; 2k out
    cost = price.cost(10_000, 2_000, cache_read_tokens=6_000, cache_write_tokens=3_000)
    assert cost == pytest.approx((1_000 * 3.0 + 6_000 * 0.30 + 3_000 * 3.75 + 2_000 * 15) / 1e6)
    plain = Price(1.0, 2.0)  # no cache prices: cached tokens cost the input price
    assert plain.cost(100, 10, cache_read_tokens=50) == pytest.approx((100 + 20) / 1e6)
    assert plain.cost(100, 0, cache_read_tokens=500) == pytest.approx(100 / 1e6)  # clamped


@pytest.mark.parametrize("spec", [(1.0, 2.0), [1.0, 2.0, 1.25, 0.1],
                                  {"input": 1.0, "output": 2.0, "cache_read": 0.1}])
def test_price_per_mtok_forms(spec):
    price = price_of(spec)
    assert (price.input, price.output) == (1.0, 2.0)


@pytest.mark.parametrize("spec", [(1.0,), (1, 2, 3, 4, 5), {"input": 1.0}, {"in": 1, "out": 2},
                                  (1.0, float("nan")), (-1.0, 2.0), "cheap", (True, 1.0)])
def test_bad_price_per_mtok_is_refused(spec):
    with pytest.raises(ConfigError, match="price"):
        price_of(spec)


# -- cost of the openai backend -----------------------------------------------------------------
def test_cached_prompt_tokens_are_charged_at_the_cache_price(fake_openai, openai_backend,
                                                            remote_loopback):
    fake_openai.enqueue("ok", usage={"prompt_tokens": 10_000, "completion_tokens": 1_000,
                                     "prompt_tokens_details": {"cached_tokens": 8_000}})
    completion = openai_backend(model="gpt-4.1-mini", api_key="sk-test").complete(ask())
    assert completion.cached_input_tokens == 8_000
    assert completion.cost_usd == pytest.approx((2_000 * 0.40 + 8_000 * 0.10 + 1_000 * 1.60)
                                                / 1e6)


def test_deepseek_cache_hits_are_read_too(fake_openai, remote_loopback):
    fake_openai.enqueue("ok", usage={"prompt_tokens": 1_000, "completion_tokens": 100,
                                     "prompt_cache_hit_tokens": 600})
    backend = registry.create_backend("deepseek", {"model": "deepseek-chat", "api_key": "k",
                                                   "base_url": fake_openai.url})
    completion = backend.complete(ask())
    backend.close()
    assert completion.cached_input_tokens == 600
    assert completion.cost_usd == pytest.approx((400 * 0.27 + 600 * 0.07 + 100 * 1.10) / 1e6)


def test_an_impossible_cached_count_is_refused(fake_openai, openai_backend):
    from rlm.errors import BadResponseError

    fake_openai.enqueue("ok", usage={"prompt_tokens": 10, "completion_tokens": 1,
                                     "prompt_tokens_details": {"cached_tokens": -5}})
    with pytest.raises(BadResponseError, match="cached_input_tokens"):
        openai_backend().complete(ask())


def test_openrouter_is_charged_the_cost_it_reports(fake_openai, remote_loopback):
    backend = registry.create_backend("openrouter", {
        "model": "anthropic/claude-sonnet-4", "api_key": "or-key", "base_url": fake_openai.url})
    fake_openai.enqueue("ok", usage={"prompt_tokens": 1000, "completion_tokens": 10,
                                     "cost": 0.0123})
    assert backend.complete(ask()).cost_usd == pytest.approx(0.0123)
    # no usable cost reported: the table's price of the vendor's model
    for cost in (None, -1.0, "free"):
        fake_openai.enqueue("ok", usage={"prompt_tokens": 1000, "completion_tokens": 10,
                                         "cost": cost})
        assert backend.complete(ask()).cost_usd == pytest.approx((1000 * 3 + 10 * 15) / 1e6)
    assert backend.estimate_cost(ask()) is not None  # priced, so max_budget works
    backend.close()


def test_a_reported_cost_is_ignored_by_other_services(fake_openai, remote_loopback):
    backend = registry.create_backend("groq", {"model": "llama-3.1-8b-instant", "api_key": "g",
                                               "base_url": fake_openai.url})
    fake_openai.enqueue("ok", usage={"prompt_tokens": 1000, "completion_tokens": 100,
                                     "cost": 99.0})
    assert backend.complete(ask()).cost_usd == pytest.approx((1000 * 0.05 + 100 * 0.08) / 1e6)
    backend.close()


# -- presets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMED)
def test_every_service_is_a_backend_of_its_own_name(name, monkeypatch):
    preset = PRESETS[name]
    if preset.key_env:
        monkeypatch.setenv(preset.key_env, f"{name}-secret")
    if preset.url_env:
        monkeypatch.setenv(preset.url_env, "https://myres.openai.azure.com/")
    backend = registry.create_backend(name, {"model": "m"})
    assert isinstance(backend, OpenAIBackend)
    assert backend.name == name and backend.provider == name
    assert backend.describe()["backend"] == name
    expected = preset.base_url or "https://myres.openai.azure.com/openai/v1"
    assert backend.base_url == expected
    assert backend.secrets() == ([f"{name}-secret"] if preset.key_env else [])
    backend.close()


@pytest.mark.parametrize("name", [n for n in NAMED if PRESETS[n].key_env])
def test_a_paid_service_without_its_key_says_which_variable(name):
    options = {"model": "m", "base_url": "https://example.com/v1"}
    with pytest.raises(MissingKeyError, match=PRESETS[name].key_env):
        registry.create_backend(name, options)


def test_azure_needs_an_endpoint_and_sends_the_key_as_api_key(fake_openai, remote_loopback):
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        registry.create_backend("azure", {"model": "my-deployment", "api_key": "az"})
    backend = registry.create_backend("azure", {"model": "gpt-4o-mini", "api_key": "az-key",
                                                "base_url": fake_openai.url})
    backend.complete(ask())
    backend.close()
    [seen] = fake_openai.requests
    assert seen.headers["api-key"] == "az-key" and "authorization" not in seen.headers
    assert seen.body["model"] == "gpt-4o-mini"


def test_groq_runs_an_rlm_as_the_seed_writes_it(fake_openai, remote_loopback, monkeypatch):
    """``RLM(backend="groq", backend_kwargs={"model": ...})``: key from GROQ_API_KEY, the
    table's price charged, the request sent with a bearer key."""
    monkeypatch.setenv("GROQ_API_KEY", "gsk-seed")
    fake_openai.enqueue(repl("FINAL(6 * 7)"), usage=(2_000, 50))
    rlm = RLM(backend="groq", backend_kwargs={"model": "llama-3.3-70b-versatile",
                                              "base_url": fake_openai.url},
              max_budget=1.0)
    result = rlm.completion("What is 6 * 7?")
    rlm.close()
    assert result.response == "42"
    assert result.cost_usd == pytest.approx((2_000 * 0.59 + 50 * 0.79) / 1e6)
    assert fake_openai.requests[0].headers["authorization"] == "Bearer gsk-seed"
    assert fake_openai.requests[0].body["model"] == "llama-3.3-70b-versatile"


def test_self_hosted_services_are_free_and_keyless():
    for name in ("vllm", "ollama", "llamacpp"):
        backend = registry.create_backend(name, {"model": "qwen",
                                                 "base_url": "http://gpu-box.internal:8000/v1"})
        assert backend.api_key is None and backend.estimate_cost(ask()) == 0.0
        backend.close()


# -- rlm models ---------------------------------------------------------------------------------
def test_rlm_models_lists_backends_models_and_prices():
    from click.testing import CliRunner

    from rlm.cli import cli

    out = CliRunner().invoke(cli, ["models", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["checked"] == prices.checked()
    listed = {entry["backend"]: entry for entry in data["backends"]}
    assert set(listed) == set(registry.backend_names())
    sonnet = next(m for m in listed["anthropic"]["models"] if m["model"] == "claude-sonnet-4")
    assert (sonnet["input"], sonnet["output"], sonnet["cache_write"], sonnet["cache_read"]) == (
        3.0, 15.0, 3.75, 0.30)
    assert "free" in listed["vllm"]["note"] and not listed["vllm"]["models"]
    assert any(m["model"] == "anthropic/claude-sonnet-4" for m in listed["openrouter"]["models"])
    text = CliRunner().invoke(cli, ["models", "groq"])
    assert text.exit_code == 0 and "llama-3.3-70b-versatile" in text.output
    assert "0.59" in text.output and "anthropic" not in text.output
    assert CliRunner().invoke(cli, ["models", "nope"]).exit_code == 2
