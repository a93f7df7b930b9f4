"""The fast topic matcher: policies compiled once, bound per connection, asked per message."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domain.errors import InvalidTopicPattern
from domain.topic_patterns import (
    MAX_TOPIC_BYTES,
    MAX_TOPICS_PER_SET,
    VARIABLES,
    Level,
    PermissionSet,
    TopicAction,
    TopicPattern,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = [
    "DENY",
    "MAX_TOPICS_PER_SET",
    "MAX_TOPIC_BYTES",
    "VARIABLES",
    "BoundPolicy",
    "CompiledPolicy",
    "Level",
    "Match",
    "PermissionSet",
    "TopicAction",
    "TopicPattern",
    "filter_covers",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

_UNSAFE_VALUE = frozenset("/+#\0")  # a variable value with these would change the pattern's shape
_ANY_LEVELS = sys.maxsize


@dataclass(frozen=True, slots=True)
class Match:
    """An authorization answer and, when allowed, which permission set and pattern allowed it.

    When several patterns match, the one named is: a wildcard-free pattern first, then one
    starting with the topic's first level, then one starting with a wildcard; within each
    kind, the first in policy order.
    """

    allowed: bool
    permission_set: int | None
    pattern: str | None


DENY = Match(False, None, None)


def topic_matches(pattern_levels: Sequence[str], topic_levels: Sequence[str]) -> bool:
    """Does a bound pattern ('+' / '#' wildcards; no '*', no variables) match a topic?"""
    for i, p in enumerate(pattern_levels):
        if p == "#":  # §4.7.1.2: matches the parent level too, hence before the length test
            return i > 0 or not topic_levels[0].startswith("$")
        if i >= len(topic_levels):
            return False
        if p == "+":
            if i == 0 and topic_levels[0].startswith("$"):  # §4.7.2: $-topics need a literal
                return False
        elif p != topic_levels[i]:
            return False
    return len(topic_levels) == len(pattern_levels)


def filter_covers(pattern_levels: Sequence[str], filter_levels: Sequence[str]) -> bool:
    """Is every topic the filter can match also matched by the bound pattern?

    Exact for valid filters: a literal or '+' filter level needs a '+' or equal level, a
    '#' filter level needs a '#' pattern level (it also matches the parent, §4.7.1.2).
    """
    for i, p in enumerate(pattern_levels):
        if p == "#":
            return i > 0 or not filter_levels[0].startswith("$")
        if i >= len(filter_levels):
            return False
        f = filter_levels[i]
        if f == "#":
            # The filter also matches its parent F[:i] (§4.7.1.2), which a longer pattern
            # never does, unless that parent is "", no topic at all (§4.7.3): so `+/#`
            # covers `#` and `/+/#` covers `/#`.
            no_parent = i == 0 or (i == 1 and filter_levels[0] == "")
            return no_parent and p == "+" and tuple(pattern_levels[i + 1 :]) == ("#",)
        if p == "+":
            if i == 0 and f.startswith("$"):  # §4.7.2
                return False
        elif p != f:  # a literal level covers only the same literal, never '+'
            return False
    return len(filter_levels) == len(pattern_levels)


# Wildcard patterns are compiled to one of three shapes, each first compared with the
# literal prefix before its first wildcard level; the two common shapes need no split:
_ONE = 0  # prefix + "+": arg is len(prefix); the rest of the topic holds no "/"
_REST = 1  # prefix + "#": arg is the parent topic, which "#" matches too (§4.7.1.2)
_GENERAL = 2  # anything else: arg is (min levels, max levels, literal levels to compare)
# prefix, shape, arg (typed by shape, hence Any: no cast on the hot path), answer, levels
_Entry = tuple[str, int, Any, Match, tuple[str, ...]]


def _compile(levels: tuple[str, ...], match: Match) -> str | _Entry:
    """A wildcard-free pattern becomes its topic string, any other an _Entry."""
    if "+" not in levels and "#" not in levels:
        return "/".join(levels)
    first = next(i for i, lv in enumerate(levels) if lv in ("+", "#"))
    prefix = "".join(lv + "/" for lv in levels[:first])
    if first == len(levels) - 1:
        if levels[first] == "+":
            return (prefix, _ONE, len(prefix), match, levels)
        return (prefix, _REST, prefix[:-1], match, levels)
    multi = levels[-1] == "#"
    lo, hi = (len(levels) - 1, _ANY_LEVELS) if multi else (len(levels), len(levels))
    checks = tuple((i, lv) for i, lv in enumerate(levels) if i > first and lv not in ("+", "#"))
    return (prefix, _GENERAL, (lo, hi, checks), match, levels)


class _Table:
    """One action's patterns: a dict of wildcard-free topics, wildcard patterns by first level."""

    __slots__ = ("exact", "by_first", "leading")

    def __init__(self) -> None:
        self.exact: dict[str, Match] = {}
        self.by_first: dict[str, tuple[_Entry, ...]] = {}
        self.leading: tuple[_Entry, ...] = ()  # patterns whose level 0 is a wildcard

    def add(self, compiled: str | _Entry, match: Match) -> None:
        if isinstance(compiled, str):
            self.exact.setdefault(compiled, match)  # first in policy order wins
        elif (first := compiled[4][0]) in ("+", "#"):
            self.leading += (compiled,)
        else:
            self.by_first[first] = self.by_first.get(first, ()) + (compiled,)

    def seal(self) -> None:
        # Append the leading-wildcard patterns to every group they can apply to, so that a
        # lookup scans one tuple. Not to $-groups: §4.7.2, a leading wildcard never matches $.
        for first, group in self.by_first.items():
            if not first.startswith("$"):
                self.by_first[first] = group + self.leading

    def candidates(self, first: str) -> tuple[_Entry, ...]:
        group = self.by_first.get(first)
        if group is not None:
            return group
        return () if first.startswith("$") else self.leading


