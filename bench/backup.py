"""Backup and restore throughput on PostgreSQL, beside raw COPY of the same event table.

    .venv/bin/python bench/backup.py [--n 1000000]

Builds one store with two organizations (N events and N/10 events: a few certificates renamed
over and over - the events are minted through the domain once, then cloned as StoredEvents in
big batches), copies the event table out and in with PostgreSQL COPY (binary) as the baseline,
then backs up and restores each organization in a child process (restore = verify + write,
with every read model filled meanwhile from the restore's own events, then their indexes:
the "read models" phase) and prints events/s, the ratio to COPY (measured again right before
each organization's pair), and each child's peak memory.
Prints, never asserts. Needs PostgreSQL on 127.0.0.1:5432 (trust), database `test`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from eventsourcing.persistence import StoredEvent  # noqa: E402

from adapters.settings import Settings  # noqa: E402

DB = "host=127.0.0.1 port=5432 dbname=test user=postgres"
CERTS = 10
BATCH = 5_000  # eventsourcing pipelines each insert; bigger batches once hung here


def settings(schema: str) -> Settings:
    return Settings(store="postgres", postgres_db="test", postgres_schema=schema)


def seed(cw: Any, name: str, events: int) -> str:
    """An organization with CERTS certificates, renamed until it has `events` events."""
    from domain.meta import Actor, ActorKind
    from tests import factories as f

    actor = Actor(ActorKind.API_KEY, "bench-key", "bench-user", "bench", "127.0.0.1")
    reg = cw.registry
    before = reg.max_position()
    org: str = reg.create_organization(name, actor).uid
    pems = b"".join(f.make_self_signed_leaf(f.unique_cn()).pem for _ in range(CERTS))
    certs = [
        reg.certificate(org, d.certificate_id) for d in reg.import_certificates(org, pems, actor)
    ]
    versions = {c.id: c.version for c in certs}
    certs[0].rename("template", actor.meta())  # minted by the domain, never saved: a template
    template = reg.mapper.to_stored_event(certs[0].collect_events()[0])
    encoding = reg.mapper.compressor
    assert encoding is not None and reg.mapper.cipher is None
    plain = encoding.decompress(template.state).decode()
    start = datetime.now(UTC)
    done = reg.max_position() - before
    batch: list[StoredEvent] = []
    for n in range(events - done):
        cert = certs[n % CERTS]
        versions[cert.id] += 1
        moment = (start + timedelta(microseconds=n)).isoformat()
        state = plain.replace('"template"', f'"name-{n}"').replace(
            str(json.loads(plain)["timestamp"]["_data_"]), moment
        )
        packed = encoding.compress(state.encode())  # as the store encodes it
        batch.append(StoredEvent(cert.id, versions[cert.id], template.topic, packed))
        if len(batch) >= BATCH:
            reg.recorder.insert_events(batch)
            batch = []
    if batch:
        reg.recorder.insert_events(batch)
    return org


def raw_copy(schema: str, table: str) -> tuple[int, float, float]:
    """Rows, COPY TO rows/s and COPY FROM rows/s for the whole event table (binary)."""
    source = f'"{schema}"."{table}"'
    buffer = io.BytesIO()
    with psycopg.connect(DB) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {source}").fetchone()[0]  # noqa: S608
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY {source} TO STDOUT (FORMAT BINARY)") as copy:
            for chunk in copy:
                buffer.write(chunk)
        out = time.perf_counter() - started
        conn.execute(f'CREATE TABLE "{schema}".copy_in (LIKE {source} INCLUDING ALL)')
        started = time.perf_counter()
        with conn.cursor().copy(f'COPY "{schema}".copy_in FROM STDIN (FORMAT BINARY)') as copy:
            copy.write(buffer.getvalue())
        conn.commit()
        back = time.perf_counter() - started
        conn.execute(f'DROP TABLE "{schema}".copy_in')
        conn.commit()
    return rows, rows / out, rows / back


class Phases:
    """Progress port that only records when each phase started."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def phase(self, title: str, total: int | None) -> None:
        self.marks.append((title, time.perf_counter()))

    def advance(self, count: int) -> None:
        return None


def peak_mib() -> float:
    """This process's peak RSS. ru_maxrss would count the parent's peak too (Linux carries
    it across fork + exec); VmHWM belongs to this process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    from adapters.backup_file import services
    from application.bootstrap import bootstrap

    cw = bootstrap(settings(args.schema))
    result: dict[str, Any] = {}
    try:
        if args.child == "backup":
            with open(args.file, "wb") as sink:
                manifest, summary = services(cw)[0].backup(sink, args.org)
            result = {"events": summary.events, "seconds": summary.seconds}
            result["bytes"] = Path(args.file).stat().st_size
        else:
            cw.start(background=False)
            phases = Phases()
            with open(args.file, "rb") as source:
                plan, summary = services(cw)[1].restore(source, progress=phases)
            ends = [t for _, t in phases.marks[1:]] + [phases.marks[0][1] + summary.seconds]
            result = {"events": plan.restored, "seconds": summary.seconds}
            result["phases"] = {n: e - t for (n, t), e in zip(phases.marks, ends, strict=True)}
    finally:
        cw.close()
    result["peak_mib"] = peak_mib()
    print(json.dumps(result))


def run_child(*argv: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"child {argv[1]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="events of the big organization")
    parser.add_argument("--child", choices=["backup", "restore"])
    parser.add_argument("--schema")
    parser.add_argument("--org")
    parser.add_argument("--file")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from application.bootstrap import bootstrap

    run = uuid.uuid4().hex[:8]
    source_schema = f"bench_src_{run}"
    schemas = [source_schema]
    work = Path(tempfile.mkdtemp(prefix="certwarden-bench-"))
    try:
        cw = bootstrap(settings(source_schema))
        started = time.perf_counter()
        sizes = {"big": args.n, "small": max(args.n // 10, 100)}
        orgs = {label: seed(cw, label, n) for label, n in sizes.items()}
        table = cw.registry.recorder.events_table_name
        cw.close()
        print(f"seeded {sum(sizes.values()):,} events in {time.perf_counter() - started:.0f} s")
        for label in ("small", "big"):
            # the baseline right before each pair: this machine's speed drifts over minutes
            rows, copy_out, copy_in = raw_copy(source_schema, table)
            print(
                f"{label:>5} baseline: raw COPY TO {copy_out:,.0f} rows/s, COPY FROM"
                f" {copy_in:,.0f} rows/s ({rows:,} rows, binary)"
            )
            file = str(work / f"{label}.jsonl.gz")
            out = run_child(
                "--child", "backup", "--schema", source_schema, "--org", orgs[label], "--file", file
            )
            schemas.append(target := f"bench_dst_{label}_{run}")
            back = run_child("--child", "restore", "--schema", target, "--file", file)
            rate_out = out["events"] / out["seconds"]
            rate_in = back["events"] / back["seconds"]
            print(
                f"{label:>5} backup  {out['events']:>9,} events {rate_out:>9,.0f}/s"
                f"  = {rate_out / copy_out:.2f}x COPY TO   peak {out['peak_mib']:.0f} MiB"
                f"  file {out['bytes'] / 1e6:.1f} MB"
            )
            split = ", ".join(f"{n} {s:.1f}s" for n, s in back["phases"].items())
            print(
                f"{label:>5} restore {back['events']:>9,} events {rate_in:>9,.0f}/s"
                f"  = {rate_in / copy_in:.2f}x COPY FROM peak {back['peak_mib']:.0f} MiB  ({split})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(DB, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
