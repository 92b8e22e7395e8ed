"""Endpoints with weighted variants against the real binary: split accuracy,
sticky keys, pinned variants, shadow traffic that never touches the primary,
canary promotion and rollback, and a refused route file that keeps the
previous routes serving."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import requests

from conftest import Server
from lifecycle_helpers import index, make_models, versioned_bytes, wait_for, write_version

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}]}


def repo_with(tmp_path, routes: str):
    (tmp_path / "versioned").mkdir()
    (tmp_path / "versioned" / "config.yaml").write_text("version_policy: all\n")
    write_version(tmp_path, "versioned", 1)
    write_version(tmp_path, "versioned", 2)
    (tmp_path / "routes.yaml").write_text(routes)
    return tmp_path


def call(server, endpoint="scoring", headers=None, session=None):
    response = (session or requests).post(f"http://{server.http}/v2/models/{endpoint}/infer", json=BODY,
                                          headers=headers or {}, timeout=10)
    return response


SPLIT = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 90}
      - {name: canary, model: versioned, version: 2, weight: 10}
    sticky: {header: x-user}
"""


def metric(text: str, series: str) -> float:
    line = next((l for l in text.splitlines() if l.startswith(series + " ")), None)
    assert line is not None, f"{series} is not exposed"
    return float(line.rsplit(" ", 1)[1])


def test_split_sticky_and_pinned(tmp_path):
    server = Server(repository=repo_with(tmp_path, SPLIT))
    try:
        session = requests.Session()
        counts = Counter()
        for _ in range(4000):
            response = call(server, session=session)
            assert response.status_code == 200, response.text
            variant = response.headers["x-switchyard-variant"]
            version = response.json()["model_version"]
            assert (variant, version) in {("stable", "1"), ("canary", "2")}
            assert response.json()["model_name"] == "versioned"
            counts[variant] += 1
        share = counts["canary"] / 4000
        assert abs(share - 0.10) <= 0.02, counts
        # Sticky keys always land on the same variant.
        for user in range(30):
            seen = {call(server, headers={"x-user": f"u{user}"}, session=session).headers["x-switchyard-variant"]
                    for _ in range(10)}
            assert len(seen) == 1, (user, seen)
        # The pin header overrides weights and stickiness.
        for _ in range(20):
            response = call(server, headers={"x-switchyard-variant": "canary", "x-user": "u1"}, session=session)
            assert response.headers["x-switchyard-variant"] == "canary"
        bad = call(server, headers={"x-switchyard-variant": "nope"})
        assert bad.status_code == 400 and "no variant `nope`" in bad.json()["error"]
        status = requests.get(f"http://{server.http}/v2/endpoints/scoring", timeout=10).json()
        assert [(v["name"], v["weight"], v["ready"]) for v in status["variants"]] == [("stable", 90.0, True), ("canary", 10.0, True)]
    finally:
        assert server.stop() == 0


def test_a_refused_route_file_keeps_the_previous_routes(tmp_path):
    repo = repo_with(tmp_path, SPLIT)
    server = Server("--repository-poll-interval", "200ms", repository=repo)
    try:
        (repo / "routes.yaml").write_text(SPLIT.replace("model: versioned, version: 2", "model: nosuchmodel"))
        status = wait_for(lambda: requests.get(f"http://{server.http}/v2/endpoints", timeout=10).json().get("route_file_error"),
                          10, "the route file error")
        assert "unknown model `nosuchmodel`" in status
        (repo / "routes.yaml").write_text(SPLIT.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0"))
        wait_for(lambda: "positive number" in (requests.get(f"http://{server.http}/v2/endpoints", timeout=10).json().get("route_file_error") or ""),
                 10, "the zero-weight error")
        assert call(server).status_code == 200  # the 90/10 routes still serve
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        assert "switchyard_route_file_errors_total 2" in metrics
    finally:
        assert server.stop() == 0


SHADOW = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 1}
    shadow: {model: slowshadow, percent: 100}
