"""The TLS files a server is started with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ("TLSFiles",)


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files of a TLS server: its certificate and key, and the CA that signed it."""

    cert_file: Path
    key_file: Path
    ca_file: Path
