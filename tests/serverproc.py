"""Run `tallybook serve` as a real subprocess (crash tests, CLI tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ADMIN_KEY = "tbk_test_admin_key_0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, database_url: str, bootstrap: bool = True, extra: str = "") -> Path:
    config = directory / "tallybook.yaml"
    text = f"database:\n  url: {database_url}\n"
    if bootstrap:
        text += 'auth:\n  bootstrap_keys:\n    - {name: test, scope: admin, key: "${TB_TEST_ADMIN_KEY}"}\n'
        text += "logging:\n  level: WARNING\n"
    config.write_text(text + extra)
    return config


class ServerProcess:
    def __init__(
        self,
        directory: Path,
        database_url: str,
        bootstrap: bool = True,
        extra_args: tuple[str, ...] = (),
        extra_config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        """extra_config: YAML sections appended to the config file; env: variables added for the server."""
        self.directory = directory
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.config = write_config(directory, database_url, bootstrap, extra_config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> ServerProcess:
        env = {**os.environ, "TB_TEST_ADMIN_KEY": ADMIN_KEY, **self.extra_env}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tallybook",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                *self.extra_args,
            ],
            cwd=self.directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}: {out}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> str:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        return self.proc.stdout.read().decode() if self.proc and self.proc.stdout else ""
