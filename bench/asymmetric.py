"""Sign and GenerateMac through ``hsmstore serve`` beside the token's own loop: throughput and CPU µs/request.

Issue 23, Acceptance: "Bench: Sign (ECC_NIST_P256, RSA_2048) and GenerateMac
throughput and CPU per request beside the token's own loop, in ``make bench``".

Server side: each round starts a fresh ``hsmstore serve --workers 2`` (its own
dev token and SQLite file), makes one key per case, checks one call with a real
gRPC client (h2load sees only HTTP statuses; gRPC errors travel in trailers),
then loads each case with h2load (bench/h2load.py), the case order alternating
between rounds. GenerateDataKey (AES_256) runs in the same rounds as the
baseline: the cost of a call on this machine at this moment without the new
paths. CPU is utime + stime of every server process (bench/procs.py) over the
measured requests. The figures printed are medians over rounds.

Token side: the same operation with python-pkcs11 straight on a SoftHSM2 dev
token, in 1 and 2 processes (spawned: this process never loads the PKCS#11
library), one session each: CKM_ECDSA over a SHA-256 digest (hsmstore hashes
RAW messages on the host and has the token sign the digest), CKM_SHA256_RSA_PKCS
over the message and CKM_SHA256_HMAC over the message. If helper bench
``bench/token_sign_loop.py`` exists, its figures are printed too.
Figures: docs/performance.md, "Asymmetric and HMAC keys". Usage::

    python bench/asymmetric.py [--rounds 3] [--requests 4000] [--clients 8] [--seconds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/servers.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from h2load import grpc_frame, run
from procs import bench_server, cpu_seconds

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.hsm.devtoken import DevToken, activate, ensure_dev_token
from tests.servers import serve_command

MESSAGE = b"issue 23 bench: a short document to sign" * 2  # 82 bytes, a RAW message


@dataclass(frozen=True)
class Case:
    name: str
    key_spec: str
    key_usage: str
    method: str
    algorithm: str

    def request(self, key_id: str) -> Any:
        if self.method == "Sign":
            return pb.SignRequest(key_id=key_id, message=MESSAGE, signing_algorithm=self.algorithm)
        if self.method == "GenerateDataKey":
            return pb.GenerateDataKeyRequest(key_id=key_id, key_spec=self.algorithm)
        return pb.GenerateMacRequest(key_id=key_id, message=MESSAGE, mac_algorithm=self.algorithm)


CASES = (
    Case("Sign ECC_NIST_P256", "ECC_NIST_P256", "SIGN_VERIFY", "Sign", "ECDSA_SHA_256"),
    Case("Sign RSA_2048", "RSA_2048", "SIGN_VERIFY", "Sign", "RSASSA_PKCS1_V1_5_SHA_256"),
    Case("GenerateMac HMAC_256", "HMAC_256", "GENERATE_VERIFY_MAC", "GenerateMac", "HMAC_SHA_256"),
)
BASELINE = Case(
    "GenerateDataKey AES_256 (baseline)", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "GenerateDataKey", "AES_256"
)
"""The same server's symmetric call in the same rounds: what a call costs without the new paths."""


@dataclass(frozen=True)
class Figure:
    case: str
    rps: float
    cpu_us_per_request: float


def server_round(round_index: int, workers: int, requests: int, warm_up: int, clients: int) -> list[Figure]:
    """One fresh server; every case, in an order that alternates with the round."""
    order = (*CASES, BASELINE) if round_index % 2 == 0 else (BASELINE, *reversed(CASES))
    figures = []
    with (
        tempfile.TemporaryDirectory(prefix="asym-bench-") as data_dir,
        bench_server(serve_command(Path(data_dir), workers=workers)) as server,
    ):
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.KeyStoreStub(channel)
        for case in order:
            created = stub.CreateKey(pb.CreateKeyRequest(key_spec=case.key_spec, key_usage=case.key_usage))
            request = case.request(created.key_metadata.key_id)
            getattr(stub, case.method)(request, timeout=30)  # a real client sees a real answer
            path = f"/hsmstore.v1.KeyStore/{case.method}"
            body = grpc_frame(request.SerializeToString())
            run(server.address, path, body, requests=warm_up, clients=clients)
            before = cpu_seconds(server.pids)
            load = run(server.address, path, body, requests=requests, clients=clients)
            used = cpu_seconds(server.pids) - before
            figures.append(Figure(case.name, load.rps, used / requests * 1e6))
        channel.close()
    return figures


