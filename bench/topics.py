"""Micro benchmark of the bound-policy topic matcher against a plain dict lookup (not a test)."""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.topics import CompiledPolicy, PermissionSet  # noqa: E402

CALLS = 1_000_000
BATCH = 1_000
SINGLE_SAMPLES = 200_000


def build_policy() -> CompiledPolicy:
    """20 permission sets: variables, exact topics, '+', '*', '#', $-topics, other orgs."""
    sets = [
        (["${org.uid}/feed/cid/${component.id}/sid/+"], ["PUBLISH"]),
        (["${org.uid}/feed/cid/${component.id}/sid/status"], ["PUBLISH_RETAIN_MESSAGE"]),
        (["${org.uid}/cmd/cid/${component.id}/#"], ["SUBSCRIBE"]),
        (["${org.uid}/feed/cid/${component.id}/#"], ["SUBSCRIBE"]),
        (["$aws/things/${client.id}/shadow/#"], ["PUBLISH", "SUBSCRIBE"]),
        (["dev-${client.id}/+/state", "dev-${client.id}/*/config"], ["PUBLISH"]),
        (["${org.uid}/config/${cert.cn}"], ["SUBSCRIBE"]),
        (["*/broadcast/#"], ["SUBSCRIBE"]),
        (["+/alerts/+"], ["SUBSCRIBE"]),
        ([f"${{org.uid}}/feed/cid/${{component.id}}/sid/x{j}" for j in range(10)], ["PUBLISH"]),
    ]
    for i in range(10):  # other orgs' rules that a real shared policy might carry
        sets.append(
            (
                [f"org{i}/feed/cid/c{i}/sid/{j}" for j in range(5)] + [f"org{i}/+/#"],
                ["SUBSCRIBE", "PUBLISH"],
            )
        )
    return CompiledPolicy([PermissionSet.parse(t, a) for t, a in sets])


def workload(org: str, comp: str, rng: random.Random) -> list[str]:
    """Realistic topics: mostly this component's feed, some exact, some denied."""
    other = uuid.UUID(int=rng.getrandbits(128)).hex
    kinds = [
        lambda n: f"{org}/feed/cid/{comp}/sid/{n}",  # wildcard allow
        lambda n: f"{org}/feed/cid/{comp}/sid/{n}",
        lambda n: f"{org}/feed/cid/{comp}/sid/{n}",
        lambda n: f"{org}/feed/cid/{comp}/sid/x{n % 10}",  # exact allow
        lambda n: f"{org}/feed/cid/{other}/sid/{n}",  # another component: deny
        lambda n: f"elsewhere/feed/cid/{comp}/sid/{n}",  # unknown org: scans leading patterns
        lambda n: f"$SYS/broker/clients/{n}",  # $-topic: deny
    ]
    return [rng.choice(kinds)(rng.randrange(1000)) for _ in range(10_000)]


def time_batches(call: Callable[[str], object], topics: list[str]) -> list[float]:
    """Per-call ns of each batch of BATCH calls, CALLS calls in all."""
    clock = time.perf_counter_ns
    per_call: list[float] = []
    n = len(topics)
    for b in range(CALLS // BATCH):
        start = (b * BATCH) % n
        chunk = topics[start : start + BATCH]
        t0 = clock()
        for topic in chunk:
            call(topic)
        per_call.append((clock() - t0) / len(chunk))
    return per_call


def time_singles(call: Callable[[str], object], topics: list[str]) -> list[int]:
    """Each call timed on its own, minus the median cost of an empty timed bracket."""
    clock = time.perf_counter_ns
    empty = []
    for _ in range(10_000):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = sorted(empty)[len(empty) // 2]
    out = []
    for i in range(SINGLE_SAMPLES):
        topic = topics[i % len(topics)]
        t0 = clock()
        call(topic)
        out.append(max(0, clock() - t0 - overhead))
    return out


def pct(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def main() -> None:
    rng = random.Random(7)
    org, comp = uuid.uuid4().hex, uuid.uuid4().hex
    values = {"org.uid": org, "component.id": comp, "client.id": "dev-42", "cert.cn": "dev-42"}
    compiled = build_policy()
    topics = workload(org, comp, rng)

    t0 = time.perf_counter_ns()
    for i in range(2_000):
        compiled.bind({**values, "client.id": f"c{i}"})
    bind_cold = (time.perf_counter_ns() - t0) / 2_000
    t0 = time.perf_counter_ns()
    for _ in range(100_000):
        policy = compiled.bind(values)
    bind_warm = (time.perf_counter_ns() - t0) / 100_000

    baseline: dict[str, object] = {}
    lookups: dict[str, Callable[[str], object]] = {
        "dict.get (baseline)": baseline.get,
        "can_publish": lambda t: policy.can_publish(t, False),
        "can_receive": policy.can_receive,
    }
    allowed = sum(policy.can_publish(t, False).allowed for t in topics) / len(topics)
    print(f"policy: 20 permission sets; workload: {len(topics)} topics, {allowed:.0%} allowed")
    print(f"bind: {bind_cold:,.0f} ns uncached, {bind_warm:,.0f} ns cached")
    base_mean = 0.0
    for name, call in lookups.items():
        batches = time_batches(call, topics)
        singles = time_singles(call, topics)
        mean = sum(batches) / len(batches)
        base_mean = base_mean or mean
        print(
            f"{name:20s} {mean:7.1f} ns/call  (x{mean / base_mean:4.1f} dict.get)  "
            f"batch p99 {pct(batches, 0.99):7.1f} ns/call  "
            f"single p50 {pct(singles, 0.5):6.0f} ns  p99 {pct(singles, 0.99):6.0f} ns  "
            f"max {max(singles):,} ns"
        )
    print(f"{CALLS:,} calls per row in batches of {BATCH}; singles: {SINGLE_SAMPLES:,} timed alone")


if __name__ == "__main__":
    main()
