"""Service settings from the environment (`GRIDCASE_` prefix). Built in the app factory only."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .contract.subjects import instance_of
from .embedded import mongo_url

# The embedded stack runs two SecantusDB processes: a Python server uses about one core, and
# the batched writes of the services off the report → assigned path (mediation, dispatch,
# stats) would otherwise queue in front of intake's and routing's. A service's default
# database URL is where the embedded stack keeps its database.
EMBEDDED_DB_PORT = 27017
EMBEDDED_SECOND_DB_PORT = 27018
SECOND_DB_SERVICES = ("mediation", "dispatch", "stats")


def embedded_db_url(service: str) -> str:
    return mongo_url(EMBEDDED_SECOND_DB_PORT if service in SECOND_DB_SERVICES else EMBEDDED_DB_PORT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDCASE_", extra="ignore")

    service: str = Field(default="intake", description="which service this process runs")
    # Instance id of a replicated read model (stats): its durables and its database carry it,
    # so each replica reads every event into a projection of its own (k8s: the pod name).
    # Empty (the default) and ignored by every other service: shared durables and database.
    instance: str = Field(default="", pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$")
    nats_url: str = "nats://127.0.0.1:4222"
    mongodb_url: str = embedded_db_url("intake")  # unless set: the service's, see `_embedded_database`
    database_prefix: str = "gridcase"
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # default: the service's port of DESIGN §7
    policy_file: Path | None = None
    timezone: str = "Asia/Shanghai"
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    # Development declares the streams; production leaves that to NACK resources (k8s/).
    declare_streams: bool = True
    # Development brings durable consumers' settings up to date at start; in production the
    # NACK Consumer resources own them (k8s/), so services only bind.
    manage_consumers: bool = True
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # JetStream consumer behaviour (DESIGN §4)
    max_deliver: int = Field(default=6, ge=2, le=100)
    ack_wait_s: float = Field(default=30.0, gt=0)
    fetch_batch: int = Field(default=128, ge=1, le=1024)
    # How long an idle pull waits for messages. A pull returns as soon as messages are there
    # (nats-py hands over what has arrived; whole-batch consumers: `_hand_over_what_is_there`),
    # so the wait adds no latency; it only sets how often an idle consumer asks again, and each
    # idle pull costs the service and nats-server CPU (at 30 ms / 250 ms the idle system used
    # 36 % of this 2-core box, at 1 s / 2 s 15 %). `fetch_wait_s` is for the consumers on the
    # report → assigned path (and mediation's and dispatch's `received`).
    fetch_wait_s: float = Field(default=1.0, gt=0, le=30)
    fetch_wait_background_s: float = Field(default=2.0, gt=0, le=30)
    # Intake: key for encrypting phones (base64 Fernet key); dev default is generated into data_dir.
    intake_key: str | None = None
    timer_poll_s: float = Field(default=0.25, gt=0)
    outbox_relay_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _embedded_database(self) -> Settings:
        if "mongodb_url" not in self.model_fields_set:
            self.mongodb_url = embedded_db_url(self.service)
        return self

    def instance_of(self, service: str | None = None) -> str:
        """This process's instance id for `service`: `""` unless it is a replicated read model."""
        return instance_of(service or self.service, self.instance)

    def database_name(self, service: str | None = None) -> str:
        service = service or self.service
        instance = self.instance_of(service)
        return f"{self.database_prefix}_{service}" + (f"_{instance}" if instance else "")