# -- the token's own loop ---------------------------------------------------------------------


def _token_child(token: DevToken, case_name: str, seconds: float, start: Any, out: Any) -> None:
    """Log in, make the case's key (session object), warm up, then sign until ``seconds`` pass."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag
    from pkcs11.util.ec import encode_named_curve_parameters

    activate(token)
    library = pkcs11.lib(token.module_path)
    with library.get_token(token_label=token.token_label).open(user_pin=token.read_pin()) as session:
        if case_name.endswith("ECC_NIST_P256"):
            parameters = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
            )
            private: Any = parameters.generate_keypair(store=False)[1]
            digest = hashlib.sha256(MESSAGE).digest()

            def call() -> object:
                return private.sign(digest, mechanism=Mechanism.ECDSA)

        elif case_name.endswith("RSA_2048"):
            private = session.generate_keypair(KeyType.RSA, 2048, store=False)[1]

            def call() -> object:
                return private.sign(MESSAGE, mechanism=Mechanism.SHA256_RSA_PKCS)

        else:
            secret: Any = session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                store=False,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            )

            def call() -> object:
                return secret.sign(MESSAGE, mechanism=Mechanism.SHA256_HMAC)

        for _ in range(50):
            call()
        start.wait()
        ops, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - wall0 < seconds:
            for _ in range(10):
                call()
            ops += 10
        out.put((ops, time.perf_counter() - wall0, time.process_time() - cpu0))


def token_loop(token: DevToken, case_name: str, processes: int, seconds: float) -> Figure:
    context = multiprocessing.get_context("spawn")
    out, start = context.Queue(), context.Event()
    children = [
        context.Process(target=_token_child, args=(token, case_name, seconds, start, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(3.0)  # every child logged in, made its key and warmed up (RSA key generation included)
    start.set()
    results = [out.get(timeout=seconds * 10 + 120) for _ in children]
    for child in children:
        child.join()
    ops = sum(int(r[0]) for r in results)
    return Figure(
        f"{case_name} (token, {processes} proc)",
        ops / max(float(r[1]) for r in results),
        sum(float(r[2]) for r in results) / ops * 1e6,
    )


def token_figures(seconds: float) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="asym-token-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="bench-asym")  # noqa: S106 - a label
        return [token_loop(token, case.name, n, seconds) for case in CASES for n in (1, 2)]


def helper_token_loop() -> None:
    """bench/token_sign_loop.py (the token's loop of issue 23's helper A), when it is there."""
    if not (Path(__file__).parent / "token_sign_loop.py").exists():
        return
    main_of = getattr(importlib.import_module("token_sign_loop"), "main", None)
    if callable(main_of):
        print("\nbench/token_sign_loop.py:", flush=True)
        main_of()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warm-up", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each token loop")
    args = parser.parse_args()

    rounds = [
        server_round(index, args.workers, args.requests, args.warm_up, args.clients)
        for index in range(args.rounds)
    ]
    print(
        f"hsmstore serve --workers {args.workers}: {args.requests} requests, {args.clients} clients, "
        f"median of {args.rounds} fresh-server rounds"
    )
    print(f"{'case':<40} {'req/s':>8} {'server CPU µs/req':>18}")
    for case in (*CASES, BASELINE):
        mine = [figure for figures in rounds for figure in figures if figure.case == case.name]
        rps = statistics.median(figure.rps for figure in mine)
        cpu = statistics.median(figure.cpu_us_per_request for figure in mine)
        print(f"{case.name:<40} {rps:>8.0f} {cpu:>18.0f}", flush=True)
    print(f"\nthe token's own loop (python-pkcs11, SoftHSM2), {args.seconds:g} s each")
    print(f"{'case':<40} {'ops/s':>8} {'CPU µs/op':>18}")
    for figure in token_figures(args.seconds):
        print(f"{figure.case:<40} {figure.rps:>8.0f} {figure.cpu_us_per_request:>18.1f}", flush=True)
    helper_token_loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
