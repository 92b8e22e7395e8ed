#!/usr/bin/env python3
"""Build Switchyard's sample model repository reproducibly.

Every model is made here from fixed seeds (nothing is downloaded). With the
package versions pinned in requirements.txt the files are byte-identical from
run to run; `--check` compares them with checksums.sha256 and `--record`
rewrites that file.

Models (repository layout: <name>/<version>/model.onnx):
  mlp    FP32 256 -> 1024 -> 1024 -> 10 with ReLU, dynamic batch; input `input`, output `output`.
  iris   a random forest trained on the iris data set, converted with skl2onnx;
         input `input` FP32 [N,4]; outputs `label` INT64 [N], `probabilities` FP32 [N,3].
  typed  one input/output pair per non-float datatype:
         `ids` INT64 -> `ids_doubled`, `mask` BOOL -> `mask_inverted`,
         `half` FP16 -> `half_scaled` (x * 0.5), `text` BYTES/STRING -> `text_copy`.
  normalize  `raw` FP32 [N,256] -> `normalized` = (raw - mean) / std, fixed per-feature constants.
  topk   `logits` FP32 [N,10] -> `probabilities` (softmax), `top_scores` FP32 [N,3] and
         `top_classes` INT64 [N,3] (the three most probable, best first).

Besides the models it writes their configs, the pipeline `mlp_pipeline`
(normalize -> mlp -> topk, a config only) and, in triton/, the same three
steps as a Triton repository (config.pbtxt files, model files as relative
symlinks to the ones here, and the ensemble `ensemble`), served on its own
with `--model-repository models/triton`.

Not samples, written by benchmarks and tests into repositories of their own:
`make_fused` (normalize, mlp and topk in one graph, the same weights) and the
test-only `make_linear`, `make_average`, `make_mean_positive`, `make_int_output`.

With --torch it writes the TorchScript samples of torch_samples.py instead, into
the separate repository torch/ (served with the `torch` feature), checked
against torch/checksums.sha256 (digests of the weights: PyTorch's archives
carry a random serialization id, so their bytes differ from run to run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 9  # ONNX Runtime 1.31 reads IR <= 11; 9 keeps older runtimes happy too.
CHECKSUMS = HERE / "checksums.sha256"


def finish(graph: onnx.GraphProto, opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": OPSET}).items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="switchyard-make-models")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp_layers(seed: int, source: str, target: str) -> tuple[list, list]:
    """The mlp's nodes and weights, reading tensor `source` and writing `target`."""
    rng = np.random.default_rng(seed)
    sizes = [256, 1024, 1024, 10]
    inits, nodes = [], []
    current = source
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = target if last else f"h{i}_pre"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"h{i}"], name=f"relu{i}"))
            current = f"h{i}"
    return nodes, inits


def make_mlp(seed: int = 0) -> onnx.ModelProto:
    nodes, inits = mlp_layers(seed, "input", "output")
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    return finish(graph)


NORMALIZE_SEED = 1
TOP_K = 3


def normalize_layers(source: str, target: str, seed: int = NORMALIZE_SEED) -> tuple[list, list]:
    """(x - mean) / std with fixed per-feature constants (std in [0.5, 2))."""
    rng = np.random.default_rng(seed)
    mean = (rng.standard_normal(256) * 0.5).astype(np.float32)
    std = rng.uniform(0.5, 2.0, 256).astype(np.float32)
    inits = [numpy_helper.from_array(mean, "feature_mean"), numpy_helper.from_array(std, "feature_std")]
    nodes = [
        helper.make_node("Sub", [source, "feature_mean"], ["centered"], name="subtract_mean"),
        helper.make_node("Div", ["centered", "feature_std"], [target], name="divide_std"),
    ]
    return nodes, inits


def topk_layers(source: str) -> tuple[list, list]:
    """Softmax over the classes, then the TOP_K most probable (largest first)."""
    inits = [numpy_helper.from_array(np.array([TOP_K], dtype=np.int64), "k")]
    nodes = [
        helper.make_node("Softmax", [source], ["probabilities"], axis=1, name="softmax"),
        helper.make_node("TopK", ["probabilities", "k"], ["top_scores", "top_classes"],
                         axis=1, largest=1, sorted=1, name="top_k"),
    ]
    return nodes, inits


def topk_outputs() -> list:
    vi = helper.make_tensor_value_info
    return [
        vi("probabilities", TensorProto.FLOAT, ["batch", 10]),
        vi("top_scores", TensorProto.FLOAT, ["batch", TOP_K]),
        vi("top_classes", TensorProto.INT64, ["batch", TOP_K]),
    ]


