import base64
import datetime as dt
import ipaddress
import ssl
import tempfile

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openelb import pki
from openelb.controller.webhook import CertManager


def test_server_certificate_is_signed_by_the_ca_with_sans() -> None:
    ca = pki.make_ca()
    pair = pki.issue(ca, "kube-apiserver", server=True, dns=("kubernetes",), ips=("198.18.0.1", "2001:db8::1"))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("198.18.0.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=7)


def test_client_certificate_maps_to_user_and_groups() -> None:
    ca = pki.make_ca()
    cert = x509.load_pem_x509_certificate(pki.issue(ca, "lab-admin", orgs=("system:masters",)).cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "lab-admin"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH not in eku


def test_kubeconfig_embeds_everything() -> None:
    ca = pki.make_ca()
    pair = pki.issue(ca, "u")
    doc = yaml.safe_load(pki.render_kubeconfig("https://198.18.0.1:6443", ca.cert_pem, "u", pair))
    assert doc["current-context"] == "openelb-lab"
    assert doc["clusters"][0]["cluster"]["server"] == "https://198.18.0.1:6443"
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == ca.cert_pem
    assert base64.b64decode(doc["users"][0]["user"]["client-key-data"]) == pair.key_pem


def test_secret_files_are_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "k.key"
    pki.write_secret(f, b"secret")
    assert f.stat().st_mode & 0o777 == 0o600 and f.read_bytes() == b"secret"


def test_the_webhook_loads_its_certificate_without_any_writable_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller runs with a read-only root filesystem and no /tmp (the chart's
    securityContext): its serving certificate must load without a temporary file (it crashed
    at start when the lab first ran the image)."""
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/tmp")  # any temporary file fails here
    ca = pki.make_ca("t-ca")
    leaf = pki.issue(ca, "openelb-controller.openelb-system.svc", server=True, dns=("openelb-controller",))
    certs = CertManager(None, "ns", "s", "vwc", ("openelb-controller",))  # type: ignore[arg-type]
    certs._load(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(ssl.SSLError):
        certs._load(leaf.cert_pem, ca.key_pem)  # a key that does not match still fails loudly
