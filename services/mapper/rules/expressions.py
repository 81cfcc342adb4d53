"""Computed attributes: a tiny, safe expression language and ``{field}`` templates.

A source's config builds an attribute from several CRM fields (``computed`` in
``services/core/mapping_settings.py``). The text comes from the config, is compiled once (at
config validation and at start-up) and is evaluated for every change by the mapper.

Expressions are parsed with Python's ``ast`` and compiled into closures; nothing is
ever handed to ``eval``. A strict whitelist decides what compiles:

- literals: text, integers, decimals, ``True``/``False``/``None``;
- field names (identifiers); a field whose name is not an identifier (or is one of
  the function names) is read with ``field("company.name")``; a missing field is None;
- ``+ - * /`` on numbers (``+`` also joins two texts), unary ``-``/``+``;
- ``== != < <= > >=``, ``in``/``not in`` (after them a ``[...]``/``(...)`` literal,
  or a value that is a list (multi-select) or a text (substring));
- ``and or not`` and ``x if condition else y`` (Python's truthiness);
- functions ``lower upper trim coalesce round str num field len``.

Everything else is refused at compile time with its line and column: attribute
access, subscripts, comprehensions, lambdas, f-strings, ``**`` and the other
operators, keyword arguments, names starting with ``__``. The text is at most
``MAX_EXPRESSION_LENGTH`` characters and ``MAX_DEPTH`` levels deep, so neither
compiling nor evaluating can run away.

Evaluation rules: arithmetic and ordering with a None operand give None (unknown);
``==`` never fails (a boolean equals only a boolean); results are finite numbers
within 64 bits (what the Avro contract carries); every failure (division by zero,
text minus a number, ...) is an ``ExpressionError`` naming the problem and its place.

Templates: ``{field}`` placeholders in text, ``{{``/``}}`` for literal braces. A
blank field renders as empty text, whitespace is collapsed and trimmed, and the
result is None when every placeholder is blank.

One small language in one module (its compiler, evaluation rules and templates), so that
what compiles and what it means are read side by side; hence over 400 lines.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final

from services.core.contracts import FieldValue
from services.mapper.rules.values import (
    INT_LIMIT,
    is_blank,
    is_number,
    parse_number,
    value_text,
)

MAX_EXPRESSION_LENGTH: Final = 500
MAX_TEMPLATE_LENGTH: Final = 1000
MAX_DEPTH: Final = 32
MAX_ROUND_DIGITS: Final = 15
# Room for any float's digits plus MAX_ROUND_DIGITS, so quantize never loses digits.
_ROUNDING: Final = Context(prec=400)

Fields = Mapping[str, FieldValue]
Evaluator = Callable[[Fields], FieldValue]


class ExpressionError(ValueError):
    """An expression or template that cannot compile, or a value it cannot evaluate.

    ``value``: the record's value as ``reason`` quotes it, if it does (so that a log
    can leave it out, as ``RuleError`` does)."""

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
        value: str | None = None,
    ):
        self.reason = reason
        self.line = line
        self.column = column
        self.value = value
        place = f"line {line}, column {column}: " if line and column else ""
        super().__init__(f"{place}{reason}")


@dataclass(frozen=True, slots=True)
class _Place:
    line: int
    column: int

    def fail(self, reason: str, *, value: str | None = None) -> ExpressionError:
        return ExpressionError(reason, line=self.line, column=self.column, value=value)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if is_number(value):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _bounded(value: int | float, place: _Place) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise place.fail("not a finite number (too large?)")
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        raise place.fail("number too large (integers are 64-bit)")
    return value


# --- operations at evaluation time ------------------------------------------------


def _add(left: FieldValue, right: FieldValue, place: _Place) -> FieldValue:
    if left is None or right is None:
        return None
    if isinstance(left, str) and isinstance(right, str):
        return left + right
    if is_number(left) and is_number(right):
        return _bounded(left + right, place)
    raise place.fail(f"cannot add {_kind(left)} and {_kind(right)} (str() turns a value to text)")


_ARITHMETIC: Final[dict[type[ast.operator], tuple[str, Callable[[float, float], float]]]] = {
    ast.Sub: ("subtract", operator.sub),
    ast.Mult: ("multiply", operator.mul),
    ast.Div: ("divide", operator.truediv),
}


def _arithmetic(
    op: type[ast.operator], left: FieldValue, right: FieldValue, place: _Place
) -> FieldValue:
    if left is None or right is None:
        return None
    verb, function = _ARITHMETIC[op]
    if not (is_number(left) and is_number(right)):
        raise place.fail(f"cannot {verb} {_kind(left)} and {_kind(right)}")
    if op is ast.Div and right == 0:
        raise place.fail("division by zero")
    try:
        return _bounded(function(left, right), place)
    except OverflowError:
        raise place.fail("number too large") from None


def _same(left: object, right: object) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if is_number(left) and is_number(right):
        return left == right
    return type(left) is type(right) and left == right


_ORDER: Final[dict[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _compare(op: type[ast.cmpop], left: object, right: object, place: _Place) -> bool | None:
    if op is ast.Eq:
        return _same(left, right)
    if op is ast.NotEq:
        return not _same(left, right)
    if op is ast.In:
        return _contains(left, right, place)
    if op is ast.NotIn:
        return not _contains(left, right, place)
    if left is None or right is None:
        return None
    comparable = (is_number(left) and is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise place.fail(f"cannot compare {_kind(left)} with {_kind(right)}")
    return _ORDER[op](left, right)


def _contains(item: object, container: object, place: _Place) -> bool:
    if container is None:
        return False
    if isinstance(container, list):
        return any(_same(item, member) for member in container)
    if isinstance(container, str):
        if not isinstance(item, str):
            raise place.fail(f"cannot look for {_kind(item)} in text")
        return item in container
    raise place.fail(f"'in' needs a list or text, not {_kind(container)}")


def _text_function(name: str, function: Callable[[str], str]) -> Callable[..., FieldValue]:
    def apply(place: _Place, value: FieldValue) -> FieldValue:
        if value is None:
            return None
        if not isinstance(value, str):
            raise place.fail(f"{name}() takes text, not {_kind(value)}")
        return function(value)

    return apply


def _round(place: _Place, value: FieldValue, digits: FieldValue = None) -> FieldValue:
    """Half away from zero on the number as written (round(2.5) == 3, round(2.675, 2)
    == 2.68), not Python's banker's rounding of the binary float."""
    if value is None:
        return None
    if not is_number(value):
        raise place.fail(f"round() takes a number, not {_kind(value)}")
    _bounded(value, place)  # NaN and infinity have no rounding
    if digits is not None and not (
        isinstance(digits, int) and not isinstance(digits, bool) and abs(digits) <= MAX_ROUND_DIGITS
    ):
        raise place.fail(
            f"round() takes a whole number of digits from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}"
        )
    exponent = Decimal(1).scaleb(-(digits or 0))
    try:
        rounded = Decimal(repr(value)).quantize(exponent, rounding=ROUND_HALF_UP, context=_ROUNDING)
    except InvalidOperation:
        raise place.fail("number too large to round") from None
    if digits is None or isinstance(value, int):
        return _bounded(int(rounded), place)
    return float(rounded)


def _str(place: _Place, value: FieldValue) -> FieldValue:
    return None if value is None else value_text(value)


def _num(place: _Place, value: FieldValue) -> FieldValue:
    if value is None or is_number(value):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        number = parse_number(value)
        if number is None:
            shown = repr(value[:40])
            raise place.fail(f"num() cannot read {shown} as a number", value=shown)
        return _bounded(number, place)
    raise place.fail(f"num() takes text or a number, not {_kind(value)}")


def _len(place: _Place, value: FieldValue) -> FieldValue:
    if value is None:
        return None
    if isinstance(value, str | list):
        return len(value)
    raise place.fail(f"len() takes text or a list, not {_kind(value)}")


# name -> (least, most arguments; None = any), implementation taking (place, *values).
# coalesce and field are compiled specially: coalesce is lazy, field reads a field.
_FUNCTIONS: Final[dict[str, tuple[int, int | None, Callable[..., FieldValue] | None]]] = {
    "lower": (1, 1, _text_function("lower", str.lower)),
    "upper": (1, 1, _text_function("upper", str.upper)),
    "trim": (1, 1, _text_function("trim", str.strip)),
    "round": (1, 2, _round),
    "str": (1, 1, _str),
    "num": (1, 1, _num),
    "len": (1, 1, _len),
    "coalesce": (1, None, None),
    "field": (1, 1, None),
}

_REFUSED: Final[dict[type[ast.AST], str]] = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "subscripts (a[b])",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.NamedExpr: "assignment (:=)",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Starred: "unpacking (*)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}

_OPERATOR_NAMES: Final[dict[type[ast.AST], str]] = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.Invert: "~",
    ast.Is: "is (use ==)",
    ast.IsNot: "is not (use !=)",
}


# --- compiling ----------------------------------------------------------------------


class _Compiler:
    """Turns a whitelisted AST into closures, collecting the field names read."""

    def __init__(self, text: str, offset: int) -> None:
        self.lines = text.split("\n")
        self.offset = offset  # characters stripped before the first line
        self.fields: set[str] = set()

    def place(self, node: ast.AST) -> _Place:
        line = getattr(node, "lineno", 1)
        # ast columns count UTF-8 bytes; people count characters.
        prefix = self.lines[line - 1].encode()[: getattr(node, "col_offset", 0)]
        column = len(prefix.decode(errors="ignore")) + 1
        return _Place(line, column + (self.offset if line == 1 else 0))

    def compile(self, node: ast.AST, depth: int) -> Evaluator:
        if depth > MAX_DEPTH:
            raise self.place(node).fail(f"nested more than {MAX_DEPTH} levels deep")
        depth += 1
        match node:
            case ast.Constant():
                return self.constant(node)
            case ast.Name():
                return self.name(node)
            case ast.BinOp():
                return self.binary(node, depth)
            case ast.UnaryOp():
                return self.unary(node, depth)
            case ast.BoolOp():
                return self.boolean(node, depth)
            case ast.Compare():
                return self.compare(node, depth)
            case ast.IfExp():
                return self.conditional(node, depth)
            case ast.Call():
                return self.call(node, depth)
        raise self.place(node).fail(f"not allowed: {_describe(node)}")

    def constant(self, node: ast.Constant) -> Evaluator:
        value = node.value
        if not (value is None or isinstance(value, bool | str) or is_number(value)):
            raise self.place(node).fail(f"not allowed: the literal {value!r}")
        if is_number(value):
            _bounded(value, self.place(node))
        return lambda fields: value

    def name(self, node: ast.Name) -> Evaluator:
        name, place = node.id, self.place(node)
        if name in _FUNCTIONS:
            raise place.fail(
                f"{name} is a function: call {name}(...), or read a field of that name "
                f"with field({name!r})"
            )
        if name.startswith("__"):
            raise place.fail(f"not allowed: a name starting with '__' ({name})")
        self.fields.add(name)
        return lambda fields: fields.get(name)

    def binary(self, node: ast.BinOp, depth: int) -> Evaluator:
        op, place = type(node.op), self.place(node)
        if op is not ast.Add and op not in _ARITHMETIC:
            raise place.fail(f"not allowed: the operator {_OPERATOR_NAMES.get(op, op.__name__)}")
        left, right = self.compile(node.left, depth), self.compile(node.right, depth)
        if op is ast.Add:
            return lambda fields: _add(left(fields), right(fields), place)
        return lambda fields: _arithmetic(op, left(fields), right(fields), place)

    def unary(self, node: ast.UnaryOp, depth: int) -> Evaluator:
        place = self.place(node)
        if isinstance(node.op, ast.Invert):
            raise place.fail("not allowed: the operator ~")
        operand = self.compile(node.operand, depth)
        if isinstance(node.op, ast.Not):
            return lambda fields: not operand(fields)
        sign = -1 if isinstance(node.op, ast.USub) else 1
        return lambda fields: _signed(sign, operand(fields), place)

    def boolean(self, node: ast.BoolOp, depth: int) -> Evaluator:
        operands = [self.compile(value, depth) for value in node.values]
        # Python's semantics: 'and' stops at a falsy operand, 'or' at a truthy one.
        stop_when = isinstance(node.op, ast.Or)

        def combine(fields: Fields) -> FieldValue:
            value: FieldValue = None
            for operand in operands:
                value = operand(fields)
                if bool(value) is stop_when:
                    return value
            return value

        return combine

    def compare(self, node: ast.Compare, depth: int) -> Evaluator:
        first = self.compile(node.left, depth)
        steps: list[tuple[type[ast.cmpop], Callable[[Fields], object], _Place]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if type(op) in _OPERATOR_NAMES:
                name = _OPERATOR_NAMES[type(op)]
                raise self.place(node).fail(f"not allowed: the operator {name}")
            operand = self._operand(comparator, depth, container=isinstance(op, ast.In | ast.NotIn))
            steps.append((type(op), operand, self.place(comparator)))

        def chain(fields: Fields) -> FieldValue:
            left: object = first(fields)
            for op, operand, place in steps:
                right = operand(fields)
                result = _compare(op, left, right, place)
                if not result:
                    return result
                left = right
            return True

        return chain

    def _operand(
        self, node: ast.expr, depth: int, *, container: bool
    ) -> Callable[[Fields], object]:
        if container and isinstance(node, ast.List | ast.Tuple):
            items = [self.compile(item, depth + 1) for item in node.elts]
            return lambda fields: [item(fields) for item in items]
        return self.compile(node, depth)

    def conditional(self, node: ast.IfExp, depth: int) -> Evaluator:
        test = self.compile(node.test, depth)
        body, orelse = self.compile(node.body, depth), self.compile(node.orelse, depth)
        return lambda fields: body(fields) if test(fields) else orelse(fields)

    def call(self, node: ast.Call, depth: int) -> Evaluator:
        place = self.place(node)
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        if name not in _FUNCTIONS:
            raise place.fail(f"only the functions {', '.join(_FUNCTIONS)} can be called")
        if node.keywords:
            raise place.fail(f"{name}() takes no keyword arguments")
        least, most, function = _FUNCTIONS[name]
        if len(node.args) < least or (most is not None and len(node.args) > most):
            raise place.fail(f"{name}() takes {_arity(least, most)}, not {len(node.args)}")
        if name == "field":
            return self._field(node.args[0])
        arguments = [self.compile(argument, depth) for argument in node.args]
        if function is None:
            return lambda fields: _coalesce(arguments, fields)
        return lambda fields: function(place, *(argument(fields) for argument in arguments))

    def _field(self, node: ast.expr) -> Evaluator:
        # A literal name only, so that ``fields`` is known before any record arrives.
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value):
            raise self.place(node).fail(
                "field() takes a field name in quotes, e.g. field('company.name')"
            )
        name = node.value
        self.fields.add(name)
        return lambda fields: fields.get(name)


def _describe(node: ast.AST) -> str:
    if type(node) in _REFUSED:
        return _REFUSED[type(node)]
    if isinstance(node, ast.List | ast.Tuple):
        return "a list outside 'in [...]'"
    return type(node).__name__


def _arity(least: int, most: int | None) -> str:
    if least == most:
        return f"{least} argument{'s' if least > 1 else ''}"
    return f"{least} or more arguments" if most is None else f"{least} to {most} arguments"


def _signed(sign: int, value: FieldValue, place: _Place) -> FieldValue:
    if value is None:
        return None
    if not is_number(value):
        raise place.fail(f"cannot negate {_kind(value)}")
    return _bounded(sign * value, place)


def _coalesce(arguments: Sequence[Evaluator], fields: Fields) -> FieldValue:
    """The first non-blank argument; later ones are not evaluated."""
    for argument in arguments:
        value = argument(fields)
        if not is_blank(value):
            return value
    return None


class Expression:
    """A compiled expression: ``evaluate(fields)`` and the ``fields`` it reads."""

    __slots__ = ("_evaluate", "fields", "text")

    def __init__(self, text: str, evaluate: Evaluator, fields: frozenset[str]) -> None:
        self.text = text
        self.fields = fields
        self._evaluate = evaluate

    def evaluate(self, fields: Fields) -> FieldValue:
        """The value over a record's fields; raises only ExpressionError."""
        return self._evaluate(fields)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile_expression(text: str) -> Expression:
    """Compile ``text``, or raise ExpressionError with the place and the reason."""
    if not isinstance(text, str):
        raise ExpressionError("an expression is text")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_LENGTH} characters")
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("the expression is empty")
    offset = len(text) - len(text.lstrip())
    try:
        with warnings.catch_warnings():
            # e.g. "invalid decimal literal" for "1if": noise in a service's log.
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        line, column = (
            exc.lineno or 1,
            (exc.offset or 1) + (offset if (exc.lineno or 1) == 1 else 0),
        )
        raise ExpressionError(f"syntax error: {exc.msg}", line=line, column=column) from None
    except (ValueError, RecursionError, MemoryError):
        raise ExpressionError("cannot be parsed (too deeply nested?)") from None
    compiler = _Compiler(stripped, offset)
    evaluate = compiler.compile(tree.body, 0)
    return Expression(text, evaluate, frozenset(compiler.fields))


