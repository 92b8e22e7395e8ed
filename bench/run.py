#!/usr/bin/env python3
"""Side-by-side benchmark in one run on one machine.

Measures, for the `mlp` model (batch-1 requests):
  * the raw runtime ceiling (`switchyard bench-runtime`, same threads as the server);
  * Switchyard over HTTP JSON, HTTP binary and gRPC at several concurrencies;
  * Seldon MLServer and the KServe Python ModelServer serving the same ONNX file
    with onnxruntime (1 intra-op thread), each in its own venv under .cache/bench.

The server under test is pinned to one core and the load generator to another
(`taskset`). Besides throughput and latency it reports server CPU-seconds per
request (from /proc), the figure that stays comparable on a noisy machine, and
the ratios Switchyard ÷ peer and Switchyard ÷ raw, and the protocol floor
(Switchyard's health endpoints, no model). Prints a markdown table, writes
bench/out/results.json and draws bench/out/report.html (`switchyard-load
bench-report`; with --svg-dir, the same charts as SVG files).

Usage: make bench  (or: python3 bench/run.py --help)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "target" / "release"
CACHE = REPO / ".cache" / "bench"
OUT = REPO / "bench" / "out"
MODEL = REPO / "models" / "mlp" / "1" / "model.onnx"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ---------- process CPU accounting ----------

def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, user+system CPU seconds) from a /proc/<pid>/stat line."""
    rest = text.rsplit(")", 1)[1].split()
    # rest[0] is the state; ppid is field 4 of stat, utime/stime fields 14/15.
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and all its descendants (workers forked by peers)."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, seconds = parse_stat(Path(f"/proc/{entry}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry)], cpu[int(entry)] = ppid, seconds
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


# ---------- servers ----------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ready(port: int, path: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server on port {port} not ready at {path} within {timeout}s")


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def spawn(name: str, cmd: list[str], core: int, env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, Path]:
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    process = subprocess.Popen(
        ["taskset", "-c", str(core), *cmd],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,  # so stop() can signal the whole group
    )
    return process, log


BATCHING_CONFIG = """\
max_batch_size: 128
dynamic_batching: {max_queue_delay_us: 500, preferred_batch_sizes: [32, 64, 128]}
"""


def mlp_repository(name: str, config: str | None) -> Path:
    """The bundled mlp file with `config` (none: no config.yaml), in a repository of its own."""
    repo = CACHE / name
    version = repo / "mlp" / "1"
    version.mkdir(parents=True, exist_ok=True)
    link = version / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(MODEL)
    config_file = repo / "mlp" / "config.yaml"
    if config is None:
        config_file.unlink(missing_ok=True)
    else:
        config_file.write_text(config)
    return repo


def plain_repository() -> Path:
    """The mlp without batching (the bundled config batches)."""
    return mlp_repository("repo-plain", None)


def batching_repository() -> Path:
    """The mlp with dynamic batching switched on."""
    return mlp_repository("repo-batching", BATCHING_CONFIG)


def start_switchyard(core: int, extra: list[str], repository: Path | None = None, name: str = "switchyard") -> Server:
    http, grpc, metrics = free_port(), free_port(), free_port()
    process, log = spawn(
        name,
        [str(RELEASE / "switchyard"), "--model-repository", str(repository or REPO / "models"),
         "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}",
         "--metrics-addr", f"127.0.0.1:{metrics}", "--log", "warn", *extra],
        core,
    )
    wait_http_ready(http, "/v2/health/ready", 60)
    return Server(name, process, http, grpc, log)


def ensure_venv(name: str) -> Path:
    venv = CACHE / name
    marker = venv / ".installed"
    requirements = REPO / "bench" / "peers" / f"{name}-requirements.txt"
    if not marker.exists() or marker.stat().st_mtime < requirements.stat().st_mtime:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)], check=True)
        marker.touch()
    return venv


