"""Unit tests for policy topic patterns, permission sets and the matcher."""

from __future__ import annotations

import itertools
import uuid

import hypothesis
import pytest
from hypothesis import strategies as st

from domain.errors import InvalidInput, InvalidTopicPattern
from domain.topics import (
    VARIABLES,
    BoundPolicy,
    CompiledPolicy,
    Match,
    PermissionSet,
    TopicAction,
    TopicPattern,
    filter_covers,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

ALL = ["PUBLISH", "PUBLISH_RETAIN_MESSAGE", "SUBSCRIBE"]


def bound(*sets: tuple[list[str], list[str]], **values: str) -> BoundPolicy:
    """Bind a policy built from (topics, actions) pairs; keyword `client_id` is `client.id`."""
    policy = CompiledPolicy([PermissionSet.parse(t, a) for t, a in sets])
    return policy.bind({k.replace("_", "."): v for k, v in values.items()})


def refusal(text: str) -> str:
    with pytest.raises(InvalidTopicPattern) as caught:
        TopicPattern.parse(text)
    return caught.value.detail


# --- pattern validation -------------------------------------------------------------------


def test_an_empty_pattern_is_refused() -> None:
    assert refusal("") == "a topic pattern must not be empty"


def test_a_pattern_holding_nul_is_refused() -> None:
    assert refusal("a/\0/b") == "a topic pattern must not contain NUL (U+0000)"


def test_a_pattern_longer_than_65535_utf8_bytes_is_refused() -> None:
    assert refusal("é" * 32768) == "a topic pattern must be at most 65535 bytes of UTF-8"


def test_a_pattern_of_exactly_65535_utf8_bytes_is_accepted() -> None:
    assert TopicPattern.parse("é" * 32767 + "a").text.endswith("a")


def test_a_pattern_that_is_not_valid_utf8_is_refused() -> None:
    assert refusal("a/\ud800") == "a topic pattern must be valid UTF-8"


def test_a_hash_not_in_last_level_is_refused() -> None:
    assert refusal("a/#/b") == "'#' must be the last level of a topic pattern"


@pytest.mark.parametrize("level", ["a+", "x#", "ab*", "+a", "*x", "dev-${client.id}+"])
def test_a_wildcard_mixed_into_a_level_is_refused(level: str) -> None:
    assert refusal(f"org/{level}/x") == (
        f"level 1 ({level!r}): wildcards '+', '#' and '*' must occupy a whole level"
    )


def test_an_unknown_variable_is_refused() -> None:
    assert refusal("a/${device.id}") == (
        "unknown variable '${device.id}' "
        "(known: ${cert.cn}, ${client.id}, ${component.id}, ${org.uid})"
    )


def test_an_empty_variable_name_is_refused() -> None:
    assert refusal("a/${}").startswith("unknown variable '${}'")


def test_an_unterminated_variable_is_refused() -> None:
    assert refusal("a/${client.id/b") == "level 1 ('${client.id'): unterminated '${'"


def test_a_pattern_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidTopicPattern, match="must be a string"):
        TopicPattern.parse(42)  # type: ignore[arg-type]


def test_a_pattern_names_the_variables_it_uses() -> None:
    pattern = TopicPattern.parse("${org.uid}/dev-${client.id}-${cert.cn}/+")
    assert pattern.variables == {"org.uid", "client.id", "cert.cn"}
    assert TopicPattern.parse("a/#").variables == frozenset()


def test_the_known_variables_are_the_four_grovestreams_ones() -> None:
    assert VARIABLES == {"org.uid", "component.id", "client.id", "cert.cn"}


def test_topic_actions_are_the_three_grovestreams_ones() -> None:
    assert {a.value for a in TopicAction} == set(ALL)


@pytest.mark.parametrize("text", ["a//b", "/a", "a/", "/", "$SYS/#", "price$/x", "a/}/b", "*"])
def test_empty_levels_and_plain_dollars_are_accepted_in_patterns(text: str) -> None:
    assert TopicPattern.parse(text).text == text


def test_patterns_are_equal_when_their_texts_are() -> None:
    assert TopicPattern.parse("a/+") == TopicPattern("a/+")
    assert TopicPattern.parse("a/+") != TopicPattern.parse("a/*")


