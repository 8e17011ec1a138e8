"""Checks of charts/swapstats: Helm's linter, rendering, Kubernetes schemas, the
chart's own invariants, the schema of its values, and the environment its pods
get."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import kube, podenv
from .helmtool import Helm, RenderError, merge_values
from .report import Failure, Report, require
from .swapconfig import Binary

RELEASE = "swapstats"
NAMESPACE = "default"


def lint(helm: Helm, chart: str, values_file: str | None) -> str:
    msgs = helm.lint(chart, values_file)
    bad = [m for m in msgs if m["level"] >= 2]
    if bad:
        # helm-sdkpy does not pass Helm's message text through; an install into
        # the stub server reports the same template/schema error in words.
        why = ""
        try:
            values = yaml.safe_load(Path(values_file).read_text()) if values_file else None
            helm.render(chart, values)
        except RenderError as e:
            why = f"\nHelm says: {e}"
        raise Failure("\n".join(f"{m['severity']} in {m['path']}" for m in bad) + why)
    infos = [m for m in msgs if m["level"] < 2]
    return f"{len(msgs)} message(s), none of warning or error severity" if infos else "clean"


def rules(objs: list[dict], values: dict) -> list[str]:
    """Invariants of the rendered chart for these (coalesced) values."""
    p: list[str] = []
    P = values["partitions"]
    port = values["httpPort"]

    def pod_labels(o):
        return (kube.pod_template(o).get("metadata") or {}).get("labels") or {}

    def container(o, name):
        return next((c for c in kube.pod_template(o)["spec"]["containers"] if c["name"] == name), None)

    def envval(c, key):
        return next((e.get("value") for e in c.get("env") or [] if e["name"] == key), None)

    cms = kube.of_kind(objs, "ConfigMap")
    shared = next((cm for cm in cms if "SWAPSTATS__SHARD__PARTITIONS" in (cm.get("data") or {})), None)
    if shared is None:
        p.append("no ConfigMap carries the shared SWAPSTATS__ configuration")
    elif shared["data"]["SWAPSTATS__SHARD__PARTITIONS"] != str(P):
        p.append(f"ConfigMap SWAPSTATS__SHARD__PARTITIONS={shared['data']['SWAPSTATS__SHARD__PARTITIONS']} != partitions {P}")

    # --- shards
    stss = kube.of_kind(objs, "StatefulSet")
    if len(stss) != 1:
        return p + [f"expected one StatefulSet (the shards), got {len(stss)}"]
    sts = stss[0]
    spec = sts["spec"]
    if spec.get("replicas") != P:
        p.append(f"shard StatefulSet replicas {spec.get('replicas')} != partitions {P}")
    if spec.get("podManagementPolicy") != "Parallel":
        p.append("shard StatefulSet podManagementPolicy is not Parallel")
    if not kube.selects(spec["selector"]["matchLabels"], pod_labels(sts)):
        p.append("shard StatefulSet selector does not select its own pods")
    hsvc = kube.find(objs, "Service", spec.get("serviceName", ""))
    if hsvc is None:
        p.append(f"shard serviceName {spec.get('serviceName')!r} is not a rendered Service")
    else:
        if hsvc["spec"].get("clusterIP") != "None":
            p.append(f"Service {kube.name(hsvc)} (the shards') is not headless")
        if not kube.selects(hsvc["spec"].get("selector") or {}, pod_labels(sts)):
            p.append(f"headless Service {kube.name(hsvc)} does not select the shard pods")
    sc = container(sts, "shard")
    if sc is None:
        p.append("shard StatefulSet has no container `shard`")
    else:
        if (sc.get("args") or [None])[0] != "shard":
            p.append(f"shard container args {sc.get('args')} do not start with `shard`")
        if (sc.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
            p.append("shard liveness probe is not GET /healthz")
        if (sc.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
            p.append("shard readiness probe is not GET /readyz")
        if not (sc.get("resources") or {}).get("requests") or not (sc.get("resources") or {}).get("limits"):
            p.append("shard container lacks resource requests or limits")
        if {"name": "http", "containerPort": port, "protocol": "TCP"} not in (sc.get("ports") or []):
            p.append(f"shard container does not expose http on {port}")
    aff = (kube.pod_template(sts)["spec"].get("affinity") or {}).get("podAntiAffinity") or {}
    mode = values["shard"]["antiAffinity"]
    if mode == "soft" and not aff.get("preferredDuringSchedulingIgnoredDuringExecution"):
        p.append("shard antiAffinity=soft but no preferred pod anti-affinity")
    if mode == "hard" and not aff.get("requiredDuringSchedulingIgnoredDuringExecution"):
        p.append("shard antiAffinity=hard but no required pod anti-affinity")
    if kube.pod_template(sts)["spec"].get("automountServiceAccountToken") is not False:
        p.append("shard pods get a Kubernetes API token they do not need")

    # --- router
    deps = {kube.name(d): d for d in kube.of_kind(objs, "Deployment")}
    router = next((d for d in deps.values() if container(d, "router")), None)
    if router is None:
        return p + ["no router Deployment"]
    rc = container(router, "router")
    if (rc.get("args") or [None])[0] != "router":
        p.append(f"router container args {rc.get('args')} do not start with `router`")
    if envval(rc, "SWAPSTATS__ROUTER__DISCOVERY") != "kubernetes":
        p.append("router does not use Kubernetes discovery")
    if hsvc is not None and envval(rc, "SWAPSTATS__ROUTER__SERVICE") != kube.name(hsvc):
        p.append(f"router watches Service {envval(rc, 'SWAPSTATS__ROUTER__SERVICE')!r}, shards are behind {kube.name(hsvc)!r}")
    if (rc.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
        p.append("router liveness probe is not GET /healthz")
    if (rc.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
        p.append("router readiness probe is not GET /readyz")
    rsvcs = [s for s in kube.of_kind(objs, "Service") if kube.selects(s["spec"].get("selector") or {}, pod_labels(router))]
    if not any(pt["port"] == values["router"]["service"]["port"] for s in rsvcs for pt in s["spec"]["ports"]):
        p.append(f"no Service exposes the router on port {values['router']['service']['port']}")
    sa = router["spec"]["template"]["spec"].get("serviceAccountName", "default")

    # --- RBAC: list/watch EndpointSlices, nothing more
    roles = kube.of_kind(objs, "Role") + kube.of_kind(objs, "ClusterRole")
    if values["rbac"]["create"]:
        if len(roles) != 1 or roles[0]["kind"] != "Role":
            p.append(f"expected exactly one namespaced Role, got {[kube.ident(r) for r in roles]}")
        else:
            rl = roles[0]["rules"]
            ok = (len(rl) == 1 and rl[0].get("apiGroups") == ["discovery.k8s.io"]
                  and rl[0].get("resources") == ["endpointslices"]
                  and {"list", "watch"} <= set(rl[0].get("verbs", [])) <= {"get", "list", "watch"}
                  and not rl[0].get("resourceNames") and not rl[0].get("nonResourceURLs"))
            if not ok:
                p.append(f"Role grants more (or other) than list/watch discovery.k8s.io endpointslices: {rl}")
            rbs = kube.of_kind(objs, "RoleBinding")
            bound = [rb for rb in rbs if rb["roleRef"]["name"] == kube.name(roles[0]) and rb["roleRef"]["kind"] == "Role"
                     and any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in rb.get("subjects", []))]
            if not bound:
                p.append(f"no RoleBinding binds the Role to the router's ServiceAccount {sa!r}")
    if values["serviceAccount"]["create"] and kube.find(objs, "ServiceAccount", sa) is None:
        p.append(f"router ServiceAccount {sa!r} is not rendered")

    # --- HPA / PDB
    hpas = kube.of_kind(objs, "HorizontalPodAutoscaler")
    if values["router"]["autoscaling"]["enabled"]:
        if not any(h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": kube.name(router)} for h in hpas):
            p.append("autoscaling enabled but no HPA targets the router Deployment")
        if "replicas" in router["spec"]:
            p.append("router Deployment sets replicas although the HPA owns them")
    elif hpas:
        p.append("autoscaling disabled but an HPA is rendered")
    for pdb in kube.of_kind(objs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(kube.selects(sel, pod_labels(w)) for w in kube.workloads(objs)):
            p.append(f"{kube.ident(pdb)} selects no pods")
    want_pdbs = {kube.name(sts)} if values["shard"]["podDisruptionBudget"]["enabled"] else set()
    if values["router"]["podDisruptionBudget"]["enabled"]:
        want_pdbs.add(kube.name(router))
    have_pdbs = {kube.name(o) for o in kube.of_kind(objs, "PodDisruptionBudget")}
    if want_pdbs != have_pdbs:
        p.append(f"PodDisruptionBudgets {sorted(have_pdbs)}, expected {sorted(want_pdbs)}")

    # --- producer
    producers = [d for d in deps.values() if container(d, "producer")]
    if values["producer"]["enabled"] != bool(producers):
        p.append(f"producer.enabled={values['producer']['enabled']} but {len(producers)} producer Deployment(s)")
    for d in producers:
        if (container(d, "producer").get("args") or [None])[0] != "produce":
            p.append(f"{kube.ident(d)} does not run `produce`")

    # --- every Service selects pods; every pod runs as non-root; images set
    for svc in kube.of_kind(objs, "Service"):
        if not any(kube.selects(svc["spec"].get("selector") or {}, pod_labels(w)) for w in kube.workloads(objs)):
            p.append(f"{kube.ident(svc)} selects no pods")
    for w in kube.workloads(objs):
        ps = kube.pod_template(w)["spec"]
        for c in ps["containers"]:
            nonroot = (c.get("securityContext") or {}).get("runAsNonRoot", (ps.get("securityContext") or {}).get("runAsNonRoot"))
            if nonroot is not True:
                p.append(f"{kube.ident(w)} container {c['name']} may run as root")
            if not c.get("image") or ":" not in c["image"]:
                p.append(f"{kube.ident(w)} container {c['name']} has no tagged image")
    return p


def expected_config(obj: dict, values: dict, objs: list[dict]) -> dict:
    """Effective configuration keys each role's pods must end up with."""
    exp = {"shard.partitions": values["partitions"], "kafka.brokers": values["kafka"]["brokers"],
           "kafka.topic": values["kafka"]["topic"], "store.kind": values["store"]["kind"],
           "http.addr": f"0.0.0.0:{values['httpPort']}"}
    args = (kube.pod_template(obj)["spec"]["containers"][0].get("args") or [""])
    if args[0] == "router":
        sts = kube.of_kind(objs, "StatefulSet")
        exp.update({"router.discovery": "kubernetes", "router.namespace": NAMESPACE,
                    "router.shard_port": values["httpPort"]})
        if sts:
            exp["router.service"] = sts[0]["spec"]["serviceName"]
    if args[0] == "produce":
        exp.update({"generator.rate": values["producer"]["rate"], "generator.seed": values["producer"]["seed"]})
    return exp


