"""Registry benchmark: import, projection catch-up and authorization decisions, with baselines.

Prints figures and ratios against baselines measured in the same run (not asserted anywhere).
Usage: .venv/bin/python bench/registry.py [--certs 10000] [--events 100000] [--decisions 300000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.settings import Settings  # noqa: E402
from application.authorization import Authorization, AuthzIndex  # noqa: E402
from application.bootstrap import bootstrap  # noqa: E402
from application.lookup import CertRow, LookupChanges, PolicyRow  # noqa: E402
from application.ports import AccessRequest, Action  # noqa: E402
from domain.meta import Actor  # noqa: E402

PG = "host=127.0.0.1 port=5432 dbname=test user=postgres"
ACTOR = Actor.system("bench")


def device_pems(
    n: int, issuer_key: ec.EllipticCurvePrivateKey, issuer_name: x509.Name
) -> list[bytes]:
    """n device certificates signed by one CA (one shared device key: signing is what costs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dev-{uuid.uuid4().hex}-{i}")])
            )
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )
        out.append(cert.public_bytes(serialization.Encoding.PEM))
    return out


def make_root() -> tuple[ec.EllipticCurvePrivateKey, x509.Name, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-root-{uuid.uuid4().hex}")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, name, cert.public_bytes(serialization.Encoding.PEM)


def raw_psycopg_rows(n: int, payload: int) -> float:
    """Baseline: raw psycopg, one INSERT per transaction, rows of the same size. Returns rows/s."""
    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id uuid PRIMARY KEY, version int, topic text, state bytea)"
        )
        blob = b"x" * payload
        start = time.perf_counter()
        for _ in range(n):
            with conn.transaction():
                conn.execute(
                    f"INSERT INTO {table} VALUES (%s, 1, 'certwarden.Certificate.Imported', %s)",  # noqa: S608
                    (uuid.uuid4(), blob),
                )
        elapsed = time.perf_counter() - start
        conn.execute(f"DROP TABLE {table}")
    return n / elapsed


