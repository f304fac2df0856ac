"""SLAs and alerts: breaches fire once to real sinks (an HTTP webhook, a command, the
log), are de-duplicated, and are resolved when the table recovers."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from headwater import table
from headwater.config import ProjectConfig
from headwater.errors import ConfigError
from headwater.orchestrate import ManualClock, cron, freshness, ready_by
from headwater.orchestrate.alerts import (
    AlertManager,
    CommandSink,
    LogSink,
    WebhookSink,
    sinks_from_config,
)
from headwater.orchestrate.metadata import Metadata
from headwater.orchestrate.sla import evaluate

from .lake import Feed, Lake
from .test_orchestrate_helpers import Webhook, scheduler, utc


def test_freshness_breach_alerts_once_and_resolves_when_the_table_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = Lake(tmp_path)
    feed = Feed([], name="orders")
    outage = {"down": False}

    class Gate:
        def check_rows(self, increment):  # type: ignore[no-untyped-def]
            from headwater.quality import RowOutcome

            if outage["down"]:
                raise ConnectionError("warehouse of the source unreachable")
            return RowOutcome(increment)

        def check_table(self, would_be, increment):  # type: ignore[no-untyped-def]
            return []

    lake.declare(
        lambda: table(
            "bronze.orders",
            source=feed,
            trigger=cron("*/5 * * * *"),
            retries=1,
            gate=Gate(),
            sla=freshness("15m"),
        )
    )
    clock = ManualClock(utc(2024, 1, 1, 0, 4))
    received: list[dict[str, object]] = []
    command_log = tmp_path / "paged.jsonl"
    with Webhook() as hook:
        manager = AlertManager(
            Metadata.open("sqlite:///.headwater/metadata.db", tmp_path),
            [LogSink(), WebhookSink(hook.url, format="slack"),
             CommandSink(["sh", "-c", f"cat >> {command_log}; echo >> {command_log}"])],
            clock,
        )  # fmt: skip
        sched = scheduler(lake, clock, alerts=manager)
        caplog.set_level(logging.INFO, logger="headwater.alerts")
        try:
            feed.push([{"id": 1}])
            clock.advance(timedelta(minutes=1))
            sched.run_until_idle()
            outage["down"] = True
            for _ in range(6):  # 30 minutes of failing runs, each new rows arriving
                feed.push([{"id": 2}])
                clock.advance(timedelta(minutes=5))
                sched.run_until_idle()
                sched.check_slas()
            states = dict(sched.check_slas())
            assert states["bronze.orders"].breached
            outage["down"] = False
            clock.advance(timedelta(minutes=5))
            sched.run_until_idle()
            sched.check_slas()
        finally:
            sched.close()
        received = hook.received
    texts = [r["text"] for r in received]
    # Two episodes (failure, staleness), each told once when it starts and once when it ends.
    assert sorted(t.split(" ", 1)[1].split(":")[0] for t in texts) == [  # type: ignore[union-attr]
        "[ALERT] bronze.orders failure",
        "[ALERT] bronze.orders freshness",
        "[RESOLVED] bronze.orders failure",
        "[RESOLVED] bronze.orders freshness",
    ]
    assert all("blocks" in r for r in received)  # Slack-compatible payloads
    stored = manager.meta.execute(
        "SELECT alert_key, state, occurrences FROM hw_alerts ORDER BY alert_key"
    )
    failed_runs = [
        r for r in sched.history.runs("bronze.orders", limit=None) if r.status == "failed"
    ]
    assert stored == [
        # Every failed run counted, one notification.
        ("bronze.orders:failure", "resolved", len(failed_runs)),
        ("bronze.orders:freshness", "resolved", stored[1][2]),
    ]
    assert len(failed_runs) >= 4 and stored[1][2] >= 2
    paged = [json.loads(line) for line in command_log.read_text().splitlines() if line.strip()]
    assert [(p["kind"], p["state"]) for p in paged] == [
        ("failure", "firing"),
        ("freshness", "firing"),
        ("failure", "resolved"),
        ("freshness", "resolved"),
    ]
    assert sum("[ALERT]" in r.message for r in caplog.records) == 2
    assert "secret-token" not in caplog.text  # the webhook URL is a secret


def test_two_schedulers_firing_the_same_alert_notify_once(tmp_path: Path) -> None:
    clock = ManualClock(utc(2024, 1, 1))
    with Webhook() as hook:
        managers = [
            AlertManager(
                Metadata.open("sqlite:///.headwater/metadata.db", tmp_path),
                [WebhookSink(hook.url)],
                clock,
            )
            for _ in range(2)
        ]
        assert managers[0].fire("t.x:failure", "t.x", "failure", "boom")
        assert not managers[1].fire("t.x:failure", "t.x", "failure", "boom again")
        assert managers[1].resolve("t.x", ["failure"], "fine") == ["t.x:failure"]
        assert managers[0].resolve("t.x", ["failure"], "fine") == []
        assert managers[1].fire("t.x:failure", "t.x", "failure", "boom, later")  # a new episode
    assert [(r["state"], r["message"]) for r in hook.received] == [
        ("firing", "boom"),
        ("resolved", "fine"),
        ("firing", "boom, later"),
    ]


def test_ready_by_follows_the_local_deadline_and_counts_the_slo_over_days() -> None:
    sla = ready_by("07:00", tz="Europe/Paris", slo="90%", window="10d")
    since = utc(2024, 3, 20)
    # Good runs at 05:30 UTC (06:30 Paris in winter, 07:30 Paris after the 31 March change).
    runs = [utc(2024, 3, d, 5, 30) for d in range(20, 31)]
    early = evaluate("gold.kpi", sla, runs, utc(2024, 3, 30, 6, 30), since)
    assert not early.breached and "ready at 06:30" in early.detail
    late = evaluate("gold.kpi", sla, runs, utc(2024, 3, 31, 5, 1), since)
    assert late.breached and late.alert_key == "gold.kpi:ready-by:2024-03-31"
    # The summer time run at 07:30 Paris is late: one day of 11 missed the deadline.
    runs.append(utc(2024, 3, 31, 5, 30))
    after = evaluate("gold.kpi", sla, runs, utc(2024, 3, 31, 12), since)
    assert not after.breached and "(late)" in after.detail
    assert after.observed == pytest.approx(9 / 10)
    assert not after.slo_breached
    missing_two = [r for r in runs if r.day != 27]
    worse = evaluate("gold.kpi", sla, missing_two, utc(2024, 3, 31, 12), since)
    assert worse.observed == pytest.approx(8 / 10) and worse.slo_breached


def test_a_freshness_slo_counts_the_share_of_time_the_table_was_fresh() -> None:
    sla = freshness("1h", slo="99%", window="1d")
    start = utc(2024, 1, 1)
    runs = [start + timedelta(minutes=30 * i) for i in range(49)]
    fine = evaluate("t.x", sla, runs, start + timedelta(days=1), start)
    assert fine.observed == 1.0 and not fine.slo_breached
    gap = [r for r in runs if not (utc(2024, 1, 1, 10) < r < utc(2024, 1, 1, 13))]
    stale = evaluate("t.x", sla, gap, start + timedelta(days=1), start)
    # 10:00 -> 13:00 without a run: 2 of its 3 hours were stale.
    assert stale.observed == pytest.approx(1 - 2 / 24) and stale.slo_breached


def test_alert_sinks_come_from_the_environment_and_never_show_their_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ProjectConfig.model_validate(
        {"alerts": {"webhooks": [{"url_env": "HW_TEST_HOOK", "format": "slack",
                                  "headers_env": {"Authorization": "HW_TEST_TOKEN"}}],
                    "commands": [{"argv": ["true"]}]}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="HW_TEST_HOOK, which is not set") as raised:
        sinks_from_config(config)
    assert raised.value.hint == "export HW_TEST_HOOK=..."
    monkeypatch.setenv("HW_TEST_HOOK", "https://hooks.example.invalid/T0/very-secret")
    monkeypatch.setenv("HW_TEST_TOKEN", "Bearer s3cr3t")
    sinks = sinks_from_config(config)
    assert [s.name for s in sinks] == ["log", "alerts.webhooks[0]", "alerts.commands[0]"]
    assert "very-secret" not in repr(vars(sinks[1]).get("name"))
    with Webhook(status=500) as hook:
        broken = WebhookSink(hook.url, name="alerts.webhooks[0]")
        clock = ManualClock(utc(2024, 1, 1))
        from headwater.orchestrate.alerts import Alert

        with pytest.raises(Exception, match=r"alerts.webhooks\[0\]: HTTP 500") as failed:
            broken.send(Alert("k", "t.x", "failure", "firing", "m", clock.now()))
        assert "secret-token" not in str(failed.value)
