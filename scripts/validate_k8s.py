#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (one multi-document YAML per file
argument): built-in kinds against the 1.29 schemas with kubernetes-validate
(strict: unknown fields are errors); the CRDs we ship (ServiceMonitor,
ScaledObject) for parse and their required fields."""

from __future__ import annotations

import sys

import kubernetes_validate
import yaml

VERSION = "1.29.0"
CRD_REQUIRED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): [("spec", "selector"), ("spec", "endpoints")],
    ("keda.sh/v1alpha1", "ScaledObject"): [("spec", "scaleTargetRef", "name"), ("spec", "triggers")],
}


def dig(doc, path):
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def main(paths: list[str]) -> int:
    failures = 0
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"{path}: no documents", file=sys.stderr)
            failures += 1
        for doc in docs:
            kind, api = doc.get("kind"), doc.get("apiVersion")
            name = f"{path}: {kind} {dig(doc, ('metadata', 'name'))}"
            required = CRD_REQUIRED.get((api, kind))
            if required is not None:
                missing = [".".join(p) for p in required if dig(doc, p) in (None, [], {})]
                if missing:
                    print(f"{name}: missing {missing}", file=sys.stderr)
                    failures += 1
                continue
            try:
                kubernetes_validate.validate(doc, VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                print(f"{name}: {err.message} at {list(err.path)}", file=sys.stderr)
                failures += 1
            except Exception as err:  # unknown kind/version is a failure too
                print(f"{name}: {err}", file=sys.stderr)
                failures += 1
    print(f"validated {len(paths)} rendered overlays: {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
