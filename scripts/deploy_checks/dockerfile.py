"""Static checks of the Dockerfile and .dockerignore (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from .report import Failure


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        ins, _, args = buf.partition(" ")
        out.append((ins.upper(), args.strip()))
        buf = ""
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our patterns: the last
    matching pattern wins, `!` re-includes, a pattern matching a parent
    directory excludes everything below it."""
    result = False
    parts = path.split("/")
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and fnmatch.fnmatchcase(prefix, pat[3:])):
                result = not neg
                break
    return result


def check(root: Path) -> str:
    text = (root / "Dockerfile").read_text()
    ins = instructions(text)
    p: list[str] = []
    stages = []  # (name, base, [instructions])
    for i, a in ins:
        if i == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", a, re.I)
            stages.append([m.group(2) or f"stage{len(stages)}", m.group(1), []])
        elif stages:
            stages[-1][2].append((i, a))
    if len(stages) < 2:
        p.append("not a multi-stage build")
    final_name, final_base, final = stages[-1]
    if not final_base.startswith("debian:") or "slim" not in final_base:
        p.append(f"final stage is FROM {final_base}, expected debian:bookworm-slim")
    users = [a for i, a in final if i == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        p.append("final stage does not switch to a non-root USER")
    ep = [a for i, a in final if i == "ENTRYPOINT"]
    if not ep or "swapstats" not in ep[-1]:
        p.append("final stage's ENTRYPOINT is not the swapstats binary")
    if any(i == "RUN" and re.search(r"\b(cargo|rustc|rustup)\b", a) for i, a in final):
        p.append("final stage runs the Rust toolchain (it should only copy the binary)")
    for name, base, body in stages:
        for i, a in body:
            if i == "ADD" and re.search(r"https?://", a):
                p.append(f"stage {name}: ADD downloads from the network: {a}")
            if i == "RUN" and re.search(r"\b(curl|wget)\b|rustup\s+(install|toolchain)", a):
                p.append(f"stage {name}: RUN downloads outside crates.io/apt: {a[:80]}")
    # Dependencies cached in their own layer before the sources arrive.
    builder = next((s for s in stages if any(i == "RUN" and "cargo build" in a for i, a in s[2])), None)
    if builder is None:
        p.append("no stage runs cargo build")
    else:
        body = builder[2]
        cook = next((k for k, (i, a) in enumerate(body) if i == "RUN" and ("chef cook" in a or "cargo build" in a)), None)
        copy_all = next((k for k, (i, a) in enumerate(body) if i == "COPY" and re.match(r"^\.\s+\.$", a)), None)
        if cook is None or copy_all is None or cook > copy_all or "chef cook" not in body[cook][1]:
            p.append("dependencies are not built (cargo chef cook) before the sources are copied in")
        if not any("--release" in a for i, a in body if i == "RUN" and "cargo build" in a):
            p.append("the binary is not a release build")
    # .dockerignore keeps target/ and git out, and lets the build inputs in.
    di = root / ".dockerignore"
    if not di.exists():
        p.append("no .dockerignore")
    else:
        pats = [l.strip() for l in di.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
        for path in ("target/debug/swapstats", ".git/HEAD"):
            if not ignored(path, pats):
                p.append(f".dockerignore lets {path} into the build context")
        needed = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
        needed += [a.split()[0] for n, b, body in stages for i, a in body
                   if i == "COPY" and not a.startswith("--from") and a.split()[0] != "."]
        for path in needed:
            if ignored(path, pats):
                p.append(f".dockerignore excludes {path}, which the build needs")
            elif not (root / path).exists():
                p.append(f"{path} (a build input) does not exist")
    if p:
        raise Failure("\n".join(p))
    return f"{len(stages)} stages ({', '.join(s[0] for s in stages)}), runtime {final_base} as {users[-1]}"
