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
        ({"ALERT_TELEGRAM_CHAT_ID": "my chat"}, "ALERT_TELEGRAM_CHAT_ID 'my chat' must be a chat id like 123456789"),
        ({"ALERT_WEBHOOK_URL": "hooks.example.com/x"}, "ALERT_WEBHOOK_URL is not an http(s) URL like https://hooks.example.com/... "
                                                       "(value not shown: it is secret)"),
        ({"TELEGRAM_API_BASE_URL": "api.telegram.org"}, "TELEGRAM_API_BASE_URL 'api.telegram.org' is not an http(s) URL"),
        # Issue 24: placeholders, tokens over plain http, an ssh option for a host.
        ({"POSTGRES_PASSWORD": "change-me"}, "POSTGRES_PASSWORD is still .env.example's placeholder 'change-me'"),
        ({"TELEGRAM_BOT_TOKEN": "123456:replace-me"}, "TELEGRAM_BOT_TOKEN is still .env.example's placeholder"),
        ({"TELEGRAM_API_BASE_URL": "http://bot.example.com"}, "TELEGRAM_API_BASE_URL must be https:// (it carries a token"),
        ({"ALERT_WEBHOOK_URL": "http://10.0.0.5/hook"}, "ALERT_WEBHOOK_URL must be https://"),
        ({"OFFSITE_REPOSITORY": "sftp:backup@-oProxyCommand=x:/srv", "OFFSITE_PASSWORD": "p"},
         "must name its SFTP server as sftp:USER@HOST:/PATH"),
        ({"OFFSITE_REPOSITORY": "sftp:-l@host:/srv", "OFFSITE_PASSWORD": "p"}, "must name its SFTP server"),
        # Issue 27: Logfire's endpoint gets the token with every export.
        ({"LOGFIRE_BASE_URL": "logfire.example.com"},
         "LOGFIRE_BASE_URL 'logfire.example.com' is not an http(s) URL"),
        ({"LOGFIRE_BASE_URL": "http://logfire.example.com"},
         "LOGFIRE_BASE_URL 'http://logfire.example.com' must be https://"),
        ({"LOGFIRE_BASE_URL": "http://8.8.8.8:4318"},
         "LOGFIRE_BASE_URL 'http://8.8.8.8:4318' must be https://"),
        ({"LOGFIRE_TOKEN": "pylf_v1_eu_a b"},
         "LOGFIRE_TOKEN has a space or line break (value not shown: it is secret)"),
        ({"OFFSITE_REPOSITORY": "sftp://-l@host:22//srv", "OFFSITE_PASSWORD": "p"}, "must name its SFTP server"),
        ({"OFFSITE_REPOSITORY": "sftp://u@-oProxyCommand=x//srv", "OFFSITE_PASSWORD": "p"}, "must name its SFTP"),
        # Issue 26: the RPO in seconds needs a short archive_timeout; 0 would disable it.
        ({"WAL_ARCHIVE_TIMEOUT": "0"}, "WAL_ARCHIVE_TIMEOUT must be a whole number of at least 1"),
        ({"WAL_ARCHIVE_TIMEOUT": "61"}, "WAL_ARCHIVE_TIMEOUT 61 is out of range: it must be 1 to 60 seconds"),
        ({"WAL_ARCHIVE_TIMEOUT": "600"}, "Set WAL_ARCHIVE_TIMEOUT=3 in .env (the RPO stays within 5 s)"),
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


@pytest.mark.parametrize("chat_id", ["123456789", "-1001234567890", "@ops_alerts"])
def test_alert_settings(tmp_path, chat_id):
    s = load(tmp_path, ALERT_TELEGRAM_CHAT_ID=chat_id, ALERT_WEBHOOK_URL="https://hooks.example.com/T0/B1/hook-secret-value")
    assert s.alert_telegram_chat_id == chat_id and s.telegram_api_base_url == "https://api.telegram.org"
    assert "hook-secret-value" in s.alert_webhook_url.reveal() and "hook-secret-value" not in repr(s)
    assert s.alert_webhook_url.reveal() in s.secret_values()  # redacted from command output
    with pytest.raises(SettingsError) as err:
        load(tmp_path, ALERT_WEBHOOK_URL='https://hooks.example.com/"hook-secret-value')
    assert "hook-secret-value" not in str(err.value)


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