"""


def test_shadow_traffic_never_delays_or_fails_the_primary(tmp_path):
    repo = repo_with(tmp_path, SHADOW.replace("percent: 100", "percent: 0"))
    # The shadow waits 50 ms in its batcher per request (slow without burning CPU)
    # and refuses beyond 2 queued requests: it is both slow and failing.
    (repo / "slowshadow").mkdir()
    (repo / "slowshadow" / "config.yaml").write_text(
        "max_batch_size: 8\nqueue: {capacity: 2}\n"
        "dynamic_batching: {max_queue_delay_us: 50000, dispatch_when_idle: false, preferred_batch_sizes: [8]}\n"
    )
    write_version(repo, "slowshadow", 1, versioned_bytes(7))
    server = Server("--repository-poll-interval", "200ms", repository=repo)

    def primary_latencies(n=400):
        session = requests.Session()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            response = call(server, session=session)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "1"
        return np.array(out) * 1000

    try:
        without = primary_latencies()
        (repo / "routes.yaml").write_text(SHADOW)
        wait_for(lambda: requests.get(f"http://{server.http}/v2/endpoints/scoring", timeout=10).json()["shadow"]["percent"] == 100,
                 10, "the shadow route")
        with_shadow = primary_latencies()
        assert len(with_shadow) == len(without)
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        # Read on the server, not this test's clock: a primary that waited for its
        # 50 ms shadow would land past the 25 ms bucket; 99% of them stay under it.
        under = metric(metrics, 'switchyard_endpoint_request_duration_seconds_bucket{endpoint="scoring",variant="stable",le="0.025"}')
        total = metric(metrics, 'switchyard_endpoint_request_duration_seconds_count{endpoint="scoring",variant="stable"}')
        assert total >= 400 and under >= 0.99 * total, (under, total)
        shadow_lines = [line for line in metrics.splitlines() if 'variant="shadow"' in line and "requests_total" in line]
        assert any('outcome="failure"' in line for line in shadow_lines), shadow_lines  # shadow errors stayed inside
        assert any('outcome="success"' in line for line in shadow_lines), shadow_lines
    finally:
        assert server.stop() == 0


CANARY = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 100}
      - {name: canary, model: CANARY_MODEL}
    canary:
      stable: stable
      canary: canary
      steps: [20, 50, 100]
      interval: 400ms
      min_requests: 5
      min_success_rate: 99
      max_p99_ratio: 20
      failures_to_rollback: 1
"""


def run_load(server, seconds):
    session = requests.Session()
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = call(server, session=session)
        variant = response.headers.get("x-switchyard-variant")
        results.append((time.monotonic(), response.status_code, variant, response.text[:200]))
    return results


def canary_state(server) -> dict:
    # None until the controller's first tick (every 50 ms) has seen the endpoint.
    return requests.get(f"http://{server.http}/v2/endpoints/scoring", timeout=10).json()["canary"]["state"] or {}


def test_a_healthy_canary_is_promoted_step_by_step(tmp_path):
    server = Server(repository=repo_with(tmp_path, CANARY.replace("CANARY_MODEL", "versioned, version: 2")))
    try:
        results = run_load(server, 0.3)
        wait_for(lambda: (run_load(server, 0.2), canary_state(server))[1].get("phase") == "promoted", 20, "promotion")
        results += run_load(server, 0.5)
        assert all(status == 200 for _, status, _, _ in results)
        status = requests.get(f"http://{server.http}/v2/endpoints/scoring", timeout=10).json()
        assert [(v["name"], v["weight"]) for v in status["variants"]] == [("stable", 0.0), ("canary", 100.0)]
        tail = run_load(server, 0.3)
        assert {variant for _, _, variant, _ in tail} == {"canary"}
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        assert 'switchyard_canary_decisions_total{decision="step_up",endpoint="scoring"} 2' in metrics
        assert 'switchyard_canary_decisions_total{decision="promote",endpoint="scoring"} 1' in metrics
    finally:
        assert server.stop() == 0


