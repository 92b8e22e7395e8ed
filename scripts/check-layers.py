#!/usr/bin/env python3
"""The server's layering rules, checked from its imports (`make lint`).

Layers are folders of server/src: app, edge (http, grpc), serve, control,
config; error, metrics, memory, sched and telemetry are leaves. A file "uses" a
module when it names `crate::<path>` (or `super::` paths that climb out of its
folder, which the layers never do). Rules:

- config and the leaves use no layer;
- serve never uses app, edge or control, nor axum or tonic;
- control uses serve and config (and leaves) only;
- edge/http and edge/grpc never use each other;
- only app (and the binary) use app;
- no cycle between folders.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "server" / "src"
LAYERS = {"app", "edge", "serve", "control", "config"}
LEAVES = {"error", "metrics", "memory", "sched", "telemetry"}
# Entry points and harnesses above every layer.
TOP = {"lib", "main", "fuzz_targets"}

USE = re.compile(r"\bcrate::([a-z_]+)(?:::([a-z_]+))?")


def node_of(path: Path) -> str:
    """The folder a file belongs to: `edge/http`, `serve`, or a root file's module."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[0] == "edge" and len(parts) > 2 and parts[1] in ("http", "grpc"):
        return f"edge/{parts[1]}"
    return parts[0]


def target_of(first: str, second: str | None) -> str:
    if first == "edge" and second in ("http", "grpc"):
        return f"edge/{second}"
    return first


def layer(node: str) -> str:
    return node.split("/")[0]


def code_of(path: Path) -> str:
    """The file without comments and tests (a test may reach further)."""
    text = path.read_text()
    text = re.split(r"\n#\[cfg\(test\)\]\nmod tests", text)[0]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def main() -> int:
    errors: list[str] = []
    edges: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.rs")):
        source = node_of(path)
        code = code_of(path)
        rel = path.relative_to(SRC)
        for first, second in USE.findall(code):
            target = target_of(first, second or None)
            if target == source:
                continue
            edges.setdefault(source, set()).add(target)
            src_layer, dst_layer = layer(source), layer(target)
            if dst_layer not in LAYERS | LEAVES | TOP:
                continue
            if src_layer in LEAVES | {"config"} and dst_layer in LAYERS - {"config"}:
                errors.append(f"{rel}: {src_layer} must use no layer, but uses crate::{first}")
            if src_layer == "serve" and dst_layer in {"app", "edge", "control"}:
                errors.append(f"{rel}: serve must not use {dst_layer} (crate::{first})")
            if src_layer == "control" and dst_layer in {"app", "edge"}:
                errors.append(f"{rel}: control uses serve and config only, not {dst_layer}")
            if {source, target} == {"edge/http", "edge/grpc"}:
                errors.append(f"{rel}: {source} must not use {target}")
            if dst_layer == "app" and src_layer not in {"app"} | TOP - {"fuzz_targets"}:
                errors.append(f"{rel}: only app wires the layers; {src_layer} must not use app")
        if layer(source) == "serve" and re.search(r"\b(axum|tonic)::", code):
            errors.append(f"{rel}: serve must not use axum or tonic")

    # Cycles between folders (depth-first search over the folder graph).
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                errors.append("folder cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)

    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
