"""``aws_listen`` (issue 19): off by default, HOST:PORT, plaintext on loopback only, from every source."""

from __future__ import annotations

import pytest

from hsmstore.config import ConfigError, load_settings


def test_the_aws_port_is_off_by_default() -> None:
    assert load_settings({}, environ={}).aws_listen == ""


def test_a_loopback_address_is_taken_from_the_flag_or_the_environment() -> None:
    assert load_settings({"aws_listen": "127.0.0.1:4599"}, environ={}).aws_listen == "127.0.0.1:4599"
    settings = load_settings({}, environ={"HSMSTORE_AWS_LISTEN": "[::1]:0"})
    assert settings.aws_listen == "[::1]:0"


def test_a_non_loopback_address_without_tls_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"aws_listen": "0.0.0.0:4599"}, environ={})
    message = str(refused.value)
    assert "\n" not in message
    assert "--aws-listen flag" in message
    assert "TLS" in message


def test_an_address_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="aws_listen must be HOST:PORT"):
        load_settings({}, environ={"HSMSTORE_AWS_LISTEN": "4599"})
