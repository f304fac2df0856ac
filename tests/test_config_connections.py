"""Connection settings: from headwater.toml, secrets from the environment or a secrets file."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.config import load_config
from headwater.errors import ConfigError


def write(root: Path, toml: str, secrets: str | None = None) -> None:
    (root / "headwater.toml").write_text(toml)
    if secrets is not None:
        (root / ".headwater").mkdir(exist_ok=True)
        (root / ".headwater" / "secrets.toml").write_text(secrets)


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path,
        '[connections.shop]\nhost = "127.0.0.1"\nuser = "${SHOP_USER}"\npassword_env = "SHOP_PASSWORD"\n',
    )
    monkeypatch.setenv("SHOP_USER", "app")
    monkeypatch.setenv("SHOP_PASSWORD", "s3cret")
    assert load_config(tmp_path).connection("shop") == {
        "host": "127.0.0.1",
        "user": "app",
        "password": "s3cret",
    }


def test_secrets_come_from_the_secrets_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[connections.shop]\nhost = "db"\n',
        '[connections.shop]\npassword = "from-file"\n',
    )
    assert load_config(tmp_path).connection("shop") == {"host": "db", "password": "from-file"}


def test_a_missing_variable_is_named_but_never_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[connections.shop]\npassword_env = "SHOP_PASSWORD"\n')
    monkeypatch.delenv("SHOP_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path).connection("shop")
    assert "SHOP_PASSWORD" in caught.value.message and "export SHOP_PASSWORD" in (
        caught.value.hint or ""
    )


def test_an_unknown_connection_lists_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, '[connections.shop]\nhost = "db"\n')
    with pytest.raises(ConfigError, match="no connection named 'crm'") as caught:
        load_config(tmp_path).connection("crm")
    assert "shop" in (caught.value.hint or "")
