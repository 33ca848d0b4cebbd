"""Settings precedence and the safety rules on listen addresses and PINs."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from hsmstore import certs
from hsmstore.cli.serve import pin_trust_domain
from hsmstore.config import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_LISTEN,
    EXIT_RUNTIME,
    EXIT_TOKEN,
    HSM_PROFILES,
    ConfigError,
    DatabaseSetupError,
    ListenSetupError,
    Settings,
    TokenSetupError,
    describe_source,
    is_loopback,
    load_settings,
    setting_fields,
)


def test_defaults_are_the_embedded_dev_server() -> None:
    settings = load_settings({}, environ={})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.data_dir == ".hsmstore"
    assert settings.uses_dev_token
    assert settings.db_url.startswith("sqlite:///") and settings.db_url.endswith("/.hsmstore/hsmstore.db")


def test_flag_beats_environment_beats_toml(tmp_path: Path) -> None:
    config = tmp_path / "hsmstore.toml"
    config.write_text('listen = "127.0.0.1:1111"\nregion = "toml-region"\ngrpc-threads = 3\n')
    environ = {"HSMSTORE_LISTEN": "127.0.0.1:2222", "HSMSTORE_REGION": "env-region"}
    settings = load_settings({"listen": "127.0.0.1:3333", "region": None}, environ, str(config))
    assert settings.listen == "127.0.0.1:3333"
    assert settings.region == "env-region"
    assert settings.grpc_threads == 3


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('data_dir = "/srv/kms"\n')
    assert load_settings({}, {"HSMSTORE_CONFIG": str(config)}).data_dir == "/srv/kms"


def test_unknown_toml_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('pin = "1234"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, {}, str(config))


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051", "example.com:443"])
def test_non_loopback_listen_without_tls_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match="without TLS"):
        load_settings({"listen": listen}, {})


def test_non_loopback_listen_with_tls_is_allowed() -> None:
    settings = load_settings(
        {"listen": "0.0.0.0:50051", "tls_cert": "c.pem", "tls_key": "k.pem", "client_ca": "ca.pem"}, {}
    )
    assert settings.tls_enabled
    assert settings.trust_domain == ""


def test_tls_is_always_mutual() -> None:
    with pytest.raises(ConfigError, match="need client_ca"):
        load_settings({"listen": "0.0.0.0:50051", "tls_cert": "c.pem", "tls_key": "k.pem"}, {})


TLS = {"tls_cert": "c.pem", "tls_key": "k.pem", "client_ca": "ca.pem"}


def test_trust_domain_from_flag_environment_or_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('trust-domain = "toml.example"\n')
    assert load_settings({**TLS, "trust_domain": "example.org"}, {}).trust_domain == "example.org"
    assert load_settings(TLS, {"HSMSTORE_TRUST_DOMAIN": "env.example"}).trust_domain == "env.example"
    assert load_settings(TLS, {}, str(config)).trust_domain == "toml.example"


@pytest.mark.parametrize(
    "flags",
    [
        {**TLS, "trust_domain": "spiffe://example.org"},
        {**TLS, "trust_domain": "Example.org"},
        {**TLS, "trust_domain": "example.org:443"},
        {"trust_domain": "example.org"},
    ],
)
def test_bad_or_useless_trust_domain_is_refused(flags: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="trust_domain"):
        load_settings(flags, {})


def tls_settings(tmp_path: Path, ca: certs.Issued, trust_domain: str = "") -> Settings:
    certs.write_pem(tmp_path / "ca.pem", ca.cert_pem)
    flags = {**TLS, "client_ca": str(tmp_path / "ca.pem"), "trust_domain": trust_domain or None}
    return load_settings(flags, {})


def test_with_tls_the_trust_domain_the_client_ca_names_is_pinned_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_settings(tmp_path, certs.make_ca(trust_domain="example.org"))
    with caplog.at_level(logging.INFO):
        assert pin_trust_domain(settings).trust_domain == "example.org"
    assert [r.getMessage() for r in caplog.records if "trust domain example.org" in r.getMessage()]


def test_with_tls_a_client_ca_naming_no_trust_domain_needs_trust_domain(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path, certs.make_ca("an operator's CA"))
    with pytest.raises(ConfigError, match="--trust-domain is required") as raised:
        pin_trust_domain(settings)
    assert "\n" not in str(raised.value)
    pinned = tls_settings(tmp_path, certs.make_ca("an operator's CA"), "corp.example")
    assert pin_trust_domain(pinned).trust_domain == "corp.example"


def test_without_tls_no_trust_domain_is_pinned_and_no_file_is_read() -> None:
    settings = load_settings({}, {})
    assert pin_trust_domain(settings) is settings


def test_an_unreadable_client_ca_is_one_clear_error(tmp_path: Path) -> None:
    settings = load_settings({**TLS, "client_ca": str(tmp_path / "missing.pem")}, {})
    with pytest.raises(ConfigError, match="cannot read client_ca"):
        pin_trust_domain(settings)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "flags",
    [
        {"listen": "nonsense"},
        {"workers": -1},
        {"tls_cert": "c.pem"},
        {"client_ca": "ca.pem"},
        {"tls_cert": "c.pem", "tls_key": "k.pem"},
        {"pkcs11_module": "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"},
    ],
)
def test_inconsistent_settings_are_refused(flags: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(flags, {})


def test_settings_have_no_pin_field() -> None:
    assert not any(name == "pin" or name.endswith("_pin") for name in Settings.__dataclass_fields__)


def test_workers_default_to_one_with_sqlite_and_one_per_core_with_postgresql() -> None:
    import os

    assert load_settings({}, {}).worker_count == 1
    assert load_settings({"db": "postgresql://kms@db/kms"}, {}).worker_count == (os.cpu_count() or 1)
    assert load_settings({"db": "postgresql://kms@db/kms", "workers": 3}, {}).worker_count == 3


def test_cpu_affinity_is_off_by_default_and_on_from_the_environment_or_toml(tmp_path: Path) -> None:
    assert load_settings({}, environ={}).cpu_affinity is False
    assert load_settings({}, environ={"HSMSTORE_CPU_AFFINITY": "true"}).cpu_affinity is True
    config = tmp_path / "c.toml"
    config.write_text("cpu_affinity = true\n")
    assert load_settings({}, {}, str(config)).cpu_affinity is True


def test_cpu_affinity_without_sched_setaffinity_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delattr(os, "sched_setaffinity")
    with pytest.raises(ConfigError, match="cpu_affinity needs Linux"):
        load_settings({"cpu_affinity": True}, environ={})


# -- issue 16: every refusal names the setting, its source and the fix ---------------------------


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({}, {"HSMSTORE_WORKERS": "two"}, "HSMSTORE_WORKERS"),
        ({"grpc_threads": "many"}, {}, "--grpc-threads flag"),
        ({}, {"HSMSTORE_AUDIT": "maybe"}, "HSMSTORE_AUDIT"),
        ({}, {"HSMSTORE_JOBS_INTERVAL_SECONDS": "soon"}, "HSMSTORE_JOBS_INTERVAL_SECONDS"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_source_and_the_value(
    flags: dict[str, object], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(flags, environ)
    message = str(raised.value)
    assert named in message
    assert repr(next(iter({**flags, **environ}.values()))) in message
    assert "\n" not in message and "; give e.g. " in message
    assert raised.value.exit_code == EXIT_CONFIG


def test_a_bad_value_in_the_toml_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("workers = 1.5\n")
    with pytest.raises(
        ConfigError, match=f"workers must be a whole number, got 1.5 \\(workers in {config}\\)"
    ):
        load_settings({}, {}, str(config))


def test_an_unreadable_config_file_names_where_its_path_came_from(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="HSMSTORE_CONFIG"):
        load_settings({}, {"HSMSTORE_CONFIG": missing})
    with pytest.raises(ConfigError, match="--config flag"):
        load_settings({}, {}, missing)


@pytest.mark.parametrize("level", ["verbose", "trace", ""])
def test_an_unknown_log_level_is_refused_with_the_known_ones(level: str) -> None:
    with pytest.raises(ConfigError, match="use one of debug, info, warning, error, critical"):
        load_settings({"log_level": level}, {})


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning"])
def test_log_levels_are_case_insensitive(level: str) -> None:
    assert load_settings({"log_level": level}, {}).log_level == level


def test_an_unknown_hsm_profile_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown hsm_profile 'luna' \(HSMSTORE_HSM_PROFILE\)"):
        load_settings({}, {"HSMSTORE_HSM_PROFILE": "luna"})


def test_the_profile_names_config_accepts_are_the_profiles_hsm_knows() -> None:
    from hsmstore.hsm.profiles import PROFILES

    assert set(HSM_PROFILES) == set(PROFILES)


# -- issue 16, Deliver 2: the token is explicit ----------------------------------------------------


MODULE = "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so"


@pytest.mark.parametrize(
    ("flags", "missing"),
    [
        ({"token_label": "prod-token"}, "pkcs11_module and pin_file are missing"),
        ({"pin_file": "/etc/hsmstore/pin"}, "pkcs11_module and token_label are missing"),
        ({"hsm_profile": "cloudhsm"}, "pkcs11_module, token_label and pin_file are missing"),
        ({"hsm_profile": "softhsm2"}, "pkcs11_module, token_label and pin_file are missing"),
        ({"pkcs11_module": MODULE}, "token_label and pin_file are missing"),
        ({"pkcs11_module": MODULE, "token_label": "t"}, "pin_file is missing"),
        ({"token_label": "t", "pin_file": "/p", "hsm_profile": "cloudhsm"}, "pkcs11_module is missing"),
    ],
)
def test_a_token_setting_without_the_others_it_needs_is_refused_naming_what_is_missing(
    flags: dict[str, object], missing: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(flags, {})
    assert missing in str(raised.value)
    for name in flags:
        assert f"--{name.replace('_', '-')} flag" in str(raised.value)
    assert raised.value.exit_code == EXIT_CONFIG


def test_a_token_setting_from_the_environment_or_the_file_counts_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"given: HSMSTORE_TOKEN_LABEL\)"):
        load_settings({}, {"HSMSTORE_TOKEN_LABEL": "prod-token"})
    config = tmp_path / "c.toml"
    config.write_text('hsm-profile = "cloudhsm"\n')
    with pytest.raises(ConfigError, match=f"given: hsm_profile in {config}"):
        load_settings({}, {}, str(config))


def test_the_dev_token_only_without_any_token_setting_and_a_complete_one_is_no_dev_token() -> None:
    assert load_settings({}, {}).uses_dev_token
    complete = load_settings({"pkcs11_module": MODULE, "token_label": "t", "pin_file": "/p"}, {})
    assert not complete.uses_dev_token
    assert complete.hsm_profile == "softhsm2"
    assert not Settings(hsm_profile="cloudhsm").uses_dev_token  # built directly, without sources


# -- sources and exit codes ------------------------------------------------------------------------


def test_describe_source_speaks_each_source_s_language(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('region = "eu"\n')
    settings = load_settings({"listen": "127.0.0.1:1"}, {"HSMSTORE_GRPC_THREADS": "3"}, str(config))
    assert describe_source(settings, "listen") == "--listen flag"
    assert describe_source(settings, "grpc_threads") == "HSMSTORE_GRPC_THREADS"
    assert describe_source(settings, "region") == f"region in {config}"
    assert describe_source(settings, "data_dir") == "default data_dir"
    assert describe_source(settings, "audit") == "default audit"
    assert (
        describe_source(replace(settings, audit=False, sources={"audit": "flag"}), "audit")
        == "--no-audit flag"
    )


def test_sources_are_no_setting() -> None:
    assert "sources" not in {item.name for item in setting_fields()}
    with pytest.raises(ConfigError, match="unknown setting"):
        _load_toml_with("sources = {}\n")


def _load_toml_with(text: str) -> Settings:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
    return load_settings({}, {}, handle.name)


def test_each_class_of_start_up_failure_has_its_own_exit_code() -> None:
    codes = [EXIT_RUNTIME, EXIT_CONFIG, EXIT_TOKEN, EXIT_DATABASE, EXIT_LISTEN]
    assert len(set(codes)) == len(codes) and 0 not in codes
    assert [ConfigError.exit_code, TokenSetupError.exit_code, DatabaseSetupError.exit_code] == codes[1:4]
    assert ListenSetupError.exit_code == EXIT_LISTEN
    assert all(
        issubclass(kind, ConfigError) for kind in (TokenSetupError, DatabaseSetupError, ListenSetupError)
    )


def test_db_wait_seconds_defaults_to_30_and_may_not_be_negative() -> None:
    assert load_settings({}, {}).db_wait_seconds == 30
    assert load_settings({}, {"HSMSTORE_DB_WAIT_SECONDS": "0"}).db_wait_seconds == 0
    with pytest.raises(ConfigError, match="db_wait_seconds must not be negative"):
        load_settings({"db_wait_seconds": -1}, {})
