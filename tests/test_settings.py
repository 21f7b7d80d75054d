"""Settings: loading order, validation messages, secrets never shown."""

import pytest

from tasks.settings import Settings, SettingsError

GOOD = {
    "POSTGRES_PASSWORD": "pg-secret-value",
    "NATS_PASSWORD": "nats-secret-value",
    "TELEGRAM_BOT_TOKEN": "123:tg-secret-value",
    "OPENAI_API_KEY": "sk-secret-value",
    "APP_URL": "https://tasks.example.com",
    "WEBAPP_URL": "https://tasks.example.com/app",
    "DOMAIN": "tasks.example.com",
}
SECRETS = ["pg-secret-value", "nats-secret-value", "123:tg-secret-value", "sk-secret-value"]


def load(tmp_path, **overrides):
    env = {**GOOD, **overrides}
    env = {k: v for k, v in env.items() if v is not None}
    return Settings.load(env_file=tmp_path / "missing.env", environ=env)


def test_valid_settings_load_with_defaults(tmp_path):
    s = load(tmp_path)
    assert s.llm_provider == "openai"
    assert s.keep_releases == 5 and s.api_workers == 1
    assert s.postgres_password.reveal() == "pg-secret-value"
    assert s.nats_user == "tasktracker" and s.nats_password.reveal() == "nats-secret-value"
    assert "nats-secret-value" in s.secret_values()  # redacted from command output


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"POSTGRES_PASSWORD": None}, "POSTGRES_PASSWORD is missing or empty"),
        ({"NATS_PASSWORD": None}, "NATS_PASSWORD is missing or empty"),
        ({"TELEGRAM_BOT_TOKEN": "  "}, "TELEGRAM_BOT_TOKEN is missing or empty"),
        ({"LLM_PROVIDER": "gemini"}, "LLM_PROVIDER 'gemini' is unknown (use one of: openai, anthropic)"),
        ({"LLM_PROVIDER": "anthropic"}, "ANTHROPIC_API_KEY is missing or empty (LLM_PROVIDER is anthropic)"),
        ({"APP_URL": "tasks.example.com"}, "APP_URL 'tasks.example.com' is not an http(s) URL"),
        ({"WEBAPP_URL": "ftp://x.example.com"}, "WEBAPP_URL 'ftp://x.example.com' is not an http(s) URL"),
        ({"DOMAIN": "bad_domain!"}, "DOMAIN 'bad_domain!' is not a domain name"),
        ({"NATS_URL": "http://nats:4222"}, "NATS_URL 'http://nats:4222' is not a nats:// URL"),
        ({"KEEP_RELEASES": "zero"}, "KEEP_RELEASES must be a whole number of at least 1"),
        ({"API_WORKERS": "0"}, "API_WORKERS must be a whole number of at least 1"),
        ({"APP_DIR": "../etc"}, "APP_DIR '../etc' must be a plain path"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_each_problem_has_a_clear_message(tmp_path, overrides, expected):
    with pytest.raises(SettingsError) as err:
        load(tmp_path, **overrides)
    message = str(err.value)
    assert expected in message
    assert "Fix these keys in .env" in message and ".env.example" in message
    assert "\n" not in message


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SettingsError) as err:
        load(tmp_path, POSTGRES_PASSWORD="", LLM_PROVIDER="x", DOMAIN="-", APP_URL="nope")
    assert len(err.value.problems) == 4
    for key in ("POSTGRES_PASSWORD", "LLM_PROVIDER", "DOMAIN", "APP_URL"):
        assert key in str(err.value)


def test_secrets_never_appear_in_repr_str_or_errors(tmp_path):
    s = load(tmp_path)
    text = repr(s) + str(s) + f"{s.postgres_password}" + str(s.telegram_bot_token) + f"{s.nats_password}"
    for secret in SECRETS:
        assert secret not in text
    assert "[REDACTED]" in text
    with pytest.raises(SettingsError) as err:
        load(tmp_path, DOMAIN="not a domain")
    for secret in SECRETS:
        assert secret not in str(err.value)


def test_env_file_then_environment_override_fabric_yaml(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nKEEP_RELEASES=3\nAPI_WORKERS=2\n")
    s = Settings.load(config={"keep_releases": 9, "app_dir": "/srv/tt"}, env_file=env_file, environ={"API_WORKERS": "4"})
    assert s.app_dir == "/srv/tt"  # only fabric.yaml sets it
    assert s.keep_releases == 3  # .env beats fabric.yaml
    assert s.api_workers == 4  # environment beats .env


def test_example_env_file_is_complete_and_valid():
    from tests.support import ROOT

    s = Settings.load(env_file=ROOT / ".env.example", environ={})
    assert s.domain == "tasks.example.com"
    text = (ROOT / ".env.example").read_text()
    from dataclasses import fields

    for f in fields(Settings):
        assert f"{f.name.upper()}=" in text, f"{f.name.upper()} is not documented in .env.example"
