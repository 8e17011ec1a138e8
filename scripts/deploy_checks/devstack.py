"""Checks of k8s/ (the dev dependencies): kustomize output, Kubernetes schemas,
and that it is the cluster the chart's defaults point at."""

from __future__ import annotations

from urllib.parse import urlparse

from . import kube
from .report import Failure


def env_of(obj: dict, container: str | None = None) -> dict[str, str]:
    cs = kube.pod_template(obj)["spec"]["containers"]
    c = cs[0] if container is None else next(c for c in cs if c["name"] == container)
    return {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}


def service_port(objs, host: str, port: int) -> bool:
    """host is `svc` or `pod.svc` (a StatefulSet pod behind a headless Service)."""
    parts = host.split(".")
    svc = kube.find(objs, "Service", parts[-1] if len(parts) > 1 else parts[0])
    if svc is None:
        return False
    if len(parts) > 1:
        pod, svcname = parts[0], parts[1]
        sts = next((s for s in kube.of_kind(objs, "StatefulSet") if s["spec"].get("serviceName") == svcname), None)
        if sts is None or not pod.startswith(kube.name(sts) + "-"):
            return False
        ordinal = pod[len(kube.name(sts)) + 1:]
        if not ordinal.isdigit() or int(ordinal) >= sts["spec"].get("replicas", 1):
            return False
    return any(p["port"] == port for p in svc["spec"]["ports"])


def rules(objs: list[dict], chart_values: dict) -> list[str]:
    p: list[str] = []
    # Kafka: one KRaft broker.
    kafka = kube.find(objs, "StatefulSet", "kafka")
    if kafka is None:
        return ["no StatefulSet kafka"]
    ke = env_of(kafka)
    if "controller" not in ke.get("KAFKA_PROCESS_ROLES", "") or "broker" not in ke.get("KAFKA_PROCESS_ROLES", ""):
        p.append("kafka is not a combined KRaft broker+controller (KAFKA_PROCESS_ROLES)")
    if any("ZOOKEEPER" in k for k in ke):
        p.append("kafka is configured for ZooKeeper")
    if not ke.get("CLUSTER_ID"):
        p.append("kafka has no CLUSTER_ID (KRaft storage format)")
    if kube.pod_template(kafka)["spec"].get("enableServiceLinks") is not False:
        p.append("kafka pod keeps service links: KAFKA_PORT etc. would become broker properties")
    # Topic job.
    job = kube.find(objs, "Job", "kafka-topics")
    if job is None:
        p.append("no Job kafka-topics")
    else:
        je = env_of(job)
        if je.get("PARTITIONS") != str(chart_values["partitions"]):
            p.append(f"kafka-topics PARTITIONS={je.get('PARTITIONS')} but the chart's partitions={chart_values['partitions']}")
        if je.get("TOPIC") != chart_values["kafka"]["topic"] or je.get("DLQ_TOPIC") != chart_values["kafka"]["dlqTopic"]:
            p.append("kafka-topics creates other topics than the chart's kafka.topic / kafka.dlqTopic")
        script = " ".join(kube.pod_template(job)["spec"]["containers"][0].get("command", []))
        if "--create" not in script or "$DLQ_TOPIC" not in script:
            p.append("kafka-topics does not create both topics")
    # Redis Cluster: 6 pods, 3 masters + 3 replicas.
    redis = kube.find(objs, "StatefulSet", "redis")
    if redis is None:
        p.append("no StatefulSet redis")
    else:
        n = redis["spec"].get("replicas")
        if n != 6:
            p.append(f"redis StatefulSet has {n} replicas, expected 6 (3 masters + 3 replicas)")
        conf = (kube.find(objs, "ConfigMap", "redis-cluster") or {}).get("data", {}).get("redis.conf", "")
        if "cluster-enabled yes" not in conf:
            p.append("redis.conf does not enable cluster mode")
        svc = kube.find(objs, "Service", redis["spec"]["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None":
            p.append("redis serviceName is not a headless Service")
        init = kube.find(objs, "Job", "redis-cluster-init")
        if init is None:
            p.append("no Job redis-cluster-init")
        else:
            ie = env_of(init)
            script = "\n".join(kube.pod_template(init)["spec"]["containers"][0].get("command", []))
            if ie.get("NODES") != str(n) or ie.get("REPLICAS") != "1" or "--cluster create" not in script:
                p.append("redis-cluster-init does not form all nodes with --cluster-replicas 1")
    # Jaeger: OTLP 4317 and UI 16686.
    jsvc = kube.find(objs, "Service", "jaeger")
    ports = {pt["port"] for pt in (jsvc or {"spec": {"ports": []}})["spec"]["ports"]}
    if not {4317, 16686} <= ports:
        p.append(f"Service jaeger exposes {sorted(ports)}, needs 4317 (OTLP) and 16686 (UI)")
    # The chart's defaults point at these.
    for b in chart_values["kafka"]["brokers"].split(","):
        host, _, port = b.rpartition(":")
        if not service_port(objs, host, int(port)):
            p.append(f"chart kafka.brokers {b} is not a Service port of k8s/")
    for u in chart_values["store"]["redisUrls"]:
        url = urlparse(u)
        if not service_port(objs, url.hostname, url.port or 6379):
            p.append(f"chart store.redisUrls {u} is not a Redis pod of k8s/")
    otlp = urlparse(chart_values["telemetry"]["otlpEndpoint"])
    if chart_values["telemetry"]["otlpEndpoint"] and not service_port(objs, otlp.hostname, otlp.port):
        p.append(f"chart telemetry.otlpEndpoint {otlp.geturl()} is not a Service port of k8s/")
    ui = chart_values["telemetry"]["jaegerUi"]
    if not service_port(objs, ui["service"], ui["port"]):
        p.append(f"chart telemetry.jaegerUi {ui['service']}:{ui['port']} is not a Service port of k8s/")
    # Every Service selects some workload's pods.
    for svc in kube.of_kind(objs, "Service"):
        if not any(kube.selects(svc["spec"].get("selector") or {}, kube.pod_template(w)["metadata"].get("labels") or {})
                   for w in kube.workloads(objs)):
            p.append(f"{kube.ident(svc)} selects no pods")
    return p


def render(path: str, report) -> tuple[list[dict], str]:
    if kube.kubectl():
        return kube.load_all(kube.kustomize(path)), "kubectl kustomize"
    report.note("kubectl is not installed: validating the files k8s/kustomization.yaml lists, "
                "without kustomize's transformers (install kubectl for the real output)")
    return kube.kustomization_resources(path), "resource files (no kubectl)"


def must(objs_holder: dict):
    if not objs_holder.get("objs"):
        raise Failure("nothing rendered")
