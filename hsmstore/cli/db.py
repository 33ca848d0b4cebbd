"""``hsmstore db upgrade | current``."""

from __future__ import annotations

import argparse

from hsmstore import bootstrap
from hsmstore.cli.serve import settings_from_args


def run_db(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.db_command == "upgrade":
        bootstrap.upgrade_db(settings)
    print(bootstrap.db_revision(settings) or "none")
    return 0
