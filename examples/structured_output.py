"""Typed sub-calls and a structured answer: ``schema=`` on ``llm_query`` and ``completion``.

The root model labels 20 support tickets.  Instead of one sub-call per ticket it sends five
tickets per call and asks for a list of labels back::

    labels = llm_query_batched(prompts, schema=list[Literal["bug", "billing", "other"]])

Each slot comes back as a Python list, already parsed and checked: a reply wrapped in a
Markdown fence or in chatter is still found, and a reply that does not match gets one
repair call (the bad reply and what was wrong) before the slot fails.

``completion(..., schema=TicketCounts)`` asks for the final answer in a shape too: the
model is told the format, an answer that does not match is refused (the model submits
again), and ``result.output`` is a ``TicketCounts`` instance.  A pydantic model works the
same way (``result.output`` is then ``Model.model_validate(answer)``).

Scripted backends stand in for the models, so it runs offline::

    python examples/structured_output.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlm import RLM, Message, ScriptedBackend

TICKETS = [
    "The app crashes when I upload a photo", "I was charged twice this month",
    "How do I change my avatar?", "Error 500 on the settings page",
    "Please refund my last invoice", "The export button does nothing",
    "Can I use the app offline?", "My card was declined but the money left",
    "Login fails with a blank screen", "Where is the dark mode option?",
    "The invoice shows the wrong VAT", "Sync stops after ten minutes",
    "Do you have a student discount?", "Notifications arrive twice",
    "I cannot cancel my subscription billing", "The search returns nothing",
    "Is there an API?", "Charts do not render on Safari", "Upgrade price is unclear",
    "The app freezes on start",
]


@dataclass
class TicketCounts:
    bug: int
    billing: int
    other: int


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


ROOT_SCRIPT = [
    "Twenty tickets: I will label them five at a time, with a list-typed sub-call.\n"
    + repl(
        "tickets = context.split('\\n')\n"
        "chunks = [tickets[i:i + 5] for i in range(0, len(tickets), 5)]\n"
        "prompts = ['Label each ticket as bug, billing or other, one label per ticket, '\n"
        "           'in order:\\n' + '\\n'.join(c) for c in chunks]\n"
        "labels = llm_query_batched(prompts, schema=list[Literal['bug', 'billing', 'other']])\n"
        "flat = [label for chunk in labels for label in chunk]\n"
        "print(len(flat), 'labels:', flat)"
    ),
    "I will submit the counts.\n"
    + repl("FINAL(f\"bug={flat.count('bug')}, billing={flat.count('billing')}\")"),
    "The answer must be a JSON object: I submit the dict.\n"
    + repl("FINAL({name: flat.count(name) for name in ('bug', 'billing', 'other')})"),
]

BUG = ("crash", "error", "fails", "nothing", "freezes", "stops", "twice", "render")
BILLING = ("charged", "refund", "card", "invoice", "billing", "price")


def label(ticket: str) -> str:
    text = ticket.lower()
    if any(word in text for word in BILLING):
        return "billing"
    return "bug" if any(word in text for word in BUG) else "other"


def sub_model(messages: list[Message], depth: int) -> str:
    """A stand-in for a small model that labels the tickets it is shown; it wraps one
    answer in a fence, and answers the third chunk in prose until it is asked to repair."""
    prompt = messages[0]["content"]
    lines = prompt.split("\n")[1:]
    tickets = lines[: lines.index("") if "" in lines else len(lines)]
    labels = [label(t) for t in tickets]
    if "Login fails" in prompt and len(messages) == 1:
        return "The first is a bug, then billing..."  # no JSON: repaired
    if "Error 500" in prompt:
        return "Sure! Here are the labels:\n```json\n" + json.dumps(labels) + "\n```"
    return json.dumps(labels)


def main() -> None:
    root = ScriptedBackend(ROOT_SCRIPT, model="root-model")
    sub = ScriptedBackend(sub_model, model="sub-model")
    with RLM(backend=root, sub_backend=sub) as rlm:
        result = rlm.completion("How many tickets of each kind?", context="\n".join(TICKETS),
                                schema=TicketCounts)
    root.close()
    sub.close()
    repairs = sum(1 for request in sub.calls if len(request.messages) > 1)
    print(f"response:    {result.response}")
    print(f"output:      {result.output!r}")
    print(f"iterations:  {result.iterations} (one answer refused for its shape)")
    print(f"sub-calls:   {result.usage['sub-model'].calls} ({repairs} repair)")
    print(f"as JSON:     {json.dumps(result.to_dict()['output'])}")


if __name__ == "__main__":
    main()