# --- topic names and filters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "detail"),
    [
        ("", "a topic name must not be empty"),
        ("a/\0", "a topic name must not contain NUL (U+0000)"),
        ("a/+", "a topic name must not contain '+' or '#'"),
        ("a/#", "a topic name must not contain '+' or '#'"),
        ("x" * 65536, "a topic name must be at most 65535 bytes of UTF-8"),
    ],
)
def test_a_bad_topic_name_is_refused_with_its_reason(topic: str, detail: str) -> None:
    with pytest.raises(InvalidTopicPattern) as caught:
        validate_topic_name(topic)
    assert caught.value.detail == detail


@pytest.mark.parametrize("topic", ["a", "a//b", "/a", "a/", "$SYS/x", "a/*", "x" * 65535])
def test_topic_names_with_empty_levels_dollars_and_stars_are_accepted(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize(
    ("filt", "detail"),
    [
        ("", "a topic filter must not be empty"),
        ("a/#/b", "'#' must be the last level of a topic filter"),
        ("sport+", "level 0 ('sport+'): '+' and '#' must occupy a whole level"),
        ("a/b#", "level 1 ('b#'): '+' and '#' must occupy a whole level"),
        ("a/\0", "a topic filter must not contain NUL (U+0000)"),
    ],
)
def test_a_bad_topic_filter_is_refused_with_its_reason(filt: str, detail: str) -> None:
    with pytest.raises(InvalidTopicPattern) as caught:
        validate_topic_filter(filt)
    assert caught.value.detail == detail


@pytest.mark.parametrize("filt", ["#", "+", "+/+", "a/+/b/#", "/", "//", "a/*", "$SYS/#", "/+"])
def test_valid_topic_filters_are_accepted(filt: str) -> None:
    validate_topic_filter(filt)


# --- permission sets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topics", "actions", "detail"),
    [
        ([], ["PUBLISH"], "a permission set needs at least one topic"),
        (["a"], [], "a permission set needs at least one action"),
        (["a"] * 101, ["PUBLISH"], "a permission set holds at most 100 topics"),
        ("a/b", ["PUBLISH"], "topics and actions must be lists, not strings"),
        (
            ["a"],
            ["publish"],
            "unknown action 'publish' (expected one of PUBLISH, PUBLISH_RETAIN_MESSAGE, SUBSCRIBE)",
        ),
    ],
)
def test_an_invalid_permission_set_is_refused_with_its_reason(
    topics: list[str], actions: list[str], detail: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        PermissionSet.parse(topics, actions)
    assert caught.value.detail == detail
    assert not isinstance(caught.value, InvalidTopicPattern)


def test_a_permission_set_of_100_topics_is_accepted() -> None:
    assert len(PermissionSet.parse([f"t/{i}" for i in range(100)], ["SUBSCRIBE"]).topics) == 100


def test_a_bad_pattern_in_a_permission_set_is_refused_as_a_topic_pattern_error() -> None:
    with pytest.raises(InvalidTopicPattern, match="'#' must be the last level"):
        PermissionSet.parse(["ok/+", "#/bad"], ["PUBLISH"])


def test_a_permission_set_round_trips_through_json() -> None:
    pset = PermissionSet.parse(["${org.uid}/feed/#", "a/*"], ["SUBSCRIBE", "PUBLISH"])
    data = pset.to_json()
    assert data == {"topics": ["${org.uid}/feed/#", "a/*"], "actions": ["PUBLISH", "SUBSCRIBE"]}
    assert PermissionSet.from_json(data) == pset


def test_from_json_without_actions_is_refused() -> None:
    with pytest.raises(InvalidInput, match="needs 'topics' and 'actions'"):
        PermissionSet.from_json({"topics": ["a"]})


# --- matching ------------------------------------------------------------------------------


def test_an_exact_pattern_matches_only_its_topic() -> None:
    policy = bound((["a/b"], ["SUBSCRIBE"]))
    assert policy.can_receive("a/b").allowed
    assert not policy.can_receive("a/b/c").allowed
    assert not policy.can_receive("a").allowed
    assert not policy.can_receive("a/bb").allowed


def test_plus_matches_exactly_one_level() -> None:
    policy = bound((["a/+/c"], ["SUBSCRIBE"]))
    assert policy.can_receive("a/b/c").allowed
    assert policy.can_receive("a//c").allowed
    assert not policy.can_receive("a/c").allowed
    assert not policy.can_receive("a/b/x/c").allowed


def test_a_grovestreams_star_matches_one_whole_level_like_plus() -> None:
    policy = bound((["a/*/c", "*"], ["SUBSCRIBE"]))
    assert policy.can_receive("a/b/c").allowed
    assert policy.can_receive("solo").allowed
    assert not policy.can_receive("a/b/x/c").allowed
    assert not policy.can_receive("x/y").allowed


def test_a_hash_matches_the_parent_level_and_everything_below() -> None:
    policy = bound((["a/b/#"], ["SUBSCRIBE"]))
    assert policy.can_receive("a/b").allowed
    assert policy.can_receive("a/b/c").allowed
    assert policy.can_receive("a/b/c/d/e").allowed
    assert not policy.can_receive("a").allowed
    assert not policy.can_receive("a/bc").allowed


def test_a_lone_hash_matches_every_topic_but_dollar_topics() -> None:
    policy = bound((["#"], ["SUBSCRIBE"]))
    assert policy.can_receive("x").allowed
    assert policy.can_receive("/x/y").allowed
    assert not policy.can_receive("$SYS/broker/load").allowed


@pytest.mark.parametrize("pattern", ["#", "+/#", "+/broker/load", "*/broker/load"])
def test_a_leading_wildcard_never_matches_a_dollar_topic(pattern: str) -> None:
    policy = bound(([pattern], ["SUBSCRIBE", "PUBLISH"]))
    assert not policy.can_receive("$SYS/broker/load").allowed
    assert not policy.can_publish("$SYS/broker/load", retain=False).allowed
    assert policy.can_receive("sys/broker/load").allowed


def test_a_leading_wildcard_does_not_match_a_dollar_topic_beside_a_literal_dollar_pattern() -> None:
    policy = bound((["$SYS/broker/+", "#", "+/other/x"], ["SUBSCRIBE"]))
    assert policy.can_receive("$SYS/broker/load").allowed
    assert not policy.can_receive("$SYS/other/x").allowed


def test_a_literal_dollar_level_with_wildcards_after_it_matches_dollar_topics() -> None:
    policy = bound((["$SYS/#"], ["SUBSCRIBE"]), (["$aws/+/x"], ["SUBSCRIBE"]))
    assert policy.can_receive("$SYS/broker/load").allowed
    assert policy.can_receive("$aws/things/x").allowed


def test_a_leading_slash_creates_an_empty_first_level() -> None:
    policy = bound((["/a"], ["SUBSCRIBE"]), (["+/b"], ["SUBSCRIBE"]))
    assert policy.can_receive("/a").allowed
    assert not policy.can_receive("a").allowed
    assert policy.can_receive("/b").allowed


def test_an_empty_level_in_a_pattern_matches_only_an_empty_level() -> None:
    policy = bound((["a//b"], ["SUBSCRIBE"]), (["x//+"], ["SUBSCRIBE"]))
    assert policy.can_receive("a//b").allowed
    assert not policy.can_receive("a/z/b").allowed
    assert policy.can_receive("x//q").allowed
    assert not policy.can_receive("x/q/q").allowed


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "#", "+", "a/\0"])
def test_a_topic_that_is_not_a_topic_name_is_denied(topic: str) -> None:
    policy = bound((["#", "a/+"], ["SUBSCRIBE", "PUBLISH"]))
    assert policy.can_receive(topic) == Match(False, None, None)
    assert not policy.can_publish(topic, retain=False).allowed


