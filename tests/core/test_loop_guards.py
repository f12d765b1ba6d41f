"""What the loop does so that nothing a small model does wastes the run: repeated blocks,
FINAL written before the output was seen, answers never seen, long output and history."""

from __future__ import annotations

from rlm import RLM
from rlm.core.compaction import DIGEST_HEADER, compact, estimate
from rlm.core.evidence import Seen, computed, grounding
from rlm.core.excerpts import keep_matches, search_terms
from rlm.core.repeats import BlockMemory, question_words
from rlm.result import RLMResult
from tests.conftest import repl

CONTEXT = ("log line about nothing\n" * 200 + "2024-03-01 the Kellport harbour master is "
           "Ada Vance\n" + "more noise here\n" * 200)


def run(replies, question="Who is the harbour master?", context=CONTEXT, **kwargs
        ) -> tuple[RLMResult, list[list[dict]]]:
    requests: list[list[dict]] = []
    script = list(replies)

    def reply(messages, depth):
        requests.append([dict(m) for m in messages])
        return script.pop(0)

    rlm = RLM(backend="scripted", backend_kwargs={"responses": reply}, **kwargs)
    return rlm.completion(question, context=context), requests


def notes(result: RLMResult) -> list[str]:
    return [e.data["kind"] for e in result.trace.events if e.type == "note"]


# -- a reply with code and a FINAL line ---------------------------------------------------------
def test_a_final_line_after_code_is_not_accepted_until_the_output_was_seen():
    reply = repl("print(context.count('harbour'))") + "\nFINAL(Bob Stone)"
    result, requests = run([reply, repl("FINAL('Ada Vance')")])
    assert result.response == "Ada Vance" and result.iterations == 2
    feedback = requests[1][-1]["content"]
    assert "Output:\n1" in feedback and "was not accepted" in feedback
    assert notes(result) == ["final_with_code"]


def test_a_final_line_alone_is_still_an_answer():
    result, _ = run(["FINAL(Ada Vance)"])
    assert (result.response, result.iterations) == ("Ada Vance", 1)


# -- repeated blocks ----------------------------------------------------------------------------
def test_a_repeated_fruitless_block_is_not_run_and_the_model_gets_the_word_counts():
    search = repl("import re\nprint([l for l in context.split('\\n') "
                  "if re.search('harbour and master and Kell', l)])")
    spaced = search.replace("import re\n", "import re  # again\n\n")
    result, requests = run([search, spaced, repl("FINAL('Ada Vance')")],
                           question="Who is the harbour master of Kellport?",
                           temperature=0.0)
    ran = [e.data["code"] for e in result.trace.code_executions]
    assert sum("harbour and master" in code for code in ran) == 1  # the repeat never ran
    feedback = requests[2][-1]["content"]
    assert "it was not run again" in feedback
    assert "occurrences in context:" in feedback and "'Kellport': 1" in feedback
    assert "Ada Vance" in feedback  # the window around the rarest word that occurs
    assert notes(result) == ["repeat"]
    assert result.response == "Ada Vance"


def test_the_turn_after_a_repeat_is_sampled(scripted):
    seen: list[float | None] = []
    backend = scripted([repl("print(1/0)"), repl("print(1 / 0)"), repl("FINAL('x')")])
    original = backend.complete

    def complete(request):
        seen.append(request.temperature)
        return original(request)

    backend.complete = complete
    RLM(backend=backend, temperature=0.0).completion("q", context="c")
    assert seen[0] == 0.0 and seen[2] is not None and seen[2] > 0.5


def test_blocks_that_differ_in_their_search_words_or_submit_an_answer_are_not_repeats():
    memory = BlockMemory()
    memory.record("print(context.count('harbour'))", fruitless=True)
    assert memory.repeat_of("print(context.count( 'harbour' ))") == 1
    assert memory.repeat_of("print(context.count('master'))") is None
    memory.record("FINAL_VAR('answer')", fruitless=True)
    assert memory.repeat_of("FINAL_VAR('answer')") is None


def test_a_stuck_model_still_stops_at_max_errors():
    result, _ = run([repl("1 / 0")] * 10, max_errors=2, max_iterations=10)
    assert result.stop_reason == "errors"


def test_question_words_put_names_and_long_words_first():
    assert question_words("What is the harbour of the ship named Kellport?")[:2] == [
        "Kellport", "harbour"]


# -- answers never seen -------------------------------------------------------------------------
def test_an_invented_answer_gets_one_check_on_the_small_profile():
    result, requests = run([repl("FINAL('Port Velmora')"),
                            repl("print(context.count('Velmora'))"),
                            repl("FINAL('Port Velmora')")], prompt_profile="small")
    assert "does not appear in any output" in requests[1][-1]["content"]
    assert result.response == "Port Velmora" and result.iterations == 3  # checked once only
    assert result.evidence == []
    assert notes(result) == ["answer_refused"]


def test_an_answer_seen_in_an_output_is_accepted_with_its_evidence():
    result, _ = run([repl("import re\nm = re.search('master is (.*)', context)\n"
                          "print(m.group(0))"), repl("FINAL('Ada Vance')")],
                    prompt_profile="small")
    assert (result.response, result.iterations) == ("Ada Vance", 2)
    assert result.evidence[0]["kind"] == "output" and result.evidence[0]["iteration"] == 1
    assert "master is Ada Vance" in result.evidence[0]["excerpt"]
    final = next(e for e in result.trace.events if e.type == "final")
    assert final.data["evidence"] == result.evidence


def test_a_computed_answer_is_accepted_at_once():
    code = "import re\nname = re.search('master is (.*)', context).group(1)\nFINAL(name)"
    result, _ = run([repl(code)], prompt_profile="small")
    assert (result.response, result.iterations) == ("Ada Vance", 1)
    assert result.evidence[0]["kind"] == "code"


