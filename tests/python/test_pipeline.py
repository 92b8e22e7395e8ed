"""Model composition against the real binary: the native pipeline
(`platform: pipeline`) and a Triton ensemble give what running their steps one
after another in onnxruntime gives, on every protocol; fan-out and fan-in;
steps that run on a condition; steps of concurrent requests batched in their
models; validation errors in the repository index while the rest serves; a
step failing at run time; a step model swapped under load, removed and
restored; metadata."""

from __future__ import annotations

import shutil
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server
from lifecycle_helpers import index, make_models, wait_for, write_version
from reference import session, triton_inputs

POLL = ["--repository-poll-interval", "200ms"]
PROTOCOLS = ["http-json", "http-binary", "grpc"]
BATCHES = [1, 7, 64]
STEP_BATCHING = "max_batch_size: 128\ndynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}\n"
CHAIN_OUTPUTS = ["probabilities", "top_scores", "top_classes"]
# The ensemble's tensors are Triton-style upper case; the steps' are the samples'.
ENSEMBLE_NAMES = {"raw": "RAW", "probabilities": "PROBABILITIES", "top_scores": "TOP_SCORES", "top_classes": "TOP_CLASSES"}


# ---------- references: the steps one after another in onnxruntime ----------

@lru_cache(maxsize=None)
def made(name: str, *args) -> onnxruntime.InferenceSession:
    """A session for a model of make_models.py that is not a bundled sample."""
    model = getattr(make_models, f"make_{name}")(*args)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess: onnxruntime.InferenceSession, **feed: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def normalized(raw: np.ndarray) -> np.ndarray:
    return run(session("normalize"), raw=raw)["normalized"]


def ranked(logits: np.ndarray) -> dict[str, np.ndarray]:
    return run(session("topk"), logits=logits)


def chain(raw: np.ndarray, mlp: onnxruntime.InferenceSession | None = None) -> dict[str, np.ndarray]:
    """normalize -> mlp -> topk, what mlp_pipeline and the ensemble compute."""
    return ranked(run(mlp or session("mlp"), input=normalized(raw))["output"])


def raw_rows(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed * 1000 + batch).standard_normal((batch, 256)).astype(np.float32)


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray], names=None) -> None:
    for name in names or want:
        assert got.get(name) is not None, f"output {name} missing; got {sorted(got)}"
        value, expected = got[name], want[name]
        assert value.shape == expected.shape, f"{name}: shape {value.shape} != {expected.shape}"
        assert value.dtype == expected.dtype, f"{name}: dtype {value.dtype} != {expected.dtype}"
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(value, expected, err_msg=name)


def close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    """Whether every output of `want` is in `got` and matches (for answers that may come from either of two versions)."""
    try:
        assert_matches(got, want)
    except AssertionError:
        return False
    return True


# ---------- clients ----------

def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
          parameters: dict | None = None) -> dict[str, np.ndarray]:
    """One request with tritonclient; returns the outputs that came back, by name.
    (HTTP JSON needs `outputs`: with none named tritonclient asks for binary.)"""
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc)
        tensors = triton_inputs(grpcclient, inputs)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        try:
            result = client.infer(model, tensors, outputs=requested, parameters=parameters)
        finally:
            client.close()
        names = [o.name for o in result.get_response().outputs]
    else:
        assert protocol == "http-binary" or outputs, "HTTP JSON: name the outputs"
        binary = protocol == "http-binary"
        client = httpclient.InferenceServerClient(server.http)
        tensors = triton_inputs(httpclient, inputs, binary)
        requested = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
        try:
            result = client.infer(model, tensors, outputs=requested, parameters=parameters)
        finally:
            client.close()
        names = [o["name"] for o in result.get_response()["outputs"]]
    assert len(names) == len(set(names)), names
    return {name: result.as_numpy(name) for name in names}


def post_json(server, model: str, raw: np.ndarray, outputs: list[str] | None = None, parameters: dict | None = None):
    body = {"inputs": [{"name": "raw", "datatype": "FP32", "shape": list(raw.shape), "data": raw.flatten().tolist()}]}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    if parameters:
        body["parameters"] = parameters
    return requests.post(f"http://{server.http}/v2/models/{model}/infer", json=body, timeout=30)


def ready(server, model: str) -> int:
    return requests.get(f"http://{server.http}/v2/models/{model}/ready", timeout=10).status_code