# --- templates ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Placeholder:
    name: str


class Template:
    """A compiled template: ``render(fields)`` and the ``fields`` it reads."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str, parts: Sequence[str | _Placeholder]) -> None:
        self.text = text
        self._parts = tuple(parts)
        self.fields = frozenset(part.name for part in parts if isinstance(part, _Placeholder))

    def render(self, fields: Fields) -> str | None:
        """The text with its placeholders filled; None when every one is blank."""
        values = {name: fields.get(name) for name in self.fields}
        if all(is_blank(value) for value in values.values()):
            return None
        pieces = (
            part
            if isinstance(part, str)
            else ""
            if is_blank(values[part.name])
            else value_text(values[part.name], separator=", ")
            for part in self._parts
        )
        rendered = " ".join("".join(pieces).split())
        return rendered or None

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def compile_template(text: str) -> Template:
    """Compile ``text`` with ``{field}`` placeholders, or raise ExpressionError."""
    if not isinstance(text, str):
        raise ExpressionError("a template is text")
    if len(text) > MAX_TEMPLATE_LENGTH:
        raise ExpressionError(f"longer than {MAX_TEMPLATE_LENGTH} characters")
    parts = _template_parts(text)
    if not any(isinstance(part, _Placeholder) for part in parts):
        raise ExpressionError("a template needs at least one {field} placeholder")
    return Template(text, parts)


def _template_parts(text: str) -> list[str | _Placeholder]:
    parts: list[str | _Placeholder] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char, pair = text[index], text[index : index + 2]
        if pair in ("{{", "}}"):
            literal.append(char)
            index += 2
        elif char == "}":
            raise _template_error(text, index, "a lone '}' (write '}}' for a brace)")
        elif char == "{":
            end = text.find("}", index + 1)
            name = text[index + 1 : end].strip() if end > 0 else ""
            if end < 0 or not name or "{" in name:
                raise _template_error(
                    text, index, "a '{' without a field name and '}' (write '{{' for a brace)"
                )
            parts.extend(["".join(literal), _Placeholder(name)])
            literal = []
            index = end + 1
        else:
            literal.append(char)
            index += 1
    parts.append("".join(literal))
    return [part for part in parts if part != ""]


def _template_error(text: str, index: int, reason: str) -> ExpressionError:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return ExpressionError(reason, line=line, column=column)
