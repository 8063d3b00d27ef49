"""Formula text + alias declarations -> formula tree.  A small precedence-climbing parser
(never ``eval``).  Grammar, loosest binding first::

    cmp     := dots (('=='|'!='|'<'|'<='|'>'|'>=') dots)?
    dots    := sum ('|' sum)*
    sum     := product (('+'|'-') product)*
    product := unary (('*'|'/') unary)*
    unary   := '-' unary | atom ('**' unary)?
    atom    := NUMBER | NAME | NAME '(' args ')' | '(' cmp ')'

-- Python's precedence, as pykeops evaluates its formula strings with Python's operators:
``a|b`` is ``Scalprod(a, b)`` with or without parentheses, ``-x**2`` is ``-(x**2)``,
``x**-1`` is ``Pow(x, -1)``, ``x**2**2`` is ``x**4``; an exponent must be an integer
constant (``f**2`` is ``Square(f)``, ``f**m`` is ``Pow(f, m)``; ``Powf`` for any other).

Dimension errors are re-raised with the offending piece of the text and a caret.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import DimError, FormulaError, ParseError
from .ops import COMPARISONS, REGISTRY, cst, intcst, make
from .tree import Node, var

CATS = {"Vi": 0, "Vx": 0, "Vj": 1, "Vy": 1, "Pm": 2}
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>==|!=|<=|>=|\*\*|[-+*/(),|<>\[\]]))"
)


@dataclass(frozen=True)
class Alias:
    name: str | None
    var: Node


def _caret(text: str, pos: int, msg: str) -> str:
    return f"{msg}\n  {text}\n  {' ' * pos}^"


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = len(text) - len(text[pos:].lstrip())
            raise ParseError(_caret(text, bad, f"unexpected character {text[bad]!r}"))
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(("end", "", len(text)))
    return out


#: Nesting levels of parentheses, calls and unary minus the parser accepts (each costs several
#: Python frames; deeper formulas get a ParseError instead of a RecursionError).
MAX_NESTING = 100


class _Parser:
    def __init__(self, text: str, names: dict[str, Node]):
        self.text, self.names, self.toks, self.i = text, names, _tokens(text), 0
        self.depth = 0
        self.inline: list[Node] = []  # variables written inline, even where they simplify away

    def nested(self, pos: int, parse):
        """``parse()`` one nesting level deeper."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.error(pos, f"formula nested deeper than {MAX_NESTING} levels")
            return parse()
        finally:
            self.depth -= 1

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        if value is not None and tok[1] != value:
            got = "end of formula" if tok[0] == "end" else repr(tok[1])
            raise ParseError(_caret(self.text, tok[2], f"expected {value!r}, got {got}"))
        self.i += 1
        return tok

    def error(self, pos: int, msg: str) -> ParseError:
        return ParseError(_caret(self.text, pos, msg))

    def parse(self) -> Node:
        node = self.cmp()
        kind, val, pos = self.peek()
        if kind != "end":
            raise self.error(pos, f"unexpected {val!r}")
        return node

    def build(self, pos: int, name: str, *args: Node, params: tuple = ()) -> Node:
        try:
            return make(name, *args, params=params)
        except DimError as e:
            end = self.toks[self.i - 1][2] + len(self.toks[self.i - 1][1])
            raise DimError(_caret(self.text, pos, f"in '{self.text[pos:end]}': {e}")) from None
        except FormulaError as e:
            raise ParseError(_caret(self.text, pos, str(e))) from None

    def cmp(self) -> Node:
        pos = self.peek()[2]
        left = self.dots(pos, self.sum())
        if self.peek()[1] in COMPARISONS:
            op = self.take()[1]
            rpos = self.peek()[2]
            left = self.build(pos, COMPARISONS[op], left, self.dots(rpos, self.sum()))
        return left

    def dots(self, pos: int, left: Node) -> Node:
        """``left | sum | ...`` (no frame of its own around ``left``: nesting depth is
        bounded by Python's frames)."""
        while self.peek()[1] == "|":
            self.take()
            left = self.build(pos, "Scalprod", left, self.sum())
        return left

    def sum(self) -> Node:
        pos = self.peek()[2]
        left = self.product()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            left = self.build(pos, "Add" if op == "+" else "Subtract", left, self.product())
        return left

    def product(self) -> Node:
        pos = self.peek()[2]
        left = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            left = self.build(pos, "Mult" if op == "*" else "Divide", left, self.unary())
        return left

    def unary(self) -> Node:
        if self.peek()[1] == "-":
            pos = self.take()[2]
            arg = self.nested(pos, self.unary)
            if arg.op in ("IntCst", "Cst"):
                return cst(-arg.params[0])
            return self.build(pos, "Minus", arg)
        pos = self.peek()[2]
        base = self.atom()
        return self.power(pos, base) if self.peek()[1] == "**" else base

    def power(self, pos: int, base: Node) -> Node:
        epos = self.take()[2] + 2
        m = self.nested(epos, self.unary)
        if m.op not in ("IntCst", "Cst") or not float(m.params[0]).is_integer():
            raise self.error(epos, "'**' takes an integer constant exponent (as in pykeops); "
                                   "use Powf(f, g) for a real or variable exponent")  # fmt: skip
        m = int(m.params[0])
        if base.op in ("IntCst", "Cst"):  # 2**2: a constant, as Python computes it
            try:
                v = float(base.params[0]) ** m
            except (OverflowError, ZeroDivisionError) as e:
                raise self.error(pos, f"constant power: {e}") from None
            if not math.isfinite(v):
                raise self.error(pos, "constant power outside the float64 range")
            return intcst(int(v)) if base.op == "IntCst" and m >= 0 else cst(v)
        return self.build(pos, "Square", base) if m == 2 else self.build(pos, "Pow", base,
                                                                         params=(m,))  # fmt: skip

    def atom(self) -> Node:
        kind, val, pos = self.take()
        if kind == "num":
            v = float(val)
            if not math.isfinite(v):
                raise self.error(pos, f"number {val} is outside the float64 range")
            return intcst(int(v)) if re.fullmatch(r"\d+", val) else cst(v)
        if val == "(":
            return self.nested(pos, lambda: self.parens(pos))
        if kind != "name":
            raise self.error(pos, f"unexpected {'end of formula' if kind == 'end' else repr(val)}")
        if self.peek()[1] != "(":
            if val in self.names:
                return self.names[val]
            raise self.error(pos, f"unknown variable '{val}' (declared: {sorted(self.names)})")
        self.take("(")
        return self.nested(pos, lambda: self.call(val, pos, self.arguments()))

    def parens(self, pos: int) -> Node:
        left = self.cmp()
        self.take(")")
        return left

    def arguments(self) -> list[tuple[Node, int]]:
        args: list[tuple[Node, int]] = []
        if self.peek()[1] != ")":
            while True:
                apos = self.peek()[2]
                args.append((self.int_list() if self.peek()[1] == "[" else self.cmp(), apos))
                if self.peek()[1] != ",":
                    break
                self.take(",")
        self.take(")")
        return args

    def call(self, name: str, pos: int, args: list[tuple[Node, int]]) -> Node:
        if name in CATS or name == "Var":
            ints = [self.integer(a, p) for a, p in args]
            try:
                v = decl_var(name, ints, None)
                self.inline.append(v)
                return v
            except FormulaError as err:
                raise self.error(pos, str(err)) from None
        d = REGISTRY.get(name)
        if d is None or name in ("Var",):
            raise self.error(pos, f"unknown operation '{name}'")
        least = d.nargs + d.nparams - len(d.defaults)
        if not least <= len(args) <= d.nargs + d.nparams:
            want = f"{least} to {d.nargs + d.nparams}" if d.defaults else f"{least}"
            raise self.error(pos, f"{name} takes {want} argument(s), got {len(args)}")
        lists = [a for a, _ in args[: d.nargs] if isinstance(a, tuple)]
        if lists:
            raise self.error(pos, f"{name}: a list {list(lists[0])} where a formula is expected")
        nodes = [a for a, _ in args[: d.nargs]]
        params = tuple(self.param(a, p) for a, p in args[d.nargs :])
        return self.build(pos, name, *nodes, params=params)

    def int_list(self) -> tuple:
        """A list parameter, ``[2, 3]`` (nested lists allowed), as a tuple of ints."""
        pos = self.take("[")[2]
        items: list = []
        while self.peek()[1] != "]":
            if self.peek()[1] == "[":
                items.append(self.nested(pos, self.int_list))
            else:
                ipos = self.peek()[2]
                items.append(self.integer(self.cmp(), ipos))
            if self.peek()[1] != ",":
                break
            self.take(",")
        self.take("]")
        return tuple(items)

    def param(self, a: Node | tuple, pos: int) -> int | tuple:
        return a if isinstance(a, tuple) else self.integer(a, pos)

    def integer(self, node: Node, pos: int) -> int:
        if isinstance(node, tuple):
            raise self.error(pos, "expected an integer constant here, got a list")
        if node.op == "IntCst" or (node.op == "Cst" and float(node.params[0]).is_integer()):
            return int(node.params[0])
        raise self.error(pos, "expected an integer constant here")