def stats(server, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) over the model's loaded versions."""
    rows = requests.get(f"http://{server.http}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    return sum(int(r["inference_count"]) for r in rows), sum(int(r["execution_count"]) for r in rows)


def metric(server, name: str, **labels) -> float:
    for line in requests.get(f"http://{server.metrics}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def index_row(server, model: str) -> dict | None:
    return next((r for r in index(server.http) if r["name"] == model), None)


# ---------- repositories ----------

def add_model(repo: Path, name: str, model: str | bytes, config: str = STEP_BATCHING, version: int = 1) -> None:
    """A step model: a bundled sample (symlinked, by name) or ONNX bytes, with its config."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    # Config first: a scan between the two never sees the model without it.
    (repo / name / "config.yaml").write_text(config)
    if isinstance(model, str):
        (folder / "model.onnx").symlink_to(MODELS / model / "1" / "model.onnx")
    else:
        write_version(repo, name, version, model)


def add_pipeline(repo: Path, name: str, body: str) -> None:
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.yaml").write_text(body)


def add_chain_models(repo: Path) -> None:
    """normalize, mlp and topk, each batching (the bundled mlp has no config, so no batching)."""
    add_model(repo, "normalize", "normalize", (MODELS / "normalize" / "config.yaml").read_text())
    add_model(repo, "mlp", "mlp")
    add_model(repo, "topk", "topk", (MODELS / "topk" / "config.yaml").read_text())


RAW_IN = """\
platform: pipeline
max_batch_size: 128
inputs:
  - {name: raw, datatype: FP32, dims: [256]}
"""

FAN = RAW_IN + """\
outputs:
  - {name: deep, datatype: FP32, dims: [10], from: deep.output}
  - {name: shallow, datatype: FP32, dims: [10], from: shallow.output}
  - {name: probabilities, datatype: FP32, dims: [10], from: rank.probabilities}
  - {name: top_classes, datatype: INT64, dims: [3], from: rank.top_classes}
steps:
  - {name: normalize, model: normalize, inputs: {raw: raw}}
  - {name: deep, model: mlp, inputs: {input: normalize.normalized}}
  - {name: shallow, model: linear, inputs: {input: normalize.normalized}}
  - {name: blend, model: average, inputs: {a: deep.output, b: shallow.output}}
  - {name: rank, model: topk, inputs: {logits: blend.mean}}
"""

BY_PARAMETER = RAW_IN + """\
outputs:
  - {name: logits, datatype: FP32, dims: [10], from: [big.output, small.output]}
  - {name: big_classes, datatype: INT64, dims: [3], from: rank_big.top_classes}
  - {name: small_logits, datatype: FP32, dims: [10], from: small.output}
steps:
  - {name: normalize, model: normalize, inputs: {raw: raw}}
  - {name: big, model: mlp, inputs: {input: normalize.normalized}, when: {parameter: size, equals: big}}
  - {name: small, model: linear, inputs: {input: normalize.normalized}, when: {parameter: size, not_equals: big}}
  - {name: rank_big, model: topk, inputs: {logits: big.output}}
"""

BY_TENSOR = RAW_IN + """\
outputs:
  - {name: positive, datatype: BOOL, dims: [1], from: sign.positive}
  - {name: logits, datatype: FP32, dims: [10], from: [score.output, fallback.output]}
steps:
  - {name: sign, model: mean_positive, inputs: {raw: raw}}
  - {name: normalize, model: normalize, inputs: {raw: raw}}
  - {name: score, model: mlp, inputs: {input: normalize.normalized}, when: {tensor: sign.positive, equals: true}}
  - {name: fallback, model: linear, inputs: {input: normalize.normalized}, when: {tensor: sign.positive, equals: false}}
"""


@pytest.fixture(scope="module")
def triton_server():
    s = Server(repository=MODELS / "triton")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """The chain, fan-out/fan-in and conditional pipelines over batching step models."""
    repo = tmp_path_factory.mktemp("composed")
    add_chain_models(repo)
    add_model(repo, "linear", make_models.make_linear().SerializeToString())
    add_model(repo, "average", make_models.make_average().SerializeToString())
    add_model(repo, "mean_positive", make_models.make_mean_positive().SerializeToString())
    add_pipeline(repo, "chain", (MODELS / "mlp_pipeline" / "config.yaml").read_text())
    add_pipeline(repo, "fan", FAN)
    add_pipeline(repo, "by_parameter", BY_PARAMETER)
    add_pipeline(repo, "by_tensor", BY_TENSOR)
    s = Server(repository=repo)
    yield s
    assert s.stop() == 0


# ---------- values ----------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("kind", ["native", "ensemble"])
def test_values_equal_the_steps_run_one_after_another(server, triton_server, kind, batch, protocol):
    raw = raw_rows(batch)
    want = chain(raw)
    if kind == "native":
        got = infer(server, protocol, "mlp_pipeline", {"raw": raw}, outputs=CHAIN_OUTPUTS)
    else:
        upper = infer(triton_server, protocol, "ensemble", {"RAW": raw},
                      outputs=[ENSEMBLE_NAMES[n] for n in CHAIN_OUTPUTS])
        got = {name: upper.get(ENSEMBLE_NAMES[name]) for name in CHAIN_OUTPUTS}
    assert_matches(got, want)
    assert got["top_scores"].shape == (batch, 3) and got["top_classes"].dtype == np.int64


def test_all_outputs_come_back_when_none_are_named(server, triton_server):
    raw = raw_rows(3)
    for protocol in ["http-binary", "grpc"]:
        got = infer(server, protocol, "mlp_pipeline", {"raw": raw})
        assert sorted(got) == sorted(CHAIN_OUTPUTS)
        assert_matches(got, chain(raw))
        upper = infer(triton_server, protocol, "ensemble", {"RAW": raw})
        assert sorted(upper) == sorted(ENSEMBLE_NAMES[n] for n in CHAIN_OUTPUTS)
    # Only what is asked for comes back.
    got = infer(server, "grpc", "mlp_pipeline", {"raw": raw}, outputs=["top_classes"])
    assert list(got) == ["top_classes"]
    np.testing.assert_array_equal(got["top_classes"], chain(raw)["top_classes"])


@pytest.mark.parametrize("kind", ["native", "ensemble"])
def test_metadata_on_both_protocols(server, triton_server, kind):
    if kind == "native":
        target, model, platform, names = server, "mlp_pipeline", "pipeline", {n: n for n in ENSEMBLE_NAMES}
    else:
        target, model, platform, names = triton_server, "ensemble", "ensemble", ENSEMBLE_NAMES
    want_inputs = [(names["raw"], "FP32", [-1, 256])]
    want_outputs = [(names["probabilities"], "FP32", [-1, 10]), (names["top_scores"], "FP32", [-1, 3]),
                    (names["top_classes"], "INT64", [-1, 3])]
    http = httpclient.InferenceServerClient(target.http).get_model_metadata(model)
    assert http["name"] == model and http["platform"] == platform and http["versions"] == ["1"], http
    assert [(t["name"], t["datatype"], t["shape"]) for t in http["inputs"]] == want_inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in http["outputs"]] == want_outputs
    grpc = grpcclient.InferenceServerClient(target.grpc).get_model_metadata(model)
    assert grpc.name == model and grpc.platform == platform and list(grpc.versions) == ["1"], grpc
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc.inputs] == want_inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc.outputs] == want_outputs
    # The steps serve on their own too.
    assert ready(target, "normalize" if kind == "native" else "preprocess") == 200
    # The configuration shows the steps as Triton's ensemble_scheduling, on both protocols.
    steps = [s.model_name for s in grpcclient.InferenceServerClient(target.grpc).get_model_config(model)
             .config.ensemble_scheduling.step]
    assert steps == (["normalize", "mlp", "topk"] if kind == "native" else ["preprocess", "mlp", "postprocess"]), steps
    config = httpclient.InferenceServerClient(target.http).get_model_config(model)
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == steps, config
    first = config["ensemble_scheduling"]["step"][0]
    assert first["model_version"] == -1 and list(first["input_map"]) == ["raw"], first


# ---------- wiring: fan-out, fan-in, conditions ----------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fan_out_and_fan_in(composed, protocol):
    raw = raw_rows(5, seed=1)
    n = normalized(raw)
    deep = run(session("mlp"), input=n)["output"]
    shallow = run(made("linear"), input=n)["output"]
    blended = run(made("average"), a=deep, b=shallow)["mean"]
    want = {"deep": deep, "shallow": shallow, **ranked(blended)}
    got = infer(composed, protocol, "fan", {"raw": raw}, outputs=["deep", "shallow", "probabilities", "top_classes"])
    assert sorted(got) == ["deep", "probabilities", "shallow", "top_classes"]
    assert_matches(got, want, ["deep", "shallow", "probabilities", "top_classes"])


@pytest.mark.parametrize("protocol", ["http-binary", "grpc"])
def test_a_step_runs_on_a_request_parameter(composed, protocol):
    raw = raw_rows(4, seed=2)
    n = normalized(raw)
    big = run(session("mlp"), input=n)["output"]
    small = run(made("linear"), input=n)["output"]

    got = infer(composed, protocol, "by_parameter", {"raw": raw}, parameters={"size": "big"})
    assert sorted(got) == ["big_classes", "logits"], "small was skipped: small_logits is left out"
    assert_matches(got, {"logits": big, "big_classes": ranked(big)["top_classes"]})

    for parameters in [None, {"size": "tiny"}]:  # missing: `equals` is false, `not_equals` true
        got = infer(composed, protocol, "by_parameter", {"raw": raw}, parameters=parameters)
        assert sorted(got) == ["logits", "small_logits"], (parameters, sorted(got))
        assert_matches(got, {"logits": small, "small_logits": small})

    # An output no step produced, asked for by name, is a client error.
    response = post_json(composed, "by_parameter", raw, outputs=["big_classes"])
    assert response.status_code == 400, response.text
    assert "big_classes" in response.json()["error"]
    response = post_json(composed, "by_parameter", raw, outputs=["big_classes"], parameters={"size": "big"})
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["big_classes"]
    assert metric(composed, "switchyard_pipeline_step_duration_seconds_count",
                  pipeline="by_parameter", step="small", outcome="skipped") >= 1


@pytest.mark.parametrize("protocol", ["http-binary", "grpc"])
def test_a_step_runs_on_an_earlier_steps_tensor(composed, protocol):
    rows = raw_rows(6, seed=3)
    positive = np.abs(rows) + 0.1
    negative = -positive
    for raw, model, flag in [(positive, session("mlp"), True), (negative, made("linear"), False)]:
        got = infer(composed, protocol, "by_tensor", {"raw": raw})
        assert sorted(got) == ["logits", "positive"]
        np.testing.assert_array_equal(got["positive"], np.full((6, 1), flag))
        assert_matches(got, {"logits": run(model, input=normalized(raw))["output"]})
    # Mixed rows: neither condition holds for every element, so neither step
    # runs and `logits` (from one of them) is left out.
    mixed = np.concatenate([positive[:3], negative[:3]])
    got = infer(composed, protocol, "by_tensor", {"raw": mixed})
    assert sorted(got) == ["positive"]
    np.testing.assert_array_equal(got["positive"][:, 0], [True] * 3 + [False] * 3)
    assert metric(composed, "switchyard_pipeline_step_duration_seconds_count",
                  pipeline="by_tensor", step="fallback", outcome="skipped") >= 1


# ---------- concurrency: steps of different requests batch together ----------

def test_concurrent_clients_get_their_own_rows_and_the_steps_batch(composed):
    clients, per_client = 64, 8
    raw = np.random.default_rng(4).standard_normal((clients * per_client, 256)).astype(np.float32)
    want = chain(raw)
    before = {model: stats(composed, model) for model in ["normalize", "mlp", "topk"]}
    start = threading.Barrier(clients)
    failures, lock = [], threading.Lock()

    def client(worker: int):
        grpc = grpcclient.InferenceServerClient(composed.grpc)
        try:
            start.wait(timeout=30)
            for i in range(per_client):
                row = worker * per_client + i
                tensor = grpcclient.InferInput("raw", [1, 256], "FP32")
                tensor.set_data_from_numpy(raw[row : row + 1])
                result = grpc.infer("chain", [tensor])
                got = {name: result.as_numpy(name) for name in CHAIN_OUTPUTS}
                if not close(got, {name: value[row : row + 1] for name, value in want.items()}):
                    with lock:
                        failures.append((row, got))
        except Exception as err:  # noqa: BLE001 - recorded, never lost with the thread
            with lock:
                failures.append((worker, repr(err)))
        finally:
            grpc.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == [], failures[:3]
    for model, (inferences, executions) in before.items():
        after_inferences, after_executions = stats(composed, model)
        rows, batches = after_inferences - inferences, after_executions - executions
        assert rows == clients * per_client, (model, rows)
        assert 0 < batches < rows, f"{model}: {rows} rows in {batches} executions, no batching across requests"
    for step in ["normalize", "score", "rank"]:
        count = metric(composed, "switchyard_pipeline_step_duration_seconds_count",
                       pipeline="chain", step=step, outcome="success")
        assert count >= clients * per_client, (step, count)


# ---------- validation errors and run-time failures ----------

FIXED = """\
# Full shapes: exactly one row, whatever the pipeline in front allows.
max_batch_size: 0
inputs:
  - {name: raw, datatype: FP32, dims: [1, 256]}
outputs:
  - {name: normalized, datatype: FP32, dims: [1, 256]}
"""

ROUTES = """\
endpoints:
  scoring:
    variants:
      - {name: only, model: mlp, weight: 1}
"""

LOGITS_OUT = "outputs:\n  - {name: logits, datatype: FP32, dims: [10], from: score.output}\n"
CLASSES_OUT = "outputs:\n  - {name: top_classes, datatype: INT64, dims: [3], from: rank.top_classes}\n"
NORMALIZE_STEP = "  - {name: normalize, model: normalize, inputs: {raw: raw}}\n"

VALID = {
    "good": RAW_IN + CLASSES_OUT + "steps:\n" + NORMALIZE_STEP
    + "  - {name: score, model: mlp, inputs: {input: normalize.normalized}}\n"
    + "  - {name: rank, model: topk, inputs: {logits: score.output}}\n",
    "via_endpoint": RAW_IN + LOGITS_OUT + "steps:\n" + NORMALIZE_STEP
    + "  - {name: score, endpoint: scoring, inputs: {input: normalize.normalized}}\n",
    "one_row_step": RAW_IN
    + "outputs:\n  - {name: normalized, datatype: FP32, dims: [256], from: fixed.normalized}\n"
    + "steps:\n  - {name: fixed, model: fixed, inputs: {raw: raw}}\n",
}

# pipeline -> (its config, the word the reason must contain, names it must contain, tensor names of which one must appear)
INVALID = {
    "bad_model": (RAW_IN + LOGITS_OUT + "steps:\n" + NORMALIZE_STEP
                  + "  - {name: score, model: no_such_model, inputs: {input: normalize.normalized}}\n",
                  "unknown model", ["score", "no_such_model"], []),
    "bad_endpoint": (RAW_IN + LOGITS_OUT + "steps:\n" + NORMALIZE_STEP
                     + "  - {name: score, endpoint: no_such_endpoint, inputs: {input: normalize.normalized}}\n",
                     "unknown endpoint", ["score", "no_such_endpoint"], []),
    "bad_cycle": (RAW_IN + "outputs:\n  - {name: normalized, datatype: FP32, dims: [256], from: second.normalized}\n"
                  + "steps:\n  - {name: first, model: normalize, inputs: {raw: second.normalized}}\n"
                  + "  - {name: second, model: normalize, inputs: {raw: first.normalized}}\n",
                  "cycle", ["first", "second"], []),
    "bad_never": (RAW_IN + LOGITS_OUT + "steps:\n  - {name: score, model: mlp, inputs: {input: nowhere}}\n",
                  "never produced", ["score"], ["nowhere"]),
    "bad_missing_output": (RAW_IN + LOGITS_OUT + "steps:\n" + NORMALIZE_STEP
                           + "  - {name: score, model: mlp, inputs: {input: normalize.standardized}}\n",
                           "never produced", ["score"], ["normalize.standardized", "standardized"]),
    "bad_datatype": (RAW_IN + CLASSES_OUT + "steps:\n  - {name: ints, model: int_output, inputs: {input: raw}}\n"
                     + "  - {name: rank, model: topk, inputs: {logits: ints.output}}\n",
                     "datatype", ["rank"], ["ints.output", "logits"]),
    "bad_shape": (RAW_IN + CLASSES_OUT + "steps:\n" + NORMALIZE_STEP
                  + "  - {name: rank, model: topk, inputs: {logits: normalize.normalized}}\n",
                  "shape", ["rank"], ["normalize.normalized", "logits"]),
}


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    repo = tmp_path_factory.mktemp("validation")
    add_chain_models(repo)
    add_model(repo, "int_output", make_models.make_int_output().SerializeToString())
    add_model(repo, "fixed", "normalize", FIXED)
    (repo / "routes.yaml").write_text(ROUTES)
    for name, body in VALID.items():
        add_pipeline(repo, name, body)
    for name, (body, *_) in INVALID.items():
        add_pipeline(repo, name, body)
    s = Server("--exit-on-error=false", repository=repo)
    yield s
    assert s.stop() == 0


def test_each_validation_error_is_in_the_index_and_the_rest_serve(validation):
    def settled():
        rows = {r["name"]: r for r in index(validation.http)}
        return rows if all(rows.get(p, {}).get("state") == "UNAVAILABLE" for p in INVALID) else None

    rows = wait_for(settled, 20, "every invalid pipeline to be reported")
    for name, (_, word, names, tensors) in INVALID.items():
        reason = rows[name].get("reason", "")
        assert word in reason, f"{name}: {reason!r} lacks {word!r}"
        for part in names:
            assert part in reason, f"{name}: {reason!r} does not name {part!r}"
        assert not tensors or any(t in reason for t in tensors), f"{name}: {reason!r} names none of {tensors}"
        assert ready(validation, name) != 200, name
        assert post_json(validation, name, raw_rows(1)).status_code != 200, name
    for name in ["good", "via_endpoint", "one_row_step", "mlp", "normalize", "topk", "int_output"]:
        assert rows[name]["state"] == "READY", rows[name]
        assert ready(validation, name) == 200, name
    raw = raw_rows(7, seed=5)
    got = infer(validation, "grpc", "good", {"raw": raw})
    np.testing.assert_array_equal(got["top_classes"], chain(raw)["top_classes"])
    got = infer(validation, "http-json", "via_endpoint", {"raw": raw}, outputs=["logits"])
    assert_matches(got, {"logits": run(session("mlp"), input=normalized(raw))["output"]})


def test_a_step_failing_at_run_time_fails_the_request_and_the_server_keeps_serving(validation):
    seven = raw_rows(7, seed=6)
    response = post_json(validation, "one_row_step", seven)
    assert response.status_code == 400, response.text
    assert "step `fixed`" in response.json()["error"], response.text
    tensor = grpcclient.InferInput("raw", [7, 256], "FP32")
    tensor.set_data_from_numpy(seven)
    with pytest.raises(InferenceServerException) as err:
        grpcclient.InferenceServerClient(validation.grpc).infer("one_row_step", [tensor])
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "step `fixed`" in err.value.message()
    # One row fits; the pipeline, its step and its neighbours still serve.
    got = infer(validation, "http-binary", "one_row_step", {"raw": seven[:1]})
    assert_matches(got, {"normalized": normalized(seven[:1])})
    assert ready(validation, "one_row_step") == 200
    got = infer(validation, "grpc", "good", {"raw": seven})
    np.testing.assert_array_equal(got["top_classes"], chain(seven)["top_classes"])


# ---------- step models swapped, removed and restored ----------

class PipelineLoad:
    """Threads sending the same rows to a pipeline back to back; each answer
    must equal one of the references in full (one snapshot per request)."""

    def __init__(self, server, model: str, raw: np.ndarray, references: dict[int, dict], clients: int = 4):
        self.server, self.model, self.raw, self.references = server, model, raw, references
        self.seen: list[list[int]] = [[] for _ in range(clients)]
        self.failures: list = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, worker: int):
        grpc = grpcclient.InferenceServerClient(self.server.grpc)
        try:
            while not self._stop.is_set():
                try:
                    tensor = grpcclient.InferInput("raw", list(self.raw.shape), "FP32")
                    tensor.set_data_from_numpy(self.raw)
                    result = grpc.infer(self.model, [tensor])
                    got = {name: result.as_numpy(name) for name in CHAIN_OUTPUTS}
                    matched = [v for v, want in self.references.items() if close(got, want)]
                    with self._lock:
                        if len(matched) == 1:
                            self.seen[worker].append(matched[0])
                        else:
                            self.failures.append(("no single reference matches", matched))
                except Exception as err:  # noqa: BLE001 - recorded, never lost with the thread
                    with self._lock:
                        self.failures.append((type(err).__name__, str(err)))
        finally:
            grpc.close()

    def count(self, version: int | None = None) -> int:
        with self._lock:
            return sum(1 for answers in self.seen for v in answers if version is None or v == version)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"


def test_a_step_model_swapped_under_load_removed_and_restored(tmp_path):
    add_chain_models(tmp_path)
    add_pipeline(tmp_path, "chain", (MODELS / "mlp_pipeline" / "config.yaml").read_text())
    server = Server(*POLL, "--exit-on-error=false", repository=tmp_path)
    try:
        raw = raw_rows(3, seed=7)
        references = {1: chain(raw), 2: chain(raw, made("mlp", 7))}
        started = time.monotonic()
        with PipelineLoad(server, "chain", raw, references) as load:
            wait_for(lambda: load.count() > 20, 20, "pipeline answers before the swap")
            # mlp version 2 has other weights: each answer says which version scored it.
            write_version(tmp_path, "mlp", 2, make_models.make_mlp(7).SerializeToString())
            wait_for(lambda: load.count(2) > 0, 20, "answers from mlp version 2")
            swapped = load.count()
            wait_for(lambda: load.count() > swapped + 50 and time.monotonic() - started > 5, 30,
                     "answers after the swap")
        assert load.failures == [], load.failures[:5]
        for answers in load.seen:
            # Once a client had an answer from version 2, it never gets version 1 again.
            first_new = answers.index(2) if 2 in answers else len(answers)
            assert 1 not in answers[first_new:], answers
        assert load.count(1) > 0 and load.count(2) > 0

        # The step model goes away: the pipeline is unavailable and says why.
        shutil.rmtree(tmp_path / "topk")
        row = wait_for(lambda: (r := index_row(server, "chain")) and r["state"] != "READY" and r, 20,
                       "the pipeline to lose its step model")
        assert "topk" in row.get("reason", ""), row
        assert ready(server, "chain") != 200
        assert post_json(server, "chain", raw).status_code != 200
        assert ready(server, "normalize") == 200  # the other steps serve on

        # Restored: ready again, with no restart.
        add_model(tmp_path, "topk", "topk", (MODELS / "topk" / "config.yaml").read_text())
        wait_for(lambda: ready(server, "chain") == 200, 20, "the pipeline to be ready again")
        assert_matches(infer(server, "grpc", "chain", {"raw": raw}), references[2])
        assert index_row(server, "chain")["state"] == "READY"
    finally:
        assert server.stop() == 0


# ---------- a remote step (a real MLServer upstream) ----------

def test_an_ensemble_with_a_remote_step_and_its_upstream_going_down(tmp_path):
    """The Triton ensemble with its `mlp` step served by MLServer through a
    remote model: the same values, and a clear 503 naming the step when the
    upstream dies."""
    from services import start_mlserver

    repo = tmp_path / "repo"
    shutil.copytree(MODELS / "triton", repo, symlinks=False)
    shutil.rmtree(repo / "mlp")
    io = ([{"name": "input", "datatype": "FP32", "shape": [-1, 256]}],
          [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}])
    mlserver, _, grpc_port = start_mlserver(tmp_path, MODELS / "mlp" / "1" / "model.onnx", "mlp", *io)
    server = None
    try:
        (repo / "mlp").mkdir()
        (repo / "mlp" / "config.yaml").write_text(
            "platform: remote\nmax_batch_size: 128\ndynamic_batching: {max_queue_delay_us: 500}\n"
            f"remote: {{upstreams: [127.0.0.1:{grpc_port}], probe_interval_ms: 200, connect_timeout_ms: 300}}\n"
        )
        server = Server(repository=repo)
        raw = raw_rows(7, seed=11)
        got = infer(server, "grpc", "ensemble", {"RAW": raw})
        want = chain(raw)
        assert_matches({name: got[ENSEMBLE_NAMES[name]] for name in CHAIN_OUTPUTS}, want)
        mlserver.stop()
        body = {"inputs": [{"name": "RAW", "datatype": "FP32", "shape": [7, 256], "data": raw.flatten().tolist()}]}
        deadline = time.monotonic() + 10
        while True:
            response = requests.post(f"http://{server.http}/v2/models/ensemble/infer", json=body, timeout=30)
            if response.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.status_code == 503, response.text
        assert "step `mlp`" in response.json()["error"], response.text
        # The local steps' models keep serving.
        assert requests.get(f"http://{server.http}/v2/models/preprocess/ready", timeout=10).status_code == 200
    finally:
        if server is not None:
            assert server.stop() == 0
        mlserver.stop()
