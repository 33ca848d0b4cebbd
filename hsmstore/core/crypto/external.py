"""AWS KMS external key store (XKS) operations on hsmstore keys: GetKeyMetadata, Encrypt, Decrypt, health.

Issue 21: AWS KMS calls an XKS proxy, which asks the team's own HSM to
encrypt and decrypt; hsmstore *is* that proxy (docs/xks.md). The transport
(``hsmstore/xks/``) decodes the spec's JSON and hands this module bytes; every
decision is here, on the same gate as the gRPC calls (``keys/gate.py``: the
key of the URI prefix's tenant, the key policy, grants and identity policies,
the key state table) and the same key stores (AES-256-GCM on the token).

The spec's rules this module keeps (XKS Proxy API spec v1.0.3):

* "externalKeyId": at most 128 of ``[A-Za-z0-9._-]``. It names an hsmstore
  key by its id, or an alias as ``alias.<name>`` with each ``/`` of the alias
  name written as ``.`` (a ``/`` cannot be in the URI path segment, and alias
  names never hold a ``.``): ``alias.prod.orders`` is ``alias/prod/orders``.
* Encrypt: the IV is 12 bytes from the token, the tag 16 bytes, split off the
  token's ``ciphertext || tag``; "the ciphertextMetadata must be bound under
  the GCM tag" with the spec's recipe, HSM-side AAD =
  ``u16be(len(AAD)) || AAD || u8(len(CTM)) || CTM``. hsmstore's CTM is
  :data:`CTM_FORMAT_V1` then the key version as u32be (5 bytes, of the
  spec's 20), so a rotated key keeps decrypting what older versions made.
* "ciphertextDataIntegrityValue" (Appendix C), when asked:
  ``base64(SHA256(AAD || CTM || IV || ciphertext || tag))``, computed before a
  trial decrypt of the output, as the spec recommends.
* Sizes: "at least 4300 bytes" of plaintext and ciphertext must be supported;
  hsmstore takes up to :data:`MAX_PAYLOAD_BYTES`. AAD "up to 8192 bytes".
  Beyond either, UnsupportedOperationException ("size beyond what we
  support", the spec's error table), answered 501 by the transport.
* Decrypt: a ciphertext hsmstore did not make (no or another CTM, a 16-byte
  IV: every IV hsmstore emits has 12 bytes), or one whose tag does not verify,
  is InvalidCiphertextException.
* Health is "excluded from any secondary authorization": no policy is asked.

Plaintext, AAD and key bytes only pass through memory here; no error holds them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from hsmstore.core.audit import capture
from hsmstore.core.identifiers import ALIAS_PREFIX
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.states import Operation, next_state
from hsmstore.core.keys.usage_limit import UsageLimit
from hsmstore.core.model import Caller, KeyRecord, KeySpec, KeyState, KeyUsage
from hsmstore.core.ports import KeyStores
from hsmstore.errors import (
    CiphertextAuthenticationFailed,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInternalException,
    UnsupportedOperationException,
    ValidationException,
)

EXTERNAL_KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""The spec's externalKeyId: "1 to 128 characters from [A-Za-z0-9._-]"."""
EXTERNAL_ALIAS_PREFIX: Final = "alias."
ENCRYPTION_ALGORITHM: Final = "AES_GCM"
INTEGRITY_ALGORITHM: Final = "SHA_256"
MAX_PAYLOAD_BYTES: Final = 8192
"""Plaintext and ciphertext (spec: "at least 4300 bytes"); beyond it UnsupportedOperationException."""
MAX_AAD_BYTES: Final = 8192
"""Spec: "additionalAuthenticatedData ... up to 8192 bytes"; beyond it UnsupportedOperationException."""
IV_BYTES: Final = 12
SPEC_IV_LENGTHS: Final = (12, 16)
TAG_BYTES: Final = 16
MAX_CTM_BYTES: Final = 20
CTM_FORMAT_V1: Final = 0x01
"""First byte of hsmstore's ciphertextMetadata: the version (u32be) follows."""
_CTM_V1: Final = struct.Struct(">BI")