def _lookup(table: _Table, topic: str) -> Match:
    # Precedence: an exact pattern, then patterns under the topic's first level, then
    # patterns starting with a wildcard; policy order within each group.
    m = table.exact.get(topic)
    if m is not None:
        return m
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        return DENY  # not a topic name (§4.7.1, §4.7.3); fail closed instead of matching it
    # Operators and slices rather than str.find/startswith where equivalent: cheaper calls.
    group = table.by_first.get(topic.partition("/")[0])
    if group is None:
        group = () if topic[0] == "$" else table.leading
    levels: list[str] | None = None
    for prefix, shape, arg, m, _ in group:
        if shape == _ONE:
            if topic[:arg] == prefix and "/" not in topic[arg:]:
                return m
        elif shape == _REST:
            if topic.startswith(prefix) or topic == arg:
                return m
        elif topic.startswith(prefix):
            if levels is None:
                levels = topic.split("/")
            lo, hi, checks = arg
            if lo <= len(levels) <= hi:
                for i, lit in checks:
                    if levels[i] != lit:
                        break
                else:
                    return m
    return DENY


def _substitute(pattern: TopicPattern, values: Mapping[str, str]) -> tuple[str, ...] | None:
    """The pattern's levels with values filled in, or None when it must match nothing."""
    out: list[str] = []
    for i, level in enumerate(pattern.levels):
        if isinstance(level, str):
            out.append(level)
            continue
        parts = list(level)
        for j in range(1, len(parts), 2):
            value = values.get(parts[j])
            if not value or not _UNSAFE_VALUE.isdisjoint(value):
                return None  # fail closed: a missing or hostile value grants nothing
            parts[j] = value
        text = "".join(parts)
        if i == 0 and text.startswith("$") and not level[0].startswith("$"):
            return None  # §4.7.2: a value must not carry a pattern into the server's $-topics
        out.append(text)
    return tuple(out)


