"""Plain-text arithmetic read whole, without evaluating anything as Python.

`evaluate("10 - 3")` is 7, `evaluate("1/2")` is 1/2, `evaluate("5/7.")` is 5/7; text that is not
one complete arithmetic expression gives None (`"3x"`, `"2(3)"`, `"1+"`, `"(1+2"`).

This replaces sympy's `parse_expr` (which runs Python's `eval` on its input) for the plain-text
answers of the `auto` and `gsm8k` modes. It reads the characters Math-Verify's expression
pattern admits: integers, decimals, `+ - * × · ÷ / ^ **`, parentheses, unary signs, spaces (and
thousands commas, `1,234`). It is a shunting-yard parser with explicit stacks (no recursion, so
10,000 nested parentheses cost nothing but a refusal) and exact rational arithmetic
(`fractions.Fraction`). Bounded: at most `MAX_CHARS` characters, and no intermediate value over
`MAX_BITS` bits; a power that would exceed that is refused before it is computed, so `9^9^9^9`
returns None at once. A root (`8^(1/3)`, `2^0.5`) is handed to sympy only for a small rational
base and exponent; division by zero, `0^-1` and an even root of a negative number give None.

`continues_expression(text, end)` says whether the text right after a number (or expression)
at `end` carries on as a larger expression (`3x`, `5/`, `5 + x`, `2π`, `5!`): the worker then
refuses that number instead of grading its prefix. Unit words directly after a number are not a
continuation (`10cm`, `5kg`, `60mph`, `3rd`, `9m/s^2`), see `UNIT_WORDS`.
"""
from __future__ import annotations

from fractions import Fraction

MAX_CHARS = 512  # a longer expression is refused unread
MAX_BITS = 4000  # about 1,200 decimal digits: no value (numerator or denominator) beyond this
MAX_ROOT_DEN = 12  # x^(p/q): q at most this ...
MAX_ROOT_BITS = 200  # ... and the base's numerator and denominator at most this many bits
MAX_SYMBOLIC_POWER = 64  # integer power of an irrational value (a root), at most this

# Binary operators: precedence and right-associativity. Unary minus ("neg") binds looser than
# ^ and tighter than * /: -2^2 = -4, 2^-1 = 1/2, -2*3 = -6, 2^3^2 = 2^9.
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}
_RIGHT = {"^", "neg"}
_OPS = {"+": "+", "-": "-", "\u2212": "-", "*": "*", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*",
        "/": "/", "\u00f7": "/", "^": "^"}


class Refused(ValueError):
    """The text is not one complete expression this module reads (or it would be too big)."""


def _tokens(s: str):
    """(kind, value) pairs: ("num", Fraction), ("op", "+-*/^"), ("(", None), (")", None)."""
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
        elif "0" <= c <= "9" or (c == "." and i + 1 < n and "0" <= s[i + 1] <= "9"):
            j = i
            while j < n and "0" <= s[j] <= "9":
                j += 1
            # thousands separators: 1,234 or 12,345,678 (groups of exactly three digits)
            if j - i <= 3 and j < n and s[j] == ",":
                k = j
                while (k + 3 < n and s[k] == "," and s[k + 1:k + 4].isdigit() and s[k + 1:k + 4].isascii()
                       and (k + 4 == n or not ("0" <= s[k + 4] <= "9"))):
                    k += 4
                if k == j:
                    raise Refused("a comma that is not a thousands separator")
                j = k
            if j < n and s[j] == ".":
                if j + 1 < n and "0" <= s[j + 1] <= "9":
                    j += 1
                    while j < n and "0" <= s[j] <= "9":
                        j += 1
                else:
                    raise Refused("a number ending in a point")
            text = s[i:j].replace(",", "")
            yield "num", Fraction(text)
            i = j
        elif c == "*" and i + 1 < n and s[i + 1] == "*":
            yield "op", "^"
            i += 2
        elif c in _OPS:
            yield "op", _OPS[c]
            i += 1
        elif c == "(" or c == ")":
            yield c, None
            i += 1
        else:
            raise Refused(f"character {c!r}")


