"""Label keys, values, names and kubectl-style selectors behave as Kubernetes' do."""

from __future__ import annotations

import re

import pytest

from fleetql.labels import (
    LabelError,
    Operator,
    Requirement,
    SelectorError,
    parse_label_selector,
    selector_matches,
    validate_label_key,
    validate_label_value,
    validate_name,
)

# --- label keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "env",
        "Env",
        "MyName",
        "my.name",
        "my_name",
        "123-abc",
        "a" * 63,
        "example.com/MyName",
        "app.kubernetes.io/name",
        "k8s.io/a",
        f"{'a' * 253}/name",
        "in",
        "notin",
    ],
)
def test_valid_label_key_is_accepted(key: str) -> None:
    validate_label_key(key)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "name part must be non-empty"),
        ("a" * 64, "name part must be no more than 63 characters"),
        ("a b", "name part must consist of alphanumeric characters"),
        ("-env", "must start and end with an alphanumeric character"),
        ("env-", "must start and end with an alphanumeric character"),
        ("_env", "must start and end with an alphanumeric character"),
        ("env.", "must start and end with an alphanumeric character"),
        ("café", "name part must consist of alphanumeric characters"),
        ("example.com/", "name part must be non-empty"),
        ("/name", "prefix part must be non-empty"),
        ("Example.com/name", "prefix part a lowercase RFC 1123 subdomain"),
        ("example_com/name", "prefix part a lowercase RFC 1123 subdomain"),
        ("-example.com/name", "prefix part a lowercase RFC 1123 subdomain"),
        (f"{'a' * 254}/name", "prefix part must be no more than 253 characters"),
        ("a/b/c", "with an optional DNS subdomain prefix and '/'"),
    ],
)
def test_invalid_label_key_is_refused_naming_the_rule(key: str, problem: str) -> None:
    with pytest.raises(LabelError, match=re.escape(problem)) as caught:
        validate_label_key(key)
    assert str(caught.value).startswith(f"label key {key!r} is invalid: ")


def test_label_key_error_message_reads_like_kubernetes() -> None:
    with pytest.raises(LabelError) as caught:
        validate_label_key("a b")
    assert str(caught.value) == (
        "label key 'a b' is invalid: name part must consist of alphanumeric characters, '-', '_' "
        "or '.', and must start and end with an alphanumeric character"
    )


def test_label_error_is_a_value_error() -> None:
    assert issubclass(LabelError, ValueError)
    assert issubclass(SelectorError, ValueError)


# --- label values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "a", "prod", "Prod", "PROD", "v1.2.3", "a_b-c.d", "1", "a" * 63]
)
def test_valid_label_value_is_accepted(value: str) -> None:
    validate_label_value(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a" * 64, "must be no more than 63 characters"),
        ("-prod", "must start and end with an alphanumeric character"),
        ("prod-", "must start and end with an alphanumeric character"),
        (".prod", "must start and end with an alphanumeric character"),
        ("prod_", "must start and end with an alphanumeric character"),
        ("a b", "a valid label must be an empty string or consist of alphanumeric"),
        ("a/b", "a valid label must be an empty string or consist of alphanumeric"),
        ("é", "a valid label must be an empty string or consist of alphanumeric"),
    ],
)
def test_invalid_label_value_is_refused_naming_the_rule(value: str, problem: str) -> None:
    with pytest.raises(LabelError, match=re.escape(problem)) as caught:
        validate_label_value(value)
    assert str(caught.value).startswith(f"label value {value!r} is invalid: ")


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "my-name", "123-abc", "0", "a" * 63, "a-b-c"])
def test_dns_1123_label_is_a_valid_name(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 64, "My-name", "ABC", "-name", "name-", "my_name", "my.name", "my name", "ä"],
)
def test_name_that_is_not_a_dns_1123_label_is_refused(name: str) -> None:
    with pytest.raises(LabelError) as caught:
        validate_name(name)
    assert str(caught.value) == (
        f"name {name!r} is invalid: a lowercase RFC 1123 label must consist of lower case "
        "alphanumeric characters or '-', and must start and end with an alphanumeric character "
        "(e.g. 'my-name', or '123-abc'); at most 63 characters"
    )


def test_uppercase_is_allowed_in_keys_and_values_but_not_in_names() -> None:
    validate_label_key("Team")
    validate_label_value("Payments")
    with pytest.raises(LabelError):
        validate_name("Payments")