def decl_var(kind: str, ints: list[int], default_pos: int | None) -> Node:
    """``Vi(dim)``, ``Vi(pos, dim)``, ``Var(pos, dim, cat)`` (and Vj, Pm, Vx, Vy)."""
    if kind == "Var":
        if len(ints) != 3:
            raise FormulaError("Var takes (pos, dim, cat)")
        pos, dim, cat = ints
    else:
        cat = CATS[kind]
        if len(ints) == 1 and default_pos is not None:
            pos, dim = default_pos, ints[0]
        elif len(ints) == 2:
            pos, dim = ints
        else:
            raise FormulaError(f"{kind} takes (dim) or (pos, dim)")
    if cat not in (0, 1, 2):
        raise FormulaError(f"variable category must be 0 (i), 1 (j) or 2 (parameter), got {cat}")
    if dim < 1 or pos < 0:
        raise FormulaError(f"variable needs pos >= 0 and dim >= 1, got pos={pos}, dim={dim}")
    return var(pos, dim, cat)


_DECL = re.compile(r"^\s*(?:([A-Za-z_][A-Za-z_0-9]*)\s*=\s*)?([A-Za-z]+)\s*\(([^()]*)\)\s*$")


def parse_aliases(aliases: list[str] | tuple[str, ...]) -> list[Alias]:
    """Read ``["x = Vi(3)", "y = Vj(0, 3)", "Pm(1)", ...]``; checks positions are consistent."""
    if isinstance(aliases, str):
        raise TypeError("aliases must be a list of strings such as ['x = Vi(3)', 'y = Vj(3)']")
    out: list[Alias] = []
    by_pos: dict[int, Node] = {}
    names: set[str] = set()
    for k, text in enumerate(aliases):
        m = _DECL.match(str(text))
        if not m or m.group(2) not in (*CATS, "Var"):
            raise ParseError(
                f"cannot read variable declaration {text!r} (expected e.g. 'x = Vi(3)')"
            )
        name, kind, inner = m.groups()
        try:
            ints = [int(s) for s in inner.split(",")] if inner.strip() else []
        except ValueError:
            raise ParseError(f"variable declaration {text!r}: arguments must be integers") from None
        try:
            v = decl_var(kind, ints, k)
        except FormulaError as e:
            raise ParseError(f"variable declaration {text!r}: {e}") from None
        pos = v.params[0]
        if pos in by_pos and by_pos[pos] is not v:
            raise ParseError(
                f"variable declaration {text!r}: position {pos} already declared as {by_pos[pos]}"
            )
        if name is not None:
            if name in names:
                raise ParseError(f"variable name '{name}' declared twice")
            if name in REGISTRY or name in CATS or name == "Var":
                raise ParseError(f"variable name '{name}' is the name of an operation")
            names.add(name)
        by_pos[pos] = v
        out.append(Alias(name, v))
    return out


def parse(
    formula: str, aliases: list[Alias] | None = None, inline: list[Node] | None = None
) -> Node:
    """Parse ``formula`` with the declared ``aliases`` into a dimension-checked tree; the
    variables written inline (``Var(1,3,1)``, ``Vj(2,1)``) are appended to ``inline`` --
    also those that simplification removed (pykeops counts them as arguments)."""
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    names = {a.name: a.var for a in aliases or [] if a.name is not None}
    parser = _Parser(formula, names)
    node = parser.parse()
    if inline is not None:
        inline.extend(parser.inline)
    return node


__all__ = ["parse", "parse_aliases", "Alias", "ParseError"]
