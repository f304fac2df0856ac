"""HTTP for REST resources: rate limit, retries with backoff, Retry-After, a retry budget.

Every request of a source goes through `HttpClient.request`: it waits for the
client-side rate limit, sends the request with the resource's credentials, and
retries 408, 429, 5xx (but 501) and connection failures with exponential
backoff and full jitter (or after the server's Retry-After). When the attempts
of one request or the retry budget of the run are spent, it fails with one line
naming the resource and the URL, never a credential.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ...errors import HeadwaterError
from ._values import redact, short
from .auth import Credentials
from .resource import Resource, Retry

USER_AGENT = "headwater"
# Failures worth trying again: the request may well succeed a moment later.
_RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def retryable_status(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP date); None if absent."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None  # unreadable: fall back to our own backoff
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_delay(policy: Retry, retry: int, draw: Callable[[], float] = random.random) -> float:
    """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2**(retry-1)))."""
    ceiling = min(policy.max_backoff, policy.backoff * 2 ** max(0, retry - 1))
    return float(ceiling * draw())


class RateLimiter:
    """At most `rate` request starts per second (None: unlimited)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None

    def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


class HttpClient:
    """The HTTP session of one run of one REST source."""

    def __init__(
        self,
        resource: Resource,
        settings: Mapping[str, Any],
        base_url: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.resource = resource
        self.where = f"resource {resource.name}"
        connection = resource.connection or ""
        self.credentials = (
            resource.auth.bind(settings, self.where, connection)
            if resource.auth is not None
            else Credentials()
        )
        self.policy = resource.retry
        self.limiter = RateLimiter(resource.rate_limit, sleep=sleep)
        self.retries = 0
        self.requests = 0
        self._sleep = sleep
        self.client = httpx.Client(
            base_url=base_url,
            timeout=resource.timeout,
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- showing URLs without secrets ---------------------------------------------
    def strip(self, url: httpx.URL | str) -> httpx.URL:
        return self.credentials.strip(httpx.URL(str(url)))

    def show(self, url: httpx.URL | str) -> str:
        return redact(str(self.strip(url)), self.credentials.secrets)

    # -- requests ---------------------------------------------------------------------
    def request(self, url: str, params: Mapping[str, Any]) -> httpx.Response:
        """GET/POST a page of the resource; 2xx (or a `skip_status`) or a clear failure."""
        resource = self.resource
        renewed = False
        while True:
            response = self._send(
                lambda: self.client.build_request(
                    resource.method,
                    _with_params(url, {**params, **self.credentials.params()}),
                    headers={**resource.headers, **self.credentials.headers(self)},
                    json=resource.body if resource.method == "POST" else None,
                )
            )
            status = response.status_code
            if status == 401 and not renewed and self.credentials.renew():
                renewed = True  # an expired or revoked token: fetch a new one, once
                continue
            if response.is_success or status in resource.skip_status:
                return response
            raise self._failure(response)

    def token_request(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> httpx.Response:
        """POST to an OAuth2 token endpoint (retried like any request, without credentials)."""
        return self._send(
            lambda: self.client.build_request("POST", url, data=dict(form), headers=dict(headers))
        )

    def _send(self, build: Callable[[], httpx.Request]) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            self.limiter.wait()
            request = build()
            self.requests += 1
            wait: float | None = None
            try:
                response = self.client.send(request)
            except _RETRY_EXCEPTIONS as exc:
                problem = f"connection failed ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                raise HeadwaterError(
                    f"{self.where}: {request.method} {self.show(request.url)}: {type(exc).__name__}: "
                    f"{redact(short(str(exc)), self.credentials.secrets)}",
                    "check the base_url and endpoint of the resource",
                ) from None
            else:
                if not retryable_status(response.status_code):
                    return response
                problem = f"{response.status_code} {response.reason_phrase}"
                wait = retry_after_seconds(response.headers.get("Retry-After"))
            shown = f"{self.where}: {request.method} {self.show(request.url)}"
            if attempt >= self.policy.attempts:
                raise HeadwaterError(
                    f"{shown} failed after {attempt} attempt(s): {problem}",
                    "the next run resumes after the last committed page; "
                    "raise retry=Retry(attempts=...) if the API needs more patience",
                )
            if self.retries >= self.policy.budget:
                raise HeadwaterError(
                    f"{shown} failed: {problem}, and this run's retry budget "
                    f"({self.policy.budget} retries) is spent",
                    "the API keeps failing; the next run resumes after the last committed page",
                )
            if wait is not None and wait > self.policy.max_retry_after:
                raise HeadwaterError(
                    f"{shown}: {problem} with Retry-After of {wait:.0f} s, "
                    f"longer than max_retry_after ({self.policy.max_retry_after:.0f} s)",
                    "run again later, or raise retry=Retry(max_retry_after=...)",
                )
            self.retries += 1
            self._sleep(wait if wait is not None else backoff_delay(self.policy, attempt))

    def _failure(self, response: httpx.Response) -> HeadwaterError:
        request = response.request
        status = response.status_code
        snippet = (
            redact(short(response.text, 160), self.credentials.secrets) if response.text else ""
        )
        message = (
            f"{self.where}: {request.method} {self.show(request.url)} answered "
            f"{status} {response.reason_phrase}" + (f": {snippet}" if snippet else "")
        )
        if status in (401, 403):
            connection = self.resource.connection
            hint = (
                f"check the credentials of connection {connection!r} and the resource's auth"
                if connection
                else "declare auth= on the resource and a connection holding its secrets"
            )
        elif status == 404:
            hint = (
                "check base_url and endpoint (or skip_status=(404,) for details that may be gone)"
            )
        else:
            hint = "check the resource's params, headers and body"
        return HeadwaterError(message, hint)


def _with_params(url: str, params: Mapping[str, Any]) -> httpx.URL:
    """`url` with `params` added to its own query (httpx's params= would replace the query,
    and a next-page URL carries the parameters of the query it continues)."""
    target = httpx.URL(url)
    return target.copy_merge_params(dict(params)) if params else target
