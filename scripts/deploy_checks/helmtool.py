"""Helm through helm-sdkpy (Helm's Go library): lint, and rendering by installing
into the local stub API server (helm-sdkpy has no template/dry-run action)."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

# Helm's Go runtime reads the environment the process STARTED with (setting
# os.environ here is too late), so the entry point (__main__) re-executes itself
# with these set: releases kept in memory (the stub server speaks JSON only;
# Helm's Secret driver would send protobuf) and Helm's cache/config in a
# throw-away directory instead of the user's home.
HELM_ENV_KEYS = ("HELM_DRIVER", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")
if os.environ.get("HELM_DRIVER") != "memory":
    raise RuntimeError("run the checks through `python -m deploy_checks` (HELM_DRIVER=memory must be set at start-up)")
_HOME = tempfile.mkdtemp(prefix="deploy-checks-helm-")

import helm_sdkpy as helm  # noqa: E402

from .stub_apiserver import StubApiServer  # noqa: E402

SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def merge_values(base: dict, override: dict) -> dict:
    """Helm's coalescing of a values file over the chart's values.yaml: maps merge
    recursively, anything else replaces, null removes the key."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_values(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str]) -> dict:
    """`--set a.b=c` strings to a values dict (Helm's scalar typing: ints, bools, null)."""
    out: dict = {}
    for item in items:
        key, _, raw = item.partition("=")
        if raw in ("true", "false"):
            val: Any = raw == "true"
        elif raw == "null":
            val = None
        else:
            try:
                val = int(raw)
            except ValueError:
                val = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val
    return out


class RenderError(Exception):
    pass


class Helm:
    def __init__(self) -> None:
        self.server = StubApiServer().__enter__()
        self._kubeconfig = os.path.join(_HOME, "kubeconfig.json")
        Path(self._kubeconfig).write_text(self.server.kubeconfig())

    def close(self) -> None:
        self.server.__exit__(None, None, None)
        shutil.rmtree(_HOME, ignore_errors=True)

    # ---- lint ------------------------------------------------------------
    def lint(self, chart: str, values_file: str | None = None) -> list[dict]:
        """Helm's linter on the chart; with values_file, on the chart whose
        values.yaml is the defaults coalesced with that file (helm-sdkpy's Lint
        takes no values). Returns the messages with severity names."""
        path = chart
        tmp = None
        if values_file:
            tmp = tempfile.mkdtemp(prefix="lint-")
            path = os.path.join(tmp, os.path.basename(chart.rstrip("/")))
            shutil.copytree(chart, path)
            base = yaml.safe_load(Path(chart, "values.yaml").read_text()) or {}
            over = yaml.safe_load(Path(values_file).read_text()) or {}
            Path(path, "values.yaml").write_text(yaml.safe_dump(merge_values(base, over), sort_keys=False))
        try:
            cfg = helm.Configuration(namespace="default", kubeconfig=self._kubeconfig)
            res = asyncio.run(helm.Lint(cfg).run(path))
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        return [{"severity": SEVERITY.get(m.get("Severity"), str(m.get("Severity"))),
                 "level": m.get("Severity", 0), "path": m.get("Path", "")}
                for m in (res.get("Messages") or [])]

    # ---- render ----------------------------------------------------------
    def render(self, chart: str, values: dict | None = None, release: str = "swapstats",
               namespace: str = "default") -> dict:
        """Installs the chart into the stub server. Returns {"objects": [the
        objects Helm sent, in order], "manifest": str, "notes": str}. Raises
        RenderError with Helm's message (schema and template errors included)."""
        self.server.reset()
        cfg = helm.Configuration(namespace=namespace, kubeconfig=self._kubeconfig)
        try:
            res = asyncio.run(helm.Install(cfg).run(release, chart, values=values or None,
                                                    wait=False, timeout=60))
        except helm.HelmError as e:
            raise RenderError(str(e)) from None
        return {"objects": list(self.server.created), "manifest": res.get("manifest", ""),
                "notes": (res.get("info") or {}).get("notes", "")}
