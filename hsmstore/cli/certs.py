"""``hsmstore certs``: a throwaway CA, a server certificate and client SVIDs, for trying mutual TLS.

hsmstore certs --out DIR [--trust-domain example.org] [--server-name localhost ...]
               [--server-ip 127.0.0.1 ...] [--client SPIFFE_ID ...] [--days 30] [--force]

Writes ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and, per client,
``client-<tenant>-<kind>-<name>.pem``/``.key`` (private keys 0600), then prints
what it wrote as JSON. A client is a full SPIFFE ID
(``spiffe://example.org/tenant/acme/role/admin``) or its short form
``acme/role/admin`` in ``--trust-domain``. An existing CA is reused to issue
the new certificates; it is replaced only with ``--force``, never silently, so
certificates it issued before keep working. Not for production: use your own
PKI (SPIRE, a corporate CA) there.

The CA names the trust domain (URI SAN ``spiffe://<trust-domain>``) and signs
leaves only (``pathLenConstraint`` 0), so ``hsmstore serve --client-ca ca.pem``
pins that trust domain without ``--trust-domain``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsmstore import certs
from hsmstore.core.model import Caller
from hsmstore.errors import UnauthenticatedException
from hsmstore.server.identity import SPIFFE_SCHEME, caller_from_spiffe_id, is_trust_domain
from hsmstore.server.tls import ca_trust_domains

DEFAULT_TRUST_DOMAIN = "example.org"
DEFAULT_SERVER_NAMES = ("localhost",)
DEFAULT_SERVER_IPS = ("127.0.0.1", "::1")
USAGE_ERROR_EXIT = 2


class CertsError(Exception):
    """Nothing usable can be written; the message says why."""


def add_certs_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "certs", help="create a throwaway CA, server and client certificates for mutual TLS"
    )
    parser.add_argument("--out", required=True, help="directory to write the PEM files to")
    parser.add_argument(
        "--trust-domain",
        dest="trust_domain",
        help=f"SPIFFE trust domain of short client names and the CA (default {DEFAULT_TRUST_DOMAIN}); "
        "when given, full client SPIFFE IDs must be in it. The CA names it, so a server with this "
        "CA accepts this trust domain only",
    )
    parser.add_argument(
        "--server-name",
        dest="server_names",
        action="append",
        default=[],
        metavar="DNS_NAME",
        help="DNS SAN of the server certificate (repeatable; default localhost)",
    )
    parser.add_argument(
        "--server-ip",
        dest="server_ips",
        action="append",
        default=[],
        metavar="IP",
        help="IP SAN of the server certificate (repeatable; default 127.0.0.1 and ::1)",
    )
    parser.add_argument(
        "--client",
        dest="clients",
        action="append",
        default=[],
        metavar="SPIFFE_ID",
        help="a client certificate for this SPIFFE ID, or TENANT/KIND/NAME (repeatable)",
    )
    parser.add_argument("--days", type=int, default=certs.DEFAULT_DAYS, help="validity in days (default 30)")
    parser.add_argument("--force", action="store_true", help="replace an existing CA (ca.pem, ca.key)")
    return parser


def run_certs(args: argparse.Namespace) -> int:
    try:
        written = write_certificates(
            Path(args.out),
            trust_domain=args.trust_domain,
            server_names=args.server_names,
            server_ips=args.server_ips,
            clients=args.clients,
            days=args.days,
            force=args.force,
        )
    except CertsError as error:
        print(f"hsmstore certs: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT
    print(json.dumps(written, indent=2))
    return 0


def write_certificates(
    out: Path,
    *,
    trust_domain: str | None = None,
    server_names: list[str] | None = None,
    server_ips: list[str] | None = None,
    clients: list[str] | None = None,
    days: int = certs.DEFAULT_DAYS,
    force: bool = False,
) -> dict[str, Any]:
    """Issue and write everything; returns the description that ``hsmstore certs`` prints."""
    if days < 1:
        raise CertsError("--days must be at least 1")
    if trust_domain is not None and not is_trust_domain(trust_domain):
        raise CertsError(f"not a SPIFFE trust domain name: {trust_domain!r} (e.g. example.org)")
    existing = None if force else _existing_ca(out)
    domain, required = _trust_domain(out, existing, trust_domain)
    identities = [_client_identity(client, domain, required) for client in clients or []]
    names, ips = list(server_names or []), list(server_ips or [])
    if not names and not ips:
        names, ips = list(DEFAULT_SERVER_NAMES), list(DEFAULT_SERVER_IPS)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CertsError(f"--server-ip {ip!r} is not an IP address (use --server-name)") from None
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, reused = (existing, True) if existing is not None else (_new_ca(out, domain, days), False)
    server = certs.make_server_cert(ca, names, ips, days=days)
    description: dict[str, Any] = {
        "out": str(out),
        "trust_domain": domain,
        "ca": {"cert": str(out / "ca.pem"), "key": str(out / "ca.key"), "reused": reused},
        "server": {
            **_write(out, "server", server),
            "dns_names": names,
            "ip_addresses": ips,
            "not_after": server.certificate.not_valid_after_utc.isoformat(),
        },
        "clients": [],
    }
    for spiffe_id, caller in identities:
        issued = certs.make_client_cert(ca, [spiffe_id], days=days, common_name=caller.principal)
        stem = f"client-{caller.tenant}-{caller.kind}-{caller.name}"
        description["clients"].append(
            {"spiffe_id": spiffe_id, "principal": caller.principal, **_write(out, stem, issued)}
        )
    return description


def _client_identity(client: str, domain: str, required_domain: str | None) -> tuple[str, Caller]:
    spiffe_id = client if client.startswith(SPIFFE_SCHEME) else f"{SPIFFE_SCHEME}{domain}/tenant/{client}"
    try:
        return spiffe_id, caller_from_spiffe_id(spiffe_id, required_domain)
    except UnauthenticatedException as error:
        raise CertsError(f"--client {client}: {error.message}") from None


def _existing_ca(out: Path) -> certs.Issued | None:
    """The CA in ``out`` to reuse, None if there is none; CertsError if it cannot be reused."""
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if not key_path.exists():
        return None
    if not cert_path.exists():
        raise CertsError(f"{key_path} exists without ca.pem; give --force to replace that CA")
    try:
        ca = certs.load_issued(cert_path, key_path)
    except (ValueError, TypeError) as error:
        raise CertsError(f"cannot reuse the CA in {out} ({error}); give --force to replace it") from None
    if ca.certificate.not_valid_after_utc <= datetime.now(UTC):
        raise CertsError(f"the CA in {out} has expired; give --force to replace it")
    return ca


def _trust_domain(out: Path, existing: certs.Issued | None, asked: str | None) -> tuple[str, str | None]:
    """(the trust domain of short client names, the one every client must be in, or None).

    A reused CA keeps the trust domain it names: a server with that CA pins
    it (server/tls.py), so a client of another trust domain would be refused.
    """
    if existing is None:
        return asked or DEFAULT_TRUST_DOMAIN, asked
    named = set().union(*ca_trust_domains(existing.cert_pem))
    if asked is not None and named and asked not in named:
        raise CertsError(
            f"the CA in {out} names the trust domain {', '.join(sorted(named))}, not {asked}; "
            "give --force to replace it"
        )
    if asked is None and len(named) == 1:
        asked = next(iter(named))
    return asked or DEFAULT_TRUST_DOMAIN, asked


def _new_ca(out: Path, trust_domain: str, days: int) -> certs.Issued:
    ca = certs.make_ca(f"hsmstore throwaway CA ({trust_domain})", trust_domain, days=days)
    certs.write_pem(out / "ca.key", ca.key_pem, private=True)
    certs.write_pem(out / "ca.pem", ca.cert_pem)
    return ca


def _write(out: Path, stem: str, issued: certs.Issued) -> dict[str, str]:
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    certs.write_pem(key_path, issued.key_pem, private=True)
    certs.write_pem(cert_path, issued.cert_pem)
    return {"cert": str(cert_path), "key": str(key_path)}
