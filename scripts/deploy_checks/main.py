"""Runs every deploy check and prints `deploy checks: N passed, M failed`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

from . import chart, compose, devstack, dockerfile, kube, tilt
from .helmtool import Helm
from .report import Report, Skip, require
from .swapconfig import Binary


def tilt_check(root: Path, helm: Helm, args: dict) -> str:
    if kube.kubectl() is None:
        raise Skip("kubectl is not installed, so the Tiltfile's kustomize('k8s') cannot run")
    return tilt.check(root, helm, args)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="deploy_checks")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2]),
                    help="repository root (default: two levels above this package)")
    ap.add_argument("--out", default=None, help="where rendered manifests are written (default: ROOT/target/deploy-checks)")
    opts = ap.parse_args(argv)
    root = Path(opts.root).resolve()
    out = Path(opts.out) if opts.out else root / "target" / "deploy-checks"
    chart_dir = str(root / "charts" / "swapstats")
    bin_path = os.environ.get("SWAPSTATS_BIN") or str(root / "target" / "debug" / "swapstats")
    binary = Binary(bin_path)
    report = Report()
    started = time.monotonic()

    if binary.present:
        report.note(f"judging environments with {bin_path} (`swapstats config`)")
    else:
        report.note(f"!!! {bin_path} not found: every `swapstats config` check will be SKIPPED. "
                    "Build it first (cargo build) or point SWAPSTATS_BIN at it.")

    helm = Helm()
    try:
        counts: dict[str, int] = {}
        # ---- chart -----------------------------------------------------------
        report.section("Helm chart charts/swapstats")
        sets = [("default", None)] + [(f.stem, str(f)) for f in sorted(Path(chart_dir, "ci").glob("*.yaml"))]
        for label, vf in sets:
            counts[f"chart[{label}]"] = chart.check_values_set(report, helm, chart_dir, label, vf, binary, out)
        report.section("values.schema.json rejects bad values")
        chart.check_schema_rejects(report, helm, chart_dir, Path(__file__).parent / "bad-values")

        # ---- k8s/ ------------------------------------------------------------
        report.section("dev dependencies k8s/")
        chart_values = yaml.safe_load(Path(chart_dir, "values.yaml").read_text())
        held: dict = {}

        def render_k8s():
            objs, how = devstack.render(str(root / "k8s"), report)
            held["objs"] = objs
            out.mkdir(parents=True, exist_ok=True)
            (out / "k8s.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
            return f"{how}: {len(objs)} objects"

        if report.run("k8s/ renders", render_k8s) is not None:
            objs = held["objs"]
            counts["k8s/"] = len(objs)
            report.run(f"Kubernetes {kube.K8S_VERSION} schemas, strict [k8s/]",
                       lambda: require(kube.validate(objs), f"{len(objs)} manifests valid"))
            report.run("k8s/ is the cluster the chart's defaults point at",
                       lambda: require(devstack.rules(objs, chart_values),
                                       "KRaft Kafka + topic Job, 6-node Redis Cluster + init Job, Jaeger 4317/16686"))

        # ---- docker compose ---------------------------------------------------
        report.section("docker-compose.yml")
        compose_path = str(root / "docker-compose.yml")
        doc: dict = {}

        def parse_compose():
            doc.update(compose.load(compose_path))
            return f"{len(doc['services'])} services"

        if report.run("docker-compose.yml parses (PyYAML)", parse_compose) is not None:
            report.run("compose: no unintended interpolation", compose.interpolation, compose_path)
            report.run("compose: swapstats services run real subcommands with contract keys", compose.static, doc)
            for name in compose.swapstats_services(doc):
                report.run(f"`swapstats config` accepts compose service {name}", compose.binary_verdict, doc, name, binary)
            report.run("compose: same cluster as the chart", compose.topology, doc)

        # ---- Tiltfile -----------------------------------------------------------
        report.section("Tiltfile")
        for args in ({}, {"live": True}, {"partitions": "6", "producer": False}):
            flags = " ".join(f"--{k}={v}" for k, v in args.items()) or "no flags"
            report.run(f"Tiltfile evaluates as Starlark and wires resources [{flags}]", tilt_check, root, helm, args)

        # ---- Dockerfile -----------------------------------------------------------
        report.section("Dockerfile")
        report.run("Dockerfile: multi-stage, cached deps, slim non-root runtime; .dockerignore", dockerfile.check, root)

        total = sum(counts.values())
        report.section("manifests validated against the Kubernetes schemas")
        for k, v in counts.items():
            print(f"  {k}: {v}")
        print(f"  total: {total} (plus the Tiltfile's deployed YAML, validated per variant above)")
    finally:
        helm.close()
    print(f"\n(checks took {time.monotonic() - started:.1f} s; rendered manifests in {out})")
    return report.summary()
