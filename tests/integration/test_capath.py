"""The broker's trust directory, kept incrementally, stays what `openssl verify -CApath` expects."""

from __future__ import annotations

import subprocess
from pathlib import Path

from adapters.broker_runtime import CapathTrustAnchors
from tests import factories as f


def verifies(capath: Path, leaf: f.Issued, tmp: Path) -> bool:
    path = tmp / "leaf.pem"
    path.write_bytes(leaf.pem)
    result = subprocess.run(
        ["openssl", "verify", "-CApath", str(capath), str(path)], capture_output=True
    )
    return result.returncode == 0


def test_anchors_sharing_a_subject_get_gapless_suffixes_and_removal_is_exact(
    tmp_path: Path,
) -> None:
    capath = tmp_path / "capath"
    server = f.make_root(f.unique_cn("server"))
    same = f.unique_cn("twin")
    twin_a, twin_b = f.make_root(same), f.make_root(same)
    leaf_a, leaf_b = f.make_leaf(twin_a, "a"), f.make_leaf(twin_b, "b")
    anchors = CapathTrustAnchors(capath, server.pem.decode())
    anchors.replace([])
    assert not verifies(capath, leaf_a, tmp_path)
    anchors.replace([twin_a.pem.decode(), twin_b.pem.decode()])
    assert verifies(capath, leaf_a, tmp_path) and verifies(capath, leaf_b, tmp_path)
    names = sorted(p.name for p in capath.iterdir())
    assert len(names) == 3 and {n.split(".")[1] for n in names} == {"0", "1"}
    anchors.replace([twin_b.pem.decode()])
    assert len(list(capath.iterdir())) == 2
    assert verifies(capath, leaf_b, tmp_path) and not verifies(capath, leaf_a, tmp_path)


def test_the_python_subject_hash_equals_openssls_for_varied_names(tmp_path: Path) -> None:
    from cryptography import x509

    from adapters.mosquitto.name_hash import name_hash

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tmp_path / "k"),
            "-subj",
            "/C=DE/O=Acme  Corp/OU=IoT/CN=Device 42",
            "-out",
            str(tmp_path / "c.pem"),
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    pems = [(tmp_path / "c.pem").read_bytes()] + [
        f.make_root(cn).pem
        for cn in ("Test Root", "  MiXed   Case \t Root ", "ünïcødé root", "dev v2")
    ]
    for pem in pems:
        expected = (
            subprocess.run(
                ["openssl", "x509", "-noout", "-subject_hash"],
                input=pem,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        assert name_hash(x509.load_pem_x509_certificate(pem).subject) == expected
