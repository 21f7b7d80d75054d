"""The settings reference (docs/settings.md) and .env.example, rendered from `Settings` and
`STACK_KEYS` in tasks/settings_groups.py, their one source: `invoke docs.settings` writes both, and
`--check` (and tests/test_settings_doc.py) fails when either differs from what is rendered."""

from __future__ import annotations

import textwrap
from dataclasses import MISSING, dataclass, fields

from invoke import Collection, Exit, task

from .exits import ExitCode
from .settings import PROJECT_ROOT, Settings
from .settings_groups import SETTING_GROUPS, STACK_KEYS

WIDTH = 100
SETTINGS_DOC = "docs/settings.md"
ENV_EXAMPLE = ".env.example"
GENERATED = "Generated from tasks/settings.py by `invoke docs.settings`: edit there, not here."

ENV_HEADER = """\
Task Tracker settings. Copy to .env and fill in. `fab deploy` validates this file on your
machine before connecting, then uploads it to APP_DIR/env/<release>.env on the host (mode 0600).
Variables in the environment override this file; fabric.yaml (section `tasktracker:`)
may hold non-secret defaults.
Several environments from one checkout: one file each, .env.staging, .env.production ...
`fab -H staging deploy` reads .env.staging when it exists (the host's alias), and
`TASKTRACKER_ENV=production fab -H vps deploy` (or `deploy --env production`) reads
.env.production. Two environments on one host need their own APP_DIR, COMPOSE_PROJECT,
HTTP_PORT/HTTPS_PORT and *_HOST_PORT values.
Every key is described in docs/settings.md."""

DOC_HEADER = """\
# Settings reference

Every key of the settings file (`.env`, or `.env.NAME` per environment) and the environment, by
group. Where the values come from and which file a task reads: [Settings](reference.md#settings)
and [Environments](reference.md#environments) in the reference. [.env.example](../.env.example)
is a template with every key, rendered from the same source.

*Required* keys must be set (a task refuses to start without them, naming them all at once);
*secret* values are never printed. Keys marked *stack* are read by the stack's containers and are
not checked by the tasks: they reach the host as the settings file has them, else the default
applies."""


@dataclass(frozen=True)
class Entry:
    """One key of the reference, from a `Settings` field or a `StackKey`."""

    key: str
    default: str
    example: str
    required: bool
    secret: bool
    stack: bool
    group: str
    doc: str


def entries() -> list[Entry]:
    """Every key, grouped in the order of `SETTING_GROUPS`: each group's `Settings` fields in their
    order, then its stack keys."""
    found = []
    for f in fields(Settings):
        default = ("" if f.default in (MISSING, None) else str(f.default).lower()
                   if isinstance(f.default, bool) else str(f.default))
        example = f.metadata["example"]
        found.append(Entry(Settings.env_key(f.name), default, default if example is None
                           else example,
                           f.metadata["required"], f.metadata["secret"], False, f.metadata["group"],
                           f.metadata["doc"]))
    found += [Entry(k.key, k.default, k.default, False, False, True, k.group, k.doc)
              for k in STACK_KEYS]
    order = list(SETTING_GROUPS)
    # stable: declaration order kept
    return sorted(found, key=lambda e: (order.index(e.group), e.stack))


def _flags(entry: Entry) -> list[str]:
    return [name for name, on in (("required", entry.required), ("secret", entry.secret),
                                  ("stack", entry.stack)) if on]


def _comment(text: str, width: int = WIDTH) -> list[str]:
    return [f"# {line}" if line else "#" for para in text.splitlines()
            for line in (textwrap.wrap(para, width - 2, break_on_hyphens=False,
                                       break_long_words=False) or [""])]


def render_env_example() -> str:
    """.env.example: the header, then each group with its note and each key with its description,
    flags and the example value (placeholders for the required secrets, else the default)."""
    lines = _comment(ENV_HEADER) + _comment(GENERATED)
    group = None
    for entry in entries():
        if entry.group != group:
            group = entry.group
            lines += ["", f"# --- {group} ".ljust(WIDTH, "-")] + _comment(SETTING_GROUPS[group])
        flags = _flags(entry)
        lines += _comment(entry.doc + (f" [{', '.join(flags)}]" if flags else ""))
        lines.append(f"{entry.key}={entry.example}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_settings_doc() -> str:
    """docs/settings.md: a table per group (key, default, required, secret, description)."""
    lines = [DOC_HEADER, "", f"<!-- {GENERATED} -->"]
    group = None
    for entry in entries():
        if entry.group != group:
            group = entry.group
            note = textwrap.wrap(SETTING_GROUPS[group], WIDTH, break_on_hyphens=False,
                                 break_long_words=False)
            lines += ["", f"## {group}", "", *note, "", "| key | default | required | secret | "
                                                        "description |",
                      "| --- | --- | --- | --- | --- |"]
        default = f"`{entry.default}`" if entry.default else ""
        doc = entry.doc + (" *(stack)*" if entry.stack else "")
        lines.append(f"| `{entry.key}` | {_cell(default)} | {'yes' if entry.required else ''} | "
                     f"{'yes' if entry.secret else ''} | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


def rendered() -> dict[str, str]:
    """What each generated file (relative to the project root) must hold."""
    return {SETTINGS_DOC: render_settings_doc(), ENV_EXAMPLE: render_env_example()}


@task(name="settings", help={"check": "Change nothing: exit 1 when docs/settings.md or "
                                      ".env.example differs from what Settings renders."})
def write_settings(c, check=False):
    """Write docs/settings.md and .env.example from the Settings in tasks/settings.py."""
    stale = []
    for name, text in rendered().items():
        path = PROJECT_ROOT / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if check and stale:
        raise Exit(f"{', '.join(stale)} differ from tasks/settings.py: run `invoke docs.settings`.",
                   code=ExitCode.FAILED)
    print(f"{'Rewrote' if stale else 'Up to date:'} {', '.join(stale or rendered())}.")


ns = Collection("docs")
ns.add_task(write_settings)
