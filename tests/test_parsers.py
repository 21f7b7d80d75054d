"""Parsers against recorded host output (pyinfra style): tests/recorded/<parser>/<case>.json holds
the command, what the host printed for it, and what the parser must make of it.

Most outputs were produced by really running the command with bash (against a temporary APP_DIR,
with stand-ins for docker/psql where the command needs them); a file's "note" says how. To add a
case, drop a file in the parser's directory: the one test below picks it up.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pytest

from tasks.commands import audit, backup, lock, release, tls
from tasks.commands import schema as schema_commands
from tasks.preflight import choose_compose, host_problem

RECORDED = Path(__file__).parent / "recorded"


def _facts(case: dict) -> dict:
    facts = release.parse_facts(case["output"])
    return {"facts": facts, "compose": choose_compose(facts, "auto"), "host_ready": host_problem(facts, "vps", "auto") is None}


def _releases(case: dict) -> dict:
    rows, current = release.parse_releases(case["output"])
    return {"rows": [[name, meta] for name, meta in rows], "current": current}


def _schema(case: dict) -> dict:
    state = schema_commands.parse_schema(case["output"])
    return {**asdict(state), "known": list(state.known), "heads": list(state.heads), "fresh": state.fresh,
            "migrations_pending": state.migrations_pending, "unknown_to_release": state.unknown_to_release}


def _lock(case: dict) -> dict:
    state, info, liveness = lock.parse_report(case["output"])
    return {"state": state, "info": info, "liveness": liveness, "described": lock.describe(info, liveness)}


def _tls(case: dict) -> list:
    certs = tls.parse_status(case["output"], now=datetime.fromisoformat(case["now"]))
    return [{**c, "expires": c["expires"].isoformat()} for c in certs]


def _sets(case: dict) -> dict:
    sets, log = backup.parse_sets(case["output"])
    return {"sets": sets, "log": log, "verified": backup.verified(sets)}


def _run(case: dict) -> dict:
    name, manifest = backup.parse_run(case["output"])
    return {"name": name, "manifest": manifest}


def _audit(case: dict) -> list:
    return audit.format_entries(case["output"])


PARSERS = {
    "release.parse_facts": _facts,
    "release.parse_releases": _releases,
    "schema.parse_schema": _schema,
    "lock.parse_report": _lock,
    "tls.parse_status": _tls,
    "backup.parse_sets": _sets,
    "backup.parse_run": _run,
    "audit.format_entries": _audit,
}
CASES = sorted(RECORDED.glob("*/*.json"))


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_recorded_output_parses_to_the_expected_facts(path):
    case = json.loads(path.read_text())
    assert PARSERS[path.parent.name](case) == case["expected"]


def test_every_parser_has_recordings_and_every_recording_a_parser():
    assert {p.parent.name for p in CASES} == set(PARSERS)
    for path in CASES:
        case = json.loads(path.read_text())
        assert {"command", "output", "expected"} <= set(case), path
