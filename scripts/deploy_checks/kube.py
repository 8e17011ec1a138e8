"""Kubernetes objects: offline schema validation, kustomize, and small helpers
for reading workloads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(objs: list[dict], version: str = K8S_VERSION) -> list[str]:
    """Validates every object against the Kubernetes JSON schemas (strict: no
    unknown fields). Returns one problem per invalid object."""
    problems = []
    for o in objs:
        ident = f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            msg = str(getattr(e, "message", e)).splitlines()[0]
            path = "/".join(str(p) for p in getattr(e, "path", []) or [])
            problems.append(f"{ident}: {msg}" + (f" (at {path})" if path else ""))
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{ident}: no schema for it in Kubernetes {version} ({e})")
    return problems


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(path: str) -> str:
    p = subprocess.run([kubectl(), "kustomize", path], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {p.stderr.strip()}")
    return p.stdout


def kustomization_resources(path: str) -> list[dict]:
    """Fallback without kubectl: the resource files the kustomization lists, as
    they are (no transformers applied)."""
    k = yaml.safe_load(Path(path, "kustomization.yaml").read_text())
    objs = []
    for res in k.get("resources", []):
        objs += load_all(Path(path, res).read_text())
    return objs


def name(o: dict) -> str:
    return (o.get("metadata") or {}).get("name", "")


def ident(o: dict) -> str:
    return f"{o.get('kind')}/{name(o)}"


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def find(objs: list[dict], kind: str, nm: str) -> dict | None:
    return next((o for o in objs if o.get("kind") == kind and name(o) == nm), None)


def pod_template(o: dict) -> dict | None:
    if o.get("kind") == "Pod":
        return o
    if o.get("kind") == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]
    if o.get("kind") in WORKLOAD_KINDS:
        return o["spec"]["template"]
    return None


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o.get("kind") in WORKLOAD_KINDS]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
