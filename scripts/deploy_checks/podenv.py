"""The environment, args and --config file a pod's container would start with,
resolved from the rendered objects, and its judgement by the binary."""

from __future__ import annotations

import posixpath

from . import kube
from .report import Failure, Skip
from .swapconfig import Binary, check_args, lookup, unknown_env_keys


def container_env(pod: dict, container: dict, objs: list[dict], namespace: str,
                  pod_name: str) -> tuple[dict[str, str], list[str]]:
    """Resolves envFrom ConfigMaps and env entries (literal values, fieldRefs,
    ConfigMap keys) to the variables the process would see."""
    env: dict[str, str] = {}
    problems: list[str] = []
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref:
            cm = kube.find(objs, "ConfigMap", ref["name"])
            if cm is None:
                if not ref.get("optional"):
                    problems.append(f"envFrom ConfigMap {ref['name']!r} is not rendered")
                continue
            prefix = src.get("prefix", "")
            env.update({prefix + k: str(v) for k, v in (cm.get("data") or {}).items()})
        elif src.get("secretRef"):
            problems.append(f"envFrom Secret {src['secretRef'].get('name')!r}: not resolvable offline")
    fields = {"metadata.namespace": namespace, "metadata.name": pod_name,
              "status.podIP": "10.0.0.10", "spec.nodeName": "node-1",
              "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default")}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                if path not in fields:
                    problems.append(f"env {e['name']}: fieldRef {path} not modelled by the check")
                    continue
                env[e["name"]] = fields[path]
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = kube.find(objs, "ConfigMap", ref["name"])
                val = ((cm or {}).get("data") or {}).get(ref["key"])
                if val is None:
                    if not ref.get("optional"):
                        problems.append(f"env {e['name']}: ConfigMap key {ref['name']}/{ref['key']} missing")
                    continue
                env[e["name"]] = str(val)
            else:
                problems.append(f"env {e['name']}: valueFrom {list(vf)} not resolvable offline")
        else:
            env[e["name"]] = ""
    return env, problems


def config_file(pod: dict, container: dict, path: str, objs: list[dict]) -> str | None:
    """Content of the file at `path` in the container when it comes from a
    ConfigMap volume, else None."""
    for m in container.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            vol = next((v for v in pod["spec"].get("volumes") or [] if v["name"] == m["name"]), None)
            if not vol or "configMap" not in vol:
                return None
            cm = kube.find(objs, "ConfigMap", vol["configMap"]["name"])
            key = m.get("subPath") or posixpath.relpath(path, mp)
            return ((cm or {}).get("data") or {}).get(key)
    return None


class Launch:
    """What one container would be started with."""

    def __init__(self, where: str, args: list[str], env: dict[str, str], toml: str | None,
                 hostname: str, problems: list[str]):
        self.where, self.args, self.env, self.toml = where, args, env, toml
        self.hostname, self.problems = hostname, problems


def launches(obj: dict, objs: list[dict], namespace: str = "default") -> list[Launch]:
    pod = kube.pod_template(obj)
    pod_name = kube.name(obj) + ("-0" if obj["kind"] == "StatefulSet" else "-7d9f8b6c5-abcde")
    out = []
    for c in pod["spec"]["containers"]:
        args = list(c.get("command") or []) + list(c.get("args") or [])
        where = f"{kube.ident(obj)} container {c['name']}"
        env, problems = container_env(pod, c, objs, namespace, pod_name)
        toml = None
        if "--config" in args[:-1]:
            path = args[args.index("--config") + 1]
            toml = config_file(pod, c, path, objs)
            if toml is None:
                problems.append(f"--config {path} is not a file from a ConfigMap volume")
        out.append(Launch(where, args, env, toml, pod_name, problems))
    return out


def static_problems(ls: list[Launch]) -> list[str]:
    """Args are a real subcommand with known flags; every SWAPSTATS__ variable is
    a key of the contract; everything resolvable offline."""
    problems = []
    for l in ls:
        problems += [f"{l.where}: {p}" for p in l.problems + check_args(l.args)]
        problems += [f"{l.where}: {k} is not a configuration key of the contract"
                     for k in unknown_env_keys(l.env)]
    return problems


def binary_verdict(ls: list[Launch], binary: Binary, expect: dict | None = None) -> str:
    """`swapstats config` must accept exactly each container's environment (and
    --config file); `expect` maps config keys to required effective values."""
    if not binary.present:
        raise Skip(f"{binary.path} is missing: build it (cargo build) or set SWAPSTATS_BIN, "
                   "so that `swapstats config` can judge the environment")
    problems = []
    for l in ls:
        res = binary.config(l.env, l.toml, hostname=l.hostname)
        if not res.ok:
            problems.append(f"{l.where}: `swapstats config` rejected its environment: {res.output}")
            continue
        for key, want in (expect or {}).items():
            got = lookup(res.config, key)
            if got != want:
                problems.append(f"{l.where}: effective {key} is {got!r}, expected {want!r}")
    if problems:
        raise Failure("\n".join(problems))
    return f"accepted {len(ls)} container environment(s)"
