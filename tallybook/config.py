"""Configuration: `tallybook.yaml` (path from --config or TALLYBOOK_CONFIG) plus environment.

Secrets stay out of the file: any string may be written `${NAME}` and is read from the environment
at start. A bad file fails at start with a message naming the key, e.g.
`tallybook.yaml: ingest.max_batch_events: Input should be greater than 0`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tallybook.billing.settings import BillingSettings
from tallybook.meters.config import MeterSettings
from tallybook.stripe.settings import StripeSettings
from tallybook.webhooks.settings import WebhookEndpoint, WebhookSettings

DEFAULT_CONFIG_FILE = "tallybook.yaml"
DEFAULT_DATABASE_URL = "sqlite:///./tallybook.db"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = DEFAULT_DATABASE_URL

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return value


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8888, ge=1, le=65535)


class IngestSettings(_Section):
    max_batch_events: int = Field(10_000, gt=0, description="events per request")
    max_batch_bytes: int = Field(10 * 1024 * 1024, gt=0, description="request body size")
    # Upper bound on events in one group-commit transaction; concurrent requests share it.
    group_commit_max_events: int = Field(20_000, gt=0)
    # Writer threads committing groups at once (each its own connection). Default: 2 on PostgreSQL,
    # where one group is written while the database works on the previous one; SQLite has one
    # write lock, so it keeps one.
    writers: int | None = Field(None, ge=1, le=16, description="concurrent group-commit writers (PostgreSQL)")

    def writers_for(self, database_url: str) -> int:
        if database_url.startswith("sqlite"):
            return 1  # also when --database points a PostgreSQL config at a SQLite file
        return 2 if self.writers is None else self.writers


class BootstrapKey(_Section):
    name: str = Field(min_length=1)
    scope: Literal["ingest", "read", "admin"]
    key: str = Field(min_length=16, description="the secret; write ${ENV_VAR} to keep it out of the file")


class AuthSettings(_Section):
    bootstrap_keys: list[BootstrapKey] = Field(default_factory=list)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(True, alias="json")


class Settings(_Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    meters: MeterSettings = Field(default_factory=MeterSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)

    @model_validator(mode="after")
    def _one_sqlite_writer(self) -> Settings:
        if self.database.url.startswith("sqlite") and (self.ingest.writers or 1) > 1:
            raise ValueError(
                "ingest.writers above 1 needs PostgreSQL: SQLite lets one writer at a time hold a database file"
            )
        return self

    @model_validator(mode="after")
    def _codehooks_webhooks(self) -> Settings:
        """A codehooks `systemconfig.json` is the whole config of a codehooks user: its `periods` and
        `webhooks` drive period close as its `events` define meters. What tallybook.yaml's own
        `webhooks:` section says explicitly wins (its periods; an endpoint with the same url)."""
        codehooks = self.meters.codehooks
        if codehooks is None or (not codehooks.webhooks and not codehooks.periods):
            return self
        webhooks = self.webhooks
        update: dict[str, Any] = {}
        if codehooks.periods and "periods" not in webhooks.model_fields_set:
            update["periods"] = list(dict.fromkeys(codehooks.periods))
        known = {endpoint.url for endpoint in webhooks.endpoints}
        added = []
        for index, raw in enumerate(codehooks.webhooks):
            try:
                endpoint = WebhookEndpoint.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(_format_problem(err) for err in exc.errors(include_url=False))
                raise ValueError(f"codehooks config {codehooks.path}: webhooks[{index}]: {problems}") from None
            if endpoint.url not in known:
                known.add(endpoint.url)
                added.append(endpoint)
        if added:
            update["endpoints"] = [*webhooks.endpoints, *added]
        if not update:
            return self
        try:
            merged = WebhookSettings.model_validate({**webhooks.model_dump(exclude_unset=True), **update})
        except ValidationError as exc:
            problems = "; ".join(_format_problem(err) for err in exc.errors(include_url=False))
            raise ValueError(f"codehooks config {codehooks.path}: {problems}") from None
        return self.model_copy(update={"webhooks": merged})

    def with_database(self, url: str | None) -> Settings:
        """These settings on another database; ConfigError (one line) when `url` is not usable."""
        if not url:
            return self
        try:
            database = DatabaseSettings(url=url)
        except ValidationError as exc:
            problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors(include_url=False))
            raise ConfigError(f"database URL {url!r}: {problems}") from None
        return self.model_copy(update={"database": database})


def _expand_env(value: Any, path: str, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]

        return _ENV_REFERENCE.sub(replace, value)
    return value


def _format_problem(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{_format_location(error['loc'])}: {message}" if error["loc"] else message


def _format_location(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read settings from `path` (or TALLYBOOK_CONFIG, or ./tallybook.yaml if present).

    TALLYBOOK_DATABASE_URL, when set, overrides database.url (handy for secrets in the URL).
    """
    env = dict(os.environ if env is None else env)
    explicit = path or env.get("TALLYBOOK_CONFIG")
    file = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    raw: Any = {}
    if file.exists():
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections (database, server, ...)")
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    try:
        raw = _expand_env(raw, "", env)
        settings = Settings.model_validate(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(_format_problem(err) for err in exc.errors(include_url=False))
        raise ConfigError(f"{file}: {problems}") from None
    return settings.with_database(env.get("TALLYBOOK_DATABASE_URL"))
