"""Resources for playbooks: the Slack, Attio and webhook clients, and the delivery clock.

Secrets enter only here, as `dg.EnvVar`s (Dagster resolves them in the run; their values never
reach config, logs or metadata): `BETON_SLACK_TOKEN`, `BETON_ATTIO_API_KEY`, and
`BETON_WEBHOOK_SECRET_<NAME>` for each webhook named in beton.yaml. An unset `EnvVar` would make
every run that uses the resource fail at start, so a secret is wired only when its variable
exists where the code location loads (we test presence, never read the value); a destination
without its secret leaves its actions `pending` and fails the run with the variable's name.
`BETON_SLACK_BASE_URL` / `BETON_ATTIO_BASE_URL` point the clients elsewhere (a local test server).
"""

import os
import time
from datetime import UTC, datetime

import dagster as dg

from beton_pipeline.core.playbooks import DestinationSettings, PlaybookConfigError, WebhookAction
from beton_pipeline.destinations import attio as attio_dest
from beton_pipeline.destinations import slack as slack_dest
from beton_pipeline.destinations import webhook as webhook_dest
from beton_pipeline.settings import SettingsError, load_settings
from beton_pipeline.store.outbox import MissingCredentials, Sender

SLACK_TOKEN_ENV = slack_dest.TOKEN_ENV
ATTIO_KEY_ENV = attio_dest.API_KEY_ENV


class SlackResource(dg.ConfigurableResource):
    """Slack Web API (`chat.postMessage`). `token` from BETON_SLACK_TOKEN; `base_url` for a test server."""

    token: str | None = None
    base_url: str = slack_dest.DEFAULT_BASE_URL

    def sender(self, timeout_seconds: float = 10.0) -> slack_dest.SlackSender | None:
        """A sender, or None when no token is configured."""
        return slack_dest.SlackSender(self.token, self.base_url, timeout_seconds) if self.token else None

    def secrets(self) -> list[str]:
        return [self.token] if self.token else []


class AttioResource(dg.ConfigurableResource):
    """Attio REST API. `api_key` from BETON_ATTIO_API_KEY; `base_url` for a test server."""

    api_key: str | None = None
    base_url: str = attio_dest.DEFAULT_BASE_URL

    def sender(self, timeout_seconds: float = 10.0) -> attio_dest.AttioSender | None:
        return attio_dest.AttioSender(self.api_key, self.base_url, timeout_seconds) if self.api_key else None

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []


class WebhookResource(dg.ConfigurableResource):
    """Signing secrets per webhook name (each from BETON_WEBHOOK_SECRET_<NAME>)."""

    secrets_by_name: dict[str, str] = {}

    def sender(self, allowed_hosts: tuple[str, ...] = (), timeout_seconds: float = 10.0) -> webhook_dest.WebhookSender:
        return webhook_dest.WebhookSender(self.secrets_by_name, allowed_hosts, timeout_seconds)

    def secrets(self) -> list[str]:
        return [s for s in self.secrets_by_name.values() if s]


class DeliveryClockResource(dg.ConfigurableResource):
    """Time for the delivery loop: `now()` and `sleep()`. Tests subclass it to make backoff instant."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def delivery_senders(
    slack: SlackResource, attio: AttioResource, webhooks: WebhookResource, destinations: DestinationSettings
) -> tuple[dict[str, Sender], list[str]]:
    """The sender per destination type (a stand-in naming the variable when a credential is unset), and every secret to redact."""
    senders = {
        "slack": slack.sender(destinations.timeout_seconds) or MissingCredentials(SLACK_TOKEN_ENV),
        "attio": attio.sender(destinations.timeout_seconds) or MissingCredentials(ATTIO_KEY_ENV),
        "webhook": webhooks.sender(destinations.webhook_allowed_hosts, destinations.timeout_seconds),
    }
    return senders, slack.secrets() + attio.secrets() + webhooks.secrets()


def _env_if_set(name: str):
    # Presence only: Dagster reads the value in the run, never this module.
    return dg.EnvVar(name) if name in os.environ else None


def _webhook_names() -> list[str]:
    try:
        config = load_settings().playbook_config()
    except (SettingsError, PlaybookConfigError):
        return []  # the playbook asset reports the configuration error when it runs
    return sorted({a.name for p in config.playbooks for a in p.then if isinstance(a, WebhookAction)})


def playbook_resources(webhook_names: list[str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The playbook resources wired to their environment variables (see the module docstring)."""
    names = _webhook_names() if webhook_names is None else webhook_names
    secrets = {n: _env_if_set(webhook_dest.secret_env_var(n)) for n in names}
    slack_kwargs = {"token": _env_if_set(SLACK_TOKEN_ENV)}
    if "BETON_SLACK_BASE_URL" in os.environ:
        slack_kwargs["base_url"] = dg.EnvVar("BETON_SLACK_BASE_URL")
    attio_kwargs = {"api_key": _env_if_set(ATTIO_KEY_ENV)}
    if attio_dest.BASE_URL_ENV in os.environ:
        attio_kwargs["base_url"] = dg.EnvVar(attio_dest.BASE_URL_ENV)
    return {
        "slack": SlackResource(**slack_kwargs),
        "attio": AttioResource(**attio_kwargs),
        "webhooks": WebhookResource(secrets_by_name={n: v for n, v in secrets.items() if v is not None}),
        "delivery_clock": DeliveryClockResource(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=playbook_resources())
