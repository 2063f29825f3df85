"""Issue 38: a final answer written as an expression is read whole, never by its leading number.

`oreal.verify.arith` alone (values, precedence, refusals, bounds), the continuation rule that
refuses `3x` for gold 3, `gsm8k_answer`'s tidying, and a corpus of responses graded through the
`Verifier` in each mode, both ways: an answer written as an expression of the gold's value is
correct; a prefix or an expression of another value is not.
"""
import time

import pytest
import sympy

from oreal.extract import gsm8k_answer, is_plain_number
from oreal.verify import Verifier
from oreal.verify.arith import Refused, continues_expression, evaluate, parse
from oreal.verify.verifier import decide_without_sympy

# --- the arithmetic parser alone -------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("1/2", sympy.Rational(1, 2)),
    ("10-3", 7),
    ("10 - 3", 7),
    ("5/7.", sympy.Rational(5, 7)),
    ("2+2", 4),
    ("7*3", 21),
    ("7 × 3", 21),
    ("7·3", 21),
    ("12 ÷ 4", 3),
    ("2^10", 1024),
    ("2**10", 1024),
    ("2^3^2", 512),  # right-associative
    ("-2^2", -4),  # unary minus binds looser than ^
    ("(-2)^2", 4),
    ("2^-1", sympy.Rational(1, 2)),
    ("-2*3", -6),
    ("2*-3", -6),
    ("2--3", 5),
    ("+3", 3),
    ("1+2*3", 7),
    ("(1+2)*3", 9),
    ("10/4", sympy.Rational(5, 2)),
    ("8/4/2", 1),  # left-associative
    ("10-3-2", 5),
    ("0.1+0.2", sympy.Rational(3, 10)),  # exact, not binary floating point
    (".5*2", 1),
    ("2.50", sympy.Rational(5, 2)),
    ("1,234+1", 1235),
    ("10,000/4", 2500),
    ("((((1))))", 1),
    ("-(-(3))", 3),
    ("1/3+1/6", sympy.Rational(1, 2)),
    ("2\u22121", 1),  # unicode minus
    ("1+2)", 3),  # prose closing a bracket: "(so it is 1+2)."
    ("8^(1/3)", 2),
    ("4^(1/2)", 2),
    ("2^0.5", sympy.sqrt(2)),
    ("2^(1/2)*2^(1/2)", 2),
    ("5.", 5),
])
def test_arith_values(text, value):
    assert evaluate(text) == value, text


@pytest.mark.parametrize("text", [
    "3x", "2(3)", "(2)(3)", "3 4", "1+", "*3", "(1+2", "1+2)*3", "", "   ", ".", "5/0", "1/(2-2)",
    "0^-1", "(-8)^(1/3)", "1,2", "1.5.2", "1e5", "2^x", "__import__('os')", "2^(1/2)^(1/2)^(1/2)^100",
    "9^9^9^9", "2^10^10", "10^1001", "(10^500)^3", "1" + "0" * 2000, "1+" * 300 + "1",
])
def test_arith_refusals(text):
    assert evaluate(text) is None, text
    with pytest.raises((Refused, ZeroDivisionError, ValueError)):
        parse(text)


def test_arith_is_bounded_and_fast():
    cases = ["9^9^9^9", "2^10^10", "9^9^9^9^9^9^9^9", "(" * 10_000 + "1" + ")" * 10_000,
             "(" * 250 + "1" + ")" * 250, "2^2^2^2^2^2^2^2", "7^" * 150 + "7",
             "1+2*3-" * 66 + "1", "((2^200)^200)^200", "0.5^1000", "(1/3)^9999"]
    t0 = time.perf_counter()
    for c in cases:
        evaluate(c)
    assert time.perf_counter() - t0 < 1.0
    assert evaluate("(" * 250 + "1" + ")" * 250) == 1  # deep but short: no recursion to run out of
    assert evaluate("2^2^2^2^2") is None  # 2^65536: past the size bound
    assert evaluate("2^2^2^2") == 65536