def test_example_env_file_is_complete_and_valid_once_its_placeholders_are_replaced():
    from tests.support import ROOT

    # A copy of the template is refused only for its placeholder secrets (issue 24), and names each.
    with pytest.raises(SettingsError) as err:
        Settings.load(env_file=ROOT / ".env.example", environ={})
    assert [p.split(" is still")[0] for p in err.value.problems] == [
        "POSTGRES_PASSWORD", "NATS_PASSWORD", "TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY"]
    real = {"POSTGRES_PASSWORD": "a", "NATS_PASSWORD": "b", "TELEGRAM_BOT_TOKEN": "1:c", "OPENAI_API_KEY": "d"}
    s = Settings.load(env_file=ROOT / ".env.example", environ=real)
    assert s.domain == "tasks.example.com"
    text = (ROOT / ".env.example").read_text()
    from dataclasses import fields

    for f in fields(Settings):
        assert f"{f.name.upper()}=" in text, f"{f.name.upper()} is not documented in .env.example"


# --- Which settings file: one per environment (`resolve_env_file`) ---------------------------

ENV_VARS = ("TASKTRACKER_ENV", "TASKTRACKER_ENV_FILE", "TASKTRACKER_SANDBOX_DIR")


@pytest.mark.parametrize("files, section, environ, host, expected", [
    # the single-file setup, unchanged
    ([".env"], {}, {}, None, (".env", "")),
    ([".env"], {}, {}, "vps", (".env", "")),
    ([], {}, {}, "vps", (".env", "")),  # no file at all: the environment alone (CI)
    ([".env", ".env.vps"], {}, {}, "deploy@203.0.113.10:22", (".env", "")),  # not an alias
    # the host: .env.<alias> when it exists
    ([".env", ".env.staging"], {}, {}, "staging", (".env.staging", "host staging")),
    ([".env", ".env.example"], {}, {}, "example", (".env", "")),  # the template is never settings
    # the sandbox: what `invoke sandbox.up` wrote, unless .env.sandbox exists
    ([".env", ".sandbox/.env"], {}, {}, "sandbox", (".sandbox/.env", "host sandbox, written by `invoke sandbox.up`")),
    ([".env", "box/.env"], {}, {"TASKTRACKER_SANDBOX_DIR": "{root}/box"}, "sandbox", ("box/.env", "host sandbox, written by `invoke sandbox.up`")),
    ([".env", ".sandbox/.env", ".env.sandbox"], {}, {}, "sandbox", (".env.sandbox", "host sandbox")),
    ([".env"], {}, {}, "sandbox", (".env", "")),
    ([".env", ".sandbox/.env"], {}, {}, "vps", (".env", "")),
    # an environment named outright beats the host
    ([".env", ".env.staging", ".env.production"], {}, {"TASKTRACKER_ENV": "production"}, "staging", (".env.production", "environment production")),
    ([".env", ".env.staging"], {"env": "staging"}, {}, "vps", (".env.staging", "environment staging")),  # --env
    ([".env.staging"], {"env": "staging"}, {"TASKTRACKER_ENV": "staging"}, "vps", (".env.staging", "environment staging")),
    ([".env", ".env.prod_2"], {}, {"TASKTRACKER_ENV": "prod_2"}, None, (".env.prod_2", "environment prod_2")),
    # a file named outright beats everything; fabric.yaml's beats the variable (as before)
    ([".env", ".env.staging", "other.env"], {}, {"TASKTRACKER_ENV_FILE": "{root}/other.env"}, "staging", ("other.env", "TASKTRACKER_ENV_FILE")),
    ([".env"], {"env_file": "{root}/a.env"}, {"TASKTRACKER_ENV_FILE": "{root}/b.env"}, None, ("a.env", "tasktracker.env_file")),
    ([".env", ".sandbox/.env"], {}, {"TASKTRACKER_ENV_FILE": "{root}/.sandbox/.env"}, "sandbox", (".sandbox/.env", "TASKTRACKER_ENV_FILE")),
], ids=["dotenv", "dotenv-any-host", "no-file", "user-at-host", "host-file", "never-example", "sandbox", "sandbox-dir",
        "env.sandbox-first", "sandbox-not-up", "sandbox-file-only-for-sandbox", "env-beats-host", "flag", "flag-and-env-agree",
        "underscore-name", "file-beats-host", "yaml-file-first", "harness-file"])
