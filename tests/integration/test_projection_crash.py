"""Read models survive kill -9 in the middle of a catch-up: rows and positions stay in step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.settings import Settings
from application.bootstrap import bootstrap
from domain.meta import Actor
from tests import factories as f
from tests.conftest import drop_schema, make_settings

CHILD = """
import sys
import time
from adapters.settings import Settings
from application.bootstrap import bootstrap
settings = Settings.model_validate_json(sys.argv[1])
cw = bootstrap(settings)
cw.runner.batch_size = 7
while cw.runner.run_once():
    print("batch", flush=True)
    time.sleep(0.05)
print("done", flush=True)
"""


def seed(settings: Settings) -> tuple[str, int]:
    cw = bootstrap(settings)
    actor = Actor.system("test")
    org = cw.registry.create_organization("crash", actor).uid
    root = f.make_root(f.unique_cn("root"))
    pem = b"".join(f.make_leaf(root, f.unique_cn()).pem for _ in range(60)) + root.pem
    cw.registry.import_certificates(org, pem, actor)
    total = cw.registry.max_position()
    cw.close()
    return org, total


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_catch_up_killed_mid_batch_resumes_without_duplicates_or_gaps(
    store: str, tmp_path: Path
) -> None:
    settings = make_settings(store, tmp_path)
    try:
        org, total = seed(settings)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, settings.model_dump_json()],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        for _ in range(5):
            assert child.stdout.readline().strip() == "batch"
        child.send_signal(signal.SIGKILL)  # between or inside a batch: both must be safe
        child.wait(timeout=10)
        cw = bootstrap(settings)
        try:
            assert 0 < cw.runner.position < total  # killed mid-way
            cw.runner.catch_up()
            rows, _ = cw.catalogue.list_certificates(org, limit=1000)
            assert len(rows) == 61
            audit, _ = cw.audit.query(org, entity_type="Certificate", limit=1000)
            assert len(audit) == 61
            assert len({a["position"] for a in audit}) == 61
        finally:
            cw.close()
    finally:
        if store == "postgres":
            drop_schema(settings)
