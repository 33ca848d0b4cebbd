"""The graceful-stop and TLS-reload settings (issue 16, Deliver 7): defaults, sources, refusals."""

from __future__ import annotations

import pytest

from hsmstore.cli.main import build_parser
from hsmstore.config import ConfigError, load_settings


def test_the_defaults_give_calls_20_s_and_check_the_tls_files_every_10_s() -> None:
    settings = load_settings({}, environ={})
    assert (settings.shutdown_grace_seconds, settings.tls_reload_seconds) == (20.0, 10.0)


def test_the_flags_and_the_environment_set_them() -> None:
    args = build_parser().parse_args(["serve", "--shutdown-grace-seconds", "3", "--tls-reload-seconds", "0"])
    flags = {
        "shutdown_grace_seconds": args.shutdown_grace_seconds,
        "tls_reload_seconds": args.tls_reload_seconds,
    }
    assert load_settings(flags, environ={}).shutdown_grace_seconds == 3.0
    assert load_settings(flags, environ={}).tls_reload_seconds == 0.0
    from_env = load_settings({}, environ={"HSMSTORE_SHUTDOWN_GRACE_SECONDS": "7.5"})
    assert from_env.shutdown_grace_seconds == 7.5


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("shutdown_grace_seconds", -1, "--shutdown-grace-seconds flag"),
        ("shutdown_grace_seconds", 86_400, "--shutdown-grace-seconds flag"),
        ("tls_reload_seconds", -0.5, "--tls-reload-seconds flag"),
    ],
)
def test_a_value_out_of_range_is_refused_in_one_line_naming_the_flag(
    name: str, value: float, named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({name: value}, environ={})
    assert name in str(refused.value) and named in str(refused.value)
    assert "\n" not in str(refused.value)
