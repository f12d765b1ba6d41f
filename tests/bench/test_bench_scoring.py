"""The scorers: exact match after normalisation, OOLONG's partial credit, F1 over pairs."""

from __future__ import annotations

import pytest

from rlm.bench.scoring import (
    exact,
    format_pairs,
    normalize,
    numeric,
    pairs_f1,
    parse_number,
    parse_pairs,
    score,
)


@pytest.mark.parametrize(("raw", "clean"), [
    ("  Location. ", "location"),
    ("'json.decoder'", "json.decoder"),
    ("`4821937`", "4821937"),
    ("Answer: Drauvel", "drauvel"),
    ("The final answer is: Mara  Tolsk", "mara tolsk"),
    ('FINAL("human")', "human"),
    ("the Orrin Bridge", "orrin bridge"),
])
def test_normalize(raw, clean):
    assert normalize(raw) == clean


def test_exact_compares_normalised_text():
    assert exact("Location.", "location") == 1.0
    assert exact("locations", "location") == 0.0
    assert exact("", "location") == 0.0


def test_numeric_partial_credit_is_075_to_the_distance():
    assert numeric("37", "37") == 1.0
    assert numeric("There are 39 records.", "37") == pytest.approx(0.75 ** 2)
    assert numeric("35", "37") == pytest.approx(0.75 ** 2)
    assert numeric("1,234", "1234") == 1.0
    assert numeric("none", "37") == 0.0
    assert parse_number("about -3.5 units") == -3.5


def test_pairs_are_unordered_and_scored_by_f1():
    gold = "(1, 2), (1, 3), (2, 3)"
    assert pairs_f1("(3, 2), (2,1), (1, 3)", gold) == 1.0
    assert pairs_f1("(1, 2)", gold) == pytest.approx(2 * 1.0 * (1 / 3) / (1 + 1 / 3))
    assert pairs_f1("(1, 2), (5, 6)", gold) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert pairs_f1("no pairs", gold) == 0.0
    assert pairs_f1("none", "") == 1.0
    assert parse_pairs("(7, 7), (10, 9)") == {("9", "10")}


def test_format_pairs_is_canonical():
    assert format_pairs([(30, 4), (4, 12), (12, 30)]) == "(4, 12), (4, 30), (12, 30)"


def test_score_by_name_and_missing_prediction():
    assert score("exact", "A", "a") == 1.0
    assert score("numeric", None, "3") == 0.0
    with pytest.raises(KeyError):
        score("nope", "a", "a")