def test_arith_never_calls_python_eval(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(sympy, "sympify", boom)
    monkeypatch.setattr(sympy, "parse_expr", boom)
    assert evaluate("(1+2)*3/4") == sympy.Rational(9, 4)


# --- what counts as carrying a number on into an expression ----------------------------------


@pytest.mark.parametrize("after", [
    "x", "x.", "y+1", "/7", "/ 7", "^2", "**2", "*3", "×3", "÷3", "(2)", "!", "²", "½", "π", "M",
    "k", "e3", "+x", "-x", "+2y", " + x", " - 3", " * (2)", " x 4", " × 4", "\\times 3", "\\pi",
    " \\cdot 2", "m+2", "cm2", "kmx", "{,}000", "\u221a2",
])
def test_continuation_refused(after):
    assert continues_expression("3" + after, 1), after


@pytest.mark.parametrize("after", [
    "", ".", ",", ";", ":", ")", " ", "\n", "\n+3", " apples", " dollars.", "%", "°", "^\\circ",
    "\\%", "\\text{ cm}", "\\,\\text{m}", "cm", "cm.", "m", "kg", "mph", "km/h", "m/s^2", "cm²",
    "rd", "th place", "st", "pm", " - the number of apples", "-year-old", "$", " x", "**", " or so",
])
def test_continuation_accepted(after):
    assert not continues_expression("3" + after, 1), after


# --- gsm8k: the text after the last #### ------------------------------------------------------


@pytest.mark.parametrize("text,answer", [
    ("#### 72", "72"),
    ("so 48+24=72\n#### 72", "72"),
    ("#### 1,000", "1000"),
    ("#### 1,234.5", "1234.5"),
    ("#### $18", "18"),
    ("#### $18.", "18"),
    ("#### 18 dollars.", "18"),
    ("#### **18**", "18"),
    ("#### $18$", "18"),
    ("#### 25%", "25"),
    ("#### 12/5", "12/5"),
    ("#### 10 - 3\nmore text", "10 - 3"),
    ("#### 5 #### 7", "7"),
    ("####-3", "-3"),
    ("#### 3x", "3x"),
    ("#### 12 apples and 3 pears", "12 apples and 3"),
    ("#### 1,2", "1,2"),
    ("####  \n", None),
    ("no marker 72", None),
])
def test_gsm8k_answer_reads_the_whole_line(text, answer):
    assert gsm8k_answer(text) == answer


def test_plain_numbers():
    assert all(is_plain_number(s) for s in ["12", "-3", "0.5", ".5", "007"])
    assert not any(is_plain_number(s) for s in ["12/5", "1,000", "3x", "1e5", "", "-", "5."])


# --- the corpus, through the Verifier ---------------------------------------------------------

# (mode, gold, response, correct)
CORPUS = [
    # auto: a correct answer written as an expression is correct
    ("auto", "0.5", "The answer is 1/2", True),
    ("auto", "0.5", "The answer is 1/2.", True),
    ("auto", "7", "Answer: 10-3", True),
    ("auto", "7", "Answer: 10 - 3", True),
    ("auto", "21", "7*3", True),
    ("auto", "4", "The answer is 2+2", True),
    ("auto", "\\frac{5}{7}", "The answer is 5/7.", True),
    ("auto", "1024", "The final answer is 2^10", True),
    ("auto", "2.5", "Answer: 10/4", True),
    ("auto", "6", "The answer is **2*3**", True),
    ("auto", "0.75", "so it is **3/4**.", True),
    ("auto", "3", "The answer is 12 ÷ 4.", True),
    ("auto", "-4", "Answer: -2^2", True),
    ("auto", "9", "The answer is (1+2)*3", True),
    ("auto", "\\sqrt{2}", "Answer: 2^(1/2)", True),
    ("auto", "2500", "Answer: 10,000/4", False),  # the expression pattern stops at the comma: refused
    # auto: a number with a unit word, or followed by prose, is still that number
    ("auto", "10", "The answer is 10cm.", True),
    ("auto", "60", "The answer is 60mph", True),
    ("auto", "9.8", "Answer: 9.8m/s^2", True),
    ("auto", "18", "The answer is 18 dollars.", True),
    ("auto", "18", "She makes $18 every day.", True),
    ("auto", "3", "She came 3rd.", True),
    ("auto", "50", "The answer is 50%", True),
    ("auto", "42", "The answer is **42**.", True),
    ("auto", "42", "**The answer is 42.**", True),
    ("auto", "42", "The answer is 42 - the number of apples.", True),
    ("auto", "12", "Answer: 12.\n(2) For the second part, 3+4 = 7", True),
    ("auto", "540", "A: 540", True),
    # auto: a prefix or an expression of another value is incorrect
    ("auto", "5", "The answer is 5/7.", False),
    ("auto", "2", "The answer is 2+2", False),
    ("auto", "10", "Answer: 10-3", False),
    ("auto", "7", "7*3", False),
    ("auto", "3", "The answer is 3x", False),
    ("auto", "3", "The answer is 3x.", False),
    ("auto", "4", "4 apples. The answer is 4x", False),  # refused, not the earlier 4
    ("auto", "5", "The answer is 5m+2", False),
    ("auto", "5", "The answer is 5M", False),
    ("auto", "3", "The answer is 3 x 4", False),
    ("auto", "5", "The answer is 5 + x", False),
    ("auto", "2", "The answer is 2π", False),
    ("auto", "2", "The answer is 2\\pi", False),
    ("auto", "5", "The answer is 5!", False),
    ("auto", "5", "The answer is 5²", False),
    ("auto", "2", "The answer is 2(3)", False),
    ("auto", "1", "The answer is 1/0", False),
    ("auto", "12", "The answer is 12/5", False),
    ("auto", "2", "The answer is 2.5e3", False),
    ("auto", "10", "The answer is 10^6", False),
    ("auto", "1", "Answer: 1+", False),
    ("auto", "5", "x = 5y", False),
    ("auto", "5", "The answer is 5/", False),
    ("auto", "3", "The answer is 3*(x+1)", False),
    ("auto", "0.5", "The answer is 1/3", False),
    # gsm8k: the text after the last #### read whole
    ("gsm8k", "2.4", "#### 12/5", True),
    ("gsm8k", "7", "#### 10 - 3", True),
    ("gsm8k", "18", "#### $18.", True),
    ("gsm8k", "18", "#### 18 dollars", True),
    ("gsm8k", "1234", "#### 1,234", True),
    ("gsm8k", "6", "#### 2 × 3", True),
    ("gsm8k", "5", "#### (2+3)", True),
    ("gsm8k", "0.5", "#### 1/2", True),
    ("gsm8k", "2.4", "#### \\frac{12}{5}", True),
    ("gsm8k", "25", "#### 25%", True),
    ("gsm8k", "12", "#### 12/5", False),
    ("gsm8k", "10", "#### 10 - 3", False),
    ("gsm8k", "3", "#### 3x", False),
    ("gsm8k", "12", "#### 12 apples and 3 pears", False),
    ("gsm8k", "12", "#### 12 because 3*4=12", False),
    ("gsm8k", "12", "#### 12 = 3*4", False),
    ("gsm8k", "5", "#### 5/0", False),
    ("gsm8k", "12", "#### 1,2", False),
    ("gsm8k", "7", "#### 7 or 8", False),
    ("gsm8k", "2", "#### 2^10", False),
    ("gsm8k", "9", "#### 9^9^9^9", False),
    # boxed: expressions in the box are read whole by Math-Verify's LaTeX parser
    ("boxed", "0.5", "\\boxed{1/2}", True),
    ("boxed", "7", "\\boxed{10-3}", True),
    ("boxed", "2.5", "\\boxed{\\frac{10}{4}}", True),
    ("boxed", "5", "\\boxed{5/7}", False),
    ("boxed", "3", "\\boxed{3x}", False),
    ("boxed", "2", "\\boxed{2+2}", False),
    # golds written as expressions or constants compare by value
    ("boxed", "2+3", "\\boxed{5}", True),
    ("boxed", "\\frac{10}{4}", "\\boxed{2.5}", True),
    ("boxed", "1/2", "\\boxed{0.5}", True),
    ("boxed", "2+3", "\\boxed{6}", False),
    ("boxed", "2+3", "\\boxed{2}", False),
    ("boxed", "\\mathrm{e}", "\\boxed{e}", True),
    ("boxed", "\\mathrm{e}", "\\boxed{2.718282}", True),
    ("boxed", "\\mathrm{e}^{2}", "\\boxed{e^2}", True),
    ("boxed", "2\\mathrm{e}", "\\boxed{2}", False),  # was read as 2: \mathrm{e} taken for a unit
    ("boxed", "2\\mathrm{e}", "\\boxed{2e}", True),
    ("boxed", "3+4\\mathrm{i}", "\\boxed{7}", False),  # was read as 3+4
    ("boxed", "3+4\\mathrm{i}", "\\boxed{3+4i}", True),
    ("boxed", "e", "\\boxed{\\mathrm{e}}", True),
    ("boxed", "\\pi", "\\boxed{3.141593}", True),
    ("auto", "2+3", "The answer is 5.", True),
    ("auto", "2+3", "The answer is 2 + 3.", True),
    ("auto", "2+3", "The answer is 23.", False),
    ("auto", "\\frac{10}{4}", "Answer: 2.5", True),
    ("auto", "1/2", "The answer is 0.5", True),
    ("auto", "\\mathrm{e}", "The answer is $e$.", True),
    ("gsm8k", "2+3", "#### 5", True),
    ("gsm8k", "1/2", "#### 0.5", True),
    ("gsm8k", "\\frac{10}{4}", "#### 2.5", True),
    ("gsm8k", "2+3", "#### 23", False),
]


def _case_id(case):
    mode, gold, response, ok = case
    return f"{mode}-{'ok' if ok else 'wrong'}-{gold}-{response}"[:60]


def test_corpus_is_large_and_two_sided():
    modes = {m for m, *_ in CORPUS}
    assert modes == {"auto", "gsm8k", "boxed"} and len(CORPUS) >= 60
    for m in modes:
        assert {ok for mode, _, _, ok in CORPUS if mode == m} == {True, False}


@pytest.mark.parametrize("case", CORPUS, ids=[_case_id(c) for c in CORPUS])
def test_corpus(verifier, case):
    mode, gold, response, correct = case
    v = verifier.verify(gold, response, extract=mode)
    assert v.correct is correct, v
    assert v.status in ("ok", "no_answer"), v


def test_corpus_in_one_batch_per_mode(verifier):
    """The same verdicts through verify_batch (the training path), cache and shards included."""
    for mode in ("auto", "gsm8k", "boxed"):
        cases = [c for c in CORPUS if c[0] == mode]
        got = verifier.verify_batch([(g, r) for _, g, r, _ in cases], extract=mode)
        assert [v.correct for v in got] == [ok for *_, ok in cases], mode


def test_refusals_say_why(verifier):
    v = verifier.verify("3", "The answer is 3x", extract="auto")
    assert v.status == "ok" and not v.correct and v.extracted == "3x" and "not a number" in v.detail
    v = verifier.verify("12", "#### 12 apples and 3", extract="gsm8k")
    assert v.status == "ok" and not v.correct and "not a number" in v.detail
    v = verifier.verify("12", "#### 12/5", extract="gsm8k")
    assert v.status == "ok" and not v.correct and v.extracted == "12/5" and v.detail is None
    v = verifier.verify("7", "Answer: 10 - 3", extract="auto")
    assert v.correct and v.extracted == "10 - 3"


def test_gold_expressions_reach_the_value_comparison():
    # the shortcuts only decide equal strings and plain numbers; an expression gold goes to sympy
    for gold, ans in [("2+3", "5"), ("1/2", "0.5"), ("\\frac{10}{4}", "2.5"), ("\\mathrm{e}", "e"),
                      ("2+3", "23"), ("10-3", "7"), ("0.5", "1/2")]:
        assert decide_without_sympy(gold, ans) is None, (gold, ans)
    assert decide_without_sympy("2+3", "2 + 3") is True  # the same text
    assert decide_without_sympy("12", "13") is False and decide_without_sympy("0.5", ".50") is True


@pytest.mark.parametrize("response", [
    "The answer is 9^9^9^9",
    "The answer is 2^10^10",
    "The answer is " + "(" * 10_000 + "1" + ")" * 10_000,
    "The answer is " + "1+" * 200 + "1",
    "The answer is " + "9" * 400 + "^" + "9" * 400,
    "The answer is " + "2^" * 200 + "2",
    "Answer: " + "(1+" * 130 + "1" + ")" * 130,
    "The answer is 5" + "/7" * 200,
    "The answer is 5 " + "x " * 2000,
])
def test_adversarial_expressions_finish_fast_and_are_incorrect(response):
    with Verifier(workers=1, timeout=2.0, memory_mb=768) as v:
        t0 = time.monotonic()
        for mode, text in (("auto", response), ("gsm8k", "#### " + response.split(" is ", 1)[-1])):
            verdict = v.verify("5", text, extract=mode)
            assert not verdict.correct, (mode, verdict)
            assert verdict.status != "timeout", (mode, verdict)
        assert time.monotonic() - t0 < 2 * 2.0 + 6.0
        assert v.verify("5", "The answer is 10/2", extract="auto").correct  # still usable


def test_injection_in_plain_text_modes_never_executes(tmp_path, verifier):
    marker = tmp_path / "pwned"
    for payload in ["__import__('os').system('touch {m}')", "(lambda: open('{m}', 'w'))()",
                    "1+__import__('pathlib').Path('{m}').touch()"]:
        text = payload.format(m=marker)
        verifier.verify("1", f"The answer is {text}", extract="auto")
        verifier.verify("1", f"#### {text}", extract="gsm8k")
    assert not marker.exists()