def test_a_broken_canary_is_rolled_back_and_only_its_share_fails(tmp_path):
    repo = repo_with(tmp_path, CANARY.replace("CANARY_MODEL", "broken"))
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("warmup: false\n")
    write_version(repo, "broken", 1, make_models.make_broken().SerializeToString())
    server = Server(repository=repo)
    try:
        started = time.monotonic()
        results = []
        while canary_state(server).get("phase") != "rolled_back":
            results += run_load(server, 0.2)
            assert time.monotonic() - started < 20, "no rollback"
        failures = [r for r in results if r[1] != 200]
        assert failures, "the broken canary never got traffic"
        assert all(variant == "canary" or variant is None for _, _, variant, _ in failures)
        share = len(failures) / len(results)
        assert share < 0.35, share  # at most the canary's 20% step, give or take
        state = canary_state(server)
        # Judged on its failures, or on its breaker opening first (then no request reaches it).
        assert "success rate" in state["last_reason"] or "candidate is unhealthy" in state["last_reason"], state
        after = run_load(server, 0.5)
        assert all(status == 200 and variant == "stable" for _, status, variant, _ in after)
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        assert metric(metrics, 'switchyard_endpoint_requests_total{endpoint="scoring",outcome="failure",variant="stable"}') == 0
        # Judged and rolled back at its first step: it never advanced, whatever the wall clock did.
        decisions = {d: metric(metrics, f'switchyard_canary_decisions_total{{decision="{d}",endpoint="scoring"}}')
                     for d in ("step_up", "promote", "rollback")}
        assert decisions == {"step_up": 0, "promote": 0, "rollback": 1}, decisions
        # The canary stays loaded for inspection (its own breaker may mark it unhealthy).
        assert any(r["name"] == "broken" and r.get("version") == "1" for r in index(server.http))
    finally:
        assert server.stop() == 0


def test_shadow_answers_are_compared_with_the_stable_answer(tmp_path):
    """A shadow identical to the stable model agrees on every request; one
    whose outputs differ by 1 (versioned 2: y = x + 2) disagrees, with that
    difference, while the top class of each row stays the same."""
    routes = """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 1}
    shadow: {model: twin, percent: 100}
  drifting:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 1}
    shadow: {model: versioned, version: 2, percent: 100, tolerance: {abs: 0.5, rel: 0}}
"""
    repo = repo_with(tmp_path, routes)
    write_version(repo, "twin", 1, versioned_bytes(1))
    server = Server(repository=repo)
    try:
        text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        for endpoint in ("scoring", "drifting"):
            # Exposed at zero as the routes load.
            assert metric(text, f'switchyard_shadow_comparisons_total{{endpoint="{endpoint}",output="y",result="agree"}}') == 0
        for endpoint in ("scoring", "drifting"):
            for _ in range(40):
                assert call(server, endpoint).status_code == 200

        def counts():
            text = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
            read = lambda e, r: metric(text, f'switchyard_shadow_comparisons_total{{endpoint="{e}",output="y",result="{r}"}}')
            return {e: {r: read(e, r) for r in ("agree", "disagree", "mismatch")} for e in ("scoring", "drifting")}, text

        wait_for(lambda: sum(sum(v.values()) for v in counts()[0].values()) >= 80, 20, "80 shadow comparisons")
        got, text = counts()
        assert got["scoring"] == {"agree": 40, "disagree": 0, "mismatch": 0}, got
        assert got["drifting"] == {"agree": 0, "disagree": 40, "mismatch": 0}, got
        # |(x + 1) − (x + 2)| = 1: in the (0.1, 1] bucket, not below.
        under = metric(text, 'switchyard_shadow_max_abs_difference_bucket{endpoint="drifting",output="y",le="0.1"}')
        upto = metric(text, 'switchyard_shadow_max_abs_difference_bucket{endpoint="drifting",output="y",le="1"}')
        assert (under, upto) == (0, 40), (under, upto)
        # Two rows per request, each with the same top class.
        same = metric(text, 'switchyard_shadow_argmax_rows_total{endpoint="drifting",output="y",result="same"}')
        different = metric(text, 'switchyard_shadow_argmax_rows_total{endpoint="drifting",output="y",result="different"}')
        assert (same, different) == (80, 0), (same, different)
    finally:
        assert server.stop() == 0


