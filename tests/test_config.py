"""Configuration loading: YAML + environment, errors that name the key."""

from __future__ import annotations

import pytest

from tallybook.config import DEFAULT_DATABASE_URL, ConfigError, load_settings


def write(tmp_path, text: str):
    path = tmp_path / "tallybook.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.database.url == DEFAULT_DATABASE_URL
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8888)
    assert (settings.ingest.max_batch_events, settings.ingest.max_batch_bytes) == (10_000, 10 * 1024 * 1024)


def test_values_from_file_and_environment(tmp_path):
    path = write(
        tmp_path,
        "database:\n  url: sqlite:///x.db\nserver:\n  port: 9000\n"
        "auth:\n  bootstrap_keys:\n    - name: ci\n      scope: ingest\n      key: ${INGEST_KEY}\n",
    )
    settings = load_settings(path, env={"INGEST_KEY": "k" * 20})
    assert settings.server.port == 9000
    assert settings.auth.bootstrap_keys[0].key == "k" * 20
    assert settings.database.url == "sqlite:///x.db"


def test_database_url_from_environment_wins(tmp_path):
    path = write(tmp_path, "database:\n  url: sqlite:///x.db\n")
    settings = load_settings(path, env={"TALLYBOOK_DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert settings.database.url == "postgresql+psycopg://u@h/db"


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "server:\n  port: 9100\n")
    assert load_settings(env={"TALLYBOOK_CONFIG": str(path)}).server.port == 9100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ingest:\n  max_batch_events: 0\n", "ingest.max_batch_events: Input should be greater than 0"),
        ("server:\n  port: 70000\n", "server.port: Input should be less than or equal to 65535"),
        ("databse:\n  url: x\n", "databse: Extra inputs are not permitted"),
        (
            "database:\n  url: mysql://x\n",
            "database.url: must start with sqlite:/// or postgresql",
        ),
        (
            "auth:\n  bootstrap_keys:\n    - {name: a, scope: root, key: aaaaaaaaaaaaaaaaaaaa}\n",
            "auth.bootstrap_keys[0].scope: Input should be 'ingest', 'read' or 'admin'",
        ),
        (
            "auth:\n  bootstrap_keys:\n    - {name: a, scope: admin, key: '${MISSING}'}\n",
            "auth.bootstrap_keys[0].key: environment variable MISSING is not set",
        ),
        ("- a list\n", "the top level must be a mapping"),
        ("server: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={})
    assert message in str(caught.value)
    assert str(tmp_path / "tallybook.yaml") in str(caught.value)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
