"""Verified hot swaps against the real binary: a model with a `rollout:`
policy takes a new version from its folder through shadow (outputs compared
with the stable version's on the same requests) and canary steps before it
serves, and rolls back a version that answers differently or fails, with
steady client load the whole time."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import requests

from conftest import Server
from lifecycle_helpers import index, make_models, versioned_bytes, wait_for, write_version

X = np.arange(8, dtype=np.float32).reshape(2, 4)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.flatten().tolist()}]}

POLICY = """
rollout:
  shadow: {percent: 50, interval: 300ms, min_requests: 20, tolerance: {abs: 1.0e-5, rel: 0}, max_abs_difference: 1.0e-5}
  canary: {steps: [20, 100], interval: 300ms, min_requests: 20}
  keep_previous: 60s
"""

CANARY_ONLY = """
warmup: false
rollout:
  canary: {steps: [20, 100], interval: 300ms, min_requests: 20}
"""


class Load:
    """Client threads sending unversioned requests back to back; each answer
    is kept as (status, served version, y - x offset, variant header)."""

    def __init__(self, server, clients: int = 4):
        self.url = f"http://{server.http}/v2/models/versioned/infer"
        self.results: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        session = requests.Session()
        while not self.stop.is_set():
            try:
                response = session.post(self.url, json=BODY, timeout=10)
            except Exception as err:  # noqa: BLE001 - a lost request is a result too
                with self.lock:
                    self.results.append((type(err).__name__, None, None, None))
                continue
            variant = response.headers.get("x-switchyard-variant")
            if response.status_code != 200:
                with self.lock:
                    self.results.append((response.status_code, None, None, variant))
                continue
            reply = response.json()
            y = np.array(reply["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
            offsets = set(np.round(y - X).astype(int).flatten().tolist())
            with self.lock:
                self.results.append((200, int(reply["model_version"]), offsets, variant))

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


def repository(tmp_path, config: str):
    (tmp_path / "versioned").mkdir(parents=True)
    (tmp_path / "versioned" / "config.yaml").write_text(config)
    write_version(tmp_path, "versioned", 1)
    return tmp_path


def rollout(server) -> dict:
    response = requests.get(f"http://{server.http}/v2/rollouts/versioned", timeout=10)
    return response.json() if response.status_code == 200 else {}


def metrics(server) -> str:
    return requests.get(f"http://{server.metrics}/metrics", timeout=10).text


def metric(text: str, series: str) -> float:
    line = next((l for l in text.splitlines() if l.startswith(series + " ")), None)
    assert line is not None, f"{series} is not exposed"
    return float(line.rsplit(" ", 1)[1])


def unversioned(server, headers=None) -> tuple[int, str | None, str | None]:
    response = requests.post(f"http://{server.http}/v2/models/versioned/infer", json=BODY,
                             headers=headers or {}, timeout=10)
    version = response.json().get("model_version") if response.status_code == 200 else None
    return response.status_code, version, response.headers.get("x-switchyard-variant")


def test_an_equal_version_is_promoted_through_shadow_and_canary_with_no_failed_request(tmp_path):
    server = Server("--repository-poll-interval", "100ms", repository=repository(tmp_path, POLICY))
    try:
        with Load(server) as load:
            wait_for(lambda: len(load.snapshot()) > 50, 20, "load to start")
            arrived = time.monotonic()
            # Same answers as version 1 (y = x + 1): a faithful new build.
            write_version(tmp_path, "versioned", 2, versioned_bytes(1))
            shadowing = wait_for(lambda: rollout(server).get("stage") == "shadow" and rollout(server), 20,
                                 "the rollout to start in the shadow stage")
            assert shadowing["kind"] == "model"
            assert shadowing["versions"] == {"model": "versioned", "stable": 1, "candidate": 2}
            # While it shadows, version 2 answers when asked for, or pinned, and no one else.
            asked = requests.post(f"http://{server.http}/v2/models/versioned/versions/2/infer", json=BODY, timeout=10)
            assert (asked.status_code, asked.json()["model_version"]) == (200, "2")
            assert unversioned(server, {"x-switchyard-variant": "candidate"}) == (200, "2", "candidate")
            wait_for(lambda: rollout(server).get("phase") == "promoted", 60, "promotion")
            took = time.monotonic() - arrived
            wait_for(lambda: unversioned(server)[1] == "2", 10, "version 2 to serve")
            promoted_at = len(load.snapshot())
            wait_for(lambda: len(load.snapshot()) > promoted_at + 50, 20, "load after the promotion")
        results = load.snapshot()
        failures = [r for r in results if r[0] != 200]
        assert not failures, failures[:5]
        assert all(offsets == {1} for _, _, offsets, _ in results)
        assert {version for _, version, _, _ in results} == {1, 2}
        # Version 2 only started answering live requests in the canary stage.
        assert all(version == 2 for _, version, _, _ in results[promoted_at:])
        state = rollout(server)
        decisions = [event["decision"] for event in state["history"]]
        assert decisions[0] == "started" and decisions[-1] == "promote", decisions
        for expected in ("shadow_passed", "step_up"):
            assert expected in decisions, decisions
        shadow_passed = next(e for e in state["history"] if e["decision"] == "shadow_passed")
        assert shadow_passed["stage"] == "canary" and shadow_passed["agreement"]["agreed"] >= 20, shadow_passed
        # The previous version stays loaded for an instant rollback by pinning it.
        assert requests.get(f"http://{server.http}/v2/models/versioned/versions/1/ready", timeout=10).status_code == 200
        text = metrics(server)
        assert metric(text, 'switchyard_rollout_phase{phase="promoted",rollout="versioned"}') == 1
        assert metric(text, 'switchyard_rollout_phase{phase="shadow",rollout="versioned"}') == 0
        assert metric(text, 'switchyard_rollout_duration_seconds_count{outcome="promoted",rollout="versioned"}') == 1
        assert metric(text, 'switchyard_shadow_comparisons_total{endpoint="versioned",output="y",result="agree"}') >= 20
        print(f"arrival to promotion: {took:.2f}s with {len(results)} requests")
        assert '"Version promoted: it serves every unversioned request."' in server.log()
    finally:
        assert server.stop() == 0


def test_a_version_that_answers_differently_is_rolled_back_in_the_shadow_stage_unseen(tmp_path):
    server = Server("--repository-poll-interval", "100ms", repository=repository(tmp_path, POLICY))
    try:
        with Load(server) as load:
            wait_for(lambda: len(load.snapshot()) > 50, 20, "load to start")
            # y = x + 2: every output is 1 off.
            write_version(tmp_path, "versioned", 2)
            wait_for(lambda: rollout(server).get("phase") == "rolled_back", 60, "rollback")
            ended_at = len(load.snapshot())
            wait_for(lambda: len(load.snapshot()) > ended_at + 50, 20, "load after the rollback")
        results = load.snapshot()
        assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
        assert {(version, frozenset(offsets)) for _, version, offsets, _ in results} == {(1, frozenset({1}))}, \
            "a client saw the candidate"
        state = rollout(server)
        assert state["stage"] == "shadow"
        assert "in the shadow phase" in state["last_reason"] and "outputs agree on 0.00%" in state["last_reason"], state
        assert "max |difference| 1.000e0" in state["last_reason"], state
        assert "shadow_passed" not in [e["decision"] for e in state["history"]]
        rows = [r for r in index(server.http) if r["name"] == "versioned" and r.get("version") == "2"]
        assert rows and rows[0]["state"] == "UNAVAILABLE" and rows[0]["reason"].startswith("rolled back:"), rows
        text = metrics(server)
        assert metric(text, 'switchyard_shadow_comparisons_total{endpoint="versioned",output="y",result="disagree"}') >= 20
        assert metric(text, 'switchyard_endpoint_requests_total{endpoint="versioned",outcome="success",variant="candidate"}') == 0
        assert metric(text, 'switchyard_rollout_duration_seconds_count{outcome="rolled_back",rollout="versioned"}') == 1

        # Not tried again while its content is the same...
        loads = metric(text, 'switchyard_model_loads_total{model="versioned",outcome="success"}')
        time.sleep(1.0)
        assert metric(metrics(server), 'switchyard_model_loads_total{model="versioned",outcome="success"}') == loads
        assert rollout(server)["phase"] == "rolled_back"
        # ...and rolled out afresh once it changes (now it answers as version 1 does).
        write_version(tmp_path, "versioned", 2, versioned_bytes(1))
        wait_for(lambda: rollout(server).get("phase") == "progressing", 20,
                 "a new rollout for the new content")
        with Load(server):
            try:
                wait_for(lambda: rollout(server).get("phase") == "promoted", 60, "the fixed version's promotion")
            except AssertionError:
                print("DEBUG", json.dumps(rollout(server))[:3000], index(server.http))
                print("\n".join(server.log().splitlines()[-30:]))
                raise
        assert unversioned(server)[1] == "2"
    finally:
        assert server.stop() == 0


def test_a_version_failing_at_run_time_is_rolled_back_in_the_canary_stage_on_its_share_only(tmp_path):
    server = Server("--repository-poll-interval", "100ms", repository=repository(tmp_path, CANARY_ONLY))
    try:
        with Load(server) as load:
            wait_for(lambda: len(load.snapshot()) > 50, 20, "load to start")
            # Loads (no warm-up), then fails every [2, 4] request.
            write_version(tmp_path, "versioned", 2, make_models.make_broken().SerializeToString())
            wait_for(lambda: rollout(server).get("phase") == "rolled_back", 60, "rollback")
            ended_at = len(load.snapshot())
            wait_for(lambda: len(load.snapshot()) > ended_at + 50, 20, "load after the rollback")
        results = load.snapshot()
        failures = [r for r in results[:ended_at] if r[0] != 200]
        assert failures, "the broken version never got traffic"
        # Error answers name the variant that failed, as successful ones do.
        assert all(variant == "candidate" for _, _, _, variant in failures), failures[:5]
        assert len(failures) / ended_at < 0.35, len(failures) / ended_at  # the 20% step, give or take
        assert all(r[0] == 200 and r[1] == 1 for r in results[ended_at + 8:]), "after the rollback, version 1 answers"
        state = rollout(server)
        # Judged on its failures, or on its breaker opening first: either way in the canary stage.
        assert state["stage"] == "canary", state
        assert "success rate" in state["last_reason"] or "unhealthy in the canary phase" in state["last_reason"], state
        assert [e["decision"] for e in state["history"]][-1] == "rollback"
        text = metrics(server)
        assert metric(text, 'switchyard_endpoint_requests_total{endpoint="versioned",outcome="failure",variant="stable"}') == 0
        assert metric(text, 'switchyard_canary_decisions_total{decision="step_up",endpoint="versioned"}') == 0
    finally:
        assert server.stop() == 0


def test_operators_promote_or_abort_a_model_rollout_through_the_control_api(tmp_path):
    slow = POLICY.replace("interval: 300ms", "interval: 1h")
    admin = {"Authorization": "Bearer boss-0123456789abcdef"}
    server = Server("--repository-poll-interval", "100ms", "--admin-tokens", "boss-0123456789abcdef",
                    "--inference-tokens", "user-0123456789abcdef", repository=repository(tmp_path, slow))
    user = {"Authorization": "Bearer user-0123456789abcdef"}
    base = f"http://{server.http}/v2/endpoints/versioned"
    try:
        write_version(tmp_path, "versioned", 2, versioned_bytes(1))
        wait_for(lambda: requests.get(f"http://{server.http}/v2/rollouts/versioned", headers=admin,
                                      timeout=10).status_code == 200, 20, "the rollout")
        assert requests.post(f"{base}/canary/promote", headers=user, timeout=10).status_code == 403
        # Its weights follow the rollout; a hand-set split would fight it.
        put = requests.put(base, json={"weights": {"candidate": 50}}, headers=admin, timeout=10)
        assert put.status_code == 409 and "rolling out" in put.json()["error"], put.text
        assert requests.post(f"{base}/canary/pause", headers=admin, timeout=10).json()["phase"] == "paused"
        assert requests.post(f"{base}/canary/promote", headers=admin, timeout=10).json()["phase"] == "promoted"
        wait_for(lambda: unversioned(server, user)[1] == "2", 10, "version 2 to serve")

        write_version(tmp_path, "versioned", 3, versioned_bytes(3))
        wait_for(lambda: (requests.get(f"http://{server.http}/v2/rollouts/versioned", headers=admin, timeout=10)
                          .json().get("versions") or {}).get("candidate") == 3, 20, "the rollout of version 3")
        assert requests.post(f"{base}/canary/abort", headers=admin, timeout=10).json()["phase"] == "rolled_back"
        wait_for(lambda: any(r.get("version") == "3" and r["state"] == "UNAVAILABLE"
                             for r in requests.post(f"http://{server.http}/v2/repository/index", headers=user,
                                                    timeout=10).json()), 10, "version 3 to leave")
        assert unversioned(server, user)[1] == "2"
        history = requests.get(f"http://{server.http}/v2/rollouts/versioned", headers=admin, timeout=10).json()["history"]
        assert [e["decision"] for e in history] == ["started", "abort"], history
        assert "by an operator" in history[-1]["reason"]
    finally:
        assert server.stop() == 0


def test_a_restart_serves_the_promoted_version_and_keeps_a_rolled_back_one_out(tmp_path):
    repo = repository(tmp_path / "repo", POLICY)
    memory = ("--model-cache-dir", str(tmp_path / "cache"))

    def start():
        return Server("--repository-poll-interval", "100ms", *memory, repository=repo)

    server = start()
    try:
        write_version(repo, "versioned", 2)  # answers differently: rolled back
        with Load(server):
            wait_for(lambda: rollout(server).get("phase") == "rolled_back", 60, "rollback")
    finally:
        assert server.stop() == 0
    server = start()
    try:
        assert unversioned(server)[1] == "1", "the rolled-back version is not the newest to serve after a restart"
        rows = [r for r in index(server.http) if r.get("version") == "2"]
        assert rows and rows[0]["reason"].startswith("rolled back:"), rows
        assert requests.get(f"http://{server.http}/v2/rollouts/versioned", timeout=10).status_code == 404
        # A fixed version 2 earns its place; then version 3 arrives while no server runs.
        write_version(repo, "versioned", 2, versioned_bytes(1))
        with Load(server):
            wait_for(lambda: rollout(server).get("phase") == "promoted", 60, "the fixed version's promotion")
    finally:
        assert server.stop() == 0
    write_version(repo, "versioned", 3, versioned_bytes(1))
    server = start()
    try:
        assert unversioned(server)[1] == "2", "the promoted version serves; the newer one must earn its traffic"
        wait_for(lambda: (rollout(server).get("versions") or {}).get("candidate") == 3, 20, "version 3's rollout")
    finally:
        assert server.stop() == 0
