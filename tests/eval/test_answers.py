"""Final-answer extraction and normalisation."""

from __future__ import annotations

import pytest

from core.eval.answers import answers_match, expected_answer, extract_answer, last_boxed, normalize_answer
from tests.chat.fixtures import conv


def test_last_boxed_handles_nesting_and_cut_replies():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"cut \boxed{\frac{1}{") is None
    assert last_boxed("none here") is None


def test_expected_answer_from_meta_or_reference():
    assert expected_answer(conv("q", "blah", expected_answer=" 12 ")) == "12"
    assert expected_answer(conv("q", r"so \boxed{3x+1}")) == "3x+1"
    assert expected_answer(conv("q", "no final answer")) is None


@pytest.mark.parametrize("reply,answer", [
    (r"The result is \boxed{42}.", "42"),
    ("Final answer: 17", "17"),
    ("I computed 3 then 5, so 8", "8"),
    ("Paris", "Paris"),
    ("", None),
])
def test_extract_answer(reply, answer):
    assert extract_answer(reply) == answer


@pytest.mark.parametrize("a,b", [
    (r"\frac{3}{4}", "0.75"), (r"\dfrac{3}{4}", r"\frac{3}{4}"), ("x = 1,000", "1000"), (r"\text{(B)}", "(b)"),
    (r"$90^\circ$", "90"), (r"50\%", "50"), ("2.50", "2.5"), ("5/2", "2.5"), (r"\left(1, 2\right)", "(1,2)"),
    (r"-\frac{1}{2}", "-0.5"),
])
def test_equivalent_answers_match(a, b):
    assert answers_match(a, b), (normalize_answer(a), normalize_answer(b))


@pytest.mark.parametrize("a,b", [("41", "42"), ("(a)", "(b)"), (None, "1"), ("1/3", "0.33")])
def test_different_answers_do_not(a, b):
    assert not answers_match(a, b)


def test_last_boxed_is_one_rule_for_data_and_eval():
    # The data loader (OpenMathReasoning answers) and the evaluation read boxes the same way.
    from core.data import formats

    assert formats.last_boxed is last_boxed
    assert last_boxed(r"\boxed {3} and \fbox{4}") == "4"
    assert last_boxed(r"\boxed{1} then cut \boxed{2") is None
