"""Asymmetric and HMAC keys (issue 23): Sign, Verify, GetPublicKey, GenerateMac, VerifyMac,
GenerateDataKeyPair[WithoutPlaintext], DeriveSharedSecret.

Every operation validates the request as AWS does, then passes the gate
(``keys/gate.py``: find, authorize ``kms:<Operation>`` with the request's
condition keys, the key state table: usable only while Enabled, like Encrypt),
then checks the key's usage and the algorithm against the key spec table
(``keys/specs.py``, ``keys/usage.py``: InvalidKeyUsageException) and what the
key's token offers (UnsupportedOperationException). Private-key and MAC
operations run on the token (``KeyPairs``, ``MacKeys``); Verify runs on the
host with the stored public key (``crypto/public_keys.py``). Messages, private
keys and shared secrets are never logged, audited or put in an error.

Asymmetric and HMAC keys have one version (AWS: no rotation), so every
operation uses the key's current version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hsmstore.core.audit import capture
from hsmstore.core.crypto.public_keys import PublicKeys, check_peer_public_key, digest_of, verify_signature
from hsmstore.core.crypto.results import (
    DataKeyPairResult,
    MacResult,
    PublicKeyResult,
    SharedSecretResult,
    SignResult,
    VerifyMacResult,
    VerifyResult,
)
from hsmstore.core.crypto.symmetric import EnvelopeEncryption
from hsmstore.core.formats.encryption_context import canonical_encryption_context
from hsmstore.core.keys import specs
from hsmstore.core.keys.gate import KeyGate
from hsmstore.core.keys.material import VersionMaterial
from hsmstore.core.keys.states import Operation
from hsmstore.core.keys.usage import (
    key_pairs_of,
    mac_keys_of,
    offered_by,
    parse_algorithm,
    require_algorithm,
    require_offered,
    require_usage,
)
from hsmstore.core.model import (
    DEFAULT_KEY_STORE_ID,
    Caller,
    KeyAgreementAlgorithm,
    KeyMaterialRef,
    KeyRecord,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    MessageType,
    SigningAlgorithm,
)
from hsmstore.core.ports import KeyStores, SymmetricKeyStore
from hsmstore.core.validation import check_bytes
from hsmstore.errors import (
    InvalidKeyUsageException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    UnsupportedOperationException,
    ValidationException,
)

MAX_SIGNATURE_BYTES = 6144  # AWS Verify "Signature ... Length Constraints: 1-6144"
MAX_MAC_BYTES = 6144  # AWS VerifyMac "Mac ... Length Constraints: 1-6144"
MAX_PEER_PUBLIC_KEY_BYTES = 8192  # AWS DeriveSharedSecret "PublicKey ... 1-8192"


class AsymmetricCryptography:
    def __init__(
        self,
        gate: KeyGate,
        material: VersionMaterial,
        key_stores: KeyStores,
        public_keys: PublicKeys,
        envelope: EnvelopeEncryption,
    ) -> None:
        self._gate = gate
        self._material = material
        self._key_stores = key_stores
        self._public_keys = public_keys
        self._envelope = envelope

    # -- Sign / Verify -----------------------------------------------------------------------------

    def sign(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        message_type: str,
        signing_algorithm: str,
        grant_tokens: Sequence[str] = (),
    ) -> SignResult:
        """AWS Sign: RAW messages up to 4,096 bytes are hashed here, DIGEST ones must have the hash's length;
        the token signs the digest; ECDSA signatures come back DER-encoded."""
        kind, algorithm, digest = _signing_request(message, message_type, signing_algorithm)
        key, arn = self._admit_signing(caller, key_id, Operation.SIGN, kind, algorithm, grant_tokens)
        material = self._material.current(key)
        key_store = self._material.key_store(material)
        require_offered(key_store, algorithm.value)
        signature = key_pairs_of(key_store).sign_digest(material, algorithm.value, digest)
        return SignResult(arn, signature, algorithm.value)

    def verify(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        message_type: str,
        signature: bytes,
        signing_algorithm: str,
        grant_tokens: Sequence[str] = (),
    ) -> VerifyResult:
        """AWS Verify, on the host with the stored public key; AWS never answers SignatureValid=false:
        "KMSInvalidSignatureException: ... the signature verification failed"."""
        check_bytes(signature, "Signature", max_length=MAX_SIGNATURE_BYTES)
        kind, algorithm, digest = _signing_request(message, message_type, signing_algorithm)
        key, arn = self._admit_signing(caller, key_id, Operation.VERIFY, kind, algorithm, grant_tokens)
        material = self._material.current(key)
        require_offered(self._material.key_store(material), algorithm.value)
        public_key = self._public_keys.parsed(key.key_id, key.current_version)
        if not verify_signature(public_key, algorithm, digest, signature):
            raise KMSInvalidSignatureException(
                "The request was rejected because the signature verification failed"
            )
        return VerifyResult(arn, True, algorithm.value)

    def get_public_key(
        self, caller: Caller, key_id: str, grant_tokens: Sequence[str] = ()
    ) -> PublicKeyResult:
        """AWS GetPublicKey: the DER SubjectPublicKeyInfo of an RSA or ECC key, with its usage and
        algorithms (those its token offers); symmetric and HMAC keys have none
        (UnsupportedOperationException)."""
        key = self._gate.admit(caller, key_id, Operation.GET_PUBLIC_KEY, grant_tokens=grant_tokens)
        arn = self._gate.arn(key)
        if key.key_spec not in specs.ASYMMETRIC_SPECS:
            raise UnsupportedOperationException(
                f"{arn} is a {key.key_spec.value} key; GetPublicKey is for RSA and ECC keys only"
            )
        material = self._material.current(key)
        capture.note_key(arn, key.current_version)
        algorithms = specs.algorithms_of(
            key.key_spec, key.key_usage, offered_by(self._material.key_store(material))
        )
        return PublicKeyResult(
            arn,
            self._public_keys.der(key.key_id, key.current_version),
            key.key_spec.value,
            key.key_usage.value,
            algorithms,
        )

    # -- GenerateMac / VerifyMac ----------------------------------------------------------------------

    def generate_mac(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        mac_algorithm: str,
        grant_tokens: Sequence[str] = (),
    ) -> MacResult:
        """AWS GenerateMac: HMAC on the token, message 1 to 4,096 bytes."""
        check_bytes(message, "Message", max_length=specs.MAX_MAC_MESSAGE_BYTES)
        algorithm = parse_algorithm(MacAlgorithm, mac_algorithm, "MacAlgorithm")
        _, arn, material, key_store = self._admit_mac(
            caller, key_id, Operation.GENERATE_MAC, algorithm, grant_tokens
        )
        mac = mac_keys_of(key_store).generate_mac(material, algorithm.value, message)
        return MacResult(arn, mac, algorithm.value)

    def verify_mac(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        mac_algorithm: str,
        mac: bytes,
        grant_tokens: Sequence[str] = (),
    ) -> VerifyMacResult:
        """AWS VerifyMac: C_Verify on the token; a MAC that does not match, or has not the algorithm's
        length, is "KMSInvalidMacException: ... the HMAC verification failed" (never MacValid=false)."""
        check_bytes(message, "Message", max_length=specs.MAX_MAC_MESSAGE_BYTES)
        check_bytes(mac, "Mac", max_length=MAX_MAC_BYTES)
        algorithm = parse_algorithm(MacAlgorithm, mac_algorithm, "MacAlgorithm")
        _, arn, material, key_store = self._admit_mac(
            caller, key_id, Operation.VERIFY_MAC, algorithm, grant_tokens
        )
        expected_length = specs.DIGEST_BYTES[specs.HASH_OF[algorithm.value]]
        if len(mac) != expected_length or not mac_keys_of(key_store).verify_mac(
            material, algorithm.value, message, mac
        ):
            raise KMSInvalidMacException("The request was rejected because the HMAC verification failed")
        return VerifyMacResult(arn, True, algorithm.value)

    # -- GenerateDataKeyPair[WithoutPlaintext] ------------------------------------------------------

    def generate_data_key_pair(
        self,
        caller: Caller,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str],
        with_plaintext: bool,
        grant_tokens: Sequence[str] = (),
    ) -> DataKeyPairResult:
        """AWS GenerateDataKeyPair: a pair made on the token, the private key (PKCS#8 DER) sealed under a
        SYMMETRIC_DEFAULT key exactly as Encrypt seals (encryption context as AAD), so Decrypt of
        the blob returns it; in plaintext only without ``WithoutPlaintext``.

        AWS: "you must specify a symmetric encryption KMS key" (InvalidKeyUsageException otherwise),
        and "GenerateDataKeyPair ... not supported on KMS keys in a custom key store"
        (UnsupportedOperationException).
        """
        spec = _parse_key_pair_spec(key_pair_spec)
        context = canonical_encryption_context(encryption_context)
        operation = (
            Operation.GENERATE_DATA_KEY_PAIR
            if with_plaintext
            else Operation.GENERATE_DATA_KEY_PAIR_WITHOUT_PLAINTEXT
        )
        key = self._gate.admit(
            caller,
            key_id,
            operation,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            request_values={"kms:datakeypairspec": spec.value},
        )
        arn = self._gate.arn(key)
        if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
            raise InvalidKeyUsageException(
                f"{arn} is a {key.key_spec.value} key; {operation.value} needs a SYMMETRIC_DEFAULT key"
            )
        if key.key_store_id != DEFAULT_KEY_STORE_ID:
            raise UnsupportedOperationException(
                f"{operation.value} is not supported for keys in a custom key store"
            )
        private_key, public_key = key_pairs_of(
            self._key_stores.key_store(key.key_store_id)
        ).generate_key_pair_for_export(spec.value)
        blob = self._envelope.seal(key, private_key, context)
        return DataKeyPairResult(arn, spec.value, blob, private_key if with_plaintext else None, public_key)

    # -- DeriveSharedSecret -----------------------------------------------------------------------------

    def derive_shared_secret(
        self,
        caller: Caller,
        key_id: str,
        key_agreement_algorithm: str,
        public_key: bytes,
        grant_tokens: Sequence[str] = (),
    ) -> SharedSecretResult:
        """AWS DeriveSharedSecret: ECDH on the token with a KEY_AGREEMENT key and the peer's DER public key
        (on the key's curve, else ValidationException); the raw shared secret."""
        algorithm = parse_algorithm(KeyAgreementAlgorithm, key_agreement_algorithm, "KeyAgreementAlgorithm")
        check_bytes(public_key, "PublicKey", max_length=MAX_PEER_PUBLIC_KEY_BYTES)
        key = self._gate.admit(
            caller,
            key_id,
            Operation.DERIVE_SHARED_SECRET,
            grant_tokens=grant_tokens,
            request_values={"kms:keyagreementalgorithm": algorithm.value},
        )
        arn = self._gate.arn(key)
        require_usage(key, KeyUsage.KEY_AGREEMENT, Operation.DERIVE_SHARED_SECRET.value, arn)
        require_algorithm(key, algorithm.value, specs.KEY_AGREEMENT_ALGORITHMS.get(key.key_spec, ()))
        check_peer_public_key(public_key, key.key_spec)
        material = self._material.current(key)
        key_store = self._material.key_store(material)
        require_offered(key_store, algorithm.value)
        capture.note_key(arn, key.current_version)
        try:
            secret = key_pairs_of(key_store).derive_shared_secret(material, public_key)
        except ValueError:
            raise ValidationException(f"PublicKey is not an {key.key_spec.value} public key") from None
        return SharedSecretResult(arn, secret, algorithm.value, key.origin.value)

    # -- shared steps -------------------------------------------------------------------------------------

    def _admit_signing(
        self,
        caller: Caller,
        key_id: str,
        operation: Operation,
        message_type: MessageType,
        algorithm: SigningAlgorithm,
        grant_tokens: Sequence[str],
    ) -> tuple[KeyRecord, str]:
        key = self._gate.admit(
            caller,
            key_id,
            operation,
            grant_tokens=grant_tokens,
            request_values={"kms:signingalgorithm": algorithm.value, "kms:messagetype": message_type.value},
        )
        arn = self._gate.arn(key)
        require_usage(key, KeyUsage.SIGN_VERIFY, operation.value, arn)
        require_algorithm(key, algorithm.value, specs.SIGNING_ALGORITHMS.get(key.key_spec, ()))
        capture.note_key(arn, key.current_version)
        return key, arn

    def _admit_mac(
        self,
        caller: Caller,
        key_id: str,
        operation: Operation,
        algorithm: MacAlgorithm,
        grant_tokens: Sequence[str],
    ) -> tuple[KeyRecord, str, KeyMaterialRef, SymmetricKeyStore]:
        key = self._gate.admit(
            caller,
            key_id,
            operation,
            grant_tokens=grant_tokens,
            request_values={"kms:macalgorithm": algorithm.value},
        )
        arn = self._gate.arn(key)
        require_usage(key, KeyUsage.GENERATE_VERIFY_MAC, operation.value, arn)
        require_algorithm(key, algorithm.value, specs.MAC_ALGORITHMS.get(key.key_spec, ()))
        material = self._material.current(key)
        key_store = self._material.key_store(material)
        require_offered(key_store, algorithm.value)
        capture.note_key(arn, key.current_version)
        return key, arn, material, key_store


def _signing_request(
    message: bytes, message_type: str, signing_algorithm: str
) -> tuple[MessageType, SigningAlgorithm, bytes]:
    """AWS Sign/Verify ``Message``: 1 to 4,096 bytes; ``MessageType`` RAW unless given."""
    check_bytes(message, "Message", max_length=specs.MAX_RAW_MESSAGE_BYTES)
    kind = parse_algorithm(MessageType, message_type or MessageType.RAW.value, "MessageType")
    algorithm = parse_algorithm(SigningAlgorithm, signing_algorithm, "SigningAlgorithm")
    return kind, algorithm, digest_of(message, kind, algorithm)


def _parse_key_pair_spec(key_pair_spec: str) -> KeySpec:
    """AWS ``KeyPairSpec``: RSA_2048/3072/4096, ECC_NIST_P256/P384/P521, ECC_SECG_P256K1."""
    try:
        spec = KeySpec(key_pair_spec)
    except ValueError:
        spec = None
    if spec not in specs.DATA_KEY_PAIR_SPECS:
        allowed = ", ".join(sorted(s.value for s in specs.DATA_KEY_PAIR_SPECS))
        raise ValidationException(f"KeyPairSpec must be one of: {allowed}")
    assert spec is not None
    return spec
