"""Authentication of REST resources: bearer, basic, API key, OAuth2 client credentials.

A declaration names the *connection settings* that hold the secrets, never the
secrets themselves; the values come from the table's connection (environment
variables or the secrets file, see docs/configuration.md) when the source runs:

    auth=bearer()                                   # setting `token`
    auth=basic()                                    # settings `username`, `password`
    auth=api_key("X-API-Key")                       # setting `api_key`, sent as a header
    auth=api_key("api_key", location="query")       # ... or as a query parameter
    auth=oauth2_client_credentials("/oauth/token", scopes=["read"])  # `client_id`, `client_secret`

Secret values are redacted from every message, and a key sent as a query
parameter is removed from every URL that is stored or shown.
"""

from __future__ import annotations

import base64
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx

from ...errors import ConfigError, HeadwaterError

if TYPE_CHECKING:
    from .client import HttpClient

AUTH_KINDS = ("bearer", "basic", "api_key", "oauth2_client_credentials")


def _setting(settings: Mapping[str, Any], key: str, kind: str, where: str, connection: str) -> str:
    value = settings.get(key)
    if value is None or value == "":
        section = f"[connections.{connection}]" if connection else "a [connections.NAME] section"
        raise ConfigError(
            f"{where}: {kind} authentication needs the connection setting {key!r}, which is not set",
            f'set {key}_env = "VARIABLE" in {section} of headwater.toml, or {key} in .headwater/secrets.toml',
        )
    return str(value)


class Credentials:
    """Resolved authentication for one run of a source (holds secret values)."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def headers(self, http: HttpClient) -> dict[str, str]:
        return {}

    def params(self) -> dict[str, str]:
        return {}

    def renew(self) -> bool:
        """After a 401: whether trying again with renewed credentials makes sense."""
        return False

    def strip(self, url: httpx.URL) -> httpx.URL:
        """`url` without any secret it carries (for storing and messages)."""
        return url


class Auth(ABC):
    """A declared kind of authentication."""

    kind: ClassVar[str]

    @abstractmethod
    def bind(self, settings: Mapping[str, Any], where: str, connection: str) -> Credentials:
        """Credentials from the connection's settings (errors name the missing setting)."""

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Bearer(Auth):
    token_setting: str = "token"
    kind: ClassVar[str] = "bearer"

    def bind(self, settings: Mapping[str, Any], where: str, connection: str) -> Credentials:
        token = _setting(settings, self.token_setting, self.kind, where, connection)
        return _StaticHeader("Authorization", f"Bearer {token}", [token])


@dataclass(frozen=True)
class Basic(Auth):
    username_setting: str = "username"
    password_setting: str = "password"
    kind: ClassVar[str] = "basic"

    def bind(self, settings: Mapping[str, Any], where: str, connection: str) -> Credentials:
        user = _setting(settings, self.username_setting, self.kind, where, connection)
        password = _setting(settings, self.password_setting, self.kind, where, connection)
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return _StaticHeader("Authorization", f"Basic {encoded}", [password, encoded])


@dataclass(frozen=True)
class ApiKey(Auth):
    name: str = "X-API-Key"
    location: Literal["header", "query"] = "header"
    setting: str = "api_key"
    prefix: str = ""  # e.g. "Token " for `Authorization: Token <key>`
    kind: ClassVar[str] = "api_key"

    def __post_init__(self) -> None:
        if self.location not in ("header", "query"):
            raise ConfigError(
                f"api_key auth: location must be 'header' or 'query', not {self.location!r}"
            )

    def bind(self, settings: Mapping[str, Any], where: str, connection: str) -> Credentials:
        key = _setting(settings, self.setting, self.kind, where, connection)
        if self.location == "header":
            return _StaticHeader(self.name, f"{self.prefix}{key}", [key])
        return _QueryKey(self.name, key)


@dataclass(frozen=True)
class OAuth2ClientCredentials(Auth):
    token_url: str
    scopes: tuple[str, ...] = ()
    # RFC 6749 §2.3.1: servers must accept HTTP Basic; some want the pair in the form body.
    client_auth: Literal["basic", "body"] = "basic"
    token_params: Mapping[str, str] = field(default_factory=dict)  # e.g. audience
    client_id_setting: str = "client_id"
    client_secret_setting: str = "client_secret"
    kind: ClassVar[str] = "oauth2_client_credentials"

    def __post_init__(self) -> None:
        if self.client_auth not in ("basic", "body"):
            raise ConfigError(
                f"oauth2_client_credentials: client_auth must be 'basic' or 'body', not {self.client_auth!r}"
            )

    def bind(self, settings: Mapping[str, Any], where: str, connection: str) -> Credentials:
        client_id = _setting(settings, self.client_id_setting, self.kind, where, connection)
        secret = _setting(settings, self.client_secret_setting, self.kind, where, connection)
        return _OAuth2Token(self, client_id, secret, where, connection)


