"""Kubernetes label syntax and label selectors, as kubectl and the API server accept them.

Clusters carry labels and are filtered with ``kubectl``-style selectors, so the rules here follow
k8s.io/apimachinery (``util/validation`` and ``labels/selector.go``): a selector valid for kubectl
means the same here, and one kubectl rejects is rejected here too (with a message that says where).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "LabelError",
    "Operator",
    "Requirement",
    "SelectorError",
    "parse_label_selector",
    "selector_matches",
    "validate_label_key",
    "validate_label_value",
    "validate_name",
]

_MAX_NAME_LENGTH = 63
_MAX_PREFIX_LENGTH = 253
_MAX_VALUE_LENGTH = 63

# ASCII classes spelled out: Python's \w and str.isalnum() would also accept non-ASCII letters.
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

_NAME_PART_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_NAME_RULE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc'); "
    "at most 63 characters"
)


class LabelError(ValueError):
    """A label key, label value, name or requirement breaks Kubernetes' syntax; says which rule."""


def _label_key_problems(key: str) -> list[str]:
    # Same checks and wording as apimachinery's IsQualifiedName, so users can search for them.
    parts = key.split("/")
    if len(parts) > 2:
        return [
            f"a qualified name {_NAME_PART_RULE} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    problems: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            if len(prefix) > _MAX_PREFIX_LENGTH:
                problems.append(f"prefix part must be no more than {_MAX_PREFIX_LENGTH} characters")
            if not _DNS1123_SUBDOMAIN.fullmatch(prefix):
                problems.append(
                    "prefix part a lowercase RFC 1123 subdomain must consist of lower case "
                    "alphanumeric characters, '-' or '.', and must start and end with an "
                    "alphanumeric character (e.g. 'example.com')"
                )
    if not name:
        problems.append("name part must be non-empty")
        return problems
    if len(name) > _MAX_NAME_LENGTH:
        problems.append(f"name part must be no more than {_MAX_NAME_LENGTH} characters")
    if not _NAME_PART.fullmatch(name):
        problems.append(f"name part {_NAME_PART_RULE}")
    return problems


def _label_value_problems(value: str) -> list[str]:
    problems: list[str] = []
    if len(value) > _MAX_VALUE_LENGTH:
        problems.append(f"must be no more than {_MAX_VALUE_LENGTH} characters")
    if value and not _NAME_PART.fullmatch(value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return problems


def validate_label_key(key: str) -> None:
    """Refuse a key the API server would refuse: ``[prefix/]name``, prefix a DNS-1123 subdomain."""
    if problems := _label_key_problems(key):
        raise LabelError(f"label key {key!r} is invalid: {'; '.join(problems)}")


def validate_label_value(value: str) -> None:
    """Refuse a value the API server would refuse; the empty value is allowed."""
    if problems := _label_value_problems(value):
        raise LabelError(f"label value {value!r} is invalid: {'; '.join(problems)}")


def validate_name(name: str) -> None:
    """Refuse a cluster name that is not a DNS-1123 label, so it can name Kubernetes objects too."""
    if len(name) > _MAX_NAME_LENGTH or not _DNS1123_LABEL.fullmatch(name):
        raise LabelError(f"name {name!r} is invalid: {_NAME_RULE}")


class Operator(enum.Enum):
    """How a requirement compares a label; values are apimachinery's ``selection.Operator``."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


_SINGLE_VALUE = frozenset({Operator.EQUALS, Operator.NOT_EQUALS})
_VALUE_SET = frozenset({Operator.IN, Operator.NOT_IN})
_MATCHES_ABSENT = frozenset({Operator.NOT_EQUALS, Operator.NOT_IN, Operator.DOES_NOT_EXIST})


@dataclass(frozen=True)
class Requirement:
    """One condition of a selector; built valid or not at all, so consumers need not re-check.

    ``values`` holds one value for ``=``/``!=``, a sorted, deduplicated non-empty set for
    ``in``/``notin``, and nothing for ``exists``/``!``.
    """

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_label_key(self.key)
        values = tuple(self.values)
        name = self.operator.value
        if self.operator in _SINGLE_VALUE and len(values) != 1:
            raise LabelError(f"operator {name!r} needs exactly one value, got {len(values)}")
        if self.operator in _VALUE_SET:
            if not values:
                raise LabelError(f"operator {name!r} needs at least one value")
            # Canonical form, so equal requirements compare equal however they were written.
            values = tuple(sorted(set(values)))
        if self.operator not in _SINGLE_VALUE | _VALUE_SET and values:
            raise LabelError(f"operator {name!r} takes no values, got {len(values)}")
        for value in values:
            validate_label_value(value)
        object.__setattr__(self, "values", values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: ``!=``, ``notin`` and ``!`` hold when the key is absent."""
        if self.key not in labels:
            return self.operator in _MATCHES_ABSENT
        match self.operator:
            case Operator.EXISTS:
                return True
            case Operator.DOES_NOT_EXIST:
                return False
            case Operator.EQUALS | Operator.IN:
                return labels[self.key] in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return labels[self.key] not in self.values
        raise AssertionError(f"unhandled operator {self.operator}")


def selector_matches(requirements: Sequence[Requirement], labels: Mapping[str, str]) -> bool:
    """A selector is the AND of its requirements; the empty selector matches every label set."""
    return all(requirement.matches(labels) for requirement in requirements)


class SelectorError(ValueError):
    """A label selector that does not parse; the message names the problem and its position."""


class _Kind(enum.Enum):
    IDENTIFIER = enum.auto()
    IN = enum.auto()
    NOT_IN = enum.auto()
    EQUALS = enum.auto()
    DOUBLE_EQUALS = enum.auto()
    NOT_EQUALS = enum.auto()
    BANG = enum.auto()
    OPEN = enum.auto()
    CLOSE = enum.auto()
    COMMA = enum.auto()
    GREATER = enum.auto()
    LESS = enum.auto()
    END = enum.auto()


class _Token(NamedTuple):
    kind: _Kind
    text: str
    position: int  # 0-based index into the selector text


_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),<>")
_WORD_ENDS = _SPECIAL | _WHITESPACE
_SYMBOLS = {
    "==": _Kind.DOUBLE_EQUALS,
    "!=": _Kind.NOT_EQUALS,
    "=": _Kind.EQUALS,
    "!": _Kind.BANG,
    "(": _Kind.OPEN,
    ")": _Kind.CLOSE,
    ",": _Kind.COMMA,
    ">": _Kind.GREATER,
    "<": _Kind.LESS,
}
_KEYWORDS = {"in": _Kind.IN, "notin": _Kind.NOT_IN}
# 'in' and 'notin' are words like any other where a key or value is expected ("in in (notin)").
_WORDS = frozenset({_Kind.IDENTIFIER, _Kind.IN, _Kind.NOT_IN})
_OPERATORS_HINT = "'=', '==', '!=', 'in' or 'notin'"
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_./")


def _tokenize(text: str) -> list[_Token]:
    # As apimachinery's Lexer: a word runs until whitespace or one of = ! ( ) , < >.
    tokens: list[_Token] = []
    index = 0
    while True:
        while index < len(text) and text[index] in _WHITESPACE:
            index += 1
        if index == len(text):
            tokens.append(_Token(_Kind.END, "", index))
            return tokens
        if text[index] in _SPECIAL:
            pair = text[index : index + 2]
            symbol = pair if pair in _SYMBOLS else text[index]
            tokens.append(_Token(_SYMBOLS[symbol], symbol, index))
            index += len(symbol)
            continue
        start = index
        while index < len(text) and text[index] not in _WORD_ENDS:
            index += 1
        word = text[start:index]
        tokens.append(_Token(_KEYWORDS.get(word, _Kind.IDENTIFIER), word, start))


def _unexpected(token: _Token, expected: str) -> SelectorError:
    found = "end of selector" if token.kind is _Kind.END else repr(token.text)
    return SelectorError(
        f"unexpected {found} at position {token.position} in label selector: expected {expected}"
    )


class _Parser:
    """Recursive descent over the tokens, one method per rule of selector.go's grammar."""

    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._index = 0

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind is not _Kind.END:
            self._index += 1
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        if self._peek().kind is _Kind.END:
            return requirements
        while True:
            requirements.append(self._requirement())
            token = self._next()
            if token.kind is _Kind.END:
                return requirements
            if token.kind is not _Kind.COMMA:
                raise _unexpected(token, "',' or the end of the selector")
            if self._peek().kind is _Kind.END:
                raise SelectorError(
                    f"trailing ',' at position {token.position} in label selector: "
                    "expected a requirement after it"
                )

    def _requirement(self) -> Requirement:
        token = self._next()
        if token.kind is _Kind.BANG:
            key = self._key(self._next(), "a label key after '!'")
            if self._peek().kind not in (_Kind.END, _Kind.COMMA):
                raise _unexpected(self._peek(), f"',' or the end, as '!{key}' takes no value")
            return Requirement(key, Operator.DOES_NOT_EXIST)
        key = self._key(token, "a label key or '!'")
        if self._peek().kind in (_Kind.END, _Kind.COMMA):
            return Requirement(key, Operator.EXISTS)
        operator = self._next()
        match operator.kind:
            case _Kind.EQUALS | _Kind.DOUBLE_EQUALS:
                return Requirement(key, Operator.EQUALS, (self._exact_value(key, operator),))
            case _Kind.NOT_EQUALS:
                return Requirement(key, Operator.NOT_EQUALS, (self._exact_value(key, operator),))
            case _Kind.IN:
                return Requirement(key, Operator.IN, self._value_set(key, operator))
            case _Kind.NOT_IN:
                return Requirement(key, Operator.NOT_IN, self._value_set(key, operator))
            case _Kind.GREATER | _Kind.LESS:
                # apimachinery accepts these for integer values; clusters' labels have no use.
                raise SelectorError(
                    f"unsupported operator {operator.text!r} at position {operator.position} "
                    f"in label selector: use {_OPERATORS_HINT}"
                )
        raise _unexpected(operator, f"an operator ({_OPERATORS_HINT}), ',' or the end")

    def _key(self, token: _Token, expected: str) -> str:
        if token.kind not in _WORDS:
            raise _unexpected(token, expected)
        key = token.text
        if problems := _label_key_problems(key):
            # "env~prod" is one word to the lexer; a valid key before a stray symbol reads better
            # as a wrong operator than as a wrong key.
            stray = next((i for i, char in enumerate(key) if char not in _KEY_CHARACTERS), 0)
            if stray and not _label_key_problems(key[:stray]):
                raise SelectorError(
                    f"unknown operator {key[stray]!r} at position {token.position + stray} "
                    f"in label selector: expected {_OPERATORS_HINT}"
                )
            raise SelectorError(
                f"label key {key!r} at position {token.position} in label selector is invalid: "
                + "; ".join(problems)
            )
        return key

    def _value(self, key: str, token: _Token) -> str:
        if problems := _label_value_problems(token.text):
            raise SelectorError(
                f"label value {token.text!r} for key {key!r} at position {token.position} "
                f"in label selector is invalid: {'; '.join(problems)}"
            )
        return token.text

    def _exact_value(self, key: str, operator: _Token) -> str:
        token = self._peek()
        if token.kind in (_Kind.END, _Kind.COMMA):
            return ""  # "env=" selects the empty value, as in Kubernetes
        if token.kind not in _WORDS:
            raise _unexpected(token, f"a value after {operator.text!r}")
        return self._value(key, self._next())

    def _value_set(self, key: str, operator: _Token) -> tuple[str, ...]:
        opening = self._next()
        if opening.kind is not _Kind.OPEN:
            raise _unexpected(opening, f"'(' after {operator.text!r}")
        if self._peek().kind is _Kind.CLOSE:
            # Kubernetes reads "()" as the empty value; an empty set is more likely a mistake.
            raise SelectorError(
                f"empty value set '()' at position {opening.position} in label selector: "
                f"{operator.text!r} needs at least one value"
            )
        values: list[str] = []
        while True:
            # As in Kubernetes, an item left out between commas ("(a,,b)") is the empty value.
            is_word = self._peek().kind in _WORDS
            values.append(self._value(key, self._next()) if is_word else "")
            token = self._next()
            if token.kind is _Kind.CLOSE:
                return tuple(values)
            if token.kind is _Kind.END:
                raise SelectorError(
                    f"unclosed '(' at position {opening.position} in label selector: "
                    "expected ')' before the end"
                )
            if token.kind is not _Kind.COMMA:
                raise _unexpected(token, "',' or ')' in the value set")


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """Parse kubectl's ``-l`` syntax; an empty or blank selector gives ``()`` (matches all).

    Requirements come back sorted by key (stably), as apimachinery sorts them, so that two
    spellings of the same selector compare equal.
    """
    requirements = _Parser(text).parse()
    return tuple(sorted(requirements, key=lambda requirement: requirement.key))