# One pattern of one permission set: its answer, the action tables it joins, and its
# compiled form when it has no variable (None: substitute and compile at bind time).
_Plan = tuple[TopicPattern, Match, tuple[int, ...], str | _Entry | None]
_ACTION_TABLE = {
    TopicAction.PUBLISH: 0,
    TopicAction.PUBLISH_RETAIN_MESSAGE: 1,
    TopicAction.SUBSCRIBE: 2,
}


class BoundPolicy:
    """A policy with one connection's variable values filled in: the per-message checks.
    Obtain one from CompiledPolicy.bind()."""

    __slots__ = ("_publish", "_retain", "_subscribe")

    def __init__(self, plans: Sequence[_Plan], values: Mapping[str, str]) -> None:
        tables = self._publish, self._retain, self._subscribe = _Table(), _Table(), _Table()
        for pattern, match, actions, compiled in plans:
            if compiled is None:
                levels = _substitute(pattern, values)
                if levels is None:
                    continue
                compiled = _compile(levels, match)
            for action in actions:
                tables[action].add(compiled, match)
        for table in tables:
            table.seal()

    def can_publish(self, topic: str, retain: bool) -> Match:
        """retain=True needs PUBLISH_RETAIN_MESSAGE; retain=False needs PUBLISH."""
        return _lookup(self._retain if retain else self._publish, topic)

    def can_receive(self, topic: str) -> Match:
        """May a message on this concrete topic be delivered? Needs a SUBSCRIBE pattern."""
        return _lookup(self._subscribe, topic)

    def can_subscribe(self, topic_filter: str) -> Match:
        """Allowed only if one SUBSCRIBE pattern covers every topic the filter can match.
        An invalid filter is denied (never raises). An MQTT 5 shared subscription
        (`$share/<group>/<filter>`, 5.0 §4.8.2) must be unwrapped by the caller: as given,
        only a pattern starting with a literal `$share` covers it."""
        if "+" not in topic_filter and "#" not in topic_filter:
            return _lookup(self._subscribe, topic_filter)
        try:
            validate_topic_filter(topic_filter)
        except InvalidTopicPattern:
            return DENY
        levels = topic_filter.split("/")
        first = levels[0]
        # A pattern with a literal level 0 cannot cover a wildcard level 0.
        group = (
            self._subscribe.leading if first in ("+", "#") else self._subscribe.candidates(first)
        )
        for _, _, _, match, pattern_levels in group:
            if filter_covers(pattern_levels, levels):
                return match
        return DENY


class CompiledPolicy:
    """Permission sets compiled once per policy version; bound per connection."""

    def __init__(self, permission_sets: Sequence[PermissionSet], cache_size: int = 1024) -> None:
        self.permission_sets = tuple(permission_sets)
        self._plans: list[_Plan] = []
        for index, pset in enumerate(self.permission_sets):
            tables = tuple(sorted({_ACTION_TABLE[a] for a in pset.actions}))
            for pattern in pset.topics:
                match = Match(True, index, pattern.text)
                levels = None if pattern.variables else _substitute(pattern, {})
                fixed = None if levels is None else _compile(levels, match)
                self._plans.append((pattern, match, tables, fixed))
        used = {v for ps in self.permission_sets for t in ps.topics for v in t.variables}
        self._variables = tuple(sorted(used))
        self._bound: Callable[[tuple[str, ...]], BoundPolicy] = functools.lru_cache(cache_size)(
            self._build
        )

    def _build(self, key: tuple[str, ...]) -> BoundPolicy:
        return BoundPolicy(self._plans, dict(zip(self._variables, key, strict=True)))

    def bind(self, values: Mapping[str, str]) -> BoundPolicy:
        """Fill in one connection's variables (cached per distinct values the policy uses).
        A pattern whose variable is missing, empty, or holds '/', '+', '#' or NUL matches
        nothing; other patterns are unaffected. Never raises."""
        return self._bound(tuple(values.get(v) or "" for v in self._variables))
