"""Fleet mode against real processes: three Switchyard replicas reading one
model folder, a real Prometheus (Debian's `prometheus`) scraping all three,
and client load spread over them. Every replica judges the rollout from the
fleet-wide numbers Prometheus holds at the same aligned boundaries, so all
three reach each decision at the same boundary; with Prometheus stopped
they hold, and go on when it is back."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import Server
from lifecycle_helpers import versioned_bytes, wait_for, write_version
from services import Service, free_port
from test_console import dom

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (make test installs it)")

X = np.arange(8, dtype=np.float32).reshape(2, 4)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.flatten().tolist()}]}

# Intervals of 3 s judged 1 s after each boundary; Prometheus scrapes every 500 ms.
POLICY = """
rollout:
  shadow: {percent: 50, interval: 3s, min_requests: 30, tolerance: {abs: 1.0e-5, rel: 0}, max_abs_difference: 1.0e-5}
  canary: {steps: [20, 50, 100], interval: 3s, min_requests: 20}
  keep_previous: 60s
"""
SETTLE = "1s"
JUDGED = ("shadow_passed", "step_up", "promote", "rollback")


class Prometheus:
    """A real Prometheus scraping `targets`; stopping and starting it keeps its data."""

    def __init__(self, port: int):
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.service = None

    def start(self, targets: list[str]):
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 500ms, scrape_timeout: 400ms, evaluation_interval: 10s}\n"
            "scrape_configs:\n"
            "  - job_name: switchyard\n"
            f"    static_configs: [{{targets: [{', '.join(repr(t) for t in targets)}]}}]\n"
        )
        self.service = Service(
            "prometheus",
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            f"http://127.0.0.1:{self.port}/-/ready", timeout=60, exact_ok=True,
        )

    def stop(self):
        if self.service:
            self.service.stop()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Load:
    """Client threads spread over the replicas; each answer kept as (status, version, offsets)."""

    def __init__(self, servers, per_server: int = 2):
        self.results: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(s,), daemon=True)
                        for s in servers for _ in range(per_server)]

    def run(self, server):
        session = requests.Session()
        url = f"http://{server.http}/v2/models/versioned/infer"
        while not self.stop.is_set():
            try:
                response = session.post(url, json=BODY, timeout=10)
            except Exception as err:  # noqa: BLE001 - a lost request is a result too
                with self.lock:
                    self.results.append((type(err).__name__, None, None))
                continue
            if response.status_code != 200:
                with self.lock:
                    self.results.append((response.status_code, None, None))
                continue
            reply = response.json()
            y = np.array(reply["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
            with self.lock:
                self.results.append((200, int(reply["model_version"]),
                                     frozenset(np.round(y - X).astype(int).flatten().tolist())))
            # Keep the three servers and Prometheus room on two cores.
            time.sleep(0.005)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.results)


def rollout(server) -> dict:
    response = requests.get(f"http://{server.http}/v2/rollouts/versioned", timeout=10)
    return response.json() if response.status_code == 200 else {}


def judged(server) -> list[tuple[str, int]]:
    """The rollout's decisions that moved it, with the boundary each judged."""
    return [(e["decision"], e.get("boundary_ms")) for e in rollout(server).get("history", [])
            if e["decision"] in JUDGED]


def metric(server, series: str) -> float:
    text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
    line = next((l for l in text.splitlines() if l.startswith(series + " ")), None)
    assert line is not None, f"{series} is not exposed"
    return float(line.rsplit(" ", 1)[1])


@contextlib.contextmanager
def replicas(folder: Path):
    """Three replicas of `folder` and a Prometheus scraping them."""
    prometheus = Prometheus(free_port())
    servers = []
    try:
        for _ in range(3):
            servers.append(Server("--repository-poll-interval", "100ms",
                                  "--fleet-prometheus", f"http://127.0.0.1:{prometheus.port}",
                                  "--fleet-settle", SETTLE, repository=folder))
        prometheus.start([s.metrics for s in servers])
        yield servers, prometheus
    finally:
        codes = [s.stop() for s in servers]
        prometheus.close()
        assert codes == [0, 0, 0]


