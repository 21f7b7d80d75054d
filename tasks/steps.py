"""Step timing and failure reporting shared by the long-running tasks."""

from __future__ import annotations

import time
from contextlib import contextmanager

from invoke import Exit


def redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return text


class StepFailed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


class Steps:
    """Prints each step as it starts and ends, and a table of step times at the end."""

    def __init__(self, title: str, secrets: list[str] | None = None):
        self.title = title
        self.secrets = secrets or []
        self.rows: list[tuple[str, float, str]] = []
        self.started = time.monotonic()

    @contextmanager
    def step(self, name: str):
        print(f"-> {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.rows.append((name, time.monotonic() - started, "FAILED"))
            raise
        seconds = time.monotonic() - started
        self.rows.append((name, seconds, "ok"))
        print(f"   {name}: done in {seconds:.1f}s", flush=True)

    def skip(self, name: str, why: str) -> None:
        self.rows.append((name, 0.0, f"skipped ({why})"))

    def remote(self) -> "RemoteSteps":
        """An output stream for one remote script that marks its steps (`@@step NAME EPOCH`
        lines, printed by `commands.rollout.mark`): each step is announced as it starts and gets
        its own row, with the host's own timing."""
        return RemoteSteps(self)


    def table(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [4])
        lines = [f"{self.title}", f"  {'step'.ljust(width)}  {'time':>7}  result"]
        lines += [f"  {name.ljust(width)}  {seconds:6.1f}s  {result}" for name, seconds,
                  result in self.rows]
        lines.append(f"  {'total'.ljust(width)}  {time.monotonic() - self.started:6.1f}s")
        return "\n".join(lines)

    def print_table(self) -> None:
        print(self.table(), flush=True)

    def fail(self, message: str, code: int = 1):
        self.print_table()
        raise Exit(redact(message, self.secrets), code=code)


class RemoteSteps:
    """Turns a remote script's `@@step` markers into step rows and live progress; other lines
    are printed indented (redacted). `finish(ok)` closes the last step; `current` names it."""

    # a step starts; the script ends; data, not shown
    MARK, END, FACT = "@@step ", "@@end ", "@@fact "

    def __init__(self, steps: Steps):
        self.steps, self.buffer, self.current, self.started = steps, "", "", 0.0
        self.lines: list[str] = []
        self.ended: float | None = None
        self.facts: list[str] = []

    def write(self, data: str) -> int:
        self.buffer += data
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        return len(data)

    def flush(self) -> None:
        pass

    def _line(self, line: str) -> None:
        if line.startswith(self.END):
            stamp = line[len(self.END):].strip()
            self.ended = float(stamp) if stamp.replace(".", "", 1).isdigit() else None
        elif line.startswith(self.MARK):
            name, _, stamp = line[len(self.MARK):].rpartition(" ")
            at = float(stamp) if stamp.replace(".", "", 1).isdigit() else time.time()
            self._close(at, "ok")
            self.current, self.started = name, at
            print(f"-> {name}", flush=True)
        elif line.startswith(self.FACT):
            self.facts.append(line[len(self.FACT):])
        elif line.strip():
            self.lines.append(line)
            print(f"   {redact(line, self.steps.secrets)}", flush=True)

    def _close(self, at: float, result: str) -> None:
        if self.current:
            self.steps.rows.append((self.current, max(0.0, at - self.started), result))

    def finish(self, ok: bool) -> None:
        if self.buffer:
            self._line(self.buffer)
            self.buffer = ""
        self._close(self.ended or time.time(), "ok" if ok else "FAILED")
        if not ok and not self.current:
            self.current = "?"


def run_checked(conn, command: str, step: str, *, hide=True, secrets=(), **kwargs):
    """Run a remote command; on failure raise StepFailed with its (redacted) output."""
    result = conn.run(command, warn=True, hide=hide, **kwargs)
    if not result.ok:
        output = (result.stderr.strip() or result.stdout.strip())[-1500:]
        raise StepFailed(step, redact(f"exit {result.exited}: {output}", list(secrets)))
    return result

