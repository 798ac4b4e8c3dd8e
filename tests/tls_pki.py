"""Certificates made with openssl for the TLS tests, and a mosquitto with a TLS listener."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mosquitto import Broker

from edge_inspect.loopback import free_port


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """Two CAs (`ca`: the broker's, `rogue`: another one), a server certificate for 127.0.0.1 only
    (no host name), and client certificates signed by each CA (`client`, `rogue-client`)."""
    for ca in ("ca", "rogue"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN=edge-inspect test {ca}", cwd=d)
    for name, ca, extra in (("server", "ca", "subjectAltName=IP:127.0.0.1"),
                            ("client", "ca", "extendedKeyUsage=clientAuth"),
                            ("rogue-client", "rogue", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(extra + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def start_tls_broker(workdir: Path, pki: Path) -> Broker:
    """mosquitto with a plain listener (`port`, for observers) and a TLS one (`tls_port`) that
    requires a client certificate signed by `ca`."""
    tls_port = free_port()
    broker = Broker(workdir, extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {pki}/ca.pem\ncertfile {pki}/server.pem\n"
        f"keyfile {pki}/server.key\nrequire_certificate true\n"))
    broker.tls_port = tls_port
    return broker.start()