KEY_SPEC: Final = "AES_256"
KEY_USAGE: Final = ("ENCRYPT", "DECRYPT")
VENDOR: Final = "hsmstore"

# requestMetadata members and the xks:* condition keys they fill (core/access/policy_conditions.py).
_CONDITION_KEYS: Final = {
    "awsPrincipalArn": "xks:awsprincipalarn",
    "kmsKeyArn": "xks:kmskeyarn",
    "kmsOperation": "xks:kmsoperation",
    "awsSourceVpc": "xks:awssourcevpc",
    "awsSourceVpce": "xks:awssourcevpce",
    "kmsViaService": "xks:kmsviaservice",
}


@dataclass(frozen=True)
class RequestMetadata:
    """The spec's ``requestMetadata``: who at AWS asked, for what; every string member as received.

    "treat kmsRequestId as an opaque string and do not validate it"; "never
    reject an unknown kmsOperation"; members KMS may add later are kept for
    the audit record (``members``) but read by nothing else.
    """

    members: Mapping[str, str]

    def get(self, name: str) -> str | None:
        return self.members.get(name)

    def condition_values(self) -> dict[str, str]:
        """The ``xks:*`` condition keys (lower-cased, as policies are matched)."""
        return {key: self.members[name] for name, key in _CONDITION_KEYS.items() if name in self.members}


@dataclass(frozen=True)
class XksKeyMetadata:
    key_spec: str
    key_usage: tuple[str, ...]
    key_status: str  # ENABLED or DISABLED


@dataclass(frozen=True)
class XksCiphertext:
    ciphertext: bytes
    initialization_vector: bytes
    authentication_tag: bytes
    ciphertext_metadata: bytes
    integrity_value: str | None  # base64, when the request asked for it


@dataclass(frozen=True)
class EkmHealth:
    """One entry of ``ekmFleetDetails``: a token this server uses."""

    id: str
    model: str
    health_status: str  # ACTIVE, DEGRADED or UNAVAILABLE