def test_the_control_api_sets_weights_and_commands_a_canary(tmp_path):
    """Admin-only: PUT /v2/endpoints/{name} sets weights (refused while a canary
    rollout sets them, unless forced, which pauses it); POST
    /v2/endpoints/{name}/canary/{pause,resume,abort,promote} moves the rollout."""
    routes = CANARY.replace("CANARY_MODEL", "versioned, version: 2").replace("min_requests: 5", "min_requests: 1000000")
    repo = repo_with(tmp_path, routes + """
  plain:
    variants:
      - {name: a, model: versioned, version: 1, weight: 50}
      - {name: b, model: versioned, version: 2, weight: 50}
""")
    server = Server("--admin-tokens", "boss-0123456789abcdef", "--inference-tokens", "user-0123456789abcdef", repository=repo)
    admin = {"Authorization": "Bearer boss-0123456789abcdef"}
    user = {"Authorization": "Bearer user-0123456789abcdef"}
    base = f"http://{server.http}/v2/endpoints"
    try:
        wait_for(lambda: requests.get(f"{base}/scoring", headers=user, timeout=10).json()["canary"].get("state") is not None,
                 10, "the canary controller to see the endpoint")
        # Inference tokens may read, not change.
        assert requests.put(f"{base}/plain", json={"weights": {"a": 100, "b": 0}}, headers=user, timeout=10).status_code == 403
        assert requests.post(f"{base}/scoring/canary/pause", headers=user, timeout=10).status_code == 403
        # Plain weights: every request then goes to `a`.
        reply = requests.put(f"{base}/plain", json={"weights": {"a": 100, "b": 0}}, headers=admin, timeout=10)
        assert reply.status_code == 200, reply.text
        weights = {v["name"]: v["weight"] for v in reply.json()["variants"]}
        assert weights == {"a": 100, "b": 0}, reply.json()
        variants = {requests.post(f"http://{server.http}/v2/models/plain/infer", json=BODY, headers=user, timeout=10)
                    .headers["x-switchyard-variant"] for _ in range(30)}
        assert variants == {"a"}
        for bad, why in [({"weights": {"zzz": 1}}, "no variant `zzz`"), ({"weights": {"a": -1}}, "non-negative"),
                         ({"weights": {"a": 0, "b": 0}}, "add up to 0"), ({"weight": {}}, "weights")]:
            reply = requests.put(f"{base}/plain", json=bad, headers=admin, timeout=10)
            assert reply.status_code == 400 and why in reply.json()["error"], reply.text
        assert requests.put(f"{base}/nope", json={"weights": {}}, headers=admin, timeout=10).status_code == 404
        # A progressing canary sets its own weights: a manual change is a conflict...
        reply = requests.put(f"{base}/scoring", json={"weights": {"stable": 90, "canary": 10}}, headers=admin, timeout=10)
        assert reply.status_code == 409 and "pause it first" in reply.json()["error"], reply.text
        # ...pause, resume, then promote by hand.
        for action, phase in [("pause", "paused"), ("resume", "progressing"), ("promote", "promoted")]:
            reply = requests.post(f"{base}/scoring/canary/{action}", headers=admin, timeout=10)
            assert reply.status_code == 200, reply.text
            assert reply.json()["canary"]["state"]["phase"] == phase, reply.json()
        wait_for(lambda: {v["name"]: v["weight"] for v in requests.get(f"{base}/scoring", headers=user, timeout=10)
                          .json()["variants"]} == {"stable": 0, "canary": 100}, 10, "the promoted weights")
        reply = requests.post(f"{base}/scoring/canary/abort", headers=admin, timeout=10)
        assert reply.status_code == 409 and "already promoted" in reply.json()["error"], reply.text
        assert requests.post(f"{base}/scoring/canary/dance", headers=admin, timeout=10).status_code == 404
        assert requests.post(f"{base}/plain/canary/pause", headers=admin, timeout=10).status_code == 404
        # The rollout's history says what happened, in order, and why.
        rollout = requests.get(f"http://{server.http}/v2/rollouts/scoring", headers=user, timeout=10).json()
        decisions = [e["decision"] for e in rollout["history"] if e["decision"] != "wait"]
        assert decisions == ["started", "pause", "resume", "promote"], rollout["history"]
        assert rollout["phase"] == "promoted" and rollout["history"][-1]["canary_weight"] == 100
        assert [r["name"] for r in requests.get(f"http://{server.http}/v2/rollouts", headers=user, timeout=10)
                .json()["rollouts"]] == ["scoring"]
        assert requests.get(f"http://{server.http}/v2/rollouts/plain", headers=user, timeout=10).status_code == 404
        metrics = requests.get(f"http://{server.metrics}/metrics", timeout=10).text
        assert metric(metrics, 'switchyard_canary_decisions_total{decision="pause",endpoint="scoring"}') == 1
    finally:
        assert server.stop() == 0