def test_the_default_profile_does_not_check_unless_asked():
    assert run([repl("FINAL('x')")])[0].iterations == 1
    assert run([repl("FINAL('x')"), repl("FINAL('x')")], verify_answers=True)[0].iterations == 2


def test_grounding_rules():
    seen = [Seen(1, "found: Ada Vance, harbour master")]
    assert grounding("Ada Vance", seen).grounded
    assert grounding("ada vance.", seen).grounded  # case and trailing punctuation
    assert not grounding("Ada", [Seen(1, "Adams")]).grounded  # whole words only
    assert grounding("yes", []).grounded  # a judgement, not a fact read from the input
    assert grounding("Kellport", [], question="Is Kellport a port?").grounded
    assert computed("FINAL(name)") and computed("FINAL_VAR('x')")
    assert not computed("FINAL('Ada')") and not computed("FINAL(f'Ada')")


# -- long output ----------------------------------------------------------------------------------
def test_a_long_line_is_cut_around_what_the_code_searched_for():
    line = "filler " * 10_000 + "the code is 32-ALPHA-693 " + "filler " * 10_000
    code = "print([l for l in context.split('\\n') if 'ALPHA' in l])"
    shown = keep_matches(line, 2_000, search_terms(code))
    assert "32-ALPHA-693" in shown and len(shown) < 2_400
    assert "characters not shown" in shown
    # Nothing searched for: head and tail, as before.
    assert "32-ALPHA-693" not in keep_matches(line, 2_000, search_terms("print(context)"))


def test_the_fed_back_output_of_a_one_line_document_keeps_the_match():
    context = "word " * 30_000 + "the harbour master is Ada Vance. " + "word " * 30_000
    _, requests = run([repl("print(context if 'harbour' in context else '')"),
                            repl("FINAL('Ada Vance')")], context=context,
                           prompt_profile="small")
    assert "harbour master is Ada Vance" in requests[1][-1]["content"]
    assert len(requests[1][-1]["content"]) < 3_000


# -- history near the window ----------------------------------------------------------------------
def test_old_turns_are_folded_into_a_digest_when_the_history_nears_the_window():
    messages = [{"role": "system", "content": "s" * 300},
                {"role": "user", "content": "Question: who?"}]
    for turn in range(1, 11):
        messages += [{"role": "assistant", "content": f"```python\nprint({turn})\n```"},
                     {"role": "user", "content": f"Output:\nresult {turn} " + "x" * 900}]
    window = 2_000
    folded = compact(messages, window, reserve_tokens=200)
    assert folded >= 5
    assert estimate(messages) <= 0.8 * (window - 200)
    first = messages[1]["content"]
    assert first.startswith("Question: who?") and DIGEST_HEADER in first
    assert "turn 1 ran: print(1) and printed: result 1" in " ".join(first.split())
    assert messages[-1]["content"].startswith("Output:\nresult 10")
    assert [m["role"] for m in messages[1:]] == ["user"] + ["assistant", "user"] * (
        (len(messages) - 2) // 2)
    # Folding again keeps numbering the turns from where the digest left off.
    messages += [{"role": "assistant", "content": "```python\nprint(11)\n```"},
                 {"role": "user", "content": "Output:\n" + "y" * 3_000}]
    compact(messages, window, reserve_tokens=200)
    assert f"turn {folded + 1} ran: print({folded + 1})" in " ".join(
        messages[1]["content"].split())


def test_a_long_run_on_a_small_window_never_overflows(scripted):
    backend = scripted([repl(f"print('{n}' * 1500)") for n in range(12)]
                       + [repl("FINAL('done')")])
    backend.context_window = 4_000
    biggest = 0
    original = backend.complete

    def complete(request):
        nonlocal biggest
        biggest = max(biggest, estimate(request.messages))
        return original(request)

    backend.complete = complete
    result = RLM(backend=backend, max_iterations=20).completion("q", context="c")
    assert result.response == "done" and biggest < 4_000 - 1_024
    assert "compacted" in notes(result)


def test_the_answer_of_a_worked_example_is_refused_every_time_unless_seen():
    computed_answer = "import re\nFINAL(re.search('master is (.*)', context).group(1))"
    result, requests = run([repl("FINAL('Tarn')"), repl("FINAL('Tarn')"),
                            repl(computed_answer)], prompt_profile="small")
    assert result.response == "Ada Vance" and result.iterations == 3
    assert "answer of an example" in requests[1][-1]["content"]
    assert "answer of an example" in requests[2][-1]["content"]
    # Seen in an output, the same word is an answer like any other.
    seen, _ = run([repl("print('the port is 8443')"), repl("FINAL('8443')")],
                  prompt_profile="small")
    assert (seen.response, seen.iterations) == ("8443", 2)


def test_a_small_model_writing_a_fruitless_block_a_third_time_stops_with_an_extracted_answer():
    search = repl("print([l for l in context.split('\\n') if 'Quux' in l])")
    result, requests = run([search] * 6 + ["my best guess"], prompt_profile="small",
                           max_iterations=10)
    ran = [e.data["code"] for e in result.trace.code_executions]
    assert sum("'Quux' in l" in code for code in ran) == 1  # run once, refused twice
    assert notes(result) == ["repeat", "repeat", "stuck"]
    assert (result.stop_reason, result.answer_source) == ("errors", "extract")
    assert len(requests) == 4  # three turns and the extraction, not ten turns
    # the default profile keeps refusing and going on (a capable model rarely repeats)
    result, _ = run([search] * 4 + [repl("FINAL('Ada Vance')")], max_iterations=10)
    assert result.response == "Ada Vance" and notes(result) == ["repeat"] * 3