class _StaticHeader(Credentials):
    def __init__(self, name: str, value: str, secrets: list[str]) -> None:
        super().__init__([*secrets, value])
        self._name, self._value = name, value

    def headers(self, http: HttpClient) -> dict[str, str]:
        return {self._name: self._value}


class _QueryKey(Credentials):
    def __init__(self, name: str, key: str) -> None:
        super().__init__([key])
        self._name, self._key = name, key

    def params(self) -> dict[str, str]:
        return {self._name: self._key}

    def strip(self, url: httpx.URL) -> httpx.URL:
        # A server may echo the key into its next-page links: drop it wherever it appears.
        if self._name in url.params:
            return url.copy_remove_param(self._name)
        return url


class _OAuth2Token(Credentials):
    """An access token from the token endpoint, renewed before it expires and after a 401."""

    # Renew this long before the announced expiry (clock skew, slow requests).
    EARLY = 30.0

    def __init__(
        self,
        spec: OAuth2ClientCredentials,
        client_id: str,
        secret: str,
        where: str,
        connection: str,
    ) -> None:
        super().__init__([secret])
        self._spec, self._client_id, self._secret = spec, client_id, secret
        self._where, self._connection = where, connection
        self._token: str | None = None
        self._expires_at: float | None = None

    def headers(self, http: HttpClient) -> dict[str, str]:
        if self._token is None or (
            self._expires_at is not None and time.monotonic() >= self._expires_at
        ):
            self._fetch(http)
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token}"}

    def renew(self) -> bool:
        self._token = None
        return True

    def _fetch(self, http: HttpClient) -> None:
        form = {"grant_type": "client_credentials", **self._spec.token_params}
        if self._spec.scopes:
            form["scope"] = " ".join(self._spec.scopes)
        headers = {"Accept": "application/json"}
        if self._spec.client_auth == "basic":
            pair = f"{self._client_id}:{self._secret}".encode()
            encoded = base64.b64encode(pair).decode("ascii")
            self.secrets.append(encoded)
            headers["Authorization"] = f"Basic {encoded}"
        else:
            form.update(client_id=self._client_id, client_secret=self._secret)
        response = http.token_request(self._spec.token_url, form, headers)
        shown = http.show(response.request.url)
        if response.status_code in (400, 401, 403):
            raise HeadwaterError(
                f"{self._where}: the token endpoint {shown} refused the client credentials "
                f"({response.status_code} {response.reason_phrase})",
                f"check client_id and client_secret of connection {self._connection!r}",
            )
        try:
            body = response.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise HeadwaterError(
                f"{self._where}: the token endpoint {shown} answered {response.status_code} without an access_token",
                "check token_url of the oauth2_client_credentials auth",
            ) from None
        self._token = str(token)
        self.secrets.append(self._token)
        lifetime = body.get("expires_in")
        self._expires_at = None
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
            early = min(self.EARLY, float(lifetime) / 10)
            self._expires_at = time.monotonic() + float(lifetime) - early


# The names pipelines use.
def bearer(token_setting: str = "token") -> Bearer:
    """`Authorization: Bearer <token>`; the token is the connection setting `token_setting`."""
    return Bearer(token_setting)


def basic(username_setting: str = "username", password_setting: str = "password") -> Basic:
    """HTTP Basic authentication from two connection settings."""
    return Basic(username_setting, password_setting)


def api_key(
    name: str = "X-API-Key",
    *,
    location: Literal["header", "query"] = "header",
    setting: str = "api_key",
    prefix: str = "",
) -> ApiKey:
    """An API key sent as header `name` (or query parameter `name`)."""
    return ApiKey(name, location, setting, prefix)


def oauth2_client_credentials(
    token_url: str,
    *,
    scopes: Sequence[str] = (),
    client_auth: Literal["basic", "body"] = "basic",
    token_params: Mapping[str, str] | None = None,
    client_id_setting: str = "client_id",
    client_secret_setting: str = "client_secret",
) -> OAuth2ClientCredentials:
    """OAuth2 client-credentials grant; the token is renewed before expiry and after a 401."""
    return OAuth2ClientCredentials(
        token_url,
        tuple(scopes),
        client_auth,
        dict(token_params or {}),
        client_id_setting,
        client_secret_setting,
    )