# --- parsing: each operator form ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env=prod", Requirement("env", Operator.EQUALS, ("prod",))),
        ("env==prod", Requirement("env", Operator.EQUALS, ("prod",))),
        ("env!=prod", Requirement("env", Operator.NOT_EQUALS, ("prod",))),
        ("env in (prod)", Requirement("env", Operator.IN, ("prod",))),
        ("env notin (prod)", Requirement("env", Operator.NOT_IN, ("prod",))),
        ("env", Requirement("env", Operator.EXISTS)),
        ("!env", Requirement("env", Operator.DOES_NOT_EXIST)),
        (
            "example.com/Team=Payments",
            Requirement("example.com/Team", Operator.EQUALS, ("Payments",)),
        ),
    ],
)
def test_each_operator_form_parses_to_its_requirement(text: str, expected: Requirement) -> None:
    assert parse_label_selector(text) == (expected,)


def test_double_equals_means_the_same_as_equals() -> None:
    assert parse_label_selector("env==prod") == parse_label_selector("env=prod")


def test_full_kubectl_selector_parses_and_is_sorted_by_key() -> None:
    text = "env=prod,tier!=db,region in (sh,bj),region notin (x),!deprecated,team"
    assert parse_label_selector(text) == (
        Requirement("deprecated", Operator.DOES_NOT_EXIST),
        Requirement("env", Operator.EQUALS, ("prod",)),
        Requirement("region", Operator.IN, ("bj", "sh")),
        Requirement("region", Operator.NOT_IN, ("x",)),
        Requirement("team", Operator.EXISTS),
        Requirement("tier", Operator.NOT_EQUALS, ("db",)),
    )


def test_requirements_on_the_same_key_keep_their_written_order() -> None:
    assert parse_label_selector("a=2,a=1,a") == (
        Requirement("a", Operator.EQUALS, ("2",)),
        Requirement("a", Operator.EQUALS, ("1",)),
        Requirement("a", Operator.EXISTS),
    )


@pytest.mark.parametrize("text", ["", " ", "\t", " \r\n\t "])
def test_empty_or_blank_selector_has_no_requirements(text: str) -> None:
    assert parse_label_selector(text) == ()


@pytest.mark.parametrize(
    "text",
    [
        "env=prod,tier in (a,b),!old,team",
        " env = prod , tier in ( a , b ) , ! old , team ",
        "env=prod,tier in(a,b),!old,team",
        "\tenv\t=\tprod\n,\ntier\r\nin\t(a,\tb),!\told,team\n",
    ],
)
def test_whitespace_between_tokens_does_not_matter(text: str) -> None:
    assert parse_label_selector(text) == (
        Requirement("env", Operator.EQUALS, ("prod",)),
        Requirement("old", Operator.DOES_NOT_EXIST),
        Requirement("team", Operator.EXISTS),
        Requirement("tier", Operator.IN, ("a", "b")),
    )


@pytest.mark.parametrize(
    ("text", "operator"),
    [
        ("env=", Operator.EQUALS),
        ("env==", Operator.EQUALS),
        ("env!=", Operator.NOT_EQUALS),
        ("env= ", Operator.EQUALS),
    ],
)
def test_missing_value_after_equality_operator_is_the_empty_value(
    text: str, operator: Operator
) -> None:
    assert parse_label_selector(text) == (Requirement("env", operator, ("",)),)


def test_empty_value_may_be_followed_by_more_requirements() -> None:
    assert parse_label_selector("env=,team") == (
        Requirement("env", Operator.EQUALS, ("",)),
        Requirement("team", Operator.EXISTS),
    )


def test_in_with_several_values_sorts_and_deduplicates_them() -> None:
    (requirement,) = parse_label_selector("region in (sh, bj, gz, sh)")
    assert requirement == Requirement("region", Operator.IN, ("bj", "gz", "sh"))
    assert requirement.values == ("bj", "gz", "sh")


def test_empty_item_in_value_set_is_the_empty_value_as_in_kubernetes() -> None:
    assert parse_label_selector("x in (foo,,baz)") == (
        Requirement("x", Operator.IN, ("", "baz", "foo")),
    )
    assert parse_label_selector("x notin (a,)") == (Requirement("x", Operator.NOT_IN, ("", "a")),)