def bench_import_and_catch_up(n_certs: int, n_events: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        store="postgres",
        postgres_db="test",
        postgres_schema=schema,
        data_dir=Path(tempfile.mkdtemp()),
    )
    cw = bootstrap(settings)
    cw.start(background=False)
    try:
        org = cw.registry.create_organization("bench", ACTOR).uid
        cw.registry.create_policy(
            org,
            "devices",
            "Devices",
            [{"topics": ["${org.uid}/feed/#"], "actions": ["PUBLISH"]}],
            ACTOR,
        )
        key, name, root_pem = make_root()
        cw.registry.import_certificates(org, root_pem, ACTOR)
        print(f"minting {n_certs} device certificates ...", flush=True)
        pems = device_pems(n_certs, key, name)
        before = cw.registry.max_position()
        start = time.perf_counter()
        for i in range(0, n_certs, 100):
            cw.registry.import_certificates(
                org, b"".join(pems[i : i + 100]), ACTOR, policy_id="devices"
            )
        elapsed = time.perf_counter() - start
        events = cw.registry.max_position() - before
        baseline = raw_psycopg_rows(min(n_certs, 5000), 900)
        print(
            f"import: {n_certs} certificates, {events} events in {elapsed:.2f}s = "
            f"{events / elapsed:,.0f} events/s ({n_certs / elapsed:,.0f} certs/s)"
        )
        print(f"  baseline raw psycopg, one row per transaction: {baseline:,.0f} rows/s")
        print(
            f"  ratio events/s : raw rows/s = {events / elapsed / baseline:.2f}x (target >= 1.0x)"
        )

        # fill the log up to n_events with ordinary certificate changes
        cw.sync()
        ids = [row["certificate_id"] for row in _all_ids(cw, org)]
        remaining = max(0, n_events - cw.registry.max_position())
        print(f"adding {remaining} update events ...", flush=True)
        batch = []
        i = 0
        while remaining > 0:
            cert = cw.registry.certificate(org, ids[i % len(ids)])
            cert.rename(f"renamed-{i}", ACTOR.meta())
            cert.pin_component(f"comp-{i}", ACTOR.meta())
            batch.append(cert)
            remaining -= 2
            i += 1
            if len(batch) >= 200:
                cw.registry.commit(*batch)
                batch = []
        if batch:
            cw.registry.commit(*batch)
        total = cw.registry.max_position()
        settle(schema)
        start = time.perf_counter()
        processed = cw.runner.rebuild()
        elapsed = time.perf_counter() - start
        print(
            f"projection catch-up (all {len(cw.runner.projections)} read models, from zero): {processed} events in "
            f"{elapsed:.2f}s = {processed / elapsed:,.0f} events/s (target >= 10,000); log size {total}"
        )
    finally:
        cw.close()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def settle(schema: str) -> None:
    """Let PostgreSQL finish the import's aftermath (vacuum of the fresh rows, a checkpoint)
    before a timing, so background maintenance does not land at random inside it."""
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        for (table,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall():
            conn.execute(f'VACUUM ANALYZE "{table}"')
        conn.execute("CHECKPOINT")


def _all_ids(cw, org):  # type: ignore[no-untyped-def]
    cursor = None
    while True:
        rows, cursor = cw.catalogue.list_certificates(org, limit=1000, cursor=cursor)
        yield from rows
        if cursor is None:
            return


class _Rows:
    def __init__(self, certs: list[CertRow], policies: list[PolicyRow]) -> None:
        self.data = LookupChanges(certs, policies, 1)

    def lookup_changes(self, after: int) -> LookupChanges:
        return self.data if after < 1 else LookupChanges([], [], 1)


def bench_decisions(n_certs: int, n_policies: int, n_decisions: int) -> None:
    orgs = [str(uuid.uuid4()) for _ in range(100)]
    policies = []
    for i in range(n_policies):
        org = orgs[i % len(orgs)]
        sets = [
            {
                "topics": [
                    "${org.uid}/feed/cid/${component.id}/#",
                    f"${{org.uid}}/site-{i}/+/status",
                ],
                "actions": ["PUBLISH"],
            },
            {
                "topics": [
                    "${org.uid}/cid/${client.id}/reply",
                    "${org.uid}/manage/cert/+/cid/${component.id}",
                ],
                "actions": ["SUBSCRIBE"],
            },
            {
                "topics": [f"${{org.uid}}/exact/topic/{i}"],
                "actions": ["PUBLISH", "PUBLISH_RETAIN_MESSAGE"],
            },
        ]
        policies.append(PolicyRow(org, f"p{i}", sets, False))
    now = time.time()
    certs = []
    for i in range(n_certs):
        policy = policies[i % n_policies]
        fp = hashlib.sha256(f"cert-{i}".encode()).hexdigest()
        certs.append(
            CertRow(
                str(uuid.uuid4()),
                policy.org_uid,
                fp,
                f"dev-{i}",
                True,
                "",
                now - 3600,
                now + 86400,
                policy.policy_id,
                "127.0.0.1",
                f"comp-{i}",
                False,
            )
        )
    index = AuthzIndex(_Rows(certs, policies))
    start = time.perf_counter()
    index.refresh()
    print(
        f"index load: {n_certs} certificates, {n_policies} policies in {time.perf_counter() - start:.2f}s"
    )
    authz = Authorization(index)
    # live sessions: 10,000 connected devices (each with its own client id) decide repeatedly
    sessions = [certs[(i * 7919) % n_certs] for i in range(10_000)]
    requests = []
    for i in range(n_decisions):
        row = sessions[i % len(sessions)]
        kind = (i // len(sessions)) % 4
        if kind == 0:
            req = AccessRequest(
                row.fingerprint,
                row.certificate_id[:8],
                "127.0.0.1",
                Action.PUBLISH,
                f"{row.org_uid}/feed/cid/{row.pinned_component}/sid/{i % 10}",
            )
        elif kind == 1:
            req = AccessRequest(
                row.fingerprint,
                row.certificate_id[:8],
                "127.0.0.1",
                Action.RECEIVE,
                f"{row.org_uid}/cid/{row.certificate_id[:8]}/reply",
            )
        elif kind == 2:
            req = AccessRequest(
                row.fingerprint,
                row.certificate_id[:8],
                "127.0.0.1",
                Action.PUBLISH,
                f"{row.org_uid}/elsewhere/{i}",
            )
        else:
            req = AccessRequest(
                row.fingerprint,
                row.certificate_id[:8],
                "127.0.0.1",
                Action.PUBLISH,
                f"{row.org_uid}/exact/topic/{i % n_policies}",
                retain=True,
            )
        requests.append(req)
    authorize = authz.authorize
    for req in requests[:20000]:
        authorize(req)  # warm the per-connection bound-policy cache like live sessions do
    # The 300,000 prepared requests are this script's input, not the server's: a live
    # server frees each request as soon as it is answered. Freeze the setup so that the
    # collector's full passes over it are not charged to the decisions (what the loop
    # itself allocates, e.g. cache entries, is still collected as usual).
    gc.collect()
    gc.freeze()
    allowed = 0
    start = time.perf_counter()
    for req in requests:
        allowed += authorize(req).allowed
    elapsed = time.perf_counter() - start
    rate = n_decisions / elapsed
    samples = []
    clock = time.perf_counter_ns
    for req in requests[:100000]:
        t0 = clock()
        authorize(req)
        samples.append(clock() - t0)
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    table = {r.fingerprint: r for r in certs}
    keys = [r.fingerprint for r in requests]
    start = time.perf_counter()
    for k in keys:
        table.get(k)
    dict_rate = len(keys) / (time.perf_counter() - start)
    print(
        f"decisions: {rate:,.0f}/s on one core ({allowed} allowed of {n_decisions}), "
        f"p50 {p50:.1f} us, p99 {p99:.1f} us (targets >= 200,000/s, p99 <= 20 us)"
    )
    print(
        f"  baseline empty dict lookup loop: {dict_rate:,.0f}/s; decision cost = "
        f"{dict_rate / rate:.1f}x a dict lookup; mean {statistics.fmean(samples) / 1000:.2f} us"
    )
    gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=300_000)
    parser.add_argument("--skip-store", action="store_true")
    args = parser.parse_args()
    # decisions first: in-process CPU work, measured before the store's writes leave
    # PostgreSQL busy with background maintenance on the same two cores
    bench_decisions(100_000, 10_000, args.decisions)
    if not args.skip_store:
        bench_import_and_catch_up(args.certs, args.events)


if __name__ == "__main__":
    main()
