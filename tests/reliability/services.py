"""The upstreams of the fault-injection suite and the private servers it stops and starts.

``KeyedApp``      an aiohttp app counting executions per ``Idempotency-Key`` (thread-safe, served
                  from the background thread so it answers while a test blocks on a process).
``FaultyUpstream`` a raw asyncio server whose paths misbehave: a connection reset mid-body, a body
                  that never ends, a slow drip, a stall; it records what it saw and when the peer
                  went away.
``PostgresServer`` a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on its own port, run
                  as the ``postgres`` user when the tests run as root.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

from aiohttp import web


class KeyedApp:
    """Counts executions by ``Idempotency-Key``; ``/slow/<ms>`` waits before answering 201."""

    def __init__(self) -> None:
        self.executions: Counter[str | None] = Counter()
        self.paths: Counter[str] = Counter()
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        """The application to serve."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def count(self, key: str) -> int:
        """How many times a request with ``key`` was executed."""
        with self._lock:
            return self.executions[key]

    def snapshot(self) -> Counter[str | None]:
        """A copy of the execution counts."""
        with self._lock:
            return Counter(self.executions)

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        with self._lock:
            self.executions[request.headers.get("Idempotency-Key")] += 1
            self.paths[request.path] += 1
        parts = request.path.strip("/").split("/")
        if parts[0] == "slow" and len(parts) > 1:
            await asyncio.sleep(int(parts[1]) / 1000)
        return web.json_response({"path": request.path, "done": True}, status=201)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing process does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyUpstream:
    """A raw HTTP/1.1 server; each path is one fault.

    ``/reset``    headers promising 1000 bytes, 100 of them, then a connection reset.
    ``/endless``  a chunked 200 that sends a chunk every 50 ms until the peer goes away.
    ``/drip-N``   an N-byte body, one byte every 100 ms (each gap well under 1 s).
    ``/stall``    reads the request, then says nothing for 10 s.
    ``/undo``     200 at once (a compensation that works).
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.keys: list[tuple[str, str | None]] = []
        self.peer_gone: Counter[str] = Counter()
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on 127.0.0.1; return the base URL."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        """Stop listening and end every connection still open (a stall, an endless body)."""
        assert self.server is not None
        self.server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self.server.wait_closed()

    def count(self, path: str) -> int:
        """Requests that arrived for ``path``."""
        return self.requests[path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        path = "?"
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
            key = None
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    await reader.readexactly(int(value))
                if name.lower() == b"idempotency-key":
                    key = value.strip().decode("latin-1")
            self.requests[path] += 1
            self.keys.append((path, key))
            await self._fault(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.peer_gone[path] += 1
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _fault(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"r" * 100)
            await writer.drain()
            await asyncio.sleep(0.05)
            _abort(writer)
        elif path == "/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"5\r\nchunk\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path.startswith("/drip-"):
            size = int(path.rsplit("-", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size):
                await asyncio.sleep(0.1)
                writer.write(b"d")
                await writer.drain()
        elif path == "/stall":
            await asyncio.sleep(10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = Path(found[-1]) if found else Path(shutil.which("initdb") or "/nonexistent/initdb")
    assert initdb.exists(), "PostgreSQL's initdb is not installed (apt-get install postgresql)"
    return initdb.parent


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a free port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="reliability-pg-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.running = False

    @property
    def url(self) -> str:
        """The ``postgresql://`` URL of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            command = ["su", "postgres", "-c", " ".join(f"'{a}'" for a in command)]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        """Create the cluster (trust authentication, user ``postgres``)."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "start")  # fmt: skip
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash; ``fast``: a clean shutdown)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def remove(self) -> None:
        """Stop it if running, and delete its files."""
        if self.running:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
