"""The webhook sink: POST the alert as JSON (or as a Slack-compatible payload).

The URL and header values are secrets: they come from environment variables
(`url_env`, `headers_env`, or `${VAR}` in `url`) and never appear in messages
or logs; a failure names the sink by its position only.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from ...config import WebhookAlertSection, _interpolate
from ...errors import ConfigError, TransientError
from .base import Alert


class WebhookSink:
    def __init__(
        self,
        url: str,
        *,
        format: str = "json",
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        name: str = "webhook",
    ) -> None:
        self._url = url
        self.format = format
        self._headers = dict(headers or {})
        self.timeout = timeout
        self.name = name

    @classmethod
    def from_config(cls, section: WebhookAlertSection, index: int) -> WebhookSink:
        name = f"alerts.webhooks[{index}]"
        if (section.url is None) == (section.url_env is None):
            raise ConfigError(
                f"{name}: give exactly one of url or url_env",
                'e.g. url_env = "HEADWATER_ALERT_WEBHOOK" (the URL stays out of the file)',
            )
        if section.url_env is not None:
            if section.url_env not in os.environ:
                raise ConfigError(
                    f"{name}: url comes from environment variable {section.url_env}, which is not set",
                    f"export {section.url_env}=...",
                )
            url = os.environ[section.url_env]
        else:
            url = _interpolate(str(section.url), f"{name}: url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: the URL must start with http:// or https://")
        headers = {}
        for header, variable in section.headers_env.items():
            if variable not in os.environ:
                raise ConfigError(
                    f"{name}: header {header} comes from environment variable {variable}, which is not set",
                    f"export {variable}=...",
                )
            headers[header] = os.environ[variable]
        return cls(
            url, format=section.format, headers=headers, timeout=section.timeout_seconds, name=name
        )

    def payload(self, alert: Alert) -> dict[str, Any]:
        if self.format == "slack":
            emoji = ":white_check_mark:" if alert.state == "resolved" else ":rotating_light:"
            return {
                "text": f"{emoji} {alert.headline()}",
                "blocks": [
                    {
                        "type": "section",
                        "text": {"type": "mrkdwn", "text": f"{emoji} *{alert.headline()}*"},
                    },
                    {
                        "type": "context",
                        "elements": [
                            {
                                "type": "mrkdwn",
                                "text": f"key `{alert.key}` · {alert.at.isoformat()}",
                            }
                        ],
                    },
                ],
            }
        return alert.as_json()

    def send(self, alert: Alert) -> None:
        try:
            response = httpx.post(
                self._url, json=self.payload(alert), headers=self._headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            # The exception text may carry the URL: say only what kind of failure it was.
            raise TransientError(f"{self.name}: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise TransientError(f"{self.name}: HTTP {response.status_code}")
