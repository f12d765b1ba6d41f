"""The iteration loop of one RLM node, written once as a sans-IO generator.

``Loop.steps()`` yields what it needs done (``CallLM``, ``RunCode``) and is sent the
results; a limit reached while doing a step is thrown into it.  The sync and async drivers
in ``rlm.core.engine`` only perform the steps, so both behave the same.

A ``FINAL(...)`` or ``FINAL_VAR(...)`` line written outside code is run as a code block of
its own (``RunCode("FINAL(...)")``), so it gets the block time limit, the environment's
error capture and its isolation like any other code.  When that block submits an answer,
it is the answer.  Otherwise a ``FINAL_VAR`` line's error is fed back to the model, and a
``FINAL`` line's inner text, stripped, is the answer: ``FINAL(the answer is 42)`` is prose.
That fallback is the protocol working, not a failure of the model's code: it does not
count towards ``max_errors``.  The exception is an answer the REPL refused as too long
(``AnswerTooLong``): that error is fed back and counted, as it would be in a code block.

Answers are bounded by ``LoopConfig.max_answer_chars``: the REPL refuses a longer one
(``rlm.bridge.guest``); one that still comes back longer from an environment that does not
apply the setting is cut with a marker here.  Trace events keep bounded previews of long
code, output and answers (``rlm.trace.preview``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from rlm.bridge.guest import MAX_ANSWER_CHARS
from rlm.core import prompts
from rlm.core.compaction import compact, estimate
from rlm.core.evidence import Seen, grounding
from rlm.core.handler import cap_answer
from rlm.core.limits import Ledger
from rlm.core.parsing import find_code_blocks, find_final_line, strip_code
from rlm.core.repeats import BlockMemory, found_nothing, probe_code, question_words
from rlm.core.strategy import Plan
from rlm.errors import Cancelled, ConfigError, LimitExceeded
from rlm.trace.preview import preview_fields
from rlm.trace.tracer import Tracer
from rlm.types import (
    Answer,
    Completion,
    CompletionRequest,
    ExecResult,
    Message,
    NodeRef,
    StopReason,
)

__all__ = ["AnswerCheck", "CallLM", "Loop", "LoopConfig", "Outcome", "RunCode", "Step"]


@dataclass(frozen=True)
class CallLM:
    """Ask the node's model for its next reply (``purpose`` is ``"turn"`` or ``"extract"``)."""

    request: CompletionRequest
    purpose: str = "turn"


@dataclass(frozen=True)
class RunCode:
    """Run one code block in the node's environment; send back an ``ExecResult``.
    ``time_share``: the share of the time left it may take (``None``: the configured one)."""

    code: str
    time_share: float | None = None


Step = CallLM | RunCode

AnswerCheck = Callable[[str], str | None]
"""Checks a submitted answer: ``None`` accepts it, a message (fed back to the model as an
error of that turn) refuses it; ``completion(..., schema=...)`` checks the answer's shape."""

#: The temperature of the turn after a repeated block, so the model does not repeat again.
REPEAT_TEMPERATURE = 0.7
#: Repeats of fruitless blocks a node may write (each refused) before its turns end.
MAX_REPEATS = 1
#: The share of the time left the opening block may take (it labels every record; the
#: turns after it only count).
OPENING_TIME_SHARE = 0.8
#: Tokens kept free for a reply when compacting, when ``max_output_tokens`` is not set.
DEFAULT_REPLY_TOKENS = 1024

#: Code output kept in a trace event (head and tail), so huge prints do not bloat traces.
TRACE_OUTPUT_CHARS = 100_000


_REQUIRED = ("max_output_chars", "max_concurrency")


