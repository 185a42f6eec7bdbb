"""A self-signed serving certificate for 127.0.0.1, made with the openssl CLI.

Why TLS at all on loopback: kubectl (client-go's clientcmd) reads a kubeconfig's credentials
only when the transport is TLS, so over plain http it would never send the bearer token.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path


class TLSSetupError(RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class ServingCert:
    directory: Path
    cert_path: Path
    key_path: Path

    @property
    def pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


async def make_serving_cert(host: str, directory: Path) -> ServingCert:
    """A fresh key and certificate (its own CA) valid for ``host``, 127.0.0.1 and localhost,
    written into ``directory`` (made 0700; the lab's state dir, so `netlab down` removes it
    even after a crash)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSSetupError("openssl is needed to make the API server's certificate")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    names = {f"IP:{host}", "IP:127.0.0.1", "DNS:localhost"}
    process = await asyncio.create_subprocess_exec(
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "365",
        "-subj", "/CN=netlab-apiserver",
        "-addext", f"subjectAltName={','.join(sorted(names))}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise TLSSetupError(f"openssl failed: {err.decode(errors='replace').strip()}")
    key.chmod(0o600)
    return ServingCert(directory, cert, key)
