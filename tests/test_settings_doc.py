"""The settings reference (docs/settings.md) and .env.example are rendered from `Settings`
(tasks/settings_doc.py): both files are current, and every key has a description and a group."""

from __future__ import annotations

import re
import subprocess
from dataclasses import fields

import pytest

from tasks import settings_doc
from tasks.settings import Settings
from tasks.settings_groups import SETTING_GROUPS, STACK_KEYS
from tests.support import BIN, ROOT


@pytest.mark.parametrize("name", sorted(settings_doc.rendered()))
def test_the_generated_file_is_current(name):
    assert (ROOT / name).read_text() == settings_doc.rendered()[name], (
        f"{name} is not what tasks/settings.py renders: run `uv run invoke docs.settings` and commit the result")


def test_every_setting_has_a_description_and_a_group():
    described = [(Settings.env_key(f.name), f.metadata["doc"], f.metadata["group"]) for f in fields(Settings)]
    described += [(k.key, k.doc, k.group) for k in STACK_KEYS]
    for key, doc, group in described:
        assert doc.strip() and doc.rstrip().endswith("."), f"{key} needs a one-sentence description"
        assert group in SETTING_GROUPS, f"{key}: group {group!r} is not in SETTING_GROUPS"
    assert len({key for key, _, _ in described}) == len(described), "a key is listed twice"


def test_the_reference_lists_every_key_once_with_its_flags():
    text = settings_doc.render_settings_doc()
    for f in fields(Settings):
        rows = [line for line in text.splitlines() if line.startswith(f"| `{Settings.env_key(f.name)}` |")]
        assert len(rows) == 1, f.name
        cells = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
        assert cells[2:4] == ["yes" if f.metadata["required"] else "", "yes" if f.metadata["secret"] else ""], rows[0]


def test_secrets_in_the_example_are_empty_or_placeholders():
    """.env.example holds no real secret: a secret shows its placeholder (`example=`) or nothing."""
    values = dict(line.split("=", 1) for line in settings_doc.render_env_example().splitlines()
                  if line and not line.startswith("#"))
    for f in fields(Settings):
        if f.metadata["secret"]:
            assert values[Settings.env_key(f.name)] == (f.metadata["example"] or ""), f.name


def test_the_check_flag_finds_the_files_current():
    out = subprocess.run([str(BIN / "invoke"), "docs.settings", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_compose_files_defaults_are_the_settings_defaults():
    """A setting the stack reads as `${KEY:-default}` falls back to the same default as `Settings`."""
    defaults = {f.name.upper(): f.default for f in fields(Settings)}
    found = re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", "".join(
        (ROOT / name).read_text() for name in ("compose.yml", "docker-compose.production.yml", "swarm.yml")))
    checked = {(key, default) for key, default in found if key in defaults}
    assert ("WAL_ARCHIVE_TIMEOUT", "3") in checked
    assert [(k, d) for k, d in checked if d != str(defaults[k])] == []