def make_normalize() -> onnx.ModelProto:
    nodes, inits = normalize_layers("raw", "normalized")
    graph = helper.make_graph(
        nodes,
        "normalize",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("normalized", TensorProto.FLOAT, ["batch", 256])],
        initializer=inits,
    )
    return finish(graph)


def make_topk() -> onnx.ModelProto:
    nodes, inits = topk_layers("logits")
    graph = helper.make_graph(
        nodes,
        "topk",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        topk_outputs(),
        initializer=inits,
    )
    return finish(graph)


def make_fused() -> onnx.ModelProto:
    """normalize -> mlp -> topk in one graph, with the samples' weights: the
    baseline a pipeline of the three is compared with (bench/pipeline.py)."""
    parts = [normalize_layers("raw", "normalized"), mlp_layers(0, "normalized", "logits"), topk_layers("logits")]
    graph = helper.make_graph(
        [node for nodes, _ in parts for node in nodes],
        "fused",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 256])],
        topk_outputs(),
        initializer=[init for _, inits in parts for init in inits],
    )
    return finish(graph)


def make_iris(seed: int = 0) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    clf = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=seed)
    clf.fit(data.data.astype(np.float32), data.target)
    model = convert_sklearn(
        clf,
        "iris",
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    # skl2onnx names outputs output_label/output_probability; the contract is label/probabilities.
    renames = {"output_label": "label", "output_probability": "probabilities"}
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
    for out in model.graph.output:
        out.name = renames.get(out.name, out.name)
    model.ir_version = IR_VERSION
    model.producer_name = "switchyard-make-models"
    model.producer_version = ""
    onnx.checker.check_model(model)
    return model


def make_typed() -> onnx.ModelProto:
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float16), "half_factor")
    nodes = [
        helper.make_node("Add", ["ids", "ids"], ["ids_doubled"], name="double_ids"),
        helper.make_node("Not", ["mask"], ["mask_inverted"], name="invert_mask"),
        helper.make_node("Mul", ["half", "half_factor"], ["half_scaled"], name="scale_half"),
        helper.make_node("Identity", ["text"], ["text_copy"], name="copy_text"),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "typed",
        [
            vi("ids", TensorProto.INT64, ["batch", 4]),
            vi("mask", TensorProto.BOOL, ["batch", 4]),
            vi("half", TensorProto.FLOAT16, ["batch", 4]),
            vi("text", TensorProto.STRING, ["batch", 1]),
        ],
        [
            vi("ids_doubled", TensorProto.INT64, ["batch", 4]),
            vi("mask_inverted", TensorProto.BOOL, ["batch", 4]),
            vi("half_scaled", TensorProto.FLOAT16, ["batch", 4]),
            vi("text_copy", TensorProto.STRING, ["batch", 1]),
        ],
        initializer=[half],
    )
    return finish(graph)


