"""The project's own Kafka cluster for tests and benchmarks, via deploy/kafka/local_kafka.py.

Real Apache Kafka brokers in KRaft mode, started as processes on loopback; nothing
here is mocked. Each cluster has a name, so the test broker, the fault-test cluster
and a running `make run` broker never share ports or data.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = REPO_ROOT / "deploy" / "kafka" / "local_kafka.py"
POM: Final = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
_VERSION = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
KAFKA_VERSION: Final = _VERSION.group(1) if _VERSION else "unknown"


@dataclass
class LocalKafka:
    name: str
    port: int
    brokers: int = 1

    def _run(self, *args: str, timeout_s: float = 240.0) -> str:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO_ROOT,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"local_kafka.py {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def start(self) -> str:
        """Start (idempotently) and return the bootstrap servers."""
        self._run("fetch")
        output = self._run(
            "start", "--name", self.name, "--port", str(self.port), "--brokers", str(self.brokers)
        )
        return output.strip().splitlines()[-1]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + i}" for i in range(self.brokers))

    def stop(self, *, purge: bool = False) -> None:
        self._run("stop", "--name", self.name, *(["--purge"] if purge else []))

    def stop_node(self, node: int) -> None:
        self._run("stop-node", "--name", self.name, "--node", str(node))

    def start_node(self, node: int) -> None:
        self._run("start-node", "--name", self.name, "--node", str(node))

    def kill_node(self, node: int) -> None:
        self._run("kill-node", "--name", self.name, "--node", str(node))
