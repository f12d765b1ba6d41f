"""The task generators: deterministic, the right size, and the answer derivable from the input.

Each derivability test recomputes the gold answer from the context alone, with its own
parsing (regular expressions, ``ast``), never with the generator's code.
"""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import re
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from rlm.bench.scoring import parse_pairs
from rlm.bench.tasks import TASKS, make_instance, make_instances
from rlm.errors import ConfigError

SMALL = 2**13


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_same_instance_other_seed_other_instance(task):
    first, again = make_instance(task, SMALL, 3), make_instance(task, SMALL, 3)
    assert first == again
    other = make_instance(task, SMALL, 4)
    assert other.context != first.context
    assert other.id != first.id == f"{task}-{SMALL}-s3"


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [SMALL, 2**15])
def test_context_has_the_target_length_in_tokens(task, length):
    instance = make_instance(task, length, 0)
    assert 0.95 <= len(instance.context) / (4 * length) <= 1.06
    assert instance.context_tokens == len(instance.context) // 4
    assert instance.score(instance.answer) == 1.0


def test_lengths_scale_to_a_million_tokens():
    instance = make_instance("niah", 2**20, 0)
    assert len(instance.context) >= 4 * 2**20


def test_unknown_task_and_bad_length_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task"):
        make_instance("nope", SMALL)
    with pytest.raises(ConfigError):
        make_instance("niah", 0)


# -- S-NIAH -----------------------------------------------------------------------------------
def test_niah_answer_is_the_one_needle():
    for instance in make_instances("niah", SMALL, 5):
        key = re.search(r"magic number for (\w+) mentioned", instance.question).group(1)
        needles = re.findall(r"The special magic number for (\w+) is: (\d+)\.", instance.context)
        assert needles == [(key, instance.answer)]
        assert instance.context.count(key) == 1
        at = instance.context.index(key) / len(instance.context)
        assert 0.02 < at < 0.98


# -- OOLONG -----------------------------------------------------------------------------------
RULES = [
    ("abbreviation", r"^(What does [A-Z]+ stand for\?|What is the full form of [A-Z]+\?|"
                     r"What do the letters [A-Z]+ mean|[A-Z]+ is short for what\?)"),
    ("entity", r"^(What kind of \w+ is used|Which \w+ is shown on the flag|What instrument|"
               r"Name a plant)"),
    ("description", r"^(Why does|How does a|What is the definition|Explain the purpose)"),
    ("human", r"^(Who |Which \w+ wrote)"),
    ("location", r"^(Where |In which country|What river)"),
    ("numeric", r"^(How many|In what year|How far|How much)"),
]
LINE = re.compile(r"^Date: (\w{3} \d\d, \d{4}) \|\| User: (\d+) \|\| Instance: (.+)$")


def classify(text: str) -> str:
    labels = [label for label, rule in RULES if re.match(rule, text)]
    assert len(labels) == 1, (text, labels)
    return labels[0]


def records(context: str) -> list[tuple[dt.date, str, str]]:
    out = []
    for line in context.splitlines():
        match = LINE.match(line)
        assert match, line
        day = dt.datetime.strptime(match.group(1), "%b %d, %Y").date()
        out.append((day, match.group(2), classify(match.group(3))))
    return out


def unique_top(counts: Counter[str], least: bool = False) -> str:
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=not least)
    assert len(ranked) == 1 or ranked[0][1] != ranked[1][1]
    return ranked[0][0]


