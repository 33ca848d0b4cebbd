"""Settings precedence and the safety rules on listen addresses and PINs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hsmstore import certs
from hsmstore.cli.serve import pin_trust_domain
from hsmstore.config import ConfigError, Settings, is_loopback, load_settings


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
