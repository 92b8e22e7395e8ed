"""Connection hygiene against the real binary: thousands of slowloris
connections (headers sent a byte at a time) neither slow a correct client nor
hold file descriptors past the header-read timeout; beyond --max-connections a
listener closes new connections at once and counts them; TLS handshakes that
never finish are bounded the same way."""

from __future__ import annotations

import os
import resource
import socket
import time

import requests

from conftest import Server

MLP = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": [0.5] * 256}]}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metric(server, name: str, **labels) -> float:
    text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not exposed")


def connect_many(addr: str, count: int) -> list[socket.socket]:
    host, port = addr.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.setblocking(False)
        sockets.append(s)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_connections_do_not_slow_a_correct_client_and_are_cut(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    server = Server("--header-read-timeout", "3s")
    attackers: list[socket.socket] = []
    try:
        pid = server.process.pid
        url = f"http://{server.http}/v2/models/mlp/infer"
        session = requests.Session()
        baseline = []
        for _ in range(20):
            started = time.perf_counter()
            assert session.post(url, json=MLP, timeout=10).status_code == 200
            baseline.append(time.perf_counter() - started)
        fds_before, rss_before = open_fds(pid), rss_mb(pid)
        attackers = connect_many(server.http, 2000)
        head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: "
        sent = 0
        slow, peak_fds = [], 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            # One more byte on every connection, then a correct request.
            for sock in attackers:
                try:
                    sock.send(head[sent:sent + 1] if sent < len(head) else b"a")
                except OSError:
                    pass
            sent += 1
            started = time.perf_counter()
            assert session.post(url, json=MLP, timeout=10).status_code == 200
            slow.append(time.perf_counter() - started)
            peak_fds = max(peak_fds, open_fds(pid))
            time.sleep(0.1)
        slow.sort()
        # Normal latency: the median of the attacked requests is within a few
        # milliseconds of the quiet ones (the machine is shared: no tight bound).
        assert slow[len(slow) // 2] < max(baseline) + 0.25, (slow, sorted(baseline))
        assert peak_fds <= fds_before + 2000 + 50, peak_fds
        # Past the header-read timeout the server has closed every one of them.
        deadline = time.monotonic() + 10
        open_left = attackers
        while open_left:
            assert time.monotonic() < deadline, f"{len(open_left)} slow connections still open"
            time.sleep(0.5)
            open_left = [s for s in open_left if not closed_by_server(s)]
        for sock in attackers:
            sock.close()
        attackers = []
        time.sleep(0.5)
        assert open_fds(pid) <= fds_before + 10, (open_fds(pid), fds_before)
        assert rss_mb(pid) < rss_before + 150, (rss_mb(pid), rss_before)
        assert session.post(url, json=MLP, timeout=10).status_code == 200
    finally:
        for sock in attackers:
            sock.close()
        assert server.stop() == 0
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_past_the_cap_are_closed_at_once_and_counted():
    server = Server("--max-connections", "20")
    held: list[socket.socket] = []
    try:
        for listener, addr in [("http", server.http), ("grpc", server.grpc)]:
            held = connect_many(addr, 30)
            time.sleep(0.5)
            closed = [s for s in held if closed_by_server(s)]
            assert len(closed) == 10, f"{listener}: {len(closed)} of 30 closed with a cap of 20"
            assert metric(server, "switchyard_connections_refused_total", listener=listener,
                          reason="max_connections") >= 10
            assert metric(server, "switchyard_open_connections", listener=listener) == 20
            for sock in held:
                sock.close()
            held = []
            # Slots come back when connections close.
            deadline = time.monotonic() + 5
            while metric(server, "switchyard_open_connections", listener=listener) > 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert requests.post(f"http://{server.http}/v2/models/mlp/infer", json=MLP, timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0


def test_stalled_tls_handshakes_are_bounded(tmp_path):
    from test_tls import make_ca, make_cert

    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "ca", "server")
    server = Server("--tls-cert", str(tmp_path / "server.crt"), "--tls-key", str(tmp_path / "server.key"),
                    "--max-tls-handshakes", "5")
    stalled: list[socket.socket] = []
    try:
        # Connections that never send a ClientHello hold a handshake slot each.
        stalled = connect_many(server.http, 12)
        time.sleep(0.5)
        closed = [s for s in stalled if closed_by_server(s)]
        assert len(closed) == 7, f"{len(closed)} of 12 closed with 5 handshake slots"
        assert metric(server, "switchyard_connections_refused_total", listener="http", reason="tls_handshakes") >= 7
        for sock in stalled:
            sock.close()
        stalled = []
        # The slots free as the silent peers go; a real client is served.
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = requests.get(f"https://{server.http}/v2/health/ready", verify=str(tmp_path / "ca.crt"), timeout=5)
                assert answer.status_code == 200
                break
            except requests.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "TLS clients were not served after the stalled handshakes went"
                time.sleep(0.2)
    finally:
        for sock in stalled:
            sock.close()
        assert server.stop() == 0