def _bits(v: Fraction) -> int:
    return max(v.numerator.bit_length(), v.denominator.bit_length())


def _is_number(v) -> bool:
    return isinstance(v, Fraction)


def _sympy(v):
    if _is_number(v):
        import sympy

        return sympy.Rational(v.numerator, v.denominator)
    return v


def _size(v) -> int:
    """Bits of the largest number in a value (a Fraction, or a sympy expression of roots)."""
    if _is_number(v):
        return _bits(v)
    import sympy

    return max((max(abs(int(r.p)).bit_length(), int(r.q).bit_length()) for r in v.atoms(sympy.Rational)),
               default=1)


def _from_sympy(v):
    """A sympy result back to a Fraction when it is rational; refused when not a finite real."""
    import sympy

    if v.is_Rational:
        return Fraction(int(v.p), int(v.q))
    if v.has(sympy.zoo, sympy.nan, sympy.oo, sympy.I) or v.is_real is False:
        raise Refused("not a finite real value")
    return v


def _power(a, b):
    if not _is_number(b):
        raise Refused("an irrational exponent")
    if b.denominator == 1:
        e = b.numerator
        if _is_number(a):
            if a == 0 and e < 0:
                raise Refused("division by zero")
            if a == 0 or abs(a) == 1 or e == 0:
                return a ** e
            if abs(e) * _bits(a) > MAX_BITS:
                raise Refused("a power too large")
            return a ** e
        if abs(e) > MAX_SYMBOLIC_POWER or abs(e) * _size(a) > MAX_BITS:
            raise Refused("a power too large")
        return _from_sympy(_sympy(a) ** e)
    # a root: a small rational base and exponent only, handed to sympy (exact)
    if not _is_number(a) or _bits(a) > MAX_ROOT_BITS or b.denominator > MAX_ROOT_DEN \
            or abs(b.numerator) > MAX_ROOT_DEN * 8:
        raise Refused("a root too large")
    if a < 0:
        raise Refused("a root of a negative number")
    if a == 0:
        if b < 0:
            raise Refused("division by zero")
        return Fraction(0)
    import sympy

    return _from_sympy(sympy.Pow(_sympy(a), sympy.Rational(b.numerator, b.denominator)))


