"""Server PKI files, the hashed trust directory and the generated mosquitto.conf."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
from pathlib import Path

from cryptography import x509

from adapters.mosquitto.broker import (
    MosquittoConfig,
    ensure_server_pki,
    issue_service_client_cert,
    render_config,
    write_capath,
)
from tests.factories import make_chain, make_root, unique_cn


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_pki_is_created_once_then_reused(tmp_path: Path) -> None:
    first = ensure_server_pki(tmp_path / "pki")
    files = [first.ca_cert_path, first.ca_key_path, first.cert_path, first.key_path]
    contents = [p.read_bytes() for p in files]
    assert (mode(first.ca_key_path), mode(first.key_path)) == (0o600, 0o600)
    second = ensure_server_pki(tmp_path / "pki")
    assert [p.read_bytes() for p in files] == contents
    assert second == first


def test_server_certificate_covers_the_names_and_chains_to_the_server_ca(tmp_path: Path) -> None:
    pki = ensure_server_pki(tmp_path, hostnames=["localhost", "broker.test"], ips=["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    cert = x509.load_pem_x509_certificate(pki.cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "broker.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 824 <= days <= 825
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_asking_for_a_new_name_reissues_only_the_server_certificate(tmp_path: Path) -> None:
    pki = ensure_server_pki(tmp_path)
    ca_before, cert_before = pki.ca_cert_path.read_bytes(), pki.cert_path.read_bytes()
    ensure_server_pki(tmp_path, hostnames=["localhost", "mqtt.example"])
    assert pki.ca_cert_path.read_bytes() == ca_before
    assert pki.cert_path.read_bytes() != cert_before


def test_service_client_certificate_is_a_client_auth_leaf_of_the_server_ca(tmp_path: Path) -> None:
    pki = ensure_server_pki(tmp_path)
    cert_pem, key_pem = issue_service_client_cert(pki, cn="svc-1")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes()))
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert "PRIVATE KEY" in key_pem


def test_capath_names_match_what_openssl_rehash_produces(tmp_path: Path) -> None:
    root, intermediate, _ = make_chain()
    pems = [root.pem.decode(), intermediate.pem.decode()]
    ours = write_capath(tmp_path / "ours", pems)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for i, pem in enumerate(pems):
        (theirs / f"cert{i}.pem").write_text(pem)
    subprocess.run(["openssl", "rehash", str(theirs)], check=True)
    expected = sorted(p.name for p in theirs.iterdir() if p.is_symlink())
    assert [p.name for p in ours] == expected


def test_capath_drops_anchors_no_longer_wanted_and_keeps_other_files(tmp_path: Path) -> None:
    keep, drop = make_root(unique_cn("keep")), make_root(unique_cn("drop"))
    capath = tmp_path / "capath"
    write_capath(capath, [keep.pem.decode(), drop.pem.decode()])
    (capath / "README").write_text("not an anchor")
    remaining = write_capath(capath, [keep.pem.decode()])
    assert len(remaining) == 1
    assert remaining[0].read_bytes() == keep.pem
    assert sorted(p.name for p in capath.iterdir()) == sorted(["README", remaining[0].name])


def test_certificates_with_the_same_subject_are_numbered_without_gaps(tmp_path: Path) -> None:
    twins = [make_root("Same Name"), make_root("Same Name"), make_root("Same Name")]
    capath = tmp_path / "capath"
    write_capath(capath, [t.pem.decode() for t in twins])
    suffixes = sorted(int(p.suffix[1:]) for p in capath.iterdir())
    assert suffixes == [0, 1, 2]
    write_capath(capath, [twins[2].pem.decode()])
    [only] = list(capath.iterdir())
    assert only.name.endswith(".0") and only.read_bytes() == twins[2].pem


def test_generated_config_keeps_plugin_authentication_on(tmp_path: Path) -> None:
    text = render_config(
        MosquittoConfig(
            socket_path=tmp_path / "a.sock",
            capath=tmp_path / "capath",
            certfile=tmp_path / "s.pem",
            keyfile=tmp_path / "s.key",
            log_path=tmp_path / "m.log",
            port=18883,
            run_as_root=True,
        )
    )
    lines = set(text.splitlines())
    assert {
        "listener 18883 127.0.0.1",
        "require_certificate true",
        "tls_version tlsv1.2",
        "set_tcp_nodelay true",
        "per_listener_settings false",
        "persistence false",
        "max_queued_messages 100000",
        "user root",
        f"plugin_opt_socket {tmp_path / 'a.sock'}",
        f"capath {tmp_path / 'capath'}",
    } <= lines
    assert "use_identity_as_username" not in text and "use_subject_as_username" not in text