def start_mlserver(core: int) -> Server:
    venv = ensure_venv("mlserver")
    http, grpc, metrics = free_port(), free_port(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1",
        "parallel_workers": 0, "debug": False,
    }))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "mlp",
        "implementation": "mlserver_onnx.OnnxRuntime",
        "parameters": {"uri": str(MODEL)},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 256]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
    }))
    process, log = spawn(
        "mlserver", [str(venv / "bin" / "mlserver"), "start", str(folder)], core,
        env={"PYTHONPATH": str(REPO / "bench" / "peers")}, cwd=folder,
    )
    wait_http_ready(http, "/v2/models/mlp/ready", 180)
    return Server("mlserver", process, http, grpc, log)


def start_kserve(core: int) -> Server:
    venv = ensure_venv("kserve")
    http, grpc = free_port(), free_port()
    process, log = spawn(
        "kserve",
        [str(venv / "bin" / "python"), str(REPO / "bench" / "peers" / "kserve_onnx.py"),
         "--model-path", str(MODEL), "--http-port", str(http), "--grpc-port", str(grpc)],
        core,
    )
    wait_http_ready(http, "/v2/models/mlp/ready", 180)
    return Server("kserve", process, http, grpc, log)


# ---------- measuring ----------

@dataclass
class Row:
    server: str
    protocol: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    error_kinds: dict = field(default_factory=dict)


def drive(server: Server, protocol: str, concurrency: int, duration: str, core: int, input_file: Path | None,
          model: str = "mlp") -> Row:
    addr = f"127.0.0.1:{server.grpc_port if protocol.startswith('grpc') else server.http_port}"
    cmd = ["taskset", "-c", str(core), str(RELEASE / "switchyard-load"), "--addr", addr,
           "--protocol", protocol, "--model", model, "--concurrency", str(concurrency),
           "--duration", duration, "--warmup", "1s", "--json"]
    if input_file is not None:
        cmd += ["--input-file", str(input_file)]
    before = tree_cpu_seconds(server.process.pid)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    after = tree_cpu_seconds(server.process.pid)
    if result.returncode != 0:
        raise RuntimeError(f"switchyard-load failed: {result.stderr}")
    summary = json.loads(result.stdout)
    # The CPU window includes the warm-up; count its requests too (estimated at
    # the measured rate) so CPU per request is not inflated.
    requests = summary["requests"] * (1 + 1.0 / summary["elapsed_s"]) if summary["elapsed_s"] else summary["requests"]
    return Row(
        server=server.name, protocol=protocol, concurrency=concurrency,
        rps=summary["throughput_rps"], p50_ms=summary["latency_ms"]["p50"], p99_ms=summary["latency_ms"]["p99"],
        cpu_us_per_request=(after - before) * 1e6 / requests if requests else float("nan"),
        errors=summary["errors"], error_kinds=summary["errors_by_kind"],
    )