def test_the_settings_file_is_chosen_by_file_then_environment_then_host_then_dotenv(tmp_path, files, section, environ, host,
                                                                                      expected):
    from tasks.settings_files import resolve_env_file

    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("DOMAIN=tasks.example.com\n")
    fill = lambda values: {k: v.replace("{root}", str(tmp_path)) for k, v in values.items()}  # noqa: E731
    path, reason = resolve_env_file(fill(section), fill(environ), host, tmp_path)
    assert (path, reason) == (tmp_path / expected[0], expected[1])


@pytest.mark.parametrize("files, section, environ, expected", [
    ([".env"], {}, {"TASKTRACKER_ENV": "staging"},
     "The environment 'staging' (TASKTRACKER_ENV) has no settings file: create {root}/.env.staging (`cp .env.example "
     ".env.staging` in {root}, then fill it in), or choose another environment. Nothing was changed on any server."),
    ([".env"], {"env": "production"}, {}, "create {root}/.env.production"),
    ([".env.Staging"], {}, {"TASKTRACKER_ENV": "Staging"}, "The environment name 'Staging' (TASKTRACKER_ENV) must be lower-case"),
    ([], {}, {"TASKTRACKER_ENV": "../prod"}, "The environment name '../prod'"),
    ([], {}, {"TASKTRACKER_ENV": "-x"}, "The environment name '-x'"),
    ([], {"env": "a b"}, {}, "The environment name 'a b' (--env / tasktracker.env)"),
    ([".env.example"], {}, {"TASKTRACKER_ENV": "example"}, "'example' is the template"),
    ([".env.staging", ".env.production"], {"env": "production"}, {"TASKTRACKER_ENV": "staging"},
     "Two environments were chosen: 'production' (--env / tasktracker.env) and 'staging' (TASKTRACKER_ENV). Choose one"),
    ([".env.staging", "x.env"], {}, {"TASKTRACKER_ENV": "staging", "TASKTRACKER_ENV_FILE": "x.env"},
     "Both a settings file, x.env (TASKTRACKER_ENV_FILE), and an environment, 'staging' (TASKTRACKER_ENV), were chosen"),
], ids=["missing-env-file", "missing-flag-file", "upper-case", "path", "leading-dash", "space", "example", "two-names",
        "file-and-name"])
def test_a_bad_or_missing_environment_is_a_clear_usage_error(tmp_path, files, section, environ, expected):
    from tasks.settings_files import EnvChoiceError, resolve_env_file

    for rel in files:
        (tmp_path / rel).write_text("")
    with pytest.raises(EnvChoiceError) as err:
        resolve_env_file(section, environ, "staging", tmp_path)
    message = str(err.value)
    assert expected.replace("{root}", str(tmp_path)) in message
    assert message.endswith("Nothing was changed on any server.") and "\n" not in message


