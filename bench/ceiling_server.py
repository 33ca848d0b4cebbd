"""A KeyStore server that does only part of GenerateDataKey and Decrypt: ``bench/ceiling.py``'s levels.

Built like hsmstore's own server (``make_grpc_server``, the generated
``add_KeyStoreServicer_to_server``, hsmstore's default thread count), one process:

* ``--level typed``: parses the request and answers a response made once at
  start. No token, no KMS work: the transport plus protobuf.
* ``--level token``: also what the token must do and nothing else. The
  canonical encryption context, the AAD, the blob, and the token calls through
  ``Pkcs11KeyVault`` (session checkout, cached handle, C_GenerateRandom and
  AES-GCM). No key lookup, no authorization, no audit. Its own key on a fresh
  dev token, in a vault opened as ``bench/token_floor.py`` opens its own (no
  metadata DB, no audit spool: this server uses neither).
* ``--level token-session``: ``token``, with the key a ``wrapped`` version (issue 18): a
  blob under a domain key, used as a session object from the vault's cache (unwrapped on
  the first call), so the token does no per-call check of a key file.

Prints ``KEY <key id>`` (the id its blobs name) and then ``listening on HOST:PORT``.

    PYTHONPATH=. python bench/ceiling_server.py --level token
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from echo_server import wait_for_signal

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.config import Settings
from hsmstore.core.formats import blob as blob_format
from hsmstore.core.formats.encryption_context import canonical_encryption_context
from hsmstore.core.model import DEFAULT_KEY_STORE_ID, KeyMaterialRef, Residency
from hsmstore.hsm.devtoken import activate, ensure_dev_token
from hsmstore.hsm.profiles import SOFTHSM2
from hsmstore.hsm.vault import Pkcs11KeyVault
from hsmstore.server.app import make_grpc_server

LEVELS = ("typed", "token", "token-session")
DATA_KEY_BYTES = 32


class PartialKeyStore(pb_grpc.KeyStoreServicer):  # type: ignore[misc]
    """GenerateDataKey and Decrypt at one level (see the module docstring)."""

    def __init__(self, level: str, vault: Pkcs11KeyVault, key_id: str, material: KeyMaterialRef) -> None:
        self._level = level
        self._vault = vault
        self._key_id = key_id
        self._material = material
        self._fixed_data_key = pb.GenerateDataKeyResponse(
            key_id=key_id, plaintext=bytes(DATA_KEY_BYTES), ciphertext_blob=bytes(80)
        )
        self._fixed_plaintext = pb.DecryptResponse(key_id=key_id, plaintext=bytes(DATA_KEY_BYTES))

    def GenerateDataKey(  # noqa: N802 - the gRPC method's name
        self, request: pb.GenerateDataKeyRequest, context: Any
    ) -> pb.GenerateDataKeyResponse:
        if self._level == "typed":
            return self._fixed_data_key
        aad = blob_format.aad_for(self._key_id, 1, canonical_encryption_context(request.encryption_context))
        data_key, iv, sealed = self._vault.generate_data_key(self._material, DATA_KEY_BYTES, aad)
        blob = blob_format.BlobV1(self._key_id, 1, iv, sealed).to_bytes()
        return pb.GenerateDataKeyResponse(key_id=self._key_id, plaintext=data_key, ciphertext_blob=blob)

    def Decrypt(self, request: pb.DecryptRequest, context: Any) -> pb.DecryptResponse:  # noqa: N802
        if self._level == "typed":
            return self._fixed_plaintext
        blob = blob_format.parse_blob(request.ciphertext_blob)
        aad = blob.aad(canonical_encryption_context(request.encryption_context))
        plaintext = self._vault.decrypt(self._material, blob.iv, blob.ciphertext_and_tag, aad)
        return pb.DecryptResponse(key_id=blob.key_id, plaintext=plaintext)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=LEVELS, required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--grpc-threads", type=int, default=Settings.grpc_threads)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hsmstore-ceiling-") as data_dir:
        token = ensure_dev_token(Path(data_dir), token_label="ceiling")  # noqa: S106 - a label
        activate(token)
        with Pkcs11KeyVault.open(SOFTHSM2, token.module_path, token.token_label, token.read_pin()) as vault:
            key_id, token_id = str(uuid.uuid4()), uuid.uuid4().bytes
            material = KeyMaterialRef.token_object(token_id)
            if args.level == "token-session":  # issue 18: a wrapped version, used as a session object
                domain_key_id = uuid.uuid4().hex
                vault.create_domain_key(domain_key_id)
                pending = KeyMaterialRef(DEFAULT_KEY_STORE_ID, Residency.WRAPPED, token_id)
                material = KeyMaterialRef(
                    DEFAULT_KEY_STORE_ID,
                    Residency.WRAPPED,
                    token_id,
                    wrapped=vault.create_wrapped_key(pending, domain_key_id),
                )
            else:
                vault.create_key(material, f"ceiling/{key_id}/v1")
            server = make_grpc_server(args.grpc_threads, reuse_port=False)
            servicer = PartialKeyStore(args.level, vault, key_id, material)
            pb_grpc.add_KeyStoreServicer_to_server(servicer, server)
            port = server.add_insecure_port(args.listen)
            server.start()
            print(f"KEY {key_id}", flush=True)
            print(f"listening on {args.listen.rpartition(':')[0]}:{port}", flush=True)
            wait_for_signal()
            server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
