"""What the "bring your own key" tests (issue 22) share: the caller's side of an import, done as a
key owner would do it (with ``cryptography``, never with hsmstore's code), the blob v1 decryption
outside hsmstore, and the token's objects as OpenSC's pkcs11-tool lists them.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from google.protobuf.timestamp_pb2 import Timestamp

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from tests.integration.harness import ServerProcess, reason_of

OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
AES_KEY_WRAP_SHA_1 = "RSA_AES_KEY_WRAP_SHA_1"
SOFTHSM2_OFFERS = (OAEP_SHA_1, AES_KEY_WRAP_SHA_1)  # docs/api.md, "Imported key material"
SOFTHSM2_LACKS = ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256")
OBJECT_HEADERS = ("Secret Key Object", "Private Key Object", "Public Key Object")


def wrap(public_key_der: bytes, material: bytes, algorithm: str = OAEP_SHA_1) -> bytes:
    """``encrypted_key_material`` as AWS's documentation makes it (RSA-OAEP with SHA-1; for
    RSA_AES_KEY_WRAP an ephemeral AES-256 key under RSA-OAEP, then RFC 5649 of the material)."""
    public_key = serialization.load_der_public_key(public_key_der)
    assert isinstance(public_key, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    if algorithm == OAEP_SHA_1:
        return public_key.encrypt(material, oaep)
    assert algorithm == AES_KEY_WRAP_SHA_1, algorithm
    ephemeral = os.urandom(32)
    return public_key.encrypt(ephemeral, oaep) + aes_key_wrap_with_padding(ephemeral, material)


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


def create_external_key(stub: pb_grpc.KeyStoreStub) -> str:
    created = stub.CreateKey(pb.CreateKeyRequest(origin="EXTERNAL", description="byok"))
    return str(created.key_metadata.key_id)


def parameters(
    stub: pb_grpc.KeyStoreStub, key_id: str, algorithm: str = OAEP_SHA_1, spec: str = "RSA_2048"
) -> pb.GetParametersForImportResponse:
    response: pb.GetParametersForImportResponse = stub.GetParametersForImport(
        pb.GetParametersForImportRequest(key_id=key_id, wrapping_algorithm=algorithm, wrapping_key_spec=spec)
    )
    return response


def import_material(
    stub: pb_grpc.KeyStoreStub,
    key_id: str,
    material: bytes,
    valid_to: datetime | None = None,
    algorithm: str = OAEP_SHA_1,
) -> pb.ImportKeyMaterialResponse:
    """GetParametersForImport, wrap, ImportKeyMaterial: the whole import of ``material``."""
    params = parameters(stub, key_id, algorithm)
    request = pb.ImportKeyMaterialRequest(
        key_id=key_id,
        import_token=params.import_token,
        encrypted_key_material=wrap(params.public_key, material, algorithm),
        expiration_model="KEY_MATERIAL_EXPIRES" if valid_to else "KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    if valid_to is not None:
        request.valid_to.CopyFrom(timestamp(valid_to))
    response: pb.ImportKeyMaterialResponse = stub.ImportKeyMaterial(request)
    return response


def reason(call: Callable[[], object]) -> str | None:
    """The call's ErrorInfo reason; None if it succeeded."""
    try:
        call()
    except grpc.RpcError as error:
        return reason_of(error) or str(error.code())  # type: ignore[attr-defined]
    return None


# -- blob v1 outside hsmstore (docs/api.md, "Ciphertext blob v1") ------------------------------


def canonical_context(context: Mapping[str, str]) -> bytes:
    """The documented canonical encryption context, written out here rather than imported."""
    if not context:
        return b""
    pairs = sorted((key.encode(), value.encode()) for key, value in context.items())
    out = struct.pack(">H", len(pairs))
    for key, value in pairs:
        out += struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
    return out


def decrypt_outside(blob: bytes, material: bytes, key_id: str, context: Mapping[str, str]) -> bytes:
    """Blob v1 read by its documented layout and opened with AES-256-GCM under ``material``."""
    version, blob_key, key_version = struct.unpack(">B16sI", blob[:21])
    assert version == 1 and key_version >= 1
    assert blob_key == uuid.UUID(key_id).bytes, "the blob names another key"
    iv, sealed = blob[21:33], blob[33:]
    return AESGCM(material).decrypt(iv, sealed, blob[:21] + canonical_context(context))


# -- the token, as pkcs11-tool lists it ----------------------------------------------------------


def token_objects(server: ServerProcess) -> list[dict[str, str]]:
    """Every key object on the server's token: ``header`` and pkcs11-tool's fields (label, ID,
    Usage, Access)."""
    listing = server.pkcs11_tool("--list-objects")
    assert listing.returncode == 0, listing.stderr
    objects: list[dict[str, str]] = []
    for line in listing.stdout.splitlines():
        if line.startswith(OBJECT_HEADERS):
            objects.append({"header": line})
        elif line.startswith(("Certificate Object", "Data object", "Profile object")):
            objects.append({"header": line, "ignored": "yes"})
        elif objects and ":" in line:
            name, _, value = line.strip().partition(":")
            objects[-1][name.strip()] = value.strip()
    return [o for o in objects if "ignored" not in o]


def flags(obj: Mapping[str, str], field: str) -> set[str]:
    return {flag.strip() for flag in obj.get(field, "").split(",") if flag.strip()}


def version_objects(server: ServerProcess, key_id: str) -> list[dict[str, str]]:
    """The key's version objects (label ``hsmstore/<key id>/v<n>``, docs/hsm.md)."""
    return [
        o
        for o in token_objects(server)
        if o["header"].startswith("Secret Key Object")
        and o.get("label", "").startswith(f"hsmstore/{key_id}/")
    ]


def private_keys(server: ServerProcess) -> dict[tuple[str, str], dict[str, str]]:
    """Private key objects by (label, ID)."""
    return {
        (o.get("label", ""), o.get("ID", "")): o
        for o in token_objects(server)
        if o["header"].startswith("Private Key Object")
    }
