"""The ``hsmstore serve`` flags of the quotas (config.py ``quota_*``; docs/operations.md, "Quotas").

Each flag's dest is its Settings field, so it has a TOML key and an
``HSMSTORE_QUOTA_*`` variable too (docs/api.md, "Command line").
"""

from __future__ import annotations

import argparse


def add_quota_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "quotas", "per-tenant request rates (requests a second) and resource counts; defaults are AWS KMS's"
    )
    group.add_argument(
        "--quota-rates",
        dest="quota_rates",
        action="store_true",
        default=None,
        help="enforce the request quotas: a tenant over one is answered ThrottlingException (default off)",
    )
    group.add_argument(
        "--no-quota-rates",
        dest="quota_rates",
        action="store_false",
        default=None,
        help="do not enforce request quotas",
    )
    group.add_argument(
        "--quota-cryptographic-rate",
        dest="quota_cryptographic_rate",
        type=float,
        help="Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateRandom together (default 10000)",
    )
    group.add_argument(
        "--quota-generate-random-rate",
        dest="quota_generate_random_rate",
        type=float,
        help="GenerateRandom on its own (default 0: it shares the cryptographic quota, as in AWS)",
    )
    group.add_argument(
        "--quota-management-rate",
        dest="quota_management_rate",
        type=float,
        help="every other operation together (default 0: one quota per operation, AWS's table)",
    )
    group.add_argument(
        "--quota-management-rates",
        dest="quota_management_rates",
        metavar="OP=RATE,...",
        help="per-operation rates replacing AWS's, e.g. CreateKey=10,DescribeKey=500",
    )
    group.add_argument(
        "--quota-node-share",
        dest="quota_node_share",
        type=float,
        help="the part of each rate this node enforces: 1/N behind a balancer of N nodes (default 1)",
    )
    group.add_argument(
        "--quota-keys-per-tenant",
        dest="quota_keys_per_tenant",
        type=int,
        help="customer managed keys a tenant may have, in any state (default 100000)",
    )
    group.add_argument("--quota-aliases-per-key", dest="quota_aliases_per_key", type=int, help="(default 50)")
    group.add_argument(
        "--quota-grants-per-key", dest="quota_grants_per_key", type=int, help="(default 50000)"
    )
    group.add_argument(
        "--quota-identity-policies-per-principal",
        dest="quota_identity_policies_per_principal",
        type=int,
        help="(default 10, IAM's managed policies per role or user)",
    )