def make_versioned(version: int, padding_mb: float = 0.0) -> onnx.ModelProto:
    """A model whose output names its version: y = x + version (FP32 [N, 4]).
    `padding_mb` adds an unused-in-value but live initializer to make the file
    (and the loaded session) that large, for swap and memory benchmarks."""
    nodes = [helper.make_node("Add", ["x", "version"], ["y"], name="add_version")]
    inits = [numpy_helper.from_array(np.array([float(version)], dtype=np.float32), "version")]
    if padding_mb > 0:
        rows = max(1, int(padding_mb * (1 << 20) / 16))
        # Random, so the weights cannot be stored or folded away as constants.
        weight = np.random.default_rng(version).standard_normal((rows, 4)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "ballast"))
        # y = x + version + 0 * ballast[index derived from x]: the lookup depends
        # on the input, so ONNX Runtime keeps the whole table resident.
        inits += [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "column"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
        nodes = [
            helper.make_node("Gather", ["x", "column"], ["first"], axis=1, name="first_column"),
            helper.make_node("Mul", ["first", "zero"], ["first_zero"], name="zeroed"),
            helper.make_node("Cast", ["first_zero"], ["index"], to=TensorProto.INT64, name="as_index"),
            helper.make_node("Gather", ["ballast", "index"], ["row"], axis=0, name="lookup"),
            helper.make_node("Mul", ["row", "zero"], ["row_zero"], name="row_zero"),
            helper.make_node("Add", ["x", "version"], ["x_plus"], name="add_version"),
            helper.make_node("Add", ["x_plus", "row_zero"], ["y"], name="add_zero"),
        ]
    graph = helper.make_graph(
        nodes,
        "versioned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    return finish(graph)


def make_broken() -> onnx.ModelProto:
    """Loads fine but fails at run time for batches of 2 (8 elements cannot be
    reshaped to [3, -1]): a deliberately broken canary for routing tests."""
    shape = numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "bad_shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "bad_shape"], ["y"], name="bad_reshape")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "rest"])],
        initializer=[shape],
    )
    return finish(graph)


def make_linear(seed: int = 2) -> onnx.ModelProto:
    """Test-only: one Gemm, `input` FP32 [N,256] -> `output` FP32 [N,10] (a second scorer beside mlp)."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((256, 10)) * np.sqrt(1.0 / 256)).astype(np.float32)
    bias = (rng.standard_normal(10) * 0.01).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "weight", "bias"], ["output"], name="gemm")],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    return finish(graph)


def make_average() -> onnx.ModelProto:
    """Test-only: `a`, `b` FP32 [N,10] -> `mean` = (a + b) / 2 (a fan-in step)."""
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
            helper.make_node("Mul", ["sum", "half"], ["mean"], name="halve"),
        ],
        "average",
        [vi("a", TensorProto.FLOAT, ["batch", 10]), vi("b", TensorProto.FLOAT, ["batch", 10])],
        [vi("mean", TensorProto.FLOAT, ["batch", 10])],
        initializer=[half],
    )
    return finish(graph)


def make_mean_positive() -> onnx.ModelProto:
    """Test-only: `raw` FP32 [N,256] -> `positive` BOOL [N,1] = mean over the row > 0 (a tensor condition)."""
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["raw"], ["row_mean"], axes=[1], keepdims=1, name="row_mean"),
            helper.make_node("Greater", ["row_mean", "zero"], ["positive"], name="above_zero"),
        ],
        "mean_positive",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("positive", TensorProto.BOOL, ["batch", 1])],
        initializer=[zero],
    )
    return finish(graph)


def make_int_output() -> onnx.ModelProto:
    """Test-only: `input` FP32 [N,256] -> `output` INT32 [N,10] (its first ten
    columns, cast): shaped like mlp's output but of another datatype."""
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([10], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["first_ten"], name="first_ten"),
            helper.make_node("Cast", ["first_ten"], ["output"], to=TensorProto.INT32, name="as_int32"),
        ],
        "int_output",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.INT32, ["batch", 10])],
        initializer=inits,
    )
    return finish(graph)


SAMPLES = {
    "mlp": make_mlp,
    "iris": make_iris,
    "typed": make_typed,
    "normalize": make_normalize,
    "topk": make_topk,
}

# ---------- configs: the batched steps, the pipeline, the Triton repository ----------

BATCHING = "dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}\n"

CONFIGS = {
    "normalize/config.yaml": f"""\
# The pipeline's first step: per-feature standardisation (constants in make_models.py).
max_batch_size: 128
inputs:
  - {{name: raw, datatype: FP32, dims: [256]}}
outputs:
  - {{name: normalized, datatype: FP32, dims: [256]}}
{BATCHING}""",
    "topk/config.yaml": f"""\
# The pipeline's last step: softmax, then the three most probable classes.
max_batch_size: 128
inputs:
  - {{name: logits, datatype: FP32, dims: [10]}}
outputs:
  - {{name: probabilities, datatype: FP32, dims: [10]}}
  - {{name: top_scores, datatype: FP32, dims: [3]}}
  - {{name: top_classes, datatype: INT64, dims: [3]}}
{BATCHING}""",
    "mlp_pipeline/config.yaml": """\
# normalize -> mlp -> topk as one model: a pipeline has no files of its own
# and is served as version 1; each step goes through its model's own batcher.
platform: pipeline
max_batch_size: 128
inputs:
  - {name: raw, datatype: FP32, dims: [256]}
outputs:
  - {name: probabilities, datatype: FP32, dims: [10], from: rank.probabilities}
  - {name: top_scores, datatype: FP32, dims: [3], from: rank.top_scores}
  - {name: top_classes, datatype: INT64, dims: [3], from: rank.top_classes}
steps:
  - name: normalize
    model: normalize
    inputs: {raw: raw}
  - name: score
    model: mlp
    inputs: {input: normalize.normalized}
  - name: rank
    model: topk
    inputs: {logits: score.output}
""",
}


def pbtxt_tensors(kind: str, tensors: list[tuple[str, str, list[int]]]) -> str:
    rows = ",\n".join(
        f'  {{\n    name: "{name}"\n    data_type: TYPE_{datatype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
        for name, datatype, dims in tensors
    )
    return f"{kind} [\n{rows}\n]\n"