def _apply(op: str, vals: list) -> None:
    if op == "neg":
        if not vals:
            raise Refused("a sign with nothing after it")
        vals.append(-vals.pop())
        return
    if len(vals) < 2:
        raise Refused("an operator without two operands")
    b = vals.pop()
    a = vals.pop()
    if op == "^":
        r = _power(a, b)
    elif _is_number(a) and _is_number(b):
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        else:
            if b == 0:
                raise Refused("division by zero")
            r = a / b
    else:
        x, y = _sympy(a), _sympy(b)
        if op == "/" and y == 0:
            raise Refused("division by zero")
        r = _from_sympy({"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op])
    if _size(r) > MAX_BITS:
        raise Refused("a value too large")
    vals.append(r)


def parse(text: str):
    """The exact value of `text` (a Fraction, or a sympy number for roots); raises Refused."""
    s = text.strip()
    while s.endswith("."):
        s = s[:-1].rstrip()  # a sentence's full stop: "5/7." is 5/7
    if not s:
        raise Refused("empty")
    if len(s) > MAX_CHARS:
        raise Refused("too long")
    vals: list = []
    ops: list[str] = []
    expect_operand = True
    toks = list(_tokens(s))
    for idx, (kind, v) in enumerate(toks):
        if kind == "num":
            if not expect_operand:
                raise Refused("two numbers side by side")
            vals.append(v)
            expect_operand = False
        elif kind == "(":
            if not expect_operand:
                raise Refused("a parenthesis after an operand (no implicit multiplication)")
            ops.append("(")
        elif kind == ")":
            if expect_operand:
                raise Refused("an empty or unfinished group")
            while ops and ops[-1] != "(":
                _apply(ops.pop(), vals)
            if not ops:
                # prose closing a bracket the expression did not open: "(so the answer is 5)."
                if all(k == ")" for k, _ in toks[idx:]):
                    break
                raise Refused("an unmatched ')'")
            ops.pop()
        else:  # operator
            if expect_operand:
                if v == "-":
                    ops.append("neg")
                elif v == "+":
                    pass  # unary plus
                else:
                    raise Refused(f"{v!r} with nothing before it")
                continue
            while ops and ops[-1] != "(" and (
                    _PREC[ops[-1]] > _PREC[v] or (_PREC[ops[-1]] == _PREC[v] and v not in _RIGHT)):
                _apply(ops.pop(), vals)
            ops.append(v)
            expect_operand = True
    if expect_operand:
        raise Refused("an expression ending in an operator")
    while ops:
        op = ops.pop()
        if op == "(":
            raise Refused("an unclosed '('")
        _apply(op, vals)
    if len(vals) != 1:
        raise Refused("not one expression")
    return vals[0]


def evaluate(text: str):
    """The value of `text` as a sympy number (Integer, Rational, or an exact root), else None."""
    try:
        v = parse(text)
    except (Refused, ZeroDivisionError, OverflowError, ValueError):
        return None
    return to_sympy(v)


def to_sympy(v):
    import sympy

    if _is_number(v):
        return sympy.Integer(v.numerator) if v.denominator == 1 else sympy.Rational(v.numerator, v.denominator)
    return v


# --- does the text after a number continue it into a larger expression? ------------------------

# Unit words a number may carry without a space (case-sensitive: "5m" is metres, "5M" is not 5).
# Each may take ^2 / ^3 / ² / ³, and one "/unit" (m/s, km/h); what follows must not be a letter, a
# digit or an operator ("5m+2" is refused). Ordinals (1st, 2nd, 3rd, 4th) are here too.
UNIT_WORDS = frozenset("""
    mm cm dm m km in ft yd mi
    mg g kg lb lbs oz
    ml mL cl dl l L gal qt pt
    s sec secs ms min mins h hr hrs wk wks yr yrs
    mph kph kmh rpm Hz kHz MHz GHz
    am pm
    st nd rd th
    Pa kPa kW kWh cal kcal
    KB MB GB TB
""".split())
# (Single letters that are as often a variable or a multiplier - t, d, k, K, M, B, N, A, V - are
# left out: "5k" is not 5.)

# A LaTeX command directly after a number that is arithmetic, not a unit or spacing.
_ARITH_COMMANDS = frozenset("""
    times cdot div frac dfrac tfrac sqrt pi ast star cdotp binom choose over pm mp
    e i exp log ln sin cos tan sec csc cot mathrm operatorname
""".split())
_DIRECT_OPS = set("/^*\u00d7\u00f7(\u00b7\u22c5\u221a!\u00b2\u00b3\u00b9\u2070\u2074\u2075\u2076\u2077\u2078"
                  "\u2079\u00bd\u00bc\u00be\u2153\u2154[{")
_SPACED_OPS = set("+-*/^\u00d7\u00f7\u00b7\u22c5\u2212(")
_SIGNS = set("+-\u2212")
_AFTER_BOLD = " \t\r\n.,:;!?)$"
_LOOKAHEAD = 40  # characters read after the number: enough for "km/h^2" and some spaces


def _is_operand_start(s: str, i: int) -> bool:
    """A digit, '(', '.digit', '\\', or a single-letter variable (a letter not followed by one)."""
    if i >= len(s):
        return False
    c = s[i]
    if c.isdigit() or c == "(" or c == "\\" or c == "\u221a":
        return True
    if c == "." and i + 1 < len(s) and s[i + 1].isdigit():
        return True
    return c.isalpha() and not (i + 1 < len(s) and s[i + 1].isalpha())


def _unit_end(s: str, i: int) -> int | None:
    """End of a unit word (with an optional power and one '/unit') starting at s[i], else None."""
    def word(k):
        j = k
        while j < len(s) and s[j].isalpha() and s[j].isascii():
            j += 1
        if j == k or s[k:j] not in UNIT_WORDS or (j < len(s) and s[j].isalpha()):
            return None
        if s.startswith("^2", j) or s.startswith("^3", j):
            j += 2
        elif j < len(s) and s[j] in "\u00b2\u00b3":
            j += 1
        return j

    j = word(i)
    if j is None:
        return None
    if j < len(s) and s[j] == "/":
        k = word(j + 1)
        if k is None:
            return None
        j = k
    return j


def continues_expression(text: str, end: int) -> bool:
    """True when `text[end:]` continues the number (or expression) ending at `end`: the value
    read so far is a prefix of something larger, not the answer.

    Directly attached: a letter that does not start a unit word (`3x`, `2π`, `5M`), one of
    `/ ^ * × ÷ · ( [ { √ !` or a superscript/fraction digit (`5²`, `5½`), a sign (`5-x`, `5+2y`,
    `10+`), or an arithmetic LaTeX command (`5\\times 3`, `2\\pi`). After spaces on the same
    line: an operator followed by an operand (`5 + x`, `5 * (2)`), or `x` between numbers
    (`3 x 4`). Not a continuation: punctuation, a newline, a word after a space (`18 dollars`),
    `%`, `°`, `^\\circ`, `\\%`, `\\text{...}`, a dash into a word (`5-year-old`, `42 - the count`),
    the stars closing a markdown bold answer (`**42**.`)."""
    s = text[end:end + _LOOKAHEAD]
    stars = len(s) - len(s.lstrip("*"))
    if 0 < stars <= 2 and (len(s) == stars or s[stars] in _AFTER_BOLD):
        s = s[stars:]  # the stars closing a markdown **bold** answer
    if not s:
        return False
    c = s[0]
    if c.isalpha():
        j = _unit_end(s, 0)
        if j is None:
            return True
        rest = s[j:j + 1]
        return bool(rest) and (rest.isalnum() or rest in _DIRECT_OPS or rest in _SIGNS and _is_operand_start(s, j + 1))
    if c in _DIRECT_OPS:
        if c == "^" and (s.startswith("^\\circ") or s.startswith("^{\\circ}") or s.startswith("^\u00b0")):
            return False  # degrees
        return True
    if c in _SIGNS:  # 5-x, 5+2, 10+ (more than 10), 5- ; but 5-year-old is a word
        return not (c != "+" and len(s) > 2 and s[1].isalpha() and s[2].isalpha())
    if c == "\\":
        j = 1
        while j < len(s) and s[j].isalpha():
            j += 1
        return s[1:j] in _ARITH_COMMANDS and not (
            s[1:j] == "mathrm" and not (s.startswith("{e}", j) or s.startswith("{i}", j)))
    if c == " " or c == "\t":
        j = 0
        while j < len(s) and s[j] in " \t":
            j += 1
        if j < len(s) and s[j] in _SPACED_OPS:
            k = j + (2 if s.startswith("**", j) else 1)
            while k < len(s) and s[k] in " \t":
                k += 1
            return _is_operand_start(s, k)
        if j < len(s) and s[j] in "xX" and j + 1 < len(s) and s[j + 1] in " \t":
            k = j + 1
            while k < len(s) and s[k] in " \t":
                k += 1
            return k < len(s) and (s[k].isdigit() or s[k] == "(")
        if s.startswith("\\times", j) or s.startswith("\\cdot", j) or s.startswith("\\div", j):
            return True
    return False
