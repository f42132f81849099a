"""Settings from DUSTPAN_* environment variables and an optional YAML file (DUSTPAN_CONFIG).

A bad value stops the process at start with one line naming the setting.
"""

from __future__ import annotations

import json
import os
import re
import sys
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

SERVICES_FILE = "services.json"
SECRETS_FILE = "secrets.json"


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccumulationSettings(_Section):
    threshold: Decimal = Field(Decimal(1), ge=1, description="whole shares that trigger an execution")
    batch_size: int = Field(2000, ge=1, le=100_000, description="trades applied per transaction")
    restricted_symbols: CommaList = Field(default_factory=list)
    queues: dict[str, Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]] = Field(
        default_factory=dict, description="symbol -> its own ingestion queue (hot symbols); others use 'ingestion'"
    )

    _split = field_validator("restricted_symbols", mode="before")(_comma_list)


class AuditSettings(_Section):
    max_waiting_seconds: int = Field(60, ge=1, description="the audit is not ok while a trade waits longer")
    verify_period_seconds: int = Field(86_400, ge=60, description="every row is re-verified within this")
    verify_chunk_rows: int = Field(20_000, ge=100, le=1_000_000, description="least rows per verifier step")


class ExecutionSettings(_Section):
    rejection_backoff_seconds: int = Field(30, ge=0, le=3600)
    freeze_after_rejections: int = Field(3, ge=1)
    poll_seconds: int = Field(5, ge=1, le=300, description="re-check of an order still working at the broker")
    submitted_stale_seconds: int = Field(60, ge=5, description="sweep looks up submitted orders older than this")
    pending_stale_seconds: int = Field(10, ge=1, description="sweep re-sends pending executions older than this")
    alert_after_unknown_outcomes: int = Field(
        5, ge=1, description="broker answers in a row that say nothing about an order before one ERROR for a person"
    )
    claim_lease_seconds: int = Field(
        3, ge=2, le=600, description="a claim on an execution lasts this long without its worker's heartbeat"
    )
    calls_per_symbol: int = Field(2, ge=1, le=64, description="broker calls of one symbol under way at once")
    failures_to_open: int = Field(
        5,
        ge=1,
        le=100,
        description="order calls of one symbol in a row whose answer said nothing before its breaker opens",
    )
    breaker_cooldown_seconds: int = Field(
        10, ge=1, le=3600, description="first cooldown of an open breaker; doubles with each opening in a row"
    )
    breaker_max_cooldown_seconds: int = Field(300, ge=1, le=86400, description="cap of the breaker's cooldown")
    account_pause_seconds: int = Field(
        300, ge=1, le=86400, description="an account the broker refused waits this long before one probe order"
    )
    standby_below_load_percent: int = Field(
        100,
        ge=0,
        le=100_000,
        description="a worker starts its execution node's standby only while the 1-minute load average is below"
        " this percent of the CPU count (its imports would compete with the work); 0: no standby",
    )


class PaperSettings(_Section):
    partial_fill_ratio: Decimal = Field(Decimal(1), ge=0, le=1, description="share of each order that fills")
    reject_symbols: CommaList = Field(default_factory=list)
    fail_rate: Decimal = Field(Decimal(0), ge=0, le=1, description="share of order requests answered 5xx")
    accept_delay_seconds: Decimal = Field(Decimal(0), ge=0, le=60, description="delay after accepting an order")
    default_price: Decimal = Field(Decimal(100), gt=0)
    starting_cash: Decimal = Field(Decimal(100_000), ge=0, description="USD each paper account starts with")
    fractionable_symbols: CommaList = Field(default_factory=list, description="traded in steps of 0.0001")

    _split = field_validator("reject_symbols", "fractionable_symbols", mode="before")(_comma_list)


class DustSettings(_Section):
    max_dust_per_sale: Decimal = Field(Decimal(0), ge=0, description="USD; larger sale dust is refused, 0 disables")
    min_position_value: Decimal = Field(Decimal(0), ge=0, description="USD; smaller exit remainders are closed")
    broker_cleanup_usd: Decimal = Field(Decimal("1.00"), ge=0)
    normalize_usd: Decimal = Field(Decimal("7.50"), ge=0)
    consolidate_usd: Decimal = Field(
        Decimal("10.00"), ge=0, description="USD; normalization tops up unsellable positions below it, 0 disables"
    )


class VenueRule(_Section):
    whole_shares: bool | None = None
    step: Decimal | None = Field(None, gt=0)
    min_quantity: Decimal | None = Field(None, ge=0)
    min_notional: Decimal | None = Field(None, ge=0)


class VenueSettings(_Section):
    whole_shares: bool = Field(True, description="default for symbols without a rule: the hedge venue")
    rules: dict[str, VenueRule] = Field(default_factory=dict, description="per-symbol overrides")


class AccountSettings(_Section):
    """A named broker account; unset fields fall back to the top-level DUSTPAN_BROKERAGE / ALPACA_* ones."""

    brokerage: Literal["paper", "alpaca"] | None = None
    alpaca_trading_url: str | None = None
    alpaca_data_url: str | None = None
    alpaca_key_id: str | None = None
    alpaca_secret_key: str | None = None


