"""The settings flags of the maintenance commands that open the DB and perhaps the token
(``hsmstore admin access-keys``, ``hsmstore domain-keys``), and the settings they load.

One place, so every such command reads ``--config``, the environment and its flags the same
way ``hsmstore serve`` does (hsmstore/config.py ``load_settings``).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from hsmstore.config import Settings, load_settings


def add_settings_flags(parser: argparse.ArgumentParser, *, token: bool) -> None:
    """``--config``, ``--db``, ``--data-dir``; with ``token``, the flags that name the token."""
    parser.add_argument("--config", help="TOML settings file")
    parser.add_argument("--db", help="sqlite:///PATH or postgresql://... (default: SQLite in the data dir)")
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (default ./.hsmstore)")
    if token:
        parser.add_argument("--hsm-profile", dest="hsm_profile", choices=["softhsm2", "cloudhsm"])
        parser.add_argument(
            "--pkcs11-module", dest="pkcs11_module", help="PKCS#11 library (default: dev SoftHSM2)"
        )
        parser.add_argument("--token-label", dest="token_label")
        parser.add_argument("--pin-file", dest="pin_file", help="file holding the user PIN (never in argv)")


def settings_from_flags(args: argparse.Namespace) -> Settings:
    """The settings the flags, the environment and ``--config`` give, as ``serve`` reads them."""
    flags = {field.name: getattr(args, field.name, None) for field in fields(Settings)}
    return load_settings(flags, config_file=getattr(args, "config", None))
