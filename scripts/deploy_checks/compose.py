"""Checks of docker-compose.yml: it parses, every swapstats service runs a real
subcommand with an environment the binary accepts, and it is the same cluster
as the chart (partitions, topics, a six-node Redis Cluster, Jaeger)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import yaml

from .report import Failure, Skip
from .swapconfig import Binary, check_args, lookup, unknown_env_keys


def load(path: str) -> dict:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise Failure("no services mapping")
    return doc


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def command_of(svc: dict) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def swapstats_services(doc: dict) -> dict[str, dict]:
    return {n: s for n, s in doc["services"].items()
            if str(s.get("image", "")).split(":")[0] == "swapstats"}


def static(doc: dict) -> str:
    svcs = swapstats_services(doc)
    if not svcs:
        raise Failure("no service uses the swapstats image")
    problems = []
    for n, s in svcs.items():
        if s.get("entrypoint"):
            problems.append(f"{n}: overrides the image's entrypoint")
        problems += [f"{n}: {p}" for p in check_args(command_of(s))]
        problems += [f"{n}: {k} is not a configuration key of the contract" for k in unknown_env_keys(env_of(s))]
    if problems:
        raise Failure("\n".join(problems))
    return f"{len(svcs)} swapstats service(s): " + ", ".join(f"{n}={command_of(s)[0]}" for n, s in svcs.items())


def binary_verdict(doc: dict, name: str, binary: Binary) -> str:
    if not binary.present:
        raise Skip(f"{binary.path} is missing: build it (cargo build) or set SWAPSTATS_BIN")
    s = doc["services"][name]
    res = binary.config(env_of(s), hostname=s.get("hostname", name))
    if not res.ok:
        raise Failure(f"`swapstats config` rejected {name}'s environment: {res.output}")
    sub = command_of(s)[0]
    problems = []
    if sub == "shard":
        part, parts = lookup(res.config, "shard.partition"), lookup(res.config, "shard.partitions")
        if part is None or not (0 <= part < parts):
            problems.append(f"{name}: effective shard.partition {part!r} not within 0..{parts}")
    if sub == "router" and lookup(res.config, "router.discovery") == "static":
        if len(lookup(res.config, "router.shards") or []) != lookup(res.config, "shard.partitions"):
            problems.append(f"{name}: router.shards does not list one URL per partition")
    if problems:
        raise Failure("\n".join(problems))
    return f"`swapstats {sub}` config ok"


def topology(doc: dict) -> str:
    """The same cluster as the chart: P shards 0..P-1, topic with P partitions,
    router listing the P shards, 6-node Redis Cluster with replicas, Jaeger."""
    services = doc["services"]
    svcs = swapstats_services(doc)
    p: list[str] = []
    envs = {n: env_of(s) for n, s in svcs.items()}
    partitions = {e.get("SWAPSTATS__SHARD__PARTITIONS") for e in envs.values()}
    if len(partitions) != 1 or None in partitions:
        raise Failure(f"swapstats services disagree on SWAPSTATS__SHARD__PARTITIONS: {partitions}")
    P = int(partitions.pop())
    shards = {n: envs[n].get("SWAPSTATS__SHARD__PARTITION") for n, s in svcs.items() if command_of(s)[0] == "shard"}
    if sorted(shards.values(), key=lambda x: int(x or -1)) != [str(i) for i in range(P)]:
        p.append(f"shard services own partitions {sorted(shards.values())}, expected 0..{P - 1}")
    routers = [n for n, s in svcs.items() if command_of(s)[0] == "router"]
    if len(routers) != 1:
        p.append(f"expected one router service, got {routers}")
    else:
        r = svcs[routers[0]]
        urls = envs[routers[0]].get("SWAPSTATS__ROUTER__SHARDS", "").split(",")
        hosts = [urlparse(u).hostname for u in urls]
        by_part = {v: k for k, v in shards.items()}
        if hosts != [by_part.get(str(i)) for i in range(P)]:
            p.append(f"router shard URLs {urls} are not the shard services in partition order")
        if not any(str(pt).split(":")[-2:] == ["8080", "8080"] or str(pt) == "8080:8080" for pt in r.get("ports") or []):
            p.append("router does not publish port 8080")
    init = next((s for n, s in services.items() if "kafka-topics.sh" in " ".join(command_of(s))), None)
    if init is None:
        p.append("no service creates the Kafka topics")
    else:
        ie = env_of(init)
        if ie.get("PARTITIONS") != str(P):
            p.append(f"topic init creates {ie.get('PARTITIONS')} partitions, the shards expect {P}")
        env0 = next(iter(envs.values()))
        if ie.get("TOPIC") != env0.get("SWAPSTATS__KAFKA__TOPIC", "swaps") or ie.get("DLQ_TOPIC") != env0.get("SWAPSTATS__KAFKA__DLQ_TOPIC", "swaps.dlq"):
            p.append("topic init creates other topics than the services use")
    kafka = services.get("kafka", {})
    ke = env_of(kafka)
    if "controller" not in ke.get("KAFKA_PROCESS_ROLES", ""):
        p.append("kafka is not in KRaft mode (KAFKA_PROCESS_ROLES)")
    redis = [n for n, s in services.items() if "--cluster-enabled" in command_of(s)]
    if len(redis) != 6:
        p.append(f"{len(redis)} Redis Cluster nodes, expected 6")
    rinit = next((s for s in services.values() if "--cluster create" in " ".join(command_of(s))), None)
    if rinit is None or "--cluster-replicas 1" not in " ".join(command_of(rinit)):
        p.append("no service forms the Redis Cluster with --cluster-replicas 1")
    jaeger = services.get("jaeger", {})
    if not any(str(pt).startswith("16686:") for pt in jaeger.get("ports") or []):
        p.append("jaeger does not publish the UI on 16686")
    # Every host a swapstats service is pointed at is a service of the file.
    for n, e in envs.items():
        hosts = [b.rsplit(":", 1)[0] for b in e.get("SWAPSTATS__KAFKA__BROKERS", "").split(",") if b]
        hosts += [urlparse(u).hostname for u in e.get("SWAPSTATS__STORE__REDIS_URLS", "").split(",") if u]
        if e.get("SWAPSTATS__TELEMETRY__OTLP_ENDPOINT"):
            hosts.append(urlparse(e["SWAPSTATS__TELEMETRY__OTLP_ENDPOINT"]).hostname)
        for h in hosts:
            if h not in services:
                p.append(f"{n} points at {h!r}, which is no service of the file")
    # depends_on names exist.
    for n, s in services.items():
        deps = s.get("depends_on") or []
        for d in (deps if isinstance(deps, list) else list(deps)):
            if d not in services:
                p.append(f"{n} depends on unknown service {d!r}")
    if p:
        raise Failure("\n".join(p))
    return f"{P} partitions, shards {sorted(shards)}, router, 6 Redis nodes, Kafka KRaft, Jaeger"


def interpolation(path: str) -> str:
    """Compose interpolates $VAR in the file: every literal $ in a shell script
    must be written $$."""
    text = Path(path).read_text()
    bad = [m.group(0) for m in re.finditer(r"(?<!\$)\$(?!\$)\{?[A-Za-z_][A-Za-z0-9_]*", text)]
    if bad:
        raise Failure(f"unescaped compose interpolation: {sorted(set(bad))} (write $$ for the shell)")
    return "no unintended ${VAR} interpolation"
