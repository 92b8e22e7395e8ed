#!/usr/bin/env python3
"""What schema validation cannot see in the rendered overlays (one
multi-document YAML per argument, named after its overlay), checked against
the server itself: probe paths are routes the HTTP edge serves and their ports
are declared; Service target ports are numeric and land on a container port;
selectors carry the instance label and are unique per namespace; the grace
period covers the upstream's preStop plus Switchyard's drain delay and drain
timeout; a native sidecar's startup probe asks only what is true before the
app starts (liveness); autoscaler queries name series the server exports,
with labels the ServiceMonitor scrape adds, and no `replicas` fights an
autoscaler; ConfigMaps are mounted whole (no `items:`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Labels every series scraped through a ServiceMonitor gets.
SCRAPE_LABELS = {"namespace", "pod", "service", "job", "endpoint", "container", "instance"}
DEFAULT_DRAIN = {"SWITCHYARD_DRAIN_DELAY": 0.0, "SWITCHYARD_DRAIN_TIMEOUT": 30.0}


def server_routes() -> list[re.Pattern]:
    source = (REPO / "server" / "src" / "edge" / "http" / "mod.rs").read_text()
    paths = re.findall(r'\.route\(\s*"([^"]+)"', source) + ["/metrics"]
    return [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in paths]


def exported_series() -> dict[str, set[str]]:
    """Series and their labels, from the metrics table a test keeps true."""
    table = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    series = {}
    for name, labels in re.findall(r"^\| `(switchyard_\w+)` \| \w+ \| ([^|]*) \|", table, re.M):
        series[name] = {label.strip() for label in labels.split(",") if label.strip()}
    return series


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value.strip())
    if not match:
        raise ValueError(f"cannot read duration {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


def switchyard_containers(pod: dict) -> list[tuple[dict, bool]]:
    """(container, is_native_sidecar) for Switchyard's containers."""
    found = []
    for key in ("initContainers", "containers"):
        for container in pod.get(key) or []:
            if "switchyard" in container.get("image", ""):
                found.append((container, key == "initContainers" and container.get("restartPolicy") == "Always"))
    return found


def drain_of(container: dict) -> float:
    values = dict(DEFAULT_DRAIN)
    for env in container.get("env") or []:
        if env.get("name") in values and "value" in env:
            values[env["name"]] = seconds(env["value"])
    for arg in container.get("args") or []:
        for flag, key in (("--drain-delay=", "SWITCHYARD_DRAIN_DELAY"), ("--drain-timeout=", "SWITCHYARD_DRAIN_TIMEOUT")):
            if arg.startswith(flag):
                values[key] = seconds(arg[len(flag):])
    return values["SWITCHYARD_DRAIN_DELAY"] + values["SWITCHYARD_DRAIN_TIMEOUT"]


def drain_delay_of(container: dict) -> float:
    timeout_only = dict(container)
    timeout_only["env"] = [e for e in container.get("env") or [] if e.get("name") != "SWITCHYARD_DRAIN_TIMEOUT"] + \
        [{"name": "SWITCHYARD_DRAIN_TIMEOUT", "value": "0s"}]
    timeout_only["args"] = [a for a in container.get("args") or [] if not a.startswith("--drain-timeout=")]
    return drain_of(timeout_only)


def pre_stop(container: dict) -> float:
    hook = ((container.get("lifecycle") or {}).get("preStop") or {})
    if "sleep" in hook:
        return float(hook["sleep"].get("seconds", 0))
    command = (hook.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] == "sleep":
        return seconds(command[1])
    return 0.0


def label_matchers(query: str) -> list[tuple[str, str]]:
    return re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', query)