def recompute_oolong(question: str, rows: list[tuple[dt.date, str, str]]) -> str:
    labels = Counter({label: 0 for label, _ in RULES})
    labels.update(label for _, _, label in rows)
    if m := re.search(r"How many records have the label '(\w+)'", question):
        return str(labels[m.group(1)])
    if m := re.search(r"Which label is the (most|least) frequent among all records", question):
        return unique_top(labels, least=m.group(1) == "least")
    if m := re.search(r"Is the label '(\w+)' more common than.*the label '(\w+)'", question):
        a, b = labels[m.group(1)], labels[m.group(2)]
        return "more common than" if a > b else "less common than" if a < b else \
            "same frequency as"
    if m := re.search(r"How many records of user (\d+) have the label '(\w+)'", question):
        return str(sum(1 for _, u, lab in rows if u == m.group(1) and lab == m.group(2)))
    if m := re.search(r"most frequent among the records of user (\d+)", question):
        return unique_top(Counter(lab for _, u, lab in rows if u == m.group(1)))
    if m := re.search(r"dated after (\w{3} \d\d, \d{4}) have the label '(\w+)'", question):
        cut = dt.datetime.strptime(m.group(1), "%b %d, %Y").date()
        return str(sum(1 for d, _, lab in rows if d > cut and lab == m.group(2)))
    raise AssertionError(f"unknown question: {question}")


def test_oolong_answers_follow_from_the_inferred_labels():
    kinds = set()
    for instance in make_instances("oolong", SMALL, 24):
        rows = records(instance.context)
        assert recompute_oolong(instance.question, rows) == instance.answer
        assert not any(label in instance.context for label, _ in RULES)  # never written
        kinds.add(re.sub(r"[\d']|label \w+|user \d+", "", instance.question)[-60:])
        assert instance.scorer == ("numeric" if instance.answer.isdigit() else "exact")
    assert len(kinds) >= 5  # the seeds cover most kinds of question


def test_oolong_pairs_are_the_users_with_enough_records_of_the_label():
    for instance in make_instances("oolong-pairs", SMALL, 6):
        m = re.search(r"at least (one|two) records? with the label '(\w+)'", instance.question)
        need, label = {"one": 1, "two": 2}[m.group(1)], m.group(2)
        per_user = Counter(u for _, u, lab in records(instance.context) if lab == label)
        users = sorted((u for u, n in per_user.items() if n >= need), key=int)
        expected = {(a, b) for a, b in itertools.combinations(users, 2)}
        assert parse_pairs(instance.answer) == expected
        assert len(expected) >= 6
        assert instance.scorer == "pairs_f1"


# -- multi-hop --------------------------------------------------------------------------------
def documents(context: str) -> dict[str, str]:
    docs = {}
    for block in context.strip().split("\n\n"):
        number, title, body = block.split("\n", 2)
        assert re.fullmatch(r"Document \d+", number)
        assert title.startswith("Title: ") and title[7:] not in docs
        docs[title[7:]] = body
    return docs


QUESTIONS = [
    (r"In which city was the founder of (.+) born\?", "birth city"),
    (r"Who is the spouse of the founder of (.+)\?", "spouse"),
    (r"In what year was the founder of (.+) born\?", "birth year"),
    (r"In which city is (.+) headquartered\?", "headquarters"),
]


def recompute_multihop(question: str, docs: dict[str, str]) -> tuple[str, int]:
    """The answer and how many documents it took."""
    target, asked = next((m.group(1), what) for rule, what in QUESTIONS
                         if (m := re.search(rule, question)))
    used = 1
    company = target
    if target.startswith("the company that built the "):
        landmark = docs[f"The {target.removeprefix('the company that built the ')}"]
        company = re.search(r"It was built by (.+?) and opened", landmark).group(1)
        used += 1
    if asked == "headquarters":
        return re.search(r"headquartered in (\w+)\.", docs[company]).group(1), used
    founder = docs[re.search(r"founded in \d+ by (.+?)\.", docs[company]).group(1)]
    used += 1
    if asked == "spouse":
        return re.search(r"married (.+?)\.", founder).group(1), used
    born = re.search(r"was born in (\w+) in (\d+)\.", founder)
    return born.group(2 if asked == "birth year" else 1), used