@pytest.fixture
def fleet(tmp_path):
    """Three replicas of one folder (version 1 serving, a rollout policy) and Prometheus."""
    (tmp_path / "versioned").mkdir()
    (tmp_path / "versioned" / "config.yaml").write_text(POLICY)
    write_version(tmp_path, "versioned", 1)
    with replicas(tmp_path) as (servers, prometheus):
        yield tmp_path, servers, prometheus


def debug(servers):
    for s in servers:
        print(s.metrics, rollout(s))
        print("\n".join(s.log().splitlines()[-15:]))


def test_a_healthy_candidate_is_promoted_by_every_replica_at_the_same_boundaries(fleet):
    folder, servers, _ = fleet
    with Load(servers) as load:
        wait_for(lambda: len(load.snapshot()) > 60, 30, "load to start")
        arrived = time.monotonic()
        write_version(folder, "versioned", 2, versioned_bytes(1))
        try:
            wait_for(lambda: all(rollout(s).get("phase") == "promoted" for s in servers), 90,
                     "every replica to promote")
        except AssertionError:
            debug(servers)
            raise
        took = time.monotonic() - arrived
        done = len(load.snapshot())
        wait_for(lambda: len(load.snapshot()) > done + 60, 20, "load after the promotion")
    results = load.snapshot()
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    assert all(offsets == {1} for _, _, offsets in results)
    assert all(version == 2 for _, version, _ in results[done + 10:])
    decisions = [judged(s) for s in servers]
    assert decisions[0] == decisions[1] == decisions[2], decisions
    assert [d for d, _ in decisions[0]] == ["shadow_passed", "step_up", "step_up", "promote"], decisions[0]
    assert all(boundary and boundary % 3000 == 0 for _, boundary in decisions[0]), decisions[0]
    # The console says the rollout is judged by the fleet.
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    try:
        page = dom(f"http://{servers[1].http}/console", profile)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    box = re.search(r'data-rollout="versioned"(.*?)</p>', page, flags=re.S)
    assert box and 'class="fleet"' in box.group(1) and "last boundary" in box.group(1), page[-2000:]
    for s in servers:
        state = rollout(s)
        assert state["fleet"]["waiting_for_replicas"] is False
        # Judged on the fleet's numbers: more shadow copies than this replica answered alone.
        passed = next(e for e in state["history"] if e["decision"] == "shadow_passed")
        assert passed["shadow"]["ok"] >= 30 and passed["agreement"]["agreed"] >= 30, passed
        assert metric(s, 'switchyard_rollout_outcome{candidate="2",outcome="promoted",rollout="versioned"}') == 1
        assert metric(s, 'switchyard_fleet_reads_total{result="judged",rollout="versioned"}') >= 4
    print(f"fleet: arrival to promotion on all three {took:.1f}s; boundaries {decisions[0]}")


def test_a_broken_candidate_is_rolled_back_by_every_replica_unseen(fleet):
    folder, servers, _ = fleet
    with Load(servers) as load:
        wait_for(lambda: len(load.snapshot()) > 60, 30, "load to start")
        # y = x + 2: every output disagrees.
        write_version(folder, "versioned", 2)
        try:
            wait_for(lambda: all(rollout(s).get("phase") == "rolled_back" for s in servers), 90,
                     "every replica to roll back")
        except AssertionError:
            debug(servers)
            raise
        done = len(load.snapshot())
        wait_for(lambda: len(load.snapshot()) > done + 30, 20, "load after the rollback")
    results = load.snapshot()
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    assert {(version, offsets) for _, version, offsets in results} == {(1, frozenset({1}))}, "a client saw it"
    decisions = [judged(s) for s in servers]
    assert decisions[0] == decisions[1] == decisions[2], decisions
    assert [d for d, _ in decisions[0]] == ["rollback"], decisions[0]
    for s in servers:
        state = rollout(s)
        assert "in the shadow phase" in state["last_reason"], state["last_reason"]
        assert metric(s, 'switchyard_rollout_outcome{candidate="2",outcome="rolled_back",rollout="versioned"}') == 1