def check_values_set(report: Report, helm: Helm, chart: str, label: str, values_file: str | None,
                     binary: Binary, outdir: Path) -> int:
    """All checks of one values set. Returns the number of manifests validated."""
    base = yaml.safe_load(Path(chart, "values.yaml").read_text())
    over = yaml.safe_load(Path(values_file).read_text()) if values_file else {}
    values = merge_values(base, over or {})

    report.run(f"helm lint [{label}]", lint, helm, chart, values_file)

    rendered: dict = {}

    def render():
        try:
            r = helm.render(chart, over or None, release=RELEASE, namespace=NAMESPACE)
        except RenderError as e:
            raise Failure(f"helm install (into the stub API server) failed: {e}")
        rendered.update(r)
        docs = kube.load_all(r["manifest"])
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / f"chart-{label}.yaml").write_text(r["manifest"])
        if len(docs) != len(r["objects"]):
            raise Failure(f"manifest has {len(docs)} documents but Helm applied {len(r['objects'])} objects")
        if "port-forward" not in r["notes"]:
            raise Failure("NOTES.txt rendered without the port-forward commands")
        kinds = sorted({o["kind"] for o in r["objects"]})
        return f"{len(r['objects'])} objects: {', '.join(kinds)}"

    if report.run(f"helm install renders [{label}]", render) is None:
        return 0
    objs = rendered["objects"]
    report.run(f"Kubernetes {kube.K8S_VERSION} schemas, strict [{label}]",
               lambda: require(kube.validate(objs), f"{len(objs)} manifests valid"))
    report.run(f"chart invariants [{label}]",
               lambda: require(rules(objs, values), "shards=partitions, headless Service, probes, RBAC, HPA/PDB, selectors"))

    workloads = [o for o in kube.workloads(objs)]
    all_launches = {kube.name(w): podenv.launches(w, objs, NAMESPACE) for w in workloads}
    report.run(f"pod env: subcommands + contract keys [{label}]",
               lambda: require(podenv.static_problems([l for ls in all_launches.values() for l in ls]),
                               f"{sum(len(v) for v in all_launches.values())} container(s) of {len(workloads)} workload(s)"))
    for w in workloads:
        report.run(f"`swapstats config` accepts {kube.ident(w)} env [{label}]",
                   podenv.binary_verdict, all_launches[kube.name(w)], binary, expected_config(w, values, objs))
    return len(objs)


