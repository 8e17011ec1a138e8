"""The binary's configuration contract, and `swapstats config` as the judge of an
environment: the same loading as the service (defaults <- --config FILE <- env),
exit 0 with the effective config as JSON, non-zero naming the bad key."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

SUBCOMMANDS = {"standalone", "shard", "router", "produce", "config"}
# Flags each subcommand takes besides the global --config FILE.
SUBCOMMAND_FLAGS = {"produce": {"--count"}}

# Every configuration key of the contract (TOML section.key).
KEYS = {
    "http.addr",
    "windows",
    "ingest.dedup_horizon", "ingest.retention", "ingest.max_future_skew",
    "generator.rate", "generator.tokens", "generator.wallets", "generator.dup_rate",
    "generator.disorder", "generator.seed",
    "kafka.brokers", "kafka.topic", "kafka.dlq_topic",
    "shard.partition", "shard.partitions", "shard.batch_max_swaps", "shard.batch_max_delay",
    "shard.ready_max_lag",
    "store.kind", "store.redis_urls",
    "router.discovery", "router.shards", "router.service", "router.namespace",
    "router.shard_port", "router.shard_timeout",
    "ws.coalesce", "ws.ping_interval", "ws.client_queue", "ws.max_subscriptions",
    "ws.max_message_bytes",
    "telemetry.otlp_endpoint", "telemetry.sample_ratio",
    "log.format",
}
PREFIX = "SWAPSTATS__"


def env_key(name: str) -> str:
    """SWAPSTATS__SHARD__BATCH_MAX_SWAPS -> shard.batch_max_swaps"""
    return ".".join(name[len(PREFIX):].lower().split("__"))


def unknown_env_keys(env: dict[str, str]) -> list[str]:
    """SWAPSTATS__ variables that name no key of the contract."""
    return sorted(n for n in env if n.startswith(PREFIX) and env_key(n) not in KEYS)


def check_args(args: list[str]) -> list[str]:
    """Problems with a container's args/command: a real subcommand first, then
    only flags it knows (each followed by its value)."""
    problems = []
    if not args:
        return ["no subcommand (the image's default is `standalone`; a deployment should say which role)"]
    # Global --config may come before the subcommand.
    rest = list(args)
    while rest and rest[0] == "--config":
        rest = rest[2:]
    if not rest or rest[0] not in SUBCOMMANDS:
        return [f"{args[0]!r} is not a swapstats subcommand ({', '.join(sorted(SUBCOMMANDS))})"]
    sub, rest = rest[0], rest[1:]
    allowed = {"--config"} | SUBCOMMAND_FLAGS.get(sub, set())
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag not in allowed:
            problems.append(f"`{sub}` does not take {flag!r}")
            i += 1
            continue
        if i + 1 >= len(rest):
            problems.append(f"{flag} needs a value")
        elif flag == "--count" and not rest[i + 1].isdigit():
            problems.append(f"--count {rest[i + 1]!r} is not a count")
        i += 2
    return problems


@dataclass
class BinaryResult:
    ok: bool
    output: str
    config: dict | None


class Binary:
    def __init__(self, path: str):
        self.path = path

    @property
    def present(self) -> bool:
        return os.path.isfile(self.path) and os.access(self.path, os.X_OK)

    def config(self, env: dict[str, str], config_toml: str | None = None,
               hostname: str | None = None) -> BinaryResult:
        """Runs `swapstats [--config FILE] config` with exactly `env` (plus PATH
        and HOME) and returns whether it accepted it."""
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
        if hostname:
            full["HOSTNAME"] = hostname
        full.update(env)
        args = [self.path]
        tmp = None
        if config_toml is not None:
            tmp = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            tmp.write(config_toml)
            tmp.close()
            args += ["--config", tmp.name]
        args.append("config")
        try:
            p = subprocess.run(args, env=full, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            return BinaryResult(False, "`swapstats config` did not exit within 30 s", None)
        finally:
            if tmp:
                os.unlink(tmp.name)
        out = (p.stdout + p.stderr).strip()
        if p.returncode != 0:
            return BinaryResult(False, out.splitlines()[-1] if out else f"exit {p.returncode}", None)
        try:
            cfg = json.loads(p.stdout)
        except json.JSONDecodeError:
            return BinaryResult(False, "exit 0 but stdout is not the JSON config: " + p.stdout[:200], None)
        return BinaryResult(True, "", cfg)


def lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
