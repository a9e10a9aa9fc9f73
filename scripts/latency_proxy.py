#!/usr/bin/env python3
"""A TCP proxy that adds a fixed one-way delay in each direction (standard library only).

    scripts/latency_proxy.py --listen 127.0.0.1:0 --target 127.0.0.1:PORT --delay-ms 10

prints the port it listens on (one line, on stdout) once it accepts connections, then
serves until SIGTERM/SIGINT. With --delay-ms 10 a request/response pair sees a 20 ms
round trip, as across a real network.

It delays bytes, it does not serialize them: each chunk read from one side is stamped
with its arrival time and written to the other side once `delay` has passed, while
later chunks keep arriving. So a bulk transfer keeps its throughput (up to the
in-flight window, like a TCP window of --window bytes) and only pays the delay once,
and concurrent connections never wait for each other.

A new connection also pays the TCP handshake: across a real network the client's first
bytes can only reach the server one round trip after connect() (SYN, SYN-ACK), i.e. 3
one-way delays after the client started connecting. Here the client's connect() to
the proxy completes at once, so bytes the client sends are held until at least
accept + 3 x delay. --no-handshake turns that off.

With --stats FILE, it writes {"connections": N, "bytes_up": N, "bytes_down": N} there
at exit (and on SIGUSR1): bytes_down is what the target sent to clients. "connections"
counts the client connections accepted: how many a client opened (HTTP/2 uses one).

With --tls-cert/--tls-key, it terminates TLS itself and offers only HTTP/1.1 in ALPN (a
TLS server without HTTP/2, for fallback tests), and speaks plain TCP to the target.
"""

import argparse
import asyncio
import collections
import json
import os
import signal
import socket
import ssl
import sys

CHUNK = 256 * 1024


class Stats:
    def __init__(self):
        self.connections = 0
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client

    def as_dict(self):
        return {
            "connections": self.connections,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


class DelayedPipe:
    """Copies src -> dst, each chunk delivered `delay` seconds after it was read.

    Reading and writing run as two tasks joined by a queue, so the delay overlaps
    with further reads (a pipeline) instead of adding up per chunk. The queue holds at
    most `window` bytes: beyond that the reader stops, and TCP back-pressure reaches the
    sender, as a full receive window would.
    """

    def __init__(self, src, dst, delay, not_before, window, count):
        self.src, self.dst = src, dst
        self.delay, self.not_before = delay, not_before
        self.window = window
        self.count = count
        self.queue = collections.deque()
        self.queued = 0
        self.cond = asyncio.Condition()

    async def reader(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                async with self.cond:
                    await self.cond.wait_for(lambda: self.queued < self.window)
                data = await self.src.read(CHUNK)
                due = max(loop.time() + self.delay, self.not_before)
                async with self.cond:
                    self.queue.append((due, data))  # b"" marks EOF
                    self.queued += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except (ConnectionError, OSError):
            async with self.cond:
                self.queue.append((0.0, None))  # reset: drop the rest
                self.cond.notify_all()

    async def writer(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                async with self.cond:
                    await self.cond.wait_for(lambda: self.queue)
                    due, data = self.queue[0]
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self.cond:
                    self.queue.popleft()
                    if data:
                        self.queued -= len(data)
                    self.cond.notify_all()
                if data is None:
                    self.dst.transport.abort()
                    return
                if not data:
                    if self.dst.can_write_eof():
                        self.dst.write_eof()
                    return
                self.dst.write(data)
                self.count(len(data))
                await self.dst.drain()
        except (ConnectionError, OSError):
            return


async def handle(client_r, client_w, args, stats):
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    delay = args.delay_ms / 1000.0
    try:
        target_r, target_w = await asyncio.open_connection(
            args.target_host, args.target_port, limit=CHUNK
        )
    except OSError as e:
        print(f"latency_proxy: cannot reach target: {e}", file=sys.stderr)
        client_w.close()
        return
    for w in (client_w, target_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stats.connections += 1
    up_not_before = accepted + 3 * delay if args.handshake else 0.0

    def add_up(n):
        stats.bytes_up += n

    def add_down(n):
        stats.bytes_down += n

    up = DelayedPipe(client_r, target_w, delay, up_not_before, args.window, add_up)
    down = DelayedPipe(target_r, client_w, delay, 0.0, args.window, add_down)
    tasks = [
        asyncio.ensure_future(t)
        for t in (up.reader(), up.writer(), down.reader(), down.writer())
    ]
    try:
        # Done when both directions delivered their EOF (or one side reset).
        await asyncio.gather(tasks[1], tasks[3])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (client_w, target_w):
            try:
                w.close()
            except Exception:
                pass


def split_addr(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=split_addr, default=("127.0.0.1", 0))
    p.add_argument("--target", type=split_addr, required=True)
    p.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    p.add_argument(
        "--window",
        type=int,
        default=32 << 20,
        help="bytes in flight per direction and connection (default 32 MiB)",
    )
    p.add_argument("--no-handshake", dest="handshake", action="store_false")
    p.add_argument("--stats", help="write byte counts (JSON) here at exit")
    p.add_argument("--tls-cert", help="serve TLS (HTTP/1.1 only in ALPN) with this PEM cert")
    p.add_argument("--tls-key", help="the private key (PEM) of --tls-cert")
    args = p.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        tls.set_alpn_protocols(["http/1.1"])
    args.target_host, args.target_port = args.target
    stats = Stats()

    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args, stats),
        args.listen[0],
        args.listen[1],
        limit=CHUNK,
        backlog=512,
        ssl=tls,
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)

    def write_stats():
        if args.stats:
            with open(args.stats + ".tmp", "w") as f:
                json.dump(stats.as_dict(), f)
            os.replace(args.stats + ".tmp", args.stats)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, write_stats)
    async with server:
        await stop.wait()
    write_stats()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