def check_schema_rejects(report: Report, helm: Helm, chart: str, bad_dir: Path) -> None:
    """Each file in bad_dir is a values file the chart's values.schema.json must
    reject (its first comment line says why)."""
    files = sorted(bad_dir.glob("*.yaml"))
    if not files:
        report.run("values.schema.json rejects bad values", lambda: (_ for _ in ()).throw(Failure(f"no cases in {bad_dir}")))
        return
    for f in files:
        def one(f=f):
            vals = yaml.safe_load(f.read_text())
            try:
                helm.render(chart, vals)
            except RenderError as e:
                msg = str(e)
                if "schema" not in msg.lower():
                    raise Failure(f"rejected, but not by the values schema: {msg}")
                leaves = set(_leaf_keys(vals))
                if not any(k in msg for k in leaves):
                    raise Failure(f"rejected by the schema, but not for {sorted(leaves)}: {msg}")
                return " / ".join(l.strip("- ").strip() for l in msg.splitlines() if l.strip().startswith("- at"))[:140]
            raise Failure("Helm accepted these values; values.schema.json should reject them")
        reason = f.read_text().splitlines()[0].lstrip("# ").strip()
        report.run(f"schema rejects {f.name}: {reason}", one)


def _leaf_keys(d: dict):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaf_keys(v)
        else:
            yield k
