"""Local engines and service processes for tests and benchmarks (never used by the services themselves).

`Engines.start()` runs the project's own deploy/local scripts with free ports and a private data folder,
so a stack left running by `make up` is never touched. When KAFKA_BOOTSTRAP_SERVERS and MONGODB_URL
are both set, those engines are used instead and nothing is started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Engines:
    kafka_bootstrap: str
    mongodb_url: str
    run_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, partitions: int = 6) -> Engines:
        external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        external_mongo = os.environ.get("MONGODB_URL")
        if external_kafka and external_mongo:
            engines = cls(external_kafka, external_mongo)
            engines.create_topics(partitions)
            return engines
        run_dir = Path(tempfile.mkdtemp(prefix="engines-", dir=ensure_dir(ROOT / ".run")))
        ports = {
            "KAFKA_PORT": free_port(),
            "KAFKA_CONTROLLER_PORT": free_port(),
            "FERRETDB_PORT": free_port(),
            "FERRETDB_DEBUG_PORT": free_port(),
        }
        env = {
            **os.environ,
            "BANKSYNC_RUN_DIR": str(run_dir),
            "KAFKA_TOPIC_PARTITIONS": str(partitions),
            **{k: str(v) for k, v in ports.items()},
        }
        engines = cls(
            kafka_bootstrap=f"127.0.0.1:{ports['KAFKA_PORT']}",
            mongodb_url=f"mongodb://127.0.0.1:{ports['FERRETDB_PORT']}",
            run_dir=run_dir,
            env=env,
        )
        try:
            engines.start_kafka()
            engines.start_ferretdb()
            engines.create_topics(partitions)
        except BaseException:
            engines.stop()
            raise
        return engines

    @property
    def owned(self) -> bool:
        return self.run_dir is not None

    def _script(self, script: str, action: str) -> None:
        subprocess.run([str(DEPLOY / script), action], env=self.env, check=True, timeout=180)

    def start_kafka(self) -> None:
        self._script("kafka.sh", "start")

    def stop_kafka(self) -> None:
        self._script("kafka.sh", "stop")

    def start_ferretdb(self) -> None:
        self._script("ferretdb.sh", "start")

    def stop_ferretdb(self) -> None:
        self._script("ferretdb.sh", "stop")

    def create_topics(self, partitions: int) -> None:
        subprocess.run(
            [
                sys.executable,
                str(DEPLOY / "probe.py"),
                "topics",
                self.kafka_bootstrap,
                "--partitions",
                str(partitions),
            ],
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if not self.owned:
            return
        for stop in (self.stop_ferretdb, self.stop_kafka):
            with contextlib.suppress(Exception):
                stop()
        assert self.run_dir is not None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def service_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a service process talking to these engines."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "MONGODB_URL": self.mongodb_url,
            **overrides,
        }


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ServiceProcess:
    """One service run as its own process, as `make up` runs it (`python -m services.<name>`)."""

    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            self.wait_until("/readyz", 200, timeout)
        return self

    def wait_until(self, path: str, status: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                last = httpx.get(self.url + path, timeout=5).status_code
                if last == status:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"{self.module} {path} never answered {status} (last: {last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextlib.contextmanager
def running_service(module: str, engines: Engines, log_dir: Path, **env: str) -> Iterator[ServiceProcess]:
    port = free_port()
    proc = ServiceProcess(module, port, engines.service_env(**env), log_dir / f"{module}-{port}.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