def triton_step_config(name: str, inputs: list, outputs: list) -> str:
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 128\n'
        + pbtxt_tensors("input", inputs)
        + pbtxt_tensors("output", outputs)
        + "dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n"
    )


def ensemble_step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [("input_map", key, value) for key, value in inputs.items()]
    maps += [("output_map", key, value) for key, value in outputs.items()]
    body = "".join(f'      {kind} {{\n        key: "{key}"\n        value: "{value}"\n      }}\n' for kind, key, value in maps)
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n{body}    }}'


# The Triton repository: folder -> (the sample it serves, inputs, outputs).
TRITON_STEPS = {
    "preprocess": ("normalize", [("raw", "FP32", [256])], [("normalized", "FP32", [256])]),
    "mlp": ("mlp", [("input", "FP32", [256])], [("output", "FP32", [10])]),
    "postprocess": ("topk", [("logits", "FP32", [10])],
                    [("probabilities", "FP32", [10]), ("top_scores", "FP32", [3]), ("top_classes", "INT64", [3])]),
}

TRITON_ENSEMBLE = (
    '# normalize -> mlp -> topk as a Triton ensemble (Triton\'s own syntax).\n'
    'name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: 128\n'
    + pbtxt_tensors("input", [("RAW", "FP32", [256])])
    + pbtxt_tensors("output", [("PROBABILITIES", "FP32", [10]), ("TOP_SCORES", "FP32", [3]), ("TOP_CLASSES", "INT64", [3])])
    + "ensemble_scheduling {\n  step [\n"
    + ",\n".join([
        ensemble_step("preprocess", {"raw": "RAW"}, {"normalized": "normalized_raw"}),
        ensemble_step("mlp", {"input": "normalized_raw"}, {"output": "logits"}),
        ensemble_step("postprocess", {"logits": "logits"},
                      {"probabilities": "PROBABILITIES", "top_scores": "TOP_SCORES", "top_classes": "TOP_CLASSES"}),
    ])
    + "\n  ]\n}\n"
)


def write_text_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so a running server does not reload them.
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text.encode())


def write_configs(root: Path) -> None:
    for rel, text in CONFIGS.items():
        write_text_if_changed(root / rel, text)
    triton = root / "triton"
    for folder, (sample, inputs, outputs) in TRITON_STEPS.items():
        write_text_if_changed(triton / folder / "config.pbtxt", triton_step_config(folder, inputs, outputs))
        link = triton / folder / "1" / "model.onnx"
        target = Path("..") / ".." / ".." / sample / "1" / "model.onnx"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    write_text_if_changed(triton / "ensemble" / "config.pbtxt", TRITON_ENSEMBLE)
    # Triton wants the version folder of an ensemble, empty; git keeps it with a marker.
    write_text_if_changed(triton / "ensemble" / "1" / ".gitkeep", "")
    print(f"wrote the configs, the pipeline and {triton}")


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="repository root to write into (default: this folder)")
    parser.add_argument("--check", action="store_true", help="fail if a file differs from checksums.sha256")
    parser.add_argument("--record", action="store_true", help="rewrite checksums.sha256 from the files written")
    parser.add_argument("--torch", action="store_true", help="write the TorchScript samples into <out>/torch (needs PyTorch 2.11)")
    args = parser.parse_args()

    written = {}
    checksums = CHECKSUMS
    if args.torch:
        import torch_samples

        checksums = HERE / "torch" / "checksums.sha256"
        for name in torch_samples.SAMPLES:
            path = args.out / "torch" / name / "1" / "model.pt"
            write_atomically(path, torch_samples.serialize(name))
            written[f"{name}/1/model.pt"] = torch_samples.weights_digest(path)
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    else:
        for name, make in SAMPLES.items():
            path = args.out / name / "1" / "model.onnx"
            write_atomically(path, make().SerializeToString())
            written[f"{name}/1/model.onnx"] = sha256(path)
            print(f"wrote {path} ({path.stat().st_size} bytes)")
        write_configs(args.out)

    if args.record:
        checksums.write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(written.items())))
    if args.check:
        expected = dict(reversed(line.split()) for line in checksums.read_text().splitlines() if line.strip())
        bad = [rel for rel, digest in written.items() if expected.get(rel) != digest]
        if bad:
            print(f"checksum mismatch for {', '.join(bad)}: are the versions in requirements.txt installed?", file=sys.stderr)
            return 1
        print("checksums match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