def test_in_and_notin_are_ordinary_words_where_a_key_or_value_is_expected() -> None:
    assert parse_label_selector("in in (notin, in),notin=in") == (
        Requirement("in", Operator.IN, ("in", "notin")),
        Requirement("notin", Operator.EQUALS, ("in",)),
    )


def test_notin_needs_no_space_before_its_parenthesis() -> None:
    assert parse_label_selector("env notin(a)") == (Requirement("env", Operator.NOT_IN, ("a",)),)


# --- parsing: malformed selectors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "env=prod,",
            "trailing ',' at position 8 in label selector: expected a requirement after it",
        ),
        ("env=prod, ", "trailing ',' at position 8 in label selector"),
        ("env=,", "trailing ',' at position 4 in label selector"),
        (",env", "unexpected ',' at position 0 in label selector: expected a label key or '!'"),
        ("a,,b", "unexpected ',' at position 2 in label selector: expected a label key or '!'"),
        ("=prod", "unexpected '=' at position 0 in label selector: expected a label key or '!'"),
        ("env=)", "unexpected ')' at position 4 in label selector: expected a value after '='"),
        ("env!=(a)", "unexpected '(' at position 5 in label selector: expected a value after '!='"),
        (
            "env===prod",
            "unexpected '=' at position 5 in label selector: expected a value after '=='",
        ),
        (
            "env~prod",
            "unknown operator '~' at position 3 in label selector: "
            "expected '=', '==', '!=', 'in' or 'notin'",
        ),
        ("team=a,env:prod", "unknown operator ':' at position 10 in label selector"),
        ("env~=prod", "unknown operator '~' at position 3 in label selector"),
        ("env>1", "unsupported operator '>' at position 3 in label selector"),
        ("env < 1", "unsupported operator '<' at position 4 in label selector"),
        ("env!prod", "unexpected '!' at position 3 in label selector: expected an operator"),
        ("env prod", "unexpected 'prod' at position 4 in label selector: expected an operator"),
        ("env (a)", "unexpected '(' at position 4 in label selector: expected an operator"),
        (
            "env in (a,b",
            "unclosed '(' at position 7 in label selector: expected ')' before the end",
        ),
        ("env in (", "unclosed '(' at position 7 in label selector"),
        ("env in (a,", "unclosed '(' at position 7 in label selector"),
        (
            "env in prod",
            "unexpected 'prod' at position 7 in label selector: expected '(' after 'in'",
        ),
        (
            "env notin a",
            "unexpected 'a' at position 10 in label selector: expected '(' after 'notin'",
        ),
        ("env in", "unexpected end of selector at position 6 in label selector: expected '('"),
        (
            "env in ()",
            "empty value set '()' at position 7 in label selector: 'in' needs at least one value",
        ),
        ("env notin ( )", "empty value set '()' at position 10 in label selector"),
        ("env in (a b)", "unexpected 'b' at position 10 in label selector: expected ',' or ')'"),
        ("env in (a=b)", "unexpected '=' at position 9 in label selector: expected ',' or ')'"),
        ("env in (a))", "unexpected ')' at position 10 in label selector: expected ','"),
        (
            "a=b)",
            "unexpected ')' at position 3 in label selector: "
            "expected ',' or the end of the selector",
        ),
        ("a=b c=d", "unexpected 'c' at position 4 in label selector: expected ',' or the end"),
        ("a=b=c", "unexpected '=' at position 3 in label selector: expected ',' or the end"),
        ("!env=prod", "unexpected '=' at position 4 in label selector: expected ',' or the end"),
        ("!", "unexpected end of selector at position 1 in label selector: expected a label key"),
        ("!!env", "unexpected '!' at position 1 in label selector: expected a label key after '!'"),
        (")", "unexpected ')' at position 0 in label selector: expected a label key or '!'"),
    ],
)
def test_malformed_selector_error_names_problem_and_position(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=f"^{re.escape(message)}"):
        parse_label_selector(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-env=prod", "label key '-env' at position 0 in label selector is invalid: name part"),
        (
            f"{'k' * 64}=v",
            f"label key '{'k' * 64}' at position 0 in label selector is invalid: "
            "name part must be no more than 63 characters",
        ),
        ("a=1,Bad.com/x", "label key 'Bad.com/x' at position 4 in label selector is invalid"),
        ("a/b/c", "label key 'a/b/c' at position 0 in label selector is invalid"),
        ("!_x", "label key '_x' at position 1 in label selector is invalid"),
        ("é=1", "label key 'é' at position 0 in label selector is invalid"),
    ],
)
def test_identifier_that_is_not_a_valid_key_is_refused(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=f"^{re.escape(message)}"):
        parse_label_selector(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "env=-prod",
            "label value '-prod' for key 'env' at position 4 in label selector is invalid",
        ),
        (
            f"env!={'v' * 64}",
            f"label value '{'v' * 64}' for key 'env' at position 5 in label selector is invalid: "
            "must be no more than 63 characters",
        ),
        ("env in (a, b_)", "label value 'b_' for key 'env' at position 11 in label selector"),
        ("env=pr~od", "label value 'pr~od' for key 'env' at position 4 in label selector"),
    ],
)
def test_invalid_value_in_selector_is_refused(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=f"^{re.escape(message)}"):
        parse_label_selector(text)


