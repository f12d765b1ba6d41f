"""The embedded model's runtime: one copy of the weights, batched one-shot calls, schemas."""

from __future__ import annotations

import json
import threading

import pytest

from rlm import CompletionRequest
from rlm.backends.local import LocalBackend, schema_choices
from rlm.backends.local_runtime import Generation
from rlm.errors import ConfigError

#: Unique to this module, so no other test's cached prompt shares more than it.
PREAMBLE = ("You sort warehouse tickets for the Quillmoor depot. Describe the ticket in one "
            "short sentence.\nTicket:")


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def ask(text: str, **kw: object) -> CompletionRequest:
    kw.setdefault("max_output_tokens", 12)
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_batch_backend(local_model_path):
    """A backend of its own: three lanes, a batch window small enough to overflow, and
    every generating call in one decode call (``batch_exact=False``)."""
    backend = LocalBackend(str(local_model_path), n_ctx=2048, lanes=3, batch_window=256,
                           batch_exact=False, parallel=6)
    yield backend
    backend.close()


def test_every_lane_and_the_batch_share_one_copy_of_the_weights(small_batch_backend):
    backend = small_batch_backend
    backend.complete(ask("Say hi.", cache_key="a", purpose="turn"))  # pages the weights in
    before = _rss_mb()
    backend.complete(ask("Say hi.", cache_key="b", purpose="turn"))
    second_lane_mb = _rss_mb() - before
    backend.complete(ask("Say hi."))  # the batch context
    runtime, engine = backend._loaded()
    contexts = [*engine._lanes.values(), engine._batch]
    assert len(contexts) == 3 and all(c is not None for c in contexts)
    assert {id(c._ctx.model) for c in contexts} == {id(runtime.model)}
    # a lane is its KV cache and buffers, not another ~1 GB of weights (the old backend
    # loaded a Llama per lane: about 2 GB each)
    assert second_lane_mb < 500, second_lane_mb


def test_a_one_shot_call_too_long_for_the_batch_runs_in_a_lane(small_batch_backend):
    backend = small_batch_backend
    text = "Repeat the word apple. " + "apple " * 300
    result = backend.complete(ask(text, max_output_tokens=4))
    assert result.input_tokens > backend.batch_window and result.output_tokens > 0
    assert "_oneshot" in backend._loaded()[1]._lanes