def test_an_endpoint_answers_metadata_and_readiness_as_a_model(tmp_path):
    """Clients (tritonclient, perf_analyzer-style tools) ask for metadata before inferring."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server = Server(repository=repo_with(tmp_path, SPLIT))
    try:
        metadata = requests.get(f"http://{server.http}/v2/models/scoring", timeout=10).json()
        assert metadata["name"] == "scoring" and metadata["versions"] == []
        assert [i["name"] for i in metadata["inputs"]] == ["x"] and [o["name"] for o in metadata["outputs"]] == ["y"]
        assert requests.get(f"http://{server.http}/v2/models/scoring/ready", timeout=10).status_code == 200
        assert httpclient.InferenceServerClient(server.http).is_model_ready("scoring")
        grpc_client = grpcclient.InferenceServerClient(server.grpc)
        assert grpc_client.get_model_metadata("scoring").inputs[0].name == "x"
        assert grpc_client.is_model_ready("scoring")
        assert requests.get(f"http://{server.http}/v2/models/nothing/ready", timeout=10).status_code == 404
    finally:
        assert server.stop() == 0


def test_error_answers_name_the_variant_that_failed_on_both_protocols(tmp_path):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    repo = repo_with(tmp_path, """
endpoints:
  scoring:
    variants:
      - {name: stable, model: versioned, version: 1, weight: 100}
      - {name: broken, model: broken, weight: 0}
""")
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("warmup: false\n")
    write_version(repo, "broken", 1, make_models.make_broken().SerializeToString())
    server = Server(repository=repo)
    try:
        pinned = {"x-switchyard-variant": "broken"}
        response = call(server, headers=pinned)
        assert response.status_code >= 400
        assert (response.headers.get("x-switchyard-endpoint"), response.headers.get("x-switchyard-variant")) == \
            ("scoring", "broken"), response.headers
        request = service_pb2.ModelInferRequest(model_name="scoring")
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = "x", "FP32"
        tensor.shape.extend([2, 4])
        tensor.contents.fp32_contents.extend([float(i) for i in range(8)])
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request, metadata=tuple(pinned.items()), timeout=30)
                raise AssertionError("the broken variant answered")
            except grpc.RpcError as err:
                metadata = dict(err.trailing_metadata() or ()) | dict(err.initial_metadata() or ())
                assert metadata.get("x-switchyard-variant") == "broken", metadata
            _, call_info = stub.ModelInfer.with_call(request, timeout=30)
            assert dict(call_info.initial_metadata()).get("x-switchyard-variant") == "stable"
    finally:
        assert server.stop() == 0
