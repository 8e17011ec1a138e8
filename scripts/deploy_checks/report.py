"""Pass/fail bookkeeping and output of the deploy checks."""

from __future__ import annotations

import traceback


class Failure(Exception):
    """A check failed; the message says why (one problem per line)."""


class Skip(Exception):
    """A check could not run here; the message says why."""


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures: list[str] = []
        self.skips: list[str] = []
        self.notes: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def note(self, text: str) -> None:
        print(f"  NOTE  {text}", flush=True)
        self.notes.append(text)

    def run(self, name: str, fn, *args, **kwargs):
        """Runs fn; its return value (a string) is printed as the detail of a
        pass. Failure -> FAIL, Skip -> SKIP, any other exception -> FAIL with
        the traceback's last lines."""
        try:
            detail = fn(*args, **kwargs)
        except Skip as s:
            self.skipped += 1
            self.skips.append(f"{name}: {s}")
            print(f"  SKIP  {name}\n        !!! {s}", flush=True)
            return None
        except Failure as f:
            self._fail(name, str(f))
            return None
        except Exception:  # a bug in a check, or a tool that blew up
            tb = traceback.format_exc().strip().splitlines()
            self._fail(name, "unexpected error:\n" + "\n".join(tb[-6:]))
            return None
        self.passed += 1
        print(f"  PASS  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return detail

    def _fail(self, name: str, why: str) -> None:
        self.failed += 1
        self.failures.append(f"{name}: {why.splitlines()[0] if why else ''}")
        print(f"  FAIL  {name}", flush=True)
        for line in why.splitlines():
            print(f"        {line}", flush=True)

    def summary(self) -> int:
        print("\n== summary")
        for s in self.skips:
            print(f"  skipped: {s}")
        for f in self.failures:
            print(f"  failed:  {f}")
        tail = f", {self.skipped} skipped" if self.skipped else ""
        print(f"deploy checks: {self.passed} passed, {self.failed} failed{tail}")
        return 1 if self.failed else 0


def require(problems: list[str], ok_detail: str = "") -> str:
    """Raise Failure listing the problems, if any; else return the detail."""
    if problems:
        raise Failure("\n".join(problems))
    return ok_detail