@dataclass(frozen=True)
class LoopConfig:
    """How every node of the tree runs, apart from the limits: ``RLM(loop=LoopConfig(...))``.

    - ``max_output_chars``: code output fed back to the model per turn (head and tail kept).
    - ``max_answer_chars``: the longest answer, in characters (``None``: no limit).  The
      REPL refuses a longer ``FINAL``/``FINAL_VAR`` with an ``AnswerTooLong`` error the
      model sees; an ``llm_query`` reply or ``rlm_query`` answer handed to REPL code is cut
      to it with a marker.
    - ``max_output_tokens`` / ``sub_call_max_output_tokens``: caps on the tokens one reply
      may generate, for the nodes' turns and for sub-calls (``None``: the backend's default).
    - ``temperature``: for every call (``None``: the backend's default).
    - ``max_concurrency``: how many calls of one batched request run at once.
    - ``extract_on_limit``: when the turns run out, ask once more for a plain answer.
    - ``system_prompt``: replaces the profile's system prompt (a ``str.format`` template).
    - ``prompt_profile``: the prompt wording, ``"default"`` or ``"small"``
      (``rlm.core.prompts.PROFILES``); ``None``: the one the backend asks for.
    - ``sub_calls=False``: a REPL-only RLM, ``llm_query`` / ``rlm_query`` disabled and not
      offered in the prompt (the paper's "no sub-calls" ablation).
    - ``block_time_share``: under ``max_timeout``, the share of the time left one block may
      use (at least ``MIN_BLOCK_S``), so a runaway block leaves the model time to react.
    - ``verify_answers``: an answer the model never saw in an output and did not compute
      gets one verification turn before it is accepted (``rlm.core.evidence``); ``None``:
      the prompt profile decides (on for ``small``, off for ``default``).
    """

    max_output_chars: int = 20_000
    max_answer_chars: int | None = MAX_ANSWER_CHARS
    max_output_tokens: int | None = None
    sub_call_max_output_tokens: int | None = None
    temperature: float | None = None
    max_concurrency: int = 16
    extract_on_limit: bool = True
    system_prompt: str | None = None
    prompt_profile: str | None = None
    sub_calls: bool = True
    block_time_share: float = 0.5
    verify_answers: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_output_chars", "max_concurrency", "max_answer_chars",
                     "max_output_tokens", "sub_call_max_output_tokens"):
            value, optional = getattr(self, name), name not in _REQUIRED
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                kind = "a positive int or None" if optional else "a positive int"
                raise ConfigError(f"{name} must be {kind}, got {value!r}")
        if self.prompt_profile is not None and self.prompt_profile not in prompts.PROFILES:
            raise ConfigError(f"unknown prompt_profile {self.prompt_profile!r}; choose one of "
                              f"{', '.join(sorted(prompts.PROFILES))}")
        if not 0 < self.block_time_share <= 1:
            raise ConfigError(f"block_time_share must be in (0, 1], got {self.block_time_share!r}")


@dataclass(frozen=True)
class Outcome:
    """How a node ended."""

    response: str
    stop_reason: StopReason
    iterations: int
    answer_source: str | None
    #: Where the answer came from (``RLMResult.evidence``).
    evidence: tuple[dict[str, Any], ...] = ()


def _reason(exc: BaseException, budget: Ledger) -> StopReason:
    if isinstance(exc, Cancelled) and budget.tripped is not None:
        return budget.tripped.stop_reason
    return getattr(exc, "stop_reason", "cancelled")


def _refused(result: ExecResult) -> bool:
    """Whether the block's error is the REPL refusing an answer over ``max_answer_chars``."""
    last = (result.error or "").rstrip().rpartition("\n")[2]
    return "AnswerTooLong:" in last