def test_a_match_names_the_permission_set_and_the_unsubstituted_pattern() -> None:
    policy = bound((["x"], ["PUBLISH"]), (["${org.uid}/+/t"], ["PUBLISH"]), org_uid="o1")
    assert policy.can_publish("o1/z/t", retain=False) == Match(True, 1, "${org.uid}/+/t")


def test_an_exact_pattern_is_named_before_a_wildcard_one_then_policy_order() -> None:
    policy = bound(
        (["#"], ["SUBSCRIBE"]),
        (["a/+"], ["SUBSCRIBE"]),
        (["a/*"], ["SUBSCRIBE"]),
        (["a/b"], ["SUBSCRIBE"]),
        (["a/b"], ["SUBSCRIBE"]),
    )
    assert policy.can_receive("a/b") == Match(True, 3, "a/b")
    assert policy.can_receive("a/c") == Match(True, 1, "a/+")
    assert policy.can_receive("c") == Match(True, 0, "#")


def test_an_unmatched_topic_is_denied_without_a_reason() -> None:
    assert bound((["a/b"], ALL)).can_receive("b/a") == Match(False, None, None)


# --- actions and retain ---------------------------------------------------------------------


def test_a_plain_publish_needs_publish() -> None:
    assert bound((["t"], ["PUBLISH"])).can_publish("t", retain=False).allowed
    assert not bound((["t"], ["PUBLISH_RETAIN_MESSAGE"])).can_publish("t", retain=False).allowed


