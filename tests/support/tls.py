"""Throwaway TLS files for a private Redis: a CA, and a certificate it signed for 127.0.0.1 and
localhost (for server and client authentication), made with the ``openssl`` command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conveyor.embedded import TLSFiles

__all__ = ("openssl_tls_files",)


def openssl_tls_files(directory: Path, openssl: str) -> TLSFiles:
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "ca.cnf").write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n"
        "[dn]\nCN = conveyor test CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
    )
    (directory / "server.cnf").write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n"
    )
    (directory / "server.ext").write_text(
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    run("req", "-x509", "-config", "ca.cnf", *ec, "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-new", "-config", "server.cnf", *ec, "-keyout", "server.key", "-out", "server.csr")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return TLSFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")