class Loop:
    """The REPL loop of one node: ask, run the code, feed the output back, until FINAL.

    ``question`` is the node's question (its distinctive words guide the model after a
    repeated block); ``window_tokens`` is its model's window, so the history is compacted
    before it overflows (``None``: never compacted); ``answer_check`` refuses answers of
    the wrong shape; ``opening`` is a strategy whose first step the engine takes
    (``rlm.core.strategy.Plan``): its code runs before the first turn and its note on the
    output ends the first user message.  On a profile that says so (``stop_when_stuck``),
    a node whose model writes a fruitless block a third time has no turns left: it stops
    (``"errors"``) with an answer extracted from what it saw.
    """

    def __init__(self, node: NodeRef, budget: Ledger, messages: list[Message],
                 config: LoopConfig, tracer: Tracer, prompt_profile: str = "default",
                 answer_check: AnswerCheck | None = None, *, question: str | None = None,
                 window_tokens: int | None = None, opening: Plan | None = None) -> None:
        self.node = node
        self.answer_check = answer_check
        self.budget = budget
        self.messages = messages
        self.config = config
        self.tracer = tracer
        self.prompt_profile = prompt_profile
        self.question = question
        self.window_tokens = window_tokens
        #: The model's last reply: the best answer there is when the run fails before FINAL.
        self.last_reply = ""
        self.memory = BlockMemory()
        #: What the model was shown, turn by turn (the evidence an answer may come from).
        self.seen: list[Seen] = [Seen(0, m["content"]) for m in messages if m["role"] == "user"]
        self._verified = False
        self._shake = False
        self.opening = opening

    def _request(self, purpose: str = "turn") -> CompletionRequest:
        temperature = self.config.temperature
        if self._shake:  # the last reply repeated itself: sample this one
            temperature = max(temperature or 0.0, REPEAT_TEMPERATURE)
        return CompletionRequest(
            messages=list(self.messages), depth=self.node.depth,
            temperature=temperature,
            max_output_tokens=self.config.max_output_tokens,
            purpose=purpose, cache_key=self.node.run_id,
        )

    def _note(self, kind: str, **data: Any) -> None:
        self.tracer.emit("note", self.node, kind=kind, **data)

    def _compact(self) -> None:
        if self.window_tokens is None:
            return
        reserve = self.config.max_output_tokens or DEFAULT_REPLY_TOKENS
        folded = compact(self.messages, self.window_tokens, reserve)
        if folded:
            self._note("compacted", turns=folded, estimated_tokens=estimate(self.messages))

    def steps(self) -> Generator[Step, Any, Outcome]:
        """The node's turns, as steps to perform (see the module docstring)."""
        answer: Answer | None = None
        evidence: tuple[dict[str, Any], ...] = ()
        stop: StopReason = "final"
        last_prose = ""
        iterations = 0
        if self.opening is not None and self.opening.opening is not None:
            yield from self._open(self.opening)
        while answer is None:
            try:
                self.budget.start_iteration()
            except (LimitExceeded, Cancelled) as exc:
                stop = _reason(exc, self.budget)
                break
            iterations += 1
            self.node.iteration = iterations
            self._compact()
            try:
                completion: Completion = yield CallLM(self._request())
            except (LimitExceeded, Cancelled) as exc:
                stop = _reason(exc, self.budget)
                break
            self._shake = False
            reply = self.last_reply = completion.text
            self.messages.append({"role": "assistant", "content": reply})
            blocks = find_code_blocks(reply)
            last_prose = strip_code(reply, blocks).strip() or last_prose
            results: list[tuple[str, ExecResult]] = []
            submitted: tuple[Answer, str | None] | None = None
            for block in blocks:
                result = yield from self._run_block(block.code, len(results) + 1)
                results.append((block.code, result))
                if result.final is not None:
                    submitted = (result.final, block.code)
                    break
            if submitted is None and blocks and find_final_line(reply) is not None:
                # The model wrote FINAL before it saw what its code printed: not accepted.
                self._note("final_with_code")
                results.append(("", ExecResult(notes=(prompts.FINAL_WITH_CODE_NOTE,))))
            elif submitted is None:
                submitted = yield from self._final_outside_code(reply, results)
            if submitted is not None:
                refusal, found = self._review(*submitted, iteration=iterations)
                if refusal is None:
                    answer, evidence = self._bounded(submitted[0]), found
                    break
                results.append(("", ExecResult(notes=(refusal,))))
            feedback = prompts.turn_feedback(
                results, iteration=iterations, max_output_chars=self.config.max_output_chars,
                iterations_left=self.budget.remaining()["iterations_left"],
                prompt_profile=self.prompt_profile, question=self.question,
            ) if results else prompts.NO_CODE_FEEDBACK
            self.messages.append({"role": "user", "content": feedback})
            limit = prompts.output_limit(self.prompt_profile, self.config.max_output_chars)
            self.seen.extend(Seen(iterations, prompts.shown_output(code, result, limit))
                             for code, result in results if code)
            if self.budget.tripped is not None:
                stop = self.budget.tripped.stop_reason
                break
            if self._stuck():
                self._note("stuck", repeats=self.memory.repeats)
                stop = "errors"
                break
        if (answer is None and self.config.extract_on_limit
                and (stop == "max_iterations" or self._stuck())):
            answer = yield from self._extract()
        if answer is None:
            return Outcome(last_prose, stop, iterations, None)
        return Outcome(answer.text, stop if answer.source == "extract" else "final",
                       iterations, answer.source, evidence)

    def _stuck(self) -> bool:
        return (self.memory.repeats > MAX_REPEATS
                and prompts.profile(self.prompt_profile).stop_when_stuck)

    def _open(self, plan: Plan) -> Generator[Step, Any, None]:
        """Run the plan's opening (and summary) blocks; its note on what they printed ends
        the first user message."""
        assert plan.opening is not None
        shown = []
        limit = prompts.output_limit(self.prompt_profile, self.config.max_output_chars)
        for code, share in ((plan.opening, OPENING_TIME_SHARE), (plan.summary, None)):
            if code is None:
                continue
            result: ExecResult = yield RunCode(code, share)
            self._trace_exec(code, result)
            self.memory.record(code, found_nothing(result.stdout, result.error))
            if result.stdout or result.error or code is plan.summary:
                shown.append(prompts.shown_output(code, result, limit).rstrip())
        output = "\n".join(shown)
        self.seen.append(Seen(0, output))
        first = self.messages[-1]
        first["content"] = f"{first['content']}\n\n{plan.note.format(output=output)}"

    def _run_block(self, code: str, number: int) -> Generator[Step, Any, ExecResult]:
        """Run one block of the reply, unless it repeats a block that found nothing."""
        earlier = self.memory.repeat_of(code)
        if earlier is not None:  # a model error: a stuck model still meets max_errors
            self.memory.repeats += 1
            self.budget.count_error()
            self._shake = True
            words = question_words(self.question or "")
            self._note("repeat", block=number, repeats=earlier, words=words)
            probe = ExecResult()
            if words:
                probe = yield RunCode(probe_code(words))
                self._trace_exec("# rlm: the question's words in context\n"
                                 + probe_code(words), probe)
            note = prompts.repeat_note(earlier, bool(words) and not probe.error)
            return ExecResult(stdout="" if probe.error else probe.stdout, notes=(note,))
        result: ExecResult = yield RunCode(code)
        self._trace_exec(code, result)
        if result.error:
            self.budget.count_error()
        self.memory.record(code, found_nothing(result.stdout, result.error))
        return result

    def _review(self, answer: Answer, code: str | None, *, iteration: int
                ) -> tuple[str | None, tuple[dict[str, Any], ...]]:
        """Whether to accept a submitted answer: ``(refusal, evidence)``; a refusal is fed
        back to the model (a wrong shape, or one check of an answer it never saw)."""
        answer_text = self._bounded(answer).text
        if self.answer_check is not None:
            problem = self.answer_check(answer_text)
            if problem is not None:
                self.budget.count_error()
                self._note("answer_refused", reason="schema", message=problem)
                return prompts.answer_refused(problem), ()
        found = grounding(answer_text, self.seen, question=self.question or "", code=code,
                          iteration=iteration)
        verify = self.config.verify_answers
        if verify is None:
            verify = prompts.profile(self.prompt_profile).verify_answers
        if found.grounded or not verify:
            return None, found.evidence
        examples = prompts.profile(self.prompt_profile).example_answers
        if " ".join(answer_text.lower().split()).strip(" .\"'") in examples:
            # The answer of a worked example, seen in no output: copied, never accepted.
            self.budget.count_error()
            self._note("answer_refused", reason="example", answer=answer_text[:200])
            return prompts.example_note(answer_text), ()
        if self._verified:
            return None, found.evidence
        self._verified = True
        self._note("answer_refused", reason="unseen", answer=answer_text[:200])
        return prompts.verify_note(answer_text), ()

    def _bounded(self, answer: Answer) -> Answer:
        text = cap_answer(answer.text, self.config.max_answer_chars)
        return answer if text is answer.text else Answer(text, answer.source)

    def _trace_exec(self, code: str, result: ExecResult) -> None:
        data = result.to_dict()
        limit = max(TRACE_OUTPUT_CHARS, self.config.max_output_chars)
        fields = preview_fields(limit, code=code, stdout=data.pop("stdout"),
                                stderr=data.pop("stderr"), error=data.pop("error"))
        if data["final"] is not None:
            data["final"] = {**preview_fields(limit, text=data["final"]["text"]),
                             "source": data["final"]["source"]}
        self.tracer.emit("code_exec", self.node, **fields, **data)

    def _final_outside_code(self, reply: str, results: list[tuple[str, ExecResult]]
                            ) -> Generator[Step, Any, tuple[Answer, str | None] | None]:
        found = find_final_line(reply)
        if found is None:
            return None
        kind, inner = found
        code = f"{kind}({inner})"
        result: ExecResult = yield RunCode(code)
        self._trace_exec(code, result)
        if result.final is not None:
            return self._bounded(Answer(result.final.text, "text")), code
        if kind == "FINAL_VAR" or _refused(result):
            # Fed back: no such variable, or an answer over max_answer_chars (which the
            # literal text would silently stand in for).
            if _refused(result):
                self.budget.count_error()
            results.append((code, result))
            return None
        # Not code (prose, a name never defined...), or code that failed: the text itself.
        return self._bounded(Answer(inner.strip(), "text")), None

    def _extract(self) -> Generator[Step, Any, Answer | None]:
        self.messages.append({"role": "user", "content": prompts.extract_prompt()})
        try:
            completion: Completion = yield CallLM(self._request("extract"), purpose="extract")
        except (LimitExceeded, Cancelled):
            return None
        text = strip_code(completion.text).strip() or completion.text.strip()
        found = find_final_line(completion.text)
        if found is not None and found[0] == "FINAL":
            text = found[1].strip().strip("\"'")
        return self._bounded(Answer(text, "extract"))