def test_a_task_says_which_settings_file_it_read_once_and_no_value(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from tasks import settings, settings_files

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_files, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(settings, "_ANNOUNCED", set())
    (tmp_path / ".env").write_text("DOMAIN=wrong.example.com\n")
    (tmp_path / ".env.staging").write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\n")
    c = SimpleNamespace(config={"tasktracker": {"env_file": None}}, original_host="staging")
    assert Settings.from_context(c).domain == "tasks.example.com"
    assert Settings.from_context(c).domain == "tasks.example.com"
    out = capsys.readouterr()
    assert out.out == ""  # stdout stays for the task (`--json`)
    assert out.err == f"settings: {tmp_path / '.env.staging'} (host staging)\n"
    for secret in SECRETS:
        assert secret not in out.err


def test_a_bad_environment_ends_the_task_with_the_usage_code(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from invoke import Exit

    from tasks import settings, settings_files

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKTRACKER_ENV", "staging")
    monkeypatch.setattr(settings_files, "PROJECT_ROOT", tmp_path)
    c = SimpleNamespace(config={"tasktracker": {}}, original_host="vps")
    for call in (Settings.from_context, settings.env_file_path):
        with pytest.raises(Exit) as err:
            call(c)
        assert err.value.code == 2 and f"create {tmp_path / '.env.staging'}" in err.value.message


def test_the_env_flag_names_the_environment_like_the_variable(tmp_path, monkeypatch):
    from fabric import Config, Connection
    from invoke import Context

    from tasks import ns, settings, settings_files

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_files, "PROJECT_ROOT", tmp_path)
    (tmp_path / ".env.production").write_text("")
    conn = Connection("staging", config=Config())
    conn.config.load_collection(ns.configuration())
    for c in (conn, Context()):
        settings.choose_env(c, None)
        assert settings.env_file_path(c) == tmp_path / ".env"
        settings.choose_env(c, "production")
        assert settings.env_file_choice(c) == (tmp_path / ".env.production", "environment production")


# --- `fab -H sandbox deploy` right after `invoke sandbox.up` -----------------------------------

def test_sandbox_status_prints_the_url_the_app_answers_on_and_the_deploy_command(tmp_path, monkeypatch, capsys):
    from invoke import Context

    from lab import sandbox

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKTRACKER_SANDBOX_DIR", str(tmp_path / ".sandbox"))
    monkeypatch.setattr(sandbox, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(sandbox, "ok", lambda argv: False)  # no docker here: the status is read from the records
    (tmp_path / ".sandbox").mkdir()
    sandbox.save_state({"address": "127.0.0.2", "port": 2222, "user_name": "tasktracker-deploy", "http_port": 18080})
    sandbox.status(Context())
    assert "  app:     http://127.0.0.2:18080/\n  deploy:  uv run fab -H sandbox deploy\n" in capsys.readouterr().out
    # The port nginx is published on is the settings' HTTP_PORT (what `sandbox.up` wrote).
    (tmp_path / ".sandbox" / ".env").write_text(sandbox.sandbox_env_text(18123, "127.0.0.2", {}, "p"))
    sandbox.status(Context())
    assert "  app:     http://127.0.0.2:18123/\n" in capsys.readouterr().out
    # ... the same file `fab -H sandbox deploy` reads, with no variable set.
    assert sandbox.deploy_env_file(Context()) == tmp_path / ".sandbox" / ".env"


@pytest.mark.parametrize("overrides", [
    {"TELEGRAM_API_BASE_URL": "http://127.0.0.1:8081", "ALERT_WEBHOOK_URL": "http://localhost:9000/hook"},
    {"OFFSITE_REPOSITORY": "sftp:backup@backup.example.com:/srv/restic/tt", "OFFSITE_PASSWORD": "p"},
    {"OFFSITE_REPOSITORY": "sftp:backup-host:/srv/restic/tt", "OFFSITE_PASSWORD": "p"},
    {"OFFSITE_REPOSITORY": "sftp://backup@10.0.0.5:2222//srv/restic/tt", "OFFSITE_PASSWORD": "p"},
])
def test_loopback_http_and_plain_sftp_repositories_are_accepted(tmp_path, overrides):
    load(tmp_path, **overrides)


def test_logfire_is_off_by_default_and_its_token_a_secret_the_stack_gets(tmp_path):
    """Without LOGFIRE_TOKEN nothing traces; with it, the token is redacted like any secret and the
    release's .env (the only way it reaches the containers) carries it and LOGFIRE_BASE_URL."""
    from tasks.release_env import env_values

    assert (load(tmp_path).logfire_token, load(tmp_path).logfire_base_url) == ("", "")
    assert env_values(load(tmp_path), None, "/srv/tt")["LOGFIRE_TOKEN"] == ""
    token = "pylf_v1_eu_" + "0123456789abcdef" * 3
    urls = ("https://logfire-eu.pydantic.dev", "http://127.0.0.1:4318", "http://172.17.0.1:4318",
            "http://10.1.2.3")
    for url in urls:
        s = load(tmp_path, LOGFIRE_TOKEN=token, LOGFIRE_BASE_URL=url)
        assert token in s.secret_values()
        assert token not in repr(s) and token not in f"{s.logfire_token}"
        values = env_values(s, None, "/srv/tt")
        assert (values["LOGFIRE_TOKEN"], values["LOGFIRE_BASE_URL"]) == (token, url)
    with pytest.raises(SettingsError) as err:
        load(tmp_path, LOGFIRE_TOKEN=token, LOGFIRE_BASE_URL="http://logfire.example.com")
    assert token not in str(err.value)