def key_identifier(external_key_id: str) -> str:
    """The hsmstore key identifier an externalKeyId names (a key id, or ``alias.<name>``)."""
    if not EXTERNAL_KEY_ID_PATTERN.fullmatch(external_key_id):
        raise ValidationException("externalKeyId must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    if external_key_id.startswith(EXTERNAL_ALIAS_PREFIX):
        return ALIAS_PREFIX + external_key_id[len(EXTERNAL_ALIAS_PREFIX) :].replace(".", "/")
    return external_key_id


def external_key_id_of_alias(alias_name: str) -> str:
    """``alias/prod/orders`` -> ``alias.prod.orders`` (docs/xks.md)."""
    return EXTERNAL_ALIAS_PREFIX + alias_name[len(ALIAS_PREFIX) :].replace("/", ".")


def hsm_aad(aad: bytes, ciphertext_metadata: bytes) -> bytes:
    """The spec's HSM-side AAD: ``u16be(len(AAD)) || AAD || u8(len(CTM)) || CTM``."""
    return (
        struct.pack(">H", len(aad)) + aad + struct.pack(">B", len(ciphertext_metadata)) + ciphertext_metadata
    )


def ciphertext_metadata(version: int) -> bytes:
    return _CTM_V1.pack(CTM_FORMAT_V1, version)


def version_of(ciphertext_metadata_bytes: bytes) -> int:
    """The key version a CTM of hsmstore's names; InvalidCiphertextException for any other."""
    if len(ciphertext_metadata_bytes) != _CTM_V1.size or ciphertext_metadata_bytes[0] != CTM_FORMAT_V1:
        raise _invalid_ciphertext()
    return int(_CTM_V1.unpack(ciphertext_metadata_bytes)[1])


def integrity_value(aad: bytes, ctm: bytes, iv: bytes, ciphertext: bytes, tag: bytes) -> str:
    """Spec Appendix C: ``base64(SHA256(AAD || CTM || IV || ciphertext || tag))``, no length prefixes."""
    return base64.b64encode(hashlib.sha256(aad + ctm + iv + ciphertext + tag).digest()).decode("ascii")


def _invalid_ciphertext() -> InvalidCiphertextException:
    return InvalidCiphertextException("The ciphertext, its metadata, IV, tag or AAD do not authenticate")


def _check_algorithm(encryption_algorithm: str) -> None:
    if encryption_algorithm != ENCRYPTION_ALGORITHM:
        raise ValidationException(f"encryptionAlgorithm must be {ENCRYPTION_ALGORITHM}")


def _check_size(data: bytes, name: str, limit: int) -> None:
    if len(data) > limit:
        raise UnsupportedOperationException(f"{name} is longer than the {limit} bytes hsmstore supports")


class ExternalKeyOperations:
    """The XKS API on hsmstore keys; the caller is the URI prefix's principal (docs/xks.md)."""

    def __init__(
        self,
        gate: KeyGate,
        material: VersionMaterial,
        key_stores: KeyStores,
        check_health: Callable[[], None],
        owner_of: Callable[[str], str | None] | None = None,
        token_model: str = "PKCS#11 token",  # noqa: S107 - a model name
        usage_limit: UsageLimit | None = None,
    ) -> None:
        """``check_health``: raises unless this server can answer (core/health.py ``check_health``).
        ``owner_of(key_store_id)``: the tenant of a custom key store (None if unknown), so a
        health answer lists only the caller's tenant's tokens besides the default one.
        ``usage_limit``: the AES-GCM usage limit every Encrypt spends from (issue 18)."""
        self._usage_limit = usage_limit
        self._gate = gate
        self._material = material
        self._key_stores = key_stores
        self._check_health = check_health
        self._owner_of = owner_of
        self._token_model = token_model

    def get_key_metadata(
        self, caller: Caller, external_key_id: str, metadata: RequestMetadata
    ) -> XksKeyMetadata:
        """GetKeyMetadata (``kms:DescribeKey``): DISABLED unless the key can encrypt now."""
        key = self._admit(caller, external_key_id, Operation.DESCRIBE_KEY, metadata)
        status = "ENABLED" if key.state is KeyState.ENABLED else "DISABLED"
        return XksKeyMetadata(KEY_SPEC, KEY_USAGE, status)

    def encrypt(
        self,
        caller: Caller,
        external_key_id: str,
        metadata: RequestMetadata,
        plaintext: bytes,
        encryption_algorithm: str,
        aad: bytes = b"",
        integrity_algorithm: str | None = None,
    ) -> XksCiphertext:
        """Encrypt (``kms:Encrypt``) under the key's current version, on its token."""
        _check_algorithm(encryption_algorithm)
        if integrity_algorithm is not None and integrity_algorithm != INTEGRITY_ALGORITHM:
            raise ValidationException(f"ciphertextDataIntegrityValueAlgorithm must be {INTEGRITY_ALGORITHM}")
        if not plaintext:
            raise ValidationException("plaintext must not be empty")
        _check_size(plaintext, "plaintext", MAX_PAYLOAD_BYTES)
        _check_size(aad, "additionalAuthenticatedData", MAX_AAD_BYTES)
        key = self._admit(caller, external_key_id, Operation.ENCRYPT, metadata)
        if self._usage_limit is not None:
            version, material = self._usage_limit.spend(key)  # NIST SP 800-38D §8.3 (issue 18)
        else:
            version, material = key.current_version, self._material.current(key)
        capture.note_key(self._gate.arn(key), version)
        ctm = ciphertext_metadata(version)
        bound = hsm_aad(aad, ctm)
        store = self._material.key_store(material)
        iv, sealed = store.encrypt(material, plaintext, bound)
        if len(iv) != IV_BYTES or len(sealed) != len(plaintext) + TAG_BYTES:
            raise KMSInternalException("The token returned a GCM output of the wrong length")
        ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        check_value = None
        if integrity_algorithm is not None:
            check_value = integrity_value(aad, ctm, iv, ciphertext, tag)  # spec: before the trial decrypt
            try:
                trial = store.decrypt(material, iv, sealed, bound)
            except CiphertextAuthenticationFailed:
                raise KMSInternalException("The trial decrypt of the new ciphertext failed") from None
            if trial != plaintext:
                raise KMSInternalException("The trial decrypt of the new ciphertext failed")
        return XksCiphertext(ciphertext, iv, tag, ctm, check_value)

    def decrypt(
        self,
        caller: Caller,
        external_key_id: str,
        metadata: RequestMetadata,
        ciphertext: bytes,
        initialization_vector: bytes,
        authentication_tag: bytes,
        encryption_algorithm: str,
        aad: bytes = b"",
        ciphertext_metadata_bytes: bytes = b"",
    ) -> bytes:
        """Decrypt (``kms:Decrypt``) with the version the ciphertextMetadata names."""
        _check_algorithm(encryption_algorithm)
        if len(initialization_vector) not in SPEC_IV_LENGTHS:
            raise ValidationException("initializationVector must be 12 or 16 bytes")
        if len(authentication_tag) != TAG_BYTES:
            raise ValidationException(f"authenticationTag must be {TAG_BYTES} bytes")
        if len(ciphertext_metadata_bytes) > MAX_CTM_BYTES:
            raise ValidationException(f"ciphertextMetadata must be at most {MAX_CTM_BYTES} bytes")
        _check_size(ciphertext, "ciphertext", MAX_PAYLOAD_BYTES)
        _check_size(aad, "additionalAuthenticatedData", MAX_AAD_BYTES)
        key = self._admit(caller, external_key_id, Operation.DECRYPT, metadata)
        version = version_of(ciphertext_metadata_bytes)
        if len(initialization_vector) != IV_BYTES:
            raise _invalid_ciphertext()  # hsmstore never made it: every IV it emits has 12 bytes
        capture.note_key(self._gate.arn(key), version)
        material = self._material.of(key.key_id, version)
        if material is None:
            raise _invalid_ciphertext()
        try:
            return self._material.key_store(material).decrypt(
                material,
                initialization_vector,
                ciphertext + authentication_tag,
                hsm_aad(aad, ciphertext_metadata_bytes),
            )
        except CiphertextAuthenticationFailed:
            raise _invalid_ciphertext() from None

    def get_health_status(self, caller: Caller) -> Sequence[EkmHealth]:
        """The tokens behind the caller's keys and whether each answers now.

        The default key store is ACTIVE when this server can answer at all
        (core/health.py: its token, the metadata DB, the audit spool); each
        custom key store of the caller's tenant connected in this process is
        ACTIVE when its token answers. An outage is UNAVAILABLE. Spec: "the
        proxy MUST exclude GetHealthStatus from any secondary authorization".
        """
        default = self._key_stores.default()
        fleet = [EkmHealth(default.key_store_id, self._token_model, _status(self._check_health))]
        for store in self._key_stores.all():
            if store is default or len(fleet) >= 10:  # spec: at most 10 entries
                continue
            owner = self._owner_of(store.key_store_id) if self._owner_of is not None else None
            if owner != caller.tenant:
                continue
            fleet.append(EkmHealth(store.key_store_id, self._token_model, _status(store.ping)))
        return fleet

    def _admit(
        self, caller: Caller, external_key_id: str, operation: Operation, metadata: RequestMetadata
    ) -> KeyRecord:
        """The gate, with the requestMetadata as the ``xks:*`` condition keys."""
        action = f"kms:{operation.value}"
        key, _alias = self._gate.find(caller, key_identifier(external_key_id), action, "externalKeyId")
        self._gate.access.check(caller, action, key, request_values=metadata.condition_values())
        if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT or key.key_usage is not KeyUsage.ENCRYPT_DECRYPT:
            raise InvalidKeyUsageException("Only AES-256 ENCRYPT_DECRYPT keys serve an external key store")
        next_state(key.state, operation, key.key_id)
        return key


def _status(check: Callable[[], None]) -> str:
    try:
        check()
    except Exception:  # any failure of the token (or the server's own dependencies) is an outage
        return "UNAVAILABLE"
    return "ACTIVE"
