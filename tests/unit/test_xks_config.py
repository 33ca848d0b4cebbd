"""The XKS configuration file (hsmstore/xks/config.py) and the xks_* settings (config.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from hsmstore.config import ConfigError, load_settings
from hsmstore.xks.config import XksConfigError, load_xks_config

AKID = "AKIAXKSEXAMPLE2345ABCDE"
AKID2 = "AKIAXKSROTATED2345ABCDE"


def secret_file(folder: Path, name: str, mode: int = 0o600, text: str | None = None) -> str:
    path = folder / name
    path.write_text((text if text is not None else base64.b64encode(os.urandom(32)).decode()) + "\n")
    path.chmod(mode)
    return name


def write(folder: Path, body: str) -> Path:
    path = folder / "xks.toml"
    path.write_text(body)
    return path


def config_text(prefix: str = "/example/prefix", credentials: str = "", region: str = "us-east-1") -> str:
    credentials = credentials or f'{{ access_key_id = "{AKID}", secret_file = "a.secret" }}'
    return (
        f'region = "{region}"\n[[key_stores]]\nuri_prefix = "{prefix}"\ntenant = "default"\n'
        f'principal = "service/kms-xks"\ncredentials = [{credentials}]\n'
    )


def test_a_valid_file_gives_each_prefix_its_caller_and_secrets(tmp_path: Path) -> None:
    secret_file(tmp_path, "a.secret")
    secret_file(tmp_path, "b.secret")
    two = (
        f'{{ access_key_id = "{AKID}", secret_file = "a.secret" }}, '
        f'{{ access_key_id = "{AKID2}", secret_file = "b.secret" }}'
    )
    config = load_xks_config(write(tmp_path, config_text(credentials=two)))
    entry = config.entry("/example/prefix")
    assert entry is not None and set(entry.secrets) == {AKID, AKID2}
    assert entry.caller.principal == "arn:hsmstore:iam::default:service/kms-xks"
    assert "secrets" not in repr(entry)


def test_an_empty_prefix_is_allowed(tmp_path: Path) -> None:
    secret_file(tmp_path, "a.secret")
    assert load_xks_config(write(tmp_path, config_text(prefix=""))).entry("") is not None


@pytest.mark.parametrize(
    ("prefix", "credentials", "region", "named"),
    [
        ("example", "", "us-east-1", "uri_prefix"),
        ("/a b", "", "us-east-1", "uri_prefix"),
        ("/" + "a" * 117, "", "us-east-1", "uri_prefix"),
        ("/x/kms/xks/v1", "", "us-east-1", "uri_prefix"),
        ("/p", '{ access_key_id = "akia-lower", secret_file = "a.secret" }', "us-east-1", "access_key_id"),
        ("/p", "", "US East", "region"),
        (
            "/p",
            ", ".join(
                f'{{ access_key_id = "{key}", secret_file = "a.secret" }}'
                for key in (AKID, AKID2, "AKIAXKSTHIRD234567ABCDE")
            ),
            "us-east-1",
            "credentials",
        ),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(
    tmp_path: Path, prefix: str, credentials: str, region: str, named: str
) -> None:
    secret_file(tmp_path, "a.secret")
    with pytest.raises(XksConfigError) as refused:
        load_xks_config(write(tmp_path, config_text(prefix, credentials, region)))
    assert named in str(refused.value) and "\n" not in str(refused.value)


def test_a_secret_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    secret_file(tmp_path, "a.secret", mode=0o644)
    with pytest.raises(XksConfigError, match="chmod 600"):
        load_xks_config(write(tmp_path, config_text()))


def test_a_short_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret_file(tmp_path, "a.secret", text="tooshort-secret")
    with pytest.raises(XksConfigError) as refused:
        load_xks_config(write(tmp_path, config_text()))
    assert "tooshort-secret" not in str(refused.value) and "43 to 64" in str(refused.value)


def test_xks_listen_without_xks_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="xks_config"):
        load_settings({"xks_listen": "127.0.0.1:0"}, environ={})


def test_xks_tls_cert_without_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="xks_tls_cert and xks_tls_key"):
        load_settings({"xks_tls_cert": "cert.pem"}, environ={})


def test_xks_settings_come_from_the_environment() -> None:
    settings = load_settings(
        {}, environ={"HSMSTORE_XKS_LISTEN": "127.0.0.1:4600", "HSMSTORE_XKS_CONFIG": "/etc/xks.toml"}
    )
    assert (settings.xks_listen, settings.xks_config) == ("127.0.0.1:4600", "/etc/xks.toml")