def check(name: str, docs: list[dict], routes: list[re.Pattern], series: dict[str, set[str]]) -> list[str]:
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("HorizontalPodAutoscaler", [])} | \
             {d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("ScaledObject", [])}
    target_labels = set()
    for monitor in by_kind.get("ServiceMonitor", []):
        target_labels |= {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in monitor["spec"].get("targetLabels", [])}
    for deploy_name, deployment in deployments.items():
        where = f"{name}: Deployment {deploy_name}"
        spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        if "app.kubernetes.io/instance" not in spec["selector"]["matchLabels"]:
            problems.append(f"{where}: the selector has no app.kubernetes.io/instance")
        if deploy_name in scaled and "replicas" in spec:
            problems.append(f"{where}: sets replicas while an autoscaler owns them")
        for volume in pod.get("volumes") or []:
            if "configMap" in volume and "items" in volume["configMap"]:
                problems.append(f"{where}: volume {volume['name']} lists items (new keys would not be mounted)")
        ours = switchyard_containers(pod)
        if not ours:
            problems.append(f"{where}: no Switchyard container")
        all_containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
        for container in all_containers:
            image = container.get("image", "")
            if not re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image.split("/")[-1]) or image.endswith(":latest"):
                problems.append(f"{where}: container {container['name']} image {image!r} has no pinned tag or digest")
        for container, native in ours:
            cwhere = f"{where}: container {container['name']}"
            ports = {p["containerPort"] for p in container.get("ports", [])}
            named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if not probe:
                    problems.append(f"{cwhere}: no {probe_name}")
                    continue
                http = probe.get("httpGet") or {}
                path, port = http.get("path", ""), http.get("port")
                if not any(route.match(path) for route in routes):
                    problems.append(f"{cwhere}: {probe_name} path {path} is not a route the server serves")
                if (port not in ports) and (port not in named):
                    problems.append(f"{cwhere}: {probe_name} port {port} is not declared")
            if native and (container.get("startupProbe") or {}).get("httpGet", {}).get("path") != "/v2/health/live":
                problems.append(f"{cwhere}: a native sidecar's startupProbe must be /v2/health/live "
                                "(readiness waits for the app container, which starts only after it)")
            grace = float(pod.get("terminationGracePeriodSeconds", 30))
            upstream_pre_stop = max((pre_stop(c) for c in all_containers if c is not container), default=0.0)
            needed = upstream_pre_stop + drain_of(container)
            if grace < needed:
                problems.append(f"{cwhere}: terminationGracePeriodSeconds {grace:g} < preStop {upstream_pre_stop:g} "
                                f"+ drain {drain_of(container):g}")
            if len(all_containers) > 1:
                # Classic: both get SIGTERM together, so the upstream must outlive
                # Switchyard's whole drain. Native: the upstream stops first, so
                # its preStop must cover the time traffic still arrives (the
                # endpoint removal, which the drain delay is sized for).
                delay = drain_of(container) if not native else drain_delay_of(container)
                if upstream_pre_stop < delay:
                    problems.append(f"{cwhere}: the upstream's preStop ({upstream_pre_stop:g} s) is shorter than "
                                    f"{'the drain' if not native else 'the drain delay'} ({delay:g} s): "
                                    "requests would meet a stopped upstream")
        for service in by_kind.get("Service", []):
            selector = service["spec"].get("selector", {})
            if not selector.items() <= labels.items():
                continue
            if "app.kubernetes.io/instance" not in selector:
                problems.append(f"{name}: Service {service['metadata']['name']}: selector has no instance label")
            declared = {p["containerPort"] for c, _ in ours for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort")
                if not isinstance(target, int):
                    problems.append(f"{name}: Service {service['metadata']['name']} port {port['name']}: "
                                    f"targetPort {target!r} is not numeric")
                elif target not in declared:
                    problems.append(f"{name}: Service {service['metadata']['name']} port {port['name']}: "
                                    f"targetPort {target} is no container port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if "app.kubernetes.io/instance" not in pdb["spec"]["selector"]["matchLabels"]:
            problems.append(f"{name}: PodDisruptionBudget {pdb['metadata']['name']}: selector has no instance label")
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind.get("Service", []) if selector.items() <= s["metadata"].get("labels", {}).items()]
        if not services:
            problems.append(f"{name}: ServiceMonitor {monitor['metadata']['name']} selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if services and endpoint["port"] not in {p["name"] for s in services for p in s["spec"]["ports"]}:
                problems.append(f"{name}: ServiceMonitor endpoint port {endpoint['port']} is no Service port name")
        if "release" not in monitor["metadata"].get("labels", {}):
            problems.append(f"{name}: ServiceMonitor has no release label (kube-prometheus-stack selects by it)")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] not in series:
                problems.append(f"{name}: HPA metric {metric['pods']['metric']['name']} is not a series the server exports")
    for scaled_object in by_kind.get("ScaledObject", []):
        target = deployments.get(scaled_object["spec"]["scaleTargetRef"]["name"])
        for trigger in scaled_object["spec"]["triggers"]:
            meta = trigger.get("metadata", {})
            query = meta.get("query", "")
            names = re.findall(r"\b(switchyard_\w+)", query)
            for series_name in names:
                if series_name not in series:
                    problems.append(f"{name}: KEDA query names {series_name}, which the server does not export")
            allowed = SCRAPE_LABELS | target_labels | set().union(*(series.get(n, set()) for n in names))
            for label, value in label_matchers(query):
                if label not in allowed:
                    problems.append(f"{name}: KEDA query filters on {label}, which no scraped series carries")
                if label == "namespace" and value != scaled_object["metadata"].get("namespace"):
                    problems.append(f"{name}: KEDA query namespace {value!r} is not the overlay's")
                if label == "app_kubernetes_io_instance" and target and \
                        value != target["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/instance"):
                    problems.append(f"{name}: KEDA query instance {value!r} is not the Deployment's")
            if meta.get("ignoreNullValues") != "false":
                problems.append(f"{name}: KEDA trigger reads an empty answer as 0 (set ignoreNullValues: \"false\")")
    return problems


def adapter_rules(series: dict[str, set[str]]) -> list[str]:
    problems = []
    values = yaml.safe_load((REPO / "k8s" / "components" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    for rule in values["rules"]["custom"]:
        name = re.match(r"(\w+)", rule["seriesQuery"]).group(1)
        if name not in series:
            problems.append(f"prometheus-adapter rule: {name} is not a series the server exports")
        for label, _ in label_matchers(rule["seriesQuery"].replace("!=", "=")):
            if label not in SCRAPE_LABELS | series.get(name, set()):
                problems.append(f"prometheus-adapter rule: {label} is no label of scraped {name}")
    return problems


def main(paths: list[str]) -> int:
    routes, series = server_routes(), exported_series()
    problems = adapter_rules(series)
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        name = Path(path).stem
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        problems += check(name, docs, routes, series)
        for doc in docs:
            if doc["kind"] == "Deployment":
                key = (doc["metadata"].get("namespace", "default"),
                       doc["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/instance", ""))
                if key in seen and seen[key] != name:
                    problems.append(f"{name}: selects the same pods as {seen[key]} in namespace {key[0]}")
                seen[key] = name
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"checked {len(paths)} rendered overlays against the server: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
