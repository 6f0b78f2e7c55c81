"""Metrics: normalisation, accuracy, and the safe equation evaluator fuzzed against a reference."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbs_jax.metrics import (
    EquationError,
    accuracy,
    evaluate_equation,
    label_correct,
    normalize,
    seqio_metric,
)

NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10_000).map(str),
    st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False).map(str),
)


@st.composite
def trees(draw, depth=0):
    """(text, value or None where the value is undefined) of a random expression tree."""
    if depth >= 4 or draw(st.booleans()):
        text = draw(NUMBERS)
        return text, float(text)
    kind = draw(st.sampled_from(["+", "-", "*", "/", "neg", "paren"]))
    sp = draw(st.sampled_from(["", " ", "  "]))
    if kind == "neg":
        text, value = draw(trees(depth + 1))
        return f"-({sp}{text}{sp})", None if value is None else -value
    if kind == "paren":
        text, value = draw(trees(depth + 1))
        return f"({sp}{text}{sp})", value
    (lt, lv), (rt, rv) = draw(trees(depth + 1)), draw(trees(depth + 1))
    text = f"({sp}{lt}{sp}{kind}{sp}{rt}{sp})"
    if lv is None or rv is None:
        return text, None
    if kind == "+":
        return text, lv + rv
    if kind == "-":
        return text, lv - rv
    if kind == "*":
        return text, lv * rv
    return text, None if rv == 0 else lv / rv


@settings(max_examples=300, deadline=None)
@given(trees())
def test_evaluate_equation_matches_reference(tree):
    text, value = tree
    if value is None or not math.isfinite(value):
        with pytest.raises(EquationError):
            evaluate_equation(text)
    else:
        assert evaluate_equation(text) == pytest.approx(value, rel=1e-12, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=list("0123456789.+-*/() xe_a\n"), max_size=40) | st.text(max_size=40))
def test_junk_raises_only_equation_error(text):
    try:
        value = evaluate_equation(text)
    except EquationError:
        return
    assert math.isfinite(value)


def test_precedence_and_unary():
    assert evaluate_equation("2 + 3 * 4") == 14
    assert evaluate_equation("( 84.0 / 2.0 )") == 42
    assert evaluate_equation("10 - 4 - 3") == 3
    assert evaluate_equation("-(2 - 5) * 2") == 6
    assert evaluate_equation("1 - -1") == 2


@pytest.mark.parametrize(
    "text", ["", "(", "()", "1 +", "1 / 0", "2 ** 3", "__import__('os')", "1 2", "(" * 500 + "1"]
)
def test_rejects(text):
    with pytest.raises(EquationError):
        evaluate_equation(text)


def test_normalize_and_accuracy():
    assert normalize("  wooded   area. ") == "wooded area"
    assert normalize("Wooded area") != normalize("wooded area")  # case is kept
    assert label_correct("(84 / 2)", "( 84.0 / 2.0 )", "equation_value")
    assert not label_correct("(84 / 3)", "( 84.0 / 2.0 )", "equation_value")
    assert not label_correct("junk", "( 84.0 / 2.0 )", "equation_value")
    assert accuracy(["a", "b"], ["a.", "c"]) == 50.0
    assert seqio_metric("equation_value")(["( 1 + 1 )"], ["2"]) == {"accuracy": 100.0}
    with pytest.raises(ValueError):
        accuracy(["a"], [])