def test_multihop_answer_needs_two_or_three_documents_among_distractors():
    seen_hops = set()
    for instance in make_instances("multihop", SMALL, 16):
        docs = documents(instance.context)
        answer, hops = recompute_multihop(instance.question, docs)
        assert answer == instance.answer
        seen_hops.add(hops)
        assert len(docs) >= 40
        people = [t for t in docs if re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", t)]
        near = [(a, b) for a, b in itertools.combinations(people, 2)
                if a.split()[0] == b.split()[0] and len(a) == len(b)
                and sum(x != y for x, y in zip(a, b, strict=True)) == 1]
        assert near, "a near-namesake distractor is present"
        assert any(t.startswith("News from") for t in docs)
    assert seen_hops == {2, 3}


def test_multihop_has_hundreds_of_documents_at_larger_lengths():
    assert len(documents(make_instance("multihop", 2**17, 0).context)) >= 500


# -- CodeQA -----------------------------------------------------------------------------------
HEADER = re.compile(r"^# ===== module (\S+) \(file (\S+)\) =====$", re.MULTILINE)


def modules(context: str) -> dict[str, tuple[str, str]]:
    parts = HEADER.split(context)
    assert parts[0] == ""
    return {parts[i]: (parts[i + 1], parts[i + 2]) for i in range(1, len(parts), 3)}


class CallCounter(ast.NodeVisitor):
    """Which callee names each function's own body calls (nested defs/classes excluded)."""

    def __init__(self) -> None:
        self.stack: list[set[str]] = []
        self.functions: list[set[str]] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.stack.append(set())
        self.generic_visit(node)
        self.functions.append(self.stack.pop())

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        saved, self.stack = self.stack, []
        self.generic_visit(node)
        self.stack = saved

    def visit_Call(self, node: ast.Call) -> None:
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if self.stack and name:
            self.stack[-1].add(name)
        self.generic_visit(node)


def recompute_codeqa(question: str, mods: dict[str, tuple[str, str]]) -> str:
    trees = {name: ast.parse(source) for name, (_, source) in mods.items()}

    def top_defs(tree: ast.Module) -> list[str]:
        return [n.name for n in tree.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]

    if m := re.search(r"defines the top-level function `(\w+)`", question):
        owners = [name for name, tree in trees.items() if m.group(1) in top_defs(tree)]
        assert len(owners) == 1
        return owners[0]
    if m := re.search(r"functions and methods (.+?) call `(\w+)`", question):
        scope = re.search(r"package `(\w+)`", m.group(1))
        counter = CallCounter()
        for name, tree in trees.items():
            if scope is None or name.split(".")[0] == scope.group(1):
                counter.visit(tree)
        return str(sum(1 for called in counter.functions if m.group(2) in called))
    if "defines the most top-level functions" in question:
        counts = Counter({name: len(top_defs(tree)) for name, tree in trees.items()})
        (first, n), (_, second) = counts.most_common(2)
        assert n != second
        return first
    raise AssertionError(f"unknown question: {question}")


def test_codeqa_context_is_real_stdlib_source_and_answers_follow_from_ast():
    root = Path(sysconfig.get_paths()["stdlib"])
    kinds = set()
    for instance in make_instances("codeqa", SMALL, 9):
        mods = modules(instance.context)
        assert mods
        for path, source in mods.values():
            real = (root / path.strip()).read_text(encoding="utf-8", errors="replace")
            assert source.strip("\n") == real.strip("\n")
        assert recompute_codeqa(instance.question, mods) == instance.answer
        kinds.add(instance.question.split("?")[0][-30:])
    assert len(kinds) >= 2


def test_the_one_line_niah_is_the_same_needle_in_a_haystack_without_line_breaks():
    flat = make_instance("niah-one-line", 2**13)
    assert "\n" not in flat.context and len(flat.context) > 30_000
    assert flat.answer in flat.context and flat.question.startswith("What is the special")


def test_instances_do_not_depend_on_the_hash_seed():
    import os
    import subprocess
    import sys

    code = ("import hashlib; from rlm.bench.tasks import TASKS, make_instance; "
            "print([hashlib.sha256((i.question + i.context).encode()).hexdigest() "
            "for i in (make_instance(t, 2**13, 1) for t in TASKS)])")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
               for seed in ("1", "2", "3")}
    assert len(digests) == 1, "an instance changed with PYTHONHASHSEED"