def test_a_retained_publish_needs_publish_retain_message() -> None:
    assert not bound((["t"], ["PUBLISH"])).can_publish("t", retain=True).allowed


def test_publish_retain_message_alone_allows_a_retained_publish() -> None:
    assert bound((["t/+"], ["PUBLISH_RETAIN_MESSAGE"])).can_publish("t/x", retain=True).allowed


def test_subscribe_allows_neither_publishing_nor_does_publish_allow_receiving() -> None:
    assert not bound((["t"], ["SUBSCRIBE"])).can_publish("t", retain=False).allowed
    assert not bound((["t"], ["PUBLISH"])).can_receive("t").allowed
    assert not bound((["t"], ["PUBLISH"])).can_subscribe("t").allowed


# --- subscription coverage ------------------------------------------------------------------

COVERAGE = [
    ("a/b/#", "a/b/+/c", True),
    ("a/b/#", "a/b", True),
    ("a/b/#", "a/b/c/d", True),
    ("a/b/#", "a/b/#", True),
    ("a/b/#", "a/#", False),
    ("a/+", "a/#", False),
    ("a/+", "a/b", True),
    ("a/+", "a/+", True),
    ("a/+", "a/b/c", False),
    ("a/b", "a/+", False),
    ("a/+/c", "a/#", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/#", "a/#", False),
    ("a/#", "a/+/#", True),
    ("a", "a/#", False),
    ("#", "#", True),
    ("#", "a/#", True),
    ("#", "+/+", True),
    ("#", "$SYS/x", False),
    ("#", "$SYS/#", False),
    ("+/#", "#", True),
    ("/+/#", "/#", True),
    ("//#", "/#", False),
    ("+/+", "+/#", False),
    ("+/x", "+/x", True),
    ("*/x", "+/x", True),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/#", True),
    ("$SYS/#", "+/x", False),
]


@pytest.mark.parametrize(("pattern", "filt", "covered"), COVERAGE)
def test_a_pattern_covers_a_filter_only_if_it_matches_all_its_topics(
    pattern: str, filt: str, covered: bool
) -> None:
    levels = [lv if lv != "*" else "+" for lv in pattern.split("/")]
    assert filter_covers(levels, filt.split("/")) is covered
    assert bound(([pattern], ["SUBSCRIBE"])).can_subscribe(filt).allowed is covered


def test_a_subscription_is_allowed_by_any_one_covering_pattern() -> None:
    policy = bound((["a/b/c"], ["SUBSCRIBE"]), (["a/b/+", "q/#"], ["SUBSCRIBE"]))
    assert policy.can_subscribe("a/b/+") == Match(True, 1, "a/b/+")
    assert policy.can_subscribe("a/b/c") == Match(True, 0, "a/b/c")
    assert not policy.can_subscribe("a/+/c").allowed


@pytest.mark.parametrize("filt", ["a/#/b", "a/b+", "", "a/\0/#"])
def test_an_invalid_filter_is_denied_rather_than_raising(filt: str) -> None:
    assert bound((["#"], ["SUBSCRIBE"])).can_subscribe(filt) == Match(False, None, None)


# --- variables ----------------------------------------------------------------------------


def test_variables_are_substituted_per_connection() -> None:
    org, comp = uuid.uuid4().hex, uuid.uuid4().hex
    policy = CompiledPolicy(
        [PermissionSet.parse(["${org.uid}/feed/cid/${component.id}/#"], ["PUBLISH"])]
    )
    mine = policy.bind({"org.uid": org, "component.id": comp})
    theirs = policy.bind({"org.uid": org, "component.id": uuid.uuid4().hex})
    assert mine.can_publish(f"{org}/feed/cid/{comp}/sid/1", retain=False).allowed
    assert not theirs.can_publish(f"{org}/feed/cid/{comp}/sid/1", retain=False).allowed


def test_a_variable_may_fill_part_of_a_level() -> None:
    policy = bound(
        (["dev-${client.id}/+", "${org.uid}-${client.id}"], ["SUBSCRIBE"]),
        client_id="c7",
        org_uid="o",
    )
    assert policy.can_receive("dev-c7/x").allowed
    assert policy.can_receive("o-c7").allowed
    assert not policy.can_receive("dev-c8/x").allowed
    assert not policy.can_receive("c7/x").allowed


def test_a_missing_or_empty_variable_makes_only_its_pattern_match_nothing() -> None:
    sets = (["a/${client.id}", "a/${cert.cn}/x"], ["SUBSCRIBE"]), (["b"], ["SUBSCRIBE"])
    policy = bound(*sets, cert_cn="")
    assert not policy.can_receive("a/").allowed
    assert not policy.can_receive("a//x").allowed
    assert policy.can_receive("b").allowed


@pytest.mark.parametrize("value", ["x/y", "#", "+", "x\0", "a/#"])
def test_a_hostile_variable_value_makes_its_pattern_match_nothing(value: str) -> None:
    policy = bound((["t/${client.id}"], ["SUBSCRIBE", "PUBLISH"]), client_id=value)
    for topic in ["t/x", "t/x/y", "t/a/b", "t/+", "t/#"]:
        assert not policy.can_receive(topic).allowed
        assert not policy.can_publish(topic, retain=False).allowed
    assert not policy.can_subscribe("t/#").allowed
    assert not policy.can_subscribe("t/+").allowed


def test_a_star_in_a_variable_value_is_a_literal_not_a_wildcard() -> None:
    policy = bound((["t/${client.id}"], ["SUBSCRIBE"]), client_id="*")
    assert policy.can_receive("t/*").allowed
    assert not policy.can_receive("t/other").allowed
    assert not policy.can_subscribe("t/+").allowed


def test_a_variable_value_cannot_carry_a_pattern_into_dollar_topics() -> None:
    policy = bound((["${client.id}/#", "x/${client.id}"], ["SUBSCRIBE"]), client_id="$SYS")
    assert not policy.can_receive("$SYS/broker/load").allowed
    assert policy.can_receive("x/$SYS").allowed


def test_binding_is_cached_per_distinct_values_of_the_variables_used() -> None:
    policy = CompiledPolicy([PermissionSet.parse(["${client.id}/#"], ["SUBSCRIBE"])])
    first = policy.bind({"client.id": "c1", "cert.cn": "one"})
    assert policy.bind({"client.id": "c1", "cert.cn": "two"}) is first
    assert policy.bind({"client.id": "c2"}) is not first


# --- properties -------------------------------------------------------------------------------

# Patterns and filters use literals "a", "$x", ""; topics add "z", a literal no pattern names,
# so a finite universe of topics up to one level longer than any pattern decides coverage.
LEVEL = st.sampled_from(["a", "$x", "", "+"])
UNIVERSE = [  # every topic name (the empty string is none, MQTT 3.1.1 §4.7.3) of 1-5 levels
    list(t)
    for n in range(1, 6)
    for t in itertools.product(["a", "$x", "", "z"], repeat=n)
    if t != ("",)
]


@st.composite
def wildcard_levels(draw: st.DrawFn) -> list[str]:
    body: list[str] = draw(st.lists(LEVEL, max_size=3))
    if draw(st.booleans()) or not body:
        body.append("#")
    hypothesis.assume(body != [""])  # the empty string is no pattern, filter or topic
    return body


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(pattern=wildcard_levels(), filt=wildcard_levels())
def test_coverage_holds_exactly_when_every_topic_of_the_filter_matches_the_pattern(
    pattern: list[str], filt: list[str]
) -> None:
    semantic = all(topic_matches(pattern, t) for t in UNIVERSE if topic_matches(filt, t))
    assert filter_covers(pattern, filt) is semantic


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    patterns=st.lists(wildcard_levels(), min_size=1, max_size=3), filt=wildcard_levels()
)
def test_the_compiled_matcher_agrees_with_the_reference_functions(
    patterns: list[list[str]], filt: list[str]
) -> None:
    static = bound((["/".join(p) for p in patterns], ["SUBSCRIBE"]))
    # The same patterns with their "a" levels from a variable take the bind-time path.
    templated = ["/".join("${client.id}" if lv == "a" else lv for lv in p) for p in patterns]
    variable = bound((templated, ["SUBSCRIBE"]), client_id="a")
    covered = any(filter_covers(p, filt) for p in patterns)
    for policy in static, variable:
        assert policy.can_subscribe("/".join(filt)).allowed is covered
        for topic in UNIVERSE:
            expected = any(topic_matches(p, topic) for p in patterns)
            assert policy.can_receive("/".join(topic)).allowed is expected