def test_longest_valid_key_and_value_parse() -> None:
    key, value = "k" * 63, "v" * 63
    assert parse_label_selector(f"{key}={value}") == (Requirement(key, Operator.EQUALS, (value,)),)


# --- matching -----------------------------------------------------------------------------------

LABELS = {"env": "prod", "tier": "web", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env=prod", True),
        ("env=dev", False),
        ("env==prod", True),
        ("env!=dev", True),
        ("env!=prod", False),
        ("env in (dev,prod)", True),
        ("env in (dev,qa)", False),
        ("env notin (dev,qa)", True),
        ("env notin (dev,prod)", False),
        ("env", True),
        ("!env", False),
        ("empty=", True),
        ("empty", True),
        ("empty!=", False),
        ("env=", False),
        ("env in (a,,b)", False),
        ("empty in (a,,b)", True),
    ],
)
def test_requirement_matches_present_key(text: str, expected: bool) -> None:
    (requirement,) = parse_label_selector(text)
    assert requirement.matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("region=sh", False),
        ("region=", False),
        ("region in (sh)", False),
        ("region", False),
        ("region!=sh", True),
        ("region notin (sh)", True),
        ("!region", True),
    ],
)
def test_requirement_on_absent_key_matches_only_negative_operators(
    text: str, expected: bool
) -> None:
    (requirement,) = parse_label_selector(text)
    assert requirement.matches(LABELS) is expected


def test_selector_matches_when_every_requirement_matches() -> None:
    selector = parse_label_selector("env=prod,tier in (web,api),!deprecated,region notin (x)")
    assert selector_matches(selector, LABELS)
    assert not selector_matches(selector, {**LABELS, "deprecated": "true"})
    assert not selector_matches(selector, {**LABELS, "tier": "db"})


def test_empty_selector_matches_any_labels() -> None:
    assert selector_matches(parse_label_selector(""), {})
    assert selector_matches((), LABELS)


# --- building requirements directly -------------------------------------------------------------


def test_requirement_built_directly_normalises_value_set() -> None:
    requirement = Requirement("env", Operator.NOT_IN, ("b", "a", "b"))
    assert requirement.values == ("a", "b")
    assert requirement == parse_label_selector("env notin (a,b)")[0]


@pytest.mark.parametrize(
    ("key", "operator", "values", "problem"),
    [
        ("env", Operator.EQUALS, (), "operator '=' needs exactly one value, got 0"),
        ("env", Operator.NOT_EQUALS, ("a", "b"), "operator '!=' needs exactly one value, got 2"),
        ("env", Operator.IN, (), "operator 'in' needs at least one value"),
        ("env", Operator.NOT_IN, (), "operator 'notin' needs at least one value"),
        ("env", Operator.EXISTS, ("a",), "operator 'exists' takes no values, got 1"),
        ("env", Operator.DOES_NOT_EXIST, ("a",), "operator '!' takes no values, got 1"),
        ("-env", Operator.EXISTS, (), "label key '-env' is invalid"),
        ("env", Operator.IN, ("ok", "-bad"), "label value '-bad' is invalid"),
    ],
)
def test_invalid_requirement_cannot_be_built(
    key: str, operator: Operator, values: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(LabelError, match=re.escape(problem)):
        Requirement(key, operator, values)
