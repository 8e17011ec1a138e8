"""Evaluates the Tiltfile as Starlark (Go's Starlark, the dialect Tilt embeds)
with stand-ins for Tilt's builtins, then checks what it asked Tilt to do.

The stand-ins are real where it matters: kustomize() runs kubectl kustomize,
helm() renders the chart with the given --set values (Helm's library, into the
stub API server), decode/encode_yaml_stream are YAML. Tilt's `config` module is
reached as config_<fn> (Starlark globals from Python cannot carry attributes),
so `config.` is rewritten to `config_` before evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import starlark_go
import yaml

from . import kube
from .helmtool import Helm, RenderError, parse_set
from .report import Failure

starlark_go.configure_starlark(allow_set=True, allow_global_reassign=True, allow_recursion=True)


class TiltFail(Exception):
    pass


class Session:
    def __init__(self, root: Path, helm: Helm, args: dict):
        self.root, self.helm, self.args = root, helm, args
        self.defined: dict[str, str] = {}
        self.builds: list[dict] = []
        self.yaml: list[dict] = []
        self.resources: list[dict] = []
        self.charts: list[dict] = []

    # ---- Tilt builtins -----------------------------------------------------
    def globals(self) -> dict:
        def define(kind):
            def f(name, args=False, usage=""):
                self.defined[name] = kind
            return f

        def parse():
            unknown = set(self.args) - set(self.defined)
            if unknown:
                raise TiltFail(f"flags not defined by the Tiltfile: {sorted(unknown)}")
            return dict(self.args)

        def docker_build(ref, context, **kw):
            self.builds.append({"ref": ref, "context": context, **kw})

        def step(kind):
            return lambda *a, **kw: {"step": kind, "args": list(a), **kw}

        def kustomize(path, **kw):
            return kube.kustomize(str(self.root / path))

        def helm(path, name="", namespace="default", values=None, set=None, **kw):
            vals = {}
            for vf in values or []:
                vals.update(yaml.safe_load((self.root / vf).read_text()) or {})
            from .helmtool import merge_values
            vals = merge_values(vals, parse_set(list(set or [])))
            try:
                r = self.helm.render(str(self.root / path), vals, release=name or "chart", namespace=namespace)
            except RenderError as e:
                raise TiltFail(f"helm({path!r}) failed: {e}")
            self.charts.append({"path": path, "name": name, "values": vals})
            return r["manifest"]

        def decode_yaml_stream(text):
            return kube.load_all(text)

        def encode_yaml_stream(objs):
            return yaml.safe_dump_all(objs, sort_keys=False)

        def k8s_yaml(blob, **kw):
            if isinstance(blob, list):
                for b in blob:
                    k8s_yaml(b)
                return
            if blob.endswith((".yaml", ".yml")) and "\n" not in blob:
                blob = (self.root / blob).read_text()
            self.yaml += kube.load_all(blob)

        def k8s_resource(workload="", **kw):
            self.resources.append({"workload": workload, **kw})

        def fail(msg):
            raise TiltFail(msg)

        return {
            "config_define_string": define("string"),
            "config_define_bool": define("bool"),
            "config_define_string_list": define("string_list"),
            "config_parse": parse,
            "update_settings": lambda **kw: None,
            "allow_k8s_contexts": lambda *a, **kw: None,
            "docker_build": docker_build,
            "fall_back_on": step("fall_back_on"),
            "sync": step("sync"),
            "run": step("run"),
            "kustomize": kustomize,
            "helm": helm,
            "decode_yaml_stream": decode_yaml_stream,
            "encode_yaml_stream": encode_yaml_stream,
            "k8s_yaml": k8s_yaml,
            "k8s_resource": k8s_resource,
            "link": lambda url, name="": {"url": url, "name": name},
            "fail": fail,
        }

    def evaluate(self) -> None:
        src = (self.root / "Tiltfile").read_text()
        src = re.sub(r"\bconfig\.", "config_", src)
        # starlark-go keeps no reference to the Python callables it is given:
        # hold them here for as long as the interpreter runs, or they are
        # collected and the next call crashes the process.
        self._globals = self.globals()
        st = starlark_go.Starlark(globals=self._globals)
        try:
            st.exec(src, filename="Tiltfile", print=lambda *a: None)
        except starlark_go.StarlarkError as e:
            cause = e.__cause__ or e.__context__
            raise Failure(f"Tiltfile does not evaluate: {e}" + (f" ({cause})" if cause else ""))


def workload_names(objs: list[dict]) -> dict[str, dict]:
    return {kube.name(o): o for o in kube.workloads(objs)}


def object_selector_matches(sel: str, objs: list[dict]) -> bool:
    parts = sel.split(":")
    nm, kind = parts[0], (parts[1] if len(parts) > 1 else None)
    return any(kube.name(o) == nm and (kind is None or o["kind"].lower() == kind.lower()) for o in objs)


def dockerfile_stages(root: Path) -> set[str]:
    text = (root / "Dockerfile").read_text()
    return set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", text))


def check(root: Path, helm: Helm, args: dict) -> str:
    s = Session(root, helm, args)
    s.evaluate()
    p: list[str] = []
    if not s.builds:
        p.append("no docker_build")
    workloads = workload_names(s.yaml)
    images = {c["image"].split(":")[0] for w in workloads.values() for c in kube.pod_template(w)["spec"]["containers"]}
    stages = dockerfile_stages(root)
    for b in s.builds:
        if b["ref"] not in images:
            p.append(f"docker_build({b['ref']!r}) builds an image no deployed workload uses")
        if b.get("target") and b["target"] not in stages:
            p.append(f"docker_build target {b['target']!r} is not a Dockerfile stage ({sorted(stages)})")
        for st in b.get("live_update") or []:
            if st["step"] == "sync":
                local = st["args"][0]
                if not (root / local).resolve().is_relative_to((root / b["context"]).resolve()):
                    p.append(f"live_update sync {local!r} is outside the build context")
        if b.get("live_update") and not any(st["step"] == "run" for st in b["live_update"]):
            p.append("live_update syncs sources but never rebuilds")
    if not s.charts:
        p.append("the chart is not deployed with helm()")
    if not any(w for w in workloads if w in ("kafka", "redis", "jaeger")):
        p.append("k8s/ dev dependencies are not deployed")
    names = set(workloads)
    forwards = set()
    for r in s.resources:
        w = r["workload"]
        if w not in names:
            p.append(f"k8s_resource({w!r}): no such workload in the deployed YAML ({sorted(names)})")
        for sel in r.get("objects") or []:
            if not object_selector_matches(sel, s.yaml):
                p.append(f"k8s_resource({w!r}) objects: {sel!r} matches no deployed object")
        for d in r.get("resource_deps") or []:
            if d not in names:
                p.append(f"k8s_resource({w!r}) depends on unknown resource {d!r}")
        pf = r.get("port_forwards") or []
        for f in (pf if isinstance(pf, list) else [pf]):
            forwards.add(str(f).split(":")[0])
    for need in ("8080", "16686"):
        if need not in forwards:
            p.append(f"no port_forward of {need}")
    # Partition count in step between the topic Job and the chart.
    job = next((o for o in s.yaml if o["kind"] == "Job" and kube.name(o) == "kafka-topics"), None)
    sts = next((o for o in s.yaml if o["kind"] == "StatefulSet" and "shard" in kube.name(o)), None)
    if job and sts:
        env = {e["name"]: e.get("value") for e in kube.pod_template(job)["spec"]["containers"][0].get("env", [])}
        if env.get("PARTITIONS") != str(sts["spec"]["replicas"]):
            p.append(f"topic Job PARTITIONS={env.get('PARTITIONS')} but {sts['spec']['replicas']} shard pods")
    elif not sts:
        p.append("no shard StatefulSet deployed")
    p += [f"deployed YAML: {v}" for v in kube.validate(s.yaml)]
    if p:
        raise Failure("\n".join(p))
    return (f"{len(s.builds)} image build(s), {len(s.yaml)} objects, "
            f"{len(s.resources)} resources, all {len(s.yaml)} objects schema-valid, port-forwards {sorted(forwards)}")
