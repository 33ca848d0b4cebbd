"""botocore's own KMS service model is the reference for the AWS shapes (issue 19, Acceptance).

For every operation in hsmstore's table (hsmstore/aws_json/operations.py):

* every input member AWS defines is accepted, or refused with a clear
  UnsupportedOperationException/ValidationException naming it (the row's
  ``refused`` list), never a SerializationException or an internal error;
* every member hsmstore answers with, at any depth, is one AWS defines.

Driven generically from the model: each member gets a value made from its
shape (``sample``), on a real server, and every answer's raw JSON is walked
against the operation's output shape.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.model import OperationModel, Shape, StructureShape
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsmstore.aws_json.operations import OPERATIONS, Operation
from tests.integration.byok import wrap
from tests.integration.harness import ServerProcess
from tests.integration.test_aws_protocol import raw_post

MODEL = botocore.session.get_session().get_service_model("kms")
ADMIN = "arn:hsmstore:iam::local:role/admin"
REFUSALS = {"UnsupportedOperationException", "ValidationException"}
# They need a second token: tests/integration/test_custom_key_stores.py drives them over gRPC.
NEED_A_CUSTOM_KEY_STORE = {"ConnectCustomKeyStore", "DisconnectCustomKeyStore", "DeleteCustomKeyStore"}
NEVER = {"SerializationException", "UnknownOperationException", "KMSInternalException"}
IMPORT_OPERATIONS = {"GetParametersForImport", "ImportKeyMaterial", "DeleteImportedKeyMaterial"}
# Issue 23: the key each asymmetric or HMAC operation needs (the scene's own key is symmetric).
ASYMMETRIC_KEYS = {
    "Sign": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "Verify": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "GetPublicKey": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "GenerateMac": ("HMAC_256", "GENERATE_VERIFY_MAC"),
    "VerifyMac": ("HMAC_256", "GENERATE_VERIFY_MAC"),
    "DeriveSharedSecret": ("ECC_NIST_P256", "KEY_AGREEMENT"),
}


@pytest.fixture(scope="module")
def aws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("aws-model"), ["--aws-listen", "127.0.0.1:0"]) as running:
        yield running


def call(server: ServerProcess, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, document = raw_post(server.aws_url, f"TrentService.{name}", json.dumps(body).encode())
    return status, document


def sample(shape: Shape) -> Any:
    """A value of ``shape`` as AWS JSON carries it (blobs base64, enums their first value)."""
    if shape.type_name == "structure":
        assert isinstance(shape, StructureShape)
        return {name: sample(member) for name, member in shape.members.items()}
    if shape.type_name == "list":
        return [sample(shape.member)]
    if shape.type_name == "map":
        return {"k": sample(shape.value)}
    scalars: dict[str, Any] = {
        "blob": base64.b64encode(b"sample").decode(),
        "boolean": True,
        "integer": max(1, int(shape.metadata.get("min", 1))),
        "long": max(1, int(shape.metadata.get("min", 1))),
    }
    enum = shape.metadata.get("enum")
    return scalars.get(shape.type_name, enum[0] if enum else "sample")


class Scene:
    """A fresh key with a blob, an alias, a tag, a rotation and a grant: what required members name."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        _, created = call(server, "CreateKey", {})
        self.key_id = created["KeyMetadata"]["KeyId"]
        _, encrypted = call(server, "Encrypt", {"KeyId": self.key_id, "Plaintext": sample_blob()})
        self.blob = encrypted["CiphertextBlob"]
        self.alias = f"alias/model-{uuid.uuid4().hex[:10]}"
        call(server, "CreateAlias", {"AliasName": self.alias, "TargetKeyId": self.key_id})
        call(server, "TagResource", {"KeyId": self.key_id, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
        call(server, "RotateKeyOnDemand", {"KeyId": self.key_id})
        _, grant = call(
            server,
            "CreateGrant",
            {
                "KeyId": self.key_id,
                "GranteePrincipal": "arn:hsmstore:iam::local:role/app",
                "RetiringPrincipal": ADMIN,
                "Operations": ["Decrypt"],
                "Constraints": {"EncryptionContextEquals": {"a": "b"}},
                "Name": "model",
            },
        )
        self.grant_id, self.grant_token = grant["GrantId"], grant["GrantToken"]
        _, policy = call(server, "GetKeyPolicy", {"KeyId": self.key_id, "PolicyName": "default"})
        self.policy = policy["Policy"]
        self.extra: dict[str, Any] = {}

    def good(self, member: str, shape: Shape) -> Any:
        """A value that names this scene's resources where it has one, else a sample of the shape."""
        values = self.values()
        return values[member] if member in values else sample(shape)

    def values(self) -> dict[str, Any]:
        return {
            "KeyId": self.key_id,
            "TargetKeyId": self.key_id,
            "DestinationKeyId": self.key_id,
            "SourceKeyId": self.key_id,
            "CiphertextBlob": self.blob,
            "AliasName": self.alias,
            "GrantId": self.grant_id,
            "GrantToken": self.grant_token,
            "GranteePrincipal": "arn:hsmstore:iam::local:role/app",
            "RetiringPrincipal": ADMIN,
            "Operations": ["Decrypt"],
            "PolicyName": "default",
            "Tags": [{"TagKey": "t2", "TagValue": "v2"}],
            "TagKeys": ["t"],
            "Plaintext": sample_blob(),
            "NumberOfBytes": 32,
            "PendingWindowInDays": 7,
            "RotationPeriodInDays": 90,
            "Limit": 10,
            "Policy": self.policy,
            # Issue 23: what the asymmetric and HMAC operations name (their key is set by prepare).
            "Message": sample_blob(),
            "MessageType": "RAW",
            "SigningAlgorithm": "ECDSA_SHA_256",
            "MacAlgorithm": "HMAC_SHA_256",
            "KeyPairSpec": "ECC_NIST_P256",
            "KeyAgreementAlgorithm": "ECDH",
            # Issue 22: imported key material (ImportToken and EncryptedKeyMaterial come from prepare).
            "WrappingAlgorithm": "RSAES_OAEP_SHA_1",
            "WrappingKeySpec": "RSA_2048",
            "ExpirationModel": "KEY_MATERIAL_EXPIRES",
            "ValidTo": int(time.time()) + 86400,
            **self.extra,
        }

    def prepare(self, operation: str) -> None:
        """What one operation needs besides the scene: a key pending deletion, a new alias name."""
        if operation == "CancelKeyDeletion":
            call(self.server, "ScheduleKeyDeletion", {"KeyId": self.key_id, "PendingWindowInDays": 7})
        if operation == "CreateAlias":
            self.alias = f"alias/model-{uuid.uuid4().hex[:10]}"
        usage = ASYMMETRIC_KEYS.get(operation)
        if usage is not None:
            _, created = call(self.server, "CreateKey", {"KeySpec": usage[0], "KeyUsage": usage[1]})
            self.key_id = created["KeyMetadata"]["KeyId"]
        if operation == "Verify":
            _, signed = call(
                self.server,
                "Sign",
                {"KeyId": self.key_id, "Message": sample_blob(), "SigningAlgorithm": "ECDSA_SHA_256"},
            )
            self.extra["Signature"] = signed["Signature"]
        if operation == "VerifyMac":
            _, made = call(
                self.server,
                "GenerateMac",
                {"KeyId": self.key_id, "Message": sample_blob(), "MacAlgorithm": "HMAC_SHA_256"},
            )
            self.extra["Mac"] = made["Mac"]
        if operation in IMPORT_OPERATIONS:
            self.prepare_import(operation)
        if operation == "DeriveSharedSecret":
            peer = ec.generate_private_key(ec.SECP256R1()).public_key()
            der = peer.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.extra["PublicKey"] = base64.b64encode(der).decode()

    def prepare_import(self, operation: str) -> None:
        """An EXTERNAL key; for ImportKeyMaterial a token and 32 bytes wrapped for it; for
        DeleteImportedKeyMaterial the material already imported."""
        _, created = call(self.server, "CreateKey", {"Origin": "EXTERNAL"})
        self.key_id = created["KeyMetadata"]["KeyId"]
        if operation == "GetParametersForImport":
            return
        _, params = call(
            self.server,
            "GetParametersForImport",
            {"KeyId": self.key_id, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"},
        )
        wrapped = wrap(base64.b64decode(params["PublicKey"]), os.urandom(32))
        self.extra["ImportToken"] = params["ImportToken"]
        self.extra["EncryptedKeyMaterial"] = base64.b64encode(wrapped).decode()
        if operation == "DeleteImportedKeyMaterial":
            body = {
                "KeyId": self.key_id,
                "ImportToken": params["ImportToken"],
                "EncryptedKeyMaterial": self.extra["EncryptedKeyMaterial"],
                "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
            }
            status, answer = call(self.server, "ImportKeyMaterial", body)
            assert status == 200, answer


def sample_blob() -> str:
    return base64.b64encode(b"model sample").decode()


def good_body(scene: Scene, model: OperationModel) -> dict[str, Any]:
    """The required members, and every other member the scene has a real value for."""
    scene.prepare(model.name)
    shape = model.input_shape
    values = scene.values()
    return {
        name: scene.good(name, member)
        for name, member in shape.members.items()
        if name in shape.required_members or name in values
    }


def extra_members(model: OperationModel, shape: Shape, document: Any, path: str) -> list[str]:
    """Every member of ``document`` that ``shape`` does not define, as a dotted path."""
    if shape.type_name == "structure":
        assert isinstance(shape, StructureShape) and isinstance(document, dict)
        found = []
        for name, value in document.items():
            if name not in shape.members:
                found.append(f"{path}.{name}")
            else:
                found += extra_members(model, shape.members[name], value, f"{path}.{name}")
        return found
    if shape.type_name == "list":
        assert isinstance(document, list), path
        return [
            extra
            for index, value in enumerate(document)
            for extra in extra_members(model, shape.member, value, f"{path}[{index}]")
        ]
    return []


def check_answer(model: OperationModel, status: int, document: dict[str, Any], asked: str) -> str | None:
    """None if the answer is fine for the model; else what is wrong."""
    if status == 200:
        if model.output_shape is None:
            return None if document == {} else f"{asked}: answered members but AWS defines no output"
        extras = extra_members(model, model.output_shape, document, model.name)
        return f"{asked}: answered members AWS does not define: {extras}" if extras else None
    if document.get("__type") in NEVER or status >= 500:
        return f"{asked}: answered {status} {document}"
    return None


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
def test_every_aws_input_member_is_accepted_or_refused_clearly_and_every_answer_is_modelled(
    aws_server: ServerProcess, operation: Operation
) -> None:
    assert operation.name in MODEL.operation_names
    model = MODEL.operation_model(operation.name)
    defined = set(model.input_shape.members)
    accepted = {member.name for member in operation.inputs}
    refused = {member.name: member for member in operation.refused}
    assert accepted | set(refused) == defined, "the row must name every input member AWS defines, no other"
    problems = []
    for name, shape in model.input_shape.members.items():
        scene = Scene(aws_server)
        body = {**good_body(scene, model), name: scene.good(name, shape)}
        status, document = call(aws_server, operation.name, body)
        asked = f"{operation.name} with {name}"
        if name in refused and refused[name].why and status != 200:
            if document.get("__type") not in REFUSALS or name not in document.get("message", ""):
                problems.append(f"{asked}: refused without naming it: {document}")
            continue
        problem = check_answer(model, status, document, asked)
        if problem:
            problems.append(problem)
    scene = Scene(aws_server)
    status, document = call(aws_server, operation.name, good_body(scene, model))
    problem = check_answer(model, status, document, f"{operation.name} with its good members")
    if problem:
        problems.append(problem)
    assert not problems, "\n".join(problems)


def test_every_operation_succeeds_with_the_members_of_a_full_scene(
    aws_server: ServerProcess,
) -> None:
    """The answers checked above include real successes, not only refusals, for each operation."""
    failures = {}
    for operation in OPERATIONS:
        if operation.name in NEED_A_CUSTOM_KEY_STORE:
            continue
        model = MODEL.operation_model(operation.name)
        scene = Scene(aws_server)
        status, document = call(aws_server, operation.name, good_body(scene, model))
        if status != 200:
            failures[operation.name] = document
    assert failures == {}