def raw_ceiling(core: int, threads: int) -> list[dict]:
    cmd = ["taskset", "-c", str(core), str(RELEASE / "switchyard"), "bench-runtime", "--model-repository",
           str(REPO / "models"), "--model", "mlp", "--batch", "1,8,32,128", "--threads", str(threads),
           "--duration", "2s", "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def write_input_file() -> Path:
    import random

    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "mlp_b1.json"
    data = [round(rng.uniform(-1, 1), 6) for _ in range(256)]
    path.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": data}]}))
    return path


# ---------- the table ----------

def markdown(rows: list[Row], raw: list[dict]) -> str:
    raw_b1 = next((r for r in raw if r["batch"] == 1), None)
    best_raw = max(raw, key=lambda r: r["rows_per_s"]) if raw else None
    lines = []
    if raw:
        lines += ["Raw runtime (in process, no server):", "",
                  "| batch | p50 ms | p99 ms | rows/s |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rows_per_s']:.0f} |" for r in raw]
        lines.append("")
    lines += ["| server | protocol | conc. | req/s | p50 ms | p99 ms | server CPU µs/req | errors | CPU/req: Switchyard ÷ peer (plain, batched) | req/s ÷ raw b1 | req/s ÷ best raw |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    plain = {(r.protocol, r.concurrency): r for r in rows if r.server == "switchyard"}
    batched = {(r.protocol, r.concurrency): r for r in rows if r.server == "switchyard+batching"}
    for r in rows:
        ratio = ""
        if not r.server.startswith("switchyard") and r.cpu_us_per_request:
            parts = [f"{ours[(r.protocol, r.concurrency)].cpu_us_per_request / r.cpu_us_per_request:.3f}"
                     if (r.protocol, r.concurrency) in ours else "–" for ours in (plain, batched)]
            ratio = ", ".join(parts)
        vs_raw = f"{r.rps / raw_b1['rows_per_s']:.2f}" if raw_b1 else ""
        vs_best = f"{r.rps / best_raw['rows_per_s']:.2f}" if best_raw else ""
        errors = f"{r.errors}" + (f" {r.error_kinds}" if r.errors else "")
        lines.append(f"| {r.server} | {r.protocol} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                     f"{r.cpu_us_per_request:.0f} | {errors} | {ratio} | {vs_raw} | {vs_best} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="5s", help="measured time per row (after 1s warm-up)")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--protocols", default="http-json,http-binary,grpc")
    parser.add_argument("--peers", default="mlserver,kserve", help="comma list, or empty for none")
    parser.add_argument("--peer-protocols", default="http-json,grpc")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--switchyard-args", default="", help="extra flags for switchyard")
    parser.add_argument("--svg-dir", default="", help="also write the report's charts here (e.g. docs/bench)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the protocol floor (health endpoints) rows")
    parser.add_argument("--batching", choices=["off", "on", "both"], default="both",
                        help="Switchyard without and/or with dynamic batching (max 128, 500 µs)")
    args = parser.parse_args()

    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    input_file = write_input_file()
    rows: list[Row] = []
    raw = raw_ceiling(args.server_core, threads=1)

    extra = args.switchyard_args.split()
    servers = []
    if args.batching in ("off", "both"):
        servers.append(("switchyard", lambda: start_switchyard(args.server_core, extra, plain_repository()),
                        args.protocols))
    if args.batching in ("on", "both"):
        servers.append(("switchyard+batching",
                        lambda: start_switchyard(args.server_core, extra, batching_repository(), "switchyard+batching"),
                        args.protocols))
    starters = {"mlserver": start_mlserver, "kserve": start_kserve}
    for peer in [p for p in args.peers.split(",") if p]:
        servers.append((peer, lambda peer=peer: starters[peer](args.server_core), args.peer_protocols))

    for name, start, protocols in servers:
        print(f"== {name}", file=sys.stderr)
        server = start()
        try:
            for protocol in protocols.split(","):
                for concurrency in concurrencies:
                    row = drive(server, protocol, concurrency, args.duration, args.client_core, input_file)
                    print(f"   {protocol:12} c={concurrency:<4} {row.rps:8.0f} req/s  p50 {row.p50_ms:.3f} ms  "
                          f"cpu {row.cpu_us_per_request:.0f} µs/req  errors {row.errors}", file=sys.stderr)
                    rows.append(row)
        finally:
            server.stop()

    # The protocol floor: Switchyard's health endpoints, no model (what HTTP and
    # gRPC cost on this machine, for the charts' reference lines).
    floor: list[Row] = []
    if args.floor:
        print("== floor (health endpoints)", file=sys.stderr)
        server = start_switchyard(args.server_core, extra, plain_repository())
        try:
            for protocol in ("http-live", "grpc-live"):
                for concurrency in concurrencies:
                    row = drive(server, protocol, concurrency, args.duration, args.client_core, None)
                    row.server = "floor"
                    floor.append(row)
        finally:
            server.stop()

    table = markdown(rows, raw)
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.json"
    results.write_text(json.dumps({"raw": raw, "rows": [asdict(r) for r in rows],
                                   "floor": [asdict(r) for r in floor]}, indent=1))
    (OUT / "results.md").write_text(table + "\n")
    print(table)
    # Charts: one page beside the results, and SVGs for docs/BENCHMARKS.md.
    report = [str(RELEASE / "switchyard-load"), "bench-report", "--input", str(results),
              "--html", str(OUT / "report.html")]
    if args.svg_dir:
        report += ["--svg-dir", args.svg_dir]
    subprocess.run(report, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