def test_concurrent_one_shot_calls_get_the_replies_they_get_alone(local_backend):
    """Decoded together, each call's reply is the one it gets alone at temperature 0.

    Each reply depends on its prompt and on where its cached prefix ends (as before);
    never on which calls share its decode calls.  The prompts share ``PREAMBLE`` and
    differ from the first token after it (each starts with another letter), and a primer
    call makes that the cached prefix of every prompt in both runs.
    """
    prompts = [f"{PREAMBLE} {item}" for item in [
        "nails in a crate", "pallet broken", "lorry late", "boxes wet", "label missing",
        "forklifts idle", "alarm in cold storage", "flour, ten bags"]]
    primer = ask(f"{PREAMBLE} x")
    local_backend.complete(primer)
    alone = [local_backend.complete(ask(p)) for p in prompts]
    local_backend.complete(primer)  # no slot keeps a whole prompt of this test
    together: dict[int, object] = {}

    def call(index: int) -> None:
        together[index] = local_backend.complete(ask(prompts[index]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(c.text, c.output_tokens, c.cached_input_tokens) for c in alone] == [
        (c.text, c.output_tokens, c.cached_input_tokens)  # type: ignore[attr-defined]
        for c in (together[i] for i in range(len(prompts)))]
    assert all(c.text for c in alone)


def test_one_shot_calls_reuse_a_shared_prefix(local_backend):
    first = local_backend.complete(ask(f"{PREAMBLE} screws, a box"))
    second = local_backend.complete(ask(f"{PREAMBLE} bolts, a box"))
    preamble_tokens = len(local_backend._loaded()[0].tokenize(PREAMBLE))
    assert second.cached_input_tokens >= preamble_tokens
    assert second.cached_input_tokens < second.input_tokens == first.input_tokens


def test_a_response_schema_constrains_the_reply(local_backend):
    schema = {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}
    assert LocalBackend.enforces_schema is True
    for purpose in ("query", "turn"):  # a turn with a schema gets no code fence
        result = local_backend.complete(CompletionRequest(
            messages=[{"role": "user", "content": "List the letters a, b and a again, as a "
                                                  "JSON array."}],
            response_schema=schema, max_output_tokens=40, purpose=purpose))
        value = json.loads(result.text)
        assert isinstance(value, list) and all(item in ("a", "b") for item in value)


def test_an_invalid_grammar_is_a_config_error(local_backend):
    with pytest.raises(ConfigError, match="GBNF"):
        local_backend.complete(ask("Hi", grammar="root ::= ("))


def test_without_exact_batches_every_concurrent_call_is_answered(small_batch_backend):
    prompts = [f"Say the word {word}." for word in ("red", "green", "blue", "black", "white")]
    results: dict[int, object] = {}

    def call(index: int) -> None:
        results[index] = small_batch_backend.complete(ask(prompts[index], max_output_tokens=6))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == len(prompts)
    for result in results.values():
        assert result.text and 0 < result.output_tokens <= 6  # type: ignore[attr-defined]


class _Pieces:
    """A stand-in vocabulary: token n is the n-th piece; 0 ends the generation."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def is_eog(self, token: int) -> bool:
        return token == 0

    def piece(self, token: int) -> bytes:
        return self.pieces[token]


def _generate(pieces: list[bytes], tokens: list[int], max_tokens: int = 10,
              stop: tuple[str, ...] = ()) -> tuple[str, int]:
    generation = Generation(_Pieces(pieces), max_tokens, stop)  # type: ignore[arg-type]
    for token in tokens:
        if generation.add(token):
            break
    generation.finish()
    return generation.reply(), len(generation.tokens)


def test_a_reply_ends_at_end_of_generation_a_stop_string_or_the_budget():
    pieces = [b"", b"ab", b"c```", b"d", "é".encode()[:1], "é".encode()[1:]]
    assert _generate(pieces, [1, 3, 0, 1]) == ("abd", 2)  # end of generation: not text
    assert _generate(pieces, [1, 2, 3], stop=("```",)) == ("abc", 2)  # cut before the stop
    assert _generate(pieces, [1, 3, 1, 3], max_tokens=3) == ("abdab", 3)
    # half a character is never the last token: the budget waits for the other half
    assert _generate(pieces, [1, 4, 5, 3], max_tokens=2) == ("abé", 3)


def test_a_choice_ends_as_soon_as_its_start_names_one_option():
    pieces = [b"", b"[", b' "', b"desc", b"ription", b'"]', b'"', b"d"]
    choices = ('["description"]', '["distance"]', '["numeric"]')
    generation = Generation(_Pieces(pieces), 10, (), choices)  # type: ignore[arg-type]
    # '[' and ' "' leave three options; 'desc' leaves one: the rest is what the grammar forces
    assert [generation.add(token) for token in (1, 2, 3)] == [False, False, True]
    assert generation.reply() == '["description"]' and len(generation.tokens) == 3
    shared = Generation(_Pieces(pieces), 10, (), ('"d"', '"dd"'))  # type: ignore[arg-type]
    assert not shared.add(6) and not shared.add(7)  # '"d' starts both: not decided yet


def test_only_a_plain_choice_among_strings_is_a_choice():
    assert schema_choices({"enum": ["a", "b c"]}) == ('"a"', '"b c"')
    assert schema_choices({"type": "array", "items": {"enum": ["a", "b"]},
                           "minItems": 1, "maxItems": 1}) == ('["a"]', '["b"]')
    for schema in ({"enum": ["a", 1]}, {"enum": []}, {"type": "integer", "enum": [1]},
                   {"enum": ["a"], "pattern": "a"}, {"type": "array", "items": {"enum": ["a"]}},
                   {"type": "array", "items": {"type": "string"}, "minItems": 1,
                    "maxItems": 1}, None):
        assert schema_choices(schema) == ()  # type: ignore[arg-type]


def test_a_label_costs_three_tokens_at_most_and_is_the_full_grammar_s_choice(local_backend):
    schema = {"type": "array", "items": {"enum": ["description", "location", "numeric"]},
              "minItems": 1, "maxItems": 1}
    question = ("Which label fits the question? description (asks for a reason), location "
                "(asks for a place), numeric (asks for a number)\n\nAnswer for each of the "
                "1 items below, in order, with a JSON list of 1 values.\n\n1. ")
    for text, label in (("Where is Velmora located?", "location"),
                        ("How far is Tarn from Orla?", "numeric")):
        quick = local_backend.complete(ask(question + text, response_schema=schema))
        full = local_backend.complete(ask(question + text, grammar=local_backend._schema_grammar(
            schema)))  # the same grammar without the early end: every token generated
        assert json.loads(quick.text) == json.loads(full.text) == [label]
        assert quick.output_tokens <= 3 < full.output_tokens  # "[", "\"", "location"
