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


def make_mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    sizes = [256, 1024, 1024, 10]
    inits, nodes = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = "output" if last else f"h{i}_pre"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"h{i}"], name=f"relu{i}"))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
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


SAMPLES = {
    "mlp": make_mlp,
    "iris": make_iris,
    "typed": make_typed,
}


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
