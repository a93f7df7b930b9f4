"""Policy topic patterns and permission sets: MQTT and GroveStreams wildcards, variables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from domain.errors import InvalidInput, InvalidTopicPattern


class TopicAction(StrEnum):
    """What a permission set allows on its topics.

    Retain is its own right: a retained publish needs PUBLISH_RETAIN_MESSAGE (and nothing
    else), a plain publish needs PUBLISH. Neither implies the other, so a device can be
    allowed to leave a retained "last state" without being allowed to stream on that topic.
    """

    PUBLISH = "PUBLISH"
    PUBLISH_RETAIN_MESSAGE = "PUBLISH_RETAIN_MESSAGE"
    SUBSCRIBE = "SUBSCRIBE"


VARIABLES: frozenset[str] = frozenset({"org.uid", "component.id", "client.id", "cert.cn"})
MAX_TOPIC_BYTES = 65535  # MQTT 3.1.1 §1.5.3: UTF-8 strings carry a two-byte length
MAX_TOPICS_PER_SET = 100

# A pattern level is a str (a literal, "+" for one level, "#" for the rest) or, when it uses
# variables, a tuple alternating literal and variable name: ("dev-", "client.id", "").
Level = str | tuple[str, ...]


def _check_string(text: str, what: str) -> None:
    # MQTT 3.1.1 §1.5.3 / 5.0 §1.5.4: well-formed UTF-8, no U+0000, at most 65535 bytes.
    if not text:
        raise InvalidTopicPattern(f"a {what} must not be empty", value=text)
    if "\0" in text:
        raise InvalidTopicPattern(f"a {what} must not contain NUL (U+0000)", value=text)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidTopicPattern(f"a {what} must be valid UTF-8", value=text) from None
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopicPattern(f"a {what} must be at most 65535 bytes of UTF-8", value=text)


def validate_topic_name(topic: str) -> None:
    """Check a concrete topic (PUBLISH / delivery). Raises InvalidTopicPattern if empty,
    not UTF-8, longer than 65535 bytes, or holding NUL or a '+' / '#' wildcard."""
    _check_string(topic, "topic name")
    if "+" in topic or "#" in topic:  # MQTT 3.1.1 §4.7.1: wildcards never appear in topic names
        raise InvalidTopicPattern("a topic name must not contain '+' or '#'", value=topic)


def validate_topic_filter(filt: str) -> None:
    """Check a subscription filter per MQTT 3.1.1 §4.7 ('*' is an ordinary character here).
    Raises InvalidTopicPattern if empty, not UTF-8, too long, holding NUL, or if '+' / '#'
    do not occupy a whole level, or '#' is not the last level."""
    _check_string(filt, "topic filter")
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if level == "#" and i != len(levels) - 1:  # §4.7.1.2
            raise InvalidTopicPattern("'#' must be the last level of a topic filter", value=filt)
        if level not in ("+", "#") and ("+" in level or "#" in level):  # §4.7.1.2, §4.7.1.3
            raise InvalidTopicPattern(
                f"level {i} ({level!r}): '+' and '#' must occupy a whole level", value=filt
            )


def _parse_level(text: str, i: int, level: str, last: bool) -> Level:
    if level in ("+", "*"):  # GroveStreams '*' is MQTT '+' (one whole level)
        return "+"
    if level == "#":
        if not last:  # MQTT 3.1.1 §4.7.1.2
            raise InvalidTopicPattern("'#' must be the last level of a topic pattern", value=text)
        return "#"
    parts: list[str] = []
    rest = level
    while (start := rest.find("${")) >= 0:
        end = rest.find("}", start)
        if end < 0:
            raise InvalidTopicPattern(f"level {i} ({level!r}): unterminated '${{'", value=text)
        name = rest[start + 2 : end]
        if name not in VARIABLES:
            known = ", ".join(f"${{{v}}}" for v in sorted(VARIABLES))
            raise InvalidTopicPattern(
                f"unknown variable '${{{name}}}' (known: {known})", value=text
            )
        parts += [rest[:start], name]
        rest = rest[end + 1 :]
    parts.append(rest)
    if any(c in p for p in parts[::2] for c in "+#*"):  # §4.7.1: wildcards are whole levels
        raise InvalidTopicPattern(
            f"level {i} ({level!r}): wildcards '+', '#' and '*' must occupy a whole level",
            value=text,
        )
    return level if len(parts) == 1 else tuple(parts)


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A validated policy topic pattern; construct with parse() (the constructor validates too).

    Wildcards: '+' and GroveStreams '*' match one whole level; '#' matches the rest,
    parent level included (MQTT 3.1.1 §4.7.1.2). Variables `${org.uid}`, `${component.id}`,
    `${client.id}`, `${cert.cn}` may fill a whole level or part of one (`dev-${client.id}`),
    several per level; their values are always literal text, never wildcards.
    There is no escape for a literal `${`.
    """

    text: str
    variables: frozenset[str] = field(init=False, compare=False)
    levels: tuple[Level, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_string(self.text, "topic pattern")
        raw = self.text.split("/")
        levels = tuple(
            _parse_level(self.text, i, lv, i == len(raw) - 1) for i, lv in enumerate(raw)
        )
        names = {n for lv in levels if isinstance(lv, tuple) for n in lv[1::2]}
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "variables", frozenset(names))

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        """Validate a pattern. Raises InvalidTopicPattern saying exactly what is wrong."""
        if not isinstance(text, str):
            raise InvalidTopicPattern("a topic pattern must be a string", value=repr(text))
        return cls(text)


@dataclass(frozen=True, slots=True)
class PermissionSet:
    """Some topic patterns and the actions allowed on them."""

    topics: tuple[TopicPattern, ...]
    actions: frozenset[TopicAction]

    @classmethod
    def parse(cls, topics: Sequence[str], actions: Sequence[str]) -> PermissionSet:
        """Validate raw input. Raises InvalidInput when topics or actions are empty, there are
        more than 100 topics, or an action is unknown; InvalidTopicPattern for a bad pattern."""
        if isinstance(topics, str) or isinstance(actions, str):
            raise InvalidInput("topics and actions must be lists, not strings")
        if not topics:
            raise InvalidInput("a permission set needs at least one topic")
        if len(topics) > MAX_TOPICS_PER_SET:
            raise InvalidInput(f"a permission set holds at most {MAX_TOPICS_PER_SET} topics")
        if not actions:
            raise InvalidInput("a permission set needs at least one action")
        known = {a.value: a for a in TopicAction}
        for name in actions:
            if name not in known:
                expected = ", ".join(sorted(known))
                raise InvalidInput(f"unknown action {name!r} (expected one of {expected})")
        return cls(
            tuple(TopicPattern.parse(t) for t in topics), frozenset(known[a] for a in actions)
        )

    def to_json(self) -> dict[str, list[str]]:
        """The JSON-safe form stored in events: topics in order, actions sorted."""
        return {
            "topics": [t.text for t in self.topics],
            "actions": sorted(a.value for a in self.actions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PermissionSet:
        """Inverse of to_json. Raises InvalidInput / InvalidTopicPattern like parse()."""
        if "topics" not in data or "actions" not in data:
            raise InvalidInput("a permission set needs 'topics' and 'actions'")
        return cls.parse(data["topics"], data["actions"])