def test_without_prometheus_every_replica_holds_and_goes_on_when_it_returns(fleet):
    folder, servers, prometheus = fleet
    with Load(servers) as load:
        wait_for(lambda: len(load.snapshot()) > 60, 30, "load to start")
        write_version(folder, "versioned", 2, versioned_bytes(1))
        try:
            wait_for(lambda: all(rollout(s).get("stage") == "canary" for s in servers), 60,
                     "every replica in the canary stage")
        except AssertionError:
            debug(servers)
            raise
        prometheus.stop()
        time.sleep(0.5)  # a reading already made may still be judged
        stopped = [(rollout(s)["step"], rollout(s)["canary_weight"]) for s in servers]
        # Three boundaries without Prometheus: nobody moves.
        time.sleep(10)
        for s, before in zip(servers, stopped):
            state = rollout(s)
            assert state["phase"] == "progressing", state
            assert (state["step"], state["canary_weight"]) == before, state
            assert metric(s, 'switchyard_fleet_reads_total{result="error",rollout="versioned"}') >= 2
            assert state["last_decision"] == "hold" and "cannot read the fleet" in state["last_reason"], state
        held = [(rollout(s)["step"], rollout(s)["canary_weight"]) for s in servers]
        assert held[0] == held[1] == held[2], held
        prometheus.start([s.metrics for s in servers])
        try:
            wait_for(lambda: all(rollout(s).get("phase") == "promoted" for s in servers), 90,
                     "every replica to promote once Prometheus is back")
        except AssertionError:
            debug(servers)
            raise
    results = load.snapshot()
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    decisions = [judged(s) for s in servers]
    assert decisions[0] == decisions[1] == decisions[2], decisions
    assert decisions[0][-1][0] == "promote"


def test_a_per_replica_command_is_refused_in_fleet_mode_unless_forced(fleet):
    folder, servers, _ = fleet
    write_version(folder, "versioned", 2, versioned_bytes(1))
    wait_for(lambda: all(rollout(s).get("phase") == "progressing" for s in servers), 30, "the rollouts to start")
    refused = requests.post(f"http://{servers[0].http}/v2/rollouts/versioned/pause", timeout=10)
    assert refused.status_code == 409 and "fleet mode" in refused.json()["error"], refused.text
    # A forced abort on one replica is adopted by the others at the next boundary.
    forced = requests.post(f"http://{servers[0].http}/v2/rollouts/versioned/abort?force=true", timeout=10)
    assert forced.status_code == 200, forced.text
    try:
        wait_for(lambda: all(rollout(s).get("phase") == "rolled_back" for s in servers), 30,
                 "every replica to follow the abort")
    except AssertionError:
        debug(servers)
        raise
    for s in servers[1:]:
        assert "another replica rolled it back" in rollout(s)["last_reason"]


ROUTES = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 100}
      - {name: canary, model: versioned, version: 2}
    canary: {stable: stable, canary: canary, steps: [25, 100], interval: 3s, min_requests: 20}
"""


def test_a_route_file_canary_moves_in_step_on_every_replica(tmp_path):
    (tmp_path / "versioned").mkdir()
    (tmp_path / "versioned" / "config.yaml").write_text("version_policy: all\n")
    write_version(tmp_path, "versioned", 1)
    write_version(tmp_path, "versioned", 2)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    with replicas(tmp_path) as (servers, _):
        stop = threading.Event()

        def load(server):
            session = requests.Session()
            while not stop.is_set():
                session.post(f"http://{server.http}/v2/models/scoring/infer", json=BODY, timeout=10)
                time.sleep(0.005)

        threads = [threading.Thread(target=load, args=(s,), daemon=True) for s in servers]
        for thread in threads:
            thread.start()
        try:
            state = lambda s: requests.get(f"http://{s.http}/v2/rollouts/scoring", timeout=10).json()
            try:
                wait_for(lambda: all(state(s)["phase"] == "promoted" for s in servers), 60,
                         "every replica to promote the route's canary")
            except AssertionError:
                for s in servers:
                    print(state(s))
                raise
            # Ended: the boundaries that follow change nothing.
            time.sleep(4)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
        moved = [[(e["decision"], e.get("boundary_ms")) for e in state(s)["history"] if e["decision"] in JUDGED]
                 for s in servers]
        assert moved[0] == moved[1] == moved[2], moved
        assert [d for d, _ in moved[0]] == ["step_up", "promote"], moved[0]
        for s in servers:
            assert metric(s, 'switchyard_canary_decisions_total{decision="promote",endpoint="scoring"}') == 1
            assert metric(s, 'switchyard_route_weight{endpoint="scoring",variant="canary"}') == 100