def _accounts(value: Any) -> Any:
    """JSON mapping of name -> settings, or just names separated by commas."""
    if isinstance(value, str):
        if value.strip().startswith("{"):
            return json.loads(value)
        return {name: {} for name in _comma_list(value)}
    if isinstance(value, list):
        return {name: {} for name in value}
    return value


class WebhookSettings(_Section):
    tolerance_seconds: int = Field(300, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_trades: int = Field(1000, ge=1)


class HttpSettings(_Section):
    """The API server's limits on clients (SPEC section 3: slow or vanished clients cost nothing)."""

    header_timeout_seconds: Decimal = Field(Decimal(10), gt=0, le=300, description="headers complete after connect")
    body_timeout_seconds: Decimal = Field(Decimal(30), gt=0, le=3600, description="body complete after headers")
    max_connections: int = Field(1000, ge=1, description="concurrent connections and requests; more get 503")


class ScheduleSettings(_Section):
    """Beat intervals, in seconds (each job can also be run once by hand from the CLI)."""

    sweep_seconds: Decimal = Field(Decimal(5), gt=0)
    audit_seconds: Decimal = Field(Decimal(60), gt=0)
    audit_verify_seconds: Decimal = Field(Decimal(30), gt=0)
    venues_seconds: Decimal = Field(Decimal(3600), gt=0)
    positions_seconds: Decimal = Field(Decimal(300), gt=0)
    dust_scan_seconds: Decimal = Field(Decimal(300), gt=0)
    cleanup_seconds: Decimal = Field(Decimal(3600), gt=0)
    normalize_seconds: Decimal = Field(Decimal(86400), gt=0)
    balances_seconds: Decimal = Field(Decimal(60), gt=0)
    prices_seconds: Decimal = Field(Decimal(30), gt=0)
    leader_lock_seconds: int = Field(30, ge=3, le=600, description="a dead Beat leader is replaced within this")


class CelerySettings(_Section):
    """How fast the Redis broker gives back a message whose worker died before acknowledging it.

    Every task is acknowledged late; a dead main process leaves its messages unacknowledged,
    and kombu restores them once they are ``visibility_timeout_seconds`` old. The timeout
    must outlast any delivery that is still alive, so the task time limits and retry
    countdowns are derived from it: countdown + hard limit stay below the timeout.
    """

    visibility_timeout_seconds: int = Field(60, ge=20, le=3600, description="unacked messages come back after this")
    restore_interval_seconds: int = Field(1, ge=1, le=60, description="how often each worker looks for them")
    task_events: bool = Field(
        False,
        description="workers send task events from their start, and the API and workers task-sent events;"
        " off, a worker sends them once a monitor (Flower) asks for them",
    )

    @property
    def hard_time_limit_seconds(self) -> int:
        return self.visibility_timeout_seconds * 3 // 4

    @property
    def soft_time_limit_seconds(self) -> int:
        return self.hard_time_limit_seconds * 9 // 10

    @property
    def max_countdown_seconds(self) -> int:
        return self.visibility_timeout_seconds - self.hard_time_limit_seconds - 1


class BalanceSettings(_Section):
    attempts: int = Field(
        4, ge=1, le=10, description="tries per fetch (the first plus 3 retries), transient errors only"
    )
    backoff_seconds: Decimal = Field(Decimal(2), gt=0, description="first wait; doubles each try (2, 4, 8)")
    max_age_seconds: int = Field(300, ge=1, description="older than this the balance is unknown")


class PriceSettings(_Section):
    freeze_after_failures: int = Field(3, ge=1)
    cooldown_seconds: int = Field(300, ge=1, description="frozen this long before one probe is allowed")


class OperationsSettings(_Section):
    """Dust scan, broker dust cleanup and account normalization."""

    hysteresis: Decimal = Field(Decimal("0.05"), ge=0, lt=1, description="band around a notional minimum")
    cleanup_execute: bool = Field(False, description="broker dust cleanup acts instead of a dry run")
    normalize_execute: bool = Field(False, description="normalization acts instead of a dry run")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUSTPAN_", env_nested_delimiter="__", extra="forbid")

    database_url: str | None = None
    broker_url: str | None = None
    webhook_secret: CommaList = Field(default_factory=list)
    api_token: str | None = None
    brokerage: Literal["paper", "alpaca"] = "paper"
    alpaca_trading_url: str = "https://paper-api.alpaca.markets"
    alpaca_data_url: str = "https://data.alpaca.markets"
    alpaca_key_id: str | None = None
    alpaca_secret_key: str | None = None
    alpaca_timeout_seconds: Decimal = Field(Decimal(10), gt=0, le=120)
    alpaca_connect_timeout_seconds: Decimal = Field(Decimal(3), gt=0, le=60)
    data_dir: Path = Path(".dustpan")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field("json", description="api, worker and beat logs: one JSON object a line")
    api_workers: int = Field(1, ge=1, le=64, description="processes of `dustpan api`; each groups its own webhooks")
    # Flower's HTTP basic auth; `dustpan flower` refuses to start without both (unless --insecure).
    flower_user: str | None = None
    flower_password: SecretStr | None = None

    accumulation: AccumulationSettings = AccumulationSettings()
    execution: ExecutionSettings = ExecutionSettings()
    audit: AuditSettings = AuditSettings()
    paper: PaperSettings = PaperSettings()
    webhook: WebhookSettings = WebhookSettings()
    http: HttpSettings = HttpSettings()
    dust: DustSettings = DustSettings()
    balances: BalanceSettings = BalanceSettings()
    prices: PriceSettings = PriceSettings()
    operations: OperationsSettings = OperationsSettings()
    venues: VenueSettings = VenueSettings()
    accounts: Annotated[dict[str, AccountSettings], NoDecode] = Field(
        default_factory=lambda: {"default": AccountSettings()}, description="named broker accounts"
    )
    schedule: ScheduleSettings = ScheduleSettings()
    celery: CelerySettings = CelerySettings()

    _split = field_validator("webhook_secret", mode="before")(_comma_list)
    _accounts = field_validator("accounts", mode="before")(_accounts)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value.replace("postgres://", "postgresql://", 1) if value else value

    @field_validator("flower_user", "flower_password", mode="before")
    @classmethod
    def _flower_credential(cls, value: Any, info: ValidationInfo) -> Any:
        # Flower splits its basic-auth option on commas, and a user name ends at the first colon.
        forbidden = ",:" if info.field_name == "flower_user" else ","
        if isinstance(value, str) and any(char in value for char in forbidden):
            raise ValueError(f"must not contain {' or '.join(repr(char) for char in forbidden)}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def with_embedded_services(self) -> Settings:
        """Fill unset URLs and secrets from what a running ``dustpan up`` recorded in data_dir,
        so that a second terminal's commands (api, flower, operator commands) find its stack."""
        update = _recorded_urls(self) | _recorded_secrets(self)
        return self.model_copy(update=update) if update else self


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent, or being written by `up` right now: as if there were none
    return data if isinstance(data, dict) else {}


def _recorded_urls(settings: Settings) -> dict[str, Any]:
    if settings.database_url and settings.broker_url:
        return {}
    urls = _read_record(settings.data_dir / SERVICES_FILE)
    return {
        name: urls[name] for name in ("database_url", "broker_url") if not getattr(settings, name) and urls.get(name)
    }


def _recorded_secrets(settings: Settings) -> dict[str, Any]:
    stored = _read_record(settings.data_dir / SECRETS_FILE)
    update: dict[str, Any] = {}
    if not settings.webhook_secret and stored.get("webhook_secret"):
        update["webhook_secret"] = [stored["webhook_secret"]]
    if not settings.api_token and stored.get("api_token"):
        update["api_token"] = stored["api_token"]
    if not (settings.flower_user or settings.flower_password) and stored.get("flower_password"):
        update["flower_user"] = stored.get("flower_user", "dustpan")
        update["flower_password"] = SecretStr(stored["flower_password"])
    return update


class _DecimalSafeLoader(yaml.SafeLoader):
    """YAML floats stay text so that pydantic reads them as exact Decimals."""


_DecimalSafeLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("DUSTPAN_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.load(Path(path).read_text(), Loader=_DecimalSafeLoader)
        except OSError as exc:
            raise SettingsError(f"DUSTPAN_CONFIG: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"DUSTPAN_CONFIG: {path} is not valid YAML ({_first_line(exc)})") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingsError(f"DUSTPAN_CONFIG: {path} must hold a mapping of settings")
        return data


class SettingsError(Exception):
    pass


def _first_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


# Environment variables with our prefix that are not settings themselves.
_NOT_SETTINGS = ("DUSTPAN_CONFIG", "DUSTPAN_TEST_", "DUSTPAN_UP_PID")


def _unknown_variables() -> list[str]:
    known = {f"DUSTPAN_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        name
        for name in os.environ
        if name.startswith("DUSTPAN_") and not name.startswith(_NOT_SETTINGS) and name.split("__")[0] not in known
    )


def describe_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = "__".join(str(part) for part in error["loc"]).upper()
        lines.append(f"bad setting DUSTPAN_{location}: {error['msg']}")
    return "\n".join(lines)


def read_settings(**overrides: Any) -> Settings:
    """Settings from the environment; raises SettingsError with one line per bad setting."""
    unknown = _unknown_variables()
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (a typo? see the README's configuration table)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None
    except PydanticSettingsError as exc:
        # e.g. a section given as JSON in the environment that does not parse
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"DUSTPAN_{field.group(1).upper()}" if field else "a DUSTPAN_ variable"
        raise SettingsError(f"bad setting {name}: not valid JSON") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a bad value ends the process with a line naming it."""
    try:
        return read_settings().with_embedded_services()
    except SettingsError as exc:
        print(f"dustpan: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
