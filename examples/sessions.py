"""Sessions: ``persistent=True`` keeps one REPL across several ``completion()`` calls.

Each call adds its input as ``context_0``, ``context_1``, ... (``context`` is always the
latest one), and ``history`` holds ``{"question", "answer"}`` for every earlier call.
Variables the model created in one call are still there in the next.

The scripted model here answers three questions about two documents:

1. "How many words?" about document A; it keeps the word list in ``words_a``.
2. "How many words?" about document B.
3. "Which one is longer?" with no new document: it compares the earlier inputs.

Use ``with RLM(...) as rlm:`` (or call ``rlm.close()``) to close the REPL at the end.

Run it with::

    python examples/sessions.py
"""

from __future__ import annotations

from rlm import RLM


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


SCRIPT = [
    # call 1: context is document A (also context_0)
    repl("words_a = context.split()\nFINAL(f'{len(words_a)} words')"),
    # call 2: context is document B (also context_1); words_a is still defined
    repl("words_b = context.split()\nFINAL(f'{len(words_b)} words')"),
    # call 3: context is the question-only input; history lists the earlier answers
    repl(
        "print(history)\n"
        "longer = 'A' if len(context_0.split()) > len(context_1.split()) else 'B'\n"
        "FINAL(f'document {longer} ({len(words_a)} vs {len(words_b)} words; '\n"
        "      f'{len(history)} earlier answers in history)')"
    ),
]

DOC_A = "the quick brown fox jumps over the lazy dog " * 30
DOC_B = "lorem ipsum dolor sit amet " * 80


def main() -> None:
    with RLM(backend="scripted", backend_kwargs={"responses": SCRIPT},
             persistent=True) as rlm:
        first = rlm.completion("How many words?", context=DOC_A)
        second = rlm.completion("How many words?", context=DOC_B)
        third = rlm.completion("Which document is longer?", context="(no new document)")

    print(f"call 1: {first.response}")
    print(f"call 2: {second.response}")
    print(f"call 3: {third.response}")
    print(f"stop_reasons: {[r.stop_reason for r in (first, second, third)]}")


if __name__ == "__main__":
    main()
