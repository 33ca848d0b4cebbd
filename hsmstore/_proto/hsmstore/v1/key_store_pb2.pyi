import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyMetadata(_message.Message):
    __slots__ = ("aws_account_id", "key_id", "arn", "creation_date", "enabled", "description", "key_usage", "key_state", "deletion_date", "origin", "custom_key_store_id", "key_manager", "key_spec", "encryption_algorithms", "multi_region", "pending_deletion_window_in_days", "signing_algorithms", "mac_algorithms", "key_agreement_algorithms", "valid_to", "expiration_model")
    AWS_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ARN_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KEY_USAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_STATE_FIELD_NUMBER: _ClassVar[int]
    DELETION_DATE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_MANAGER_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    MULTI_REGION_FIELD_NUMBER: _ClassVar[int]
    PENDING_DELETION_WINDOW_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    MAC_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    KEY_AGREEMENT_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    VALID_TO_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_MODEL_FIELD_NUMBER: _ClassVar[int]
    aws_account_id: str
    key_id: str
    arn: str
    creation_date: _timestamp_pb2.Timestamp
    enabled: bool
    description: str
    key_usage: str
    key_state: str
    deletion_date: _timestamp_pb2.Timestamp
    origin: str
    custom_key_store_id: str
    key_manager: str
    key_spec: str
    encryption_algorithms: _containers.RepeatedScalarFieldContainer[str]
    multi_region: bool
    pending_deletion_window_in_days: int
    signing_algorithms: _containers.RepeatedScalarFieldContainer[str]
    mac_algorithms: _containers.RepeatedScalarFieldContainer[str]
    key_agreement_algorithms: _containers.RepeatedScalarFieldContainer[str]
    valid_to: _timestamp_pb2.Timestamp
    expiration_model: str
    def __init__(self, aws_account_id: _Optional[str] = ..., key_id: _Optional[str] = ..., arn: _Optional[str] = ..., creation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enabled: _Optional[bool] = ..., description: _Optional[str] = ..., key_usage: _Optional[str] = ..., key_state: _Optional[str] = ..., deletion_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., origin: _Optional[str] = ..., custom_key_store_id: _Optional[str] = ..., key_manager: _Optional[str] = ..., key_spec: _Optional[str] = ..., encryption_algorithms: _Optional[_Iterable[str]] = ..., multi_region: _Optional[bool] = ..., pending_deletion_window_in_days: _Optional[int] = ..., signing_algorithms: _Optional[_Iterable[str]] = ..., mac_algorithms: _Optional[_Iterable[str]] = ..., key_agreement_algorithms: _Optional[_Iterable[str]] = ..., valid_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expiration_model: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("description", "key_usage", "key_spec", "origin", "tags", "policy", "bypass_policy_lockout_safety_check", "custom_key_store_id")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KEY_USAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BYPASS_POLICY_LOCKOUT_SAFETY_CHECK_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    description: str
    key_usage: str
    key_spec: str
    origin: str
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    policy: str
    bypass_policy_lockout_safety_check: bool
    custom_key_store_id: str
    def __init__(self, description: _Optional[str] = ..., key_usage: _Optional[str] = ..., key_spec: _Optional[str] = ..., origin: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ..., policy: _Optional[str] = ..., bypass_policy_lockout_safety_check: _Optional[bool] = ..., custom_key_store_id: _Optional[str] = ...) -> None: ...

class CreateKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class DescribeKeyRequest(_message.Message):
    __slots__ = ("key_id", "grant_tokens")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeKeyResponse(_message.Message):
    __slots__ = ("key_metadata",)
    KEY_METADATA_FIELD_NUMBER: _ClassVar[int]
    key_metadata: KeyMetadata
    def __init__(self, key_metadata: _Optional[_Union[KeyMetadata, _Mapping]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("limit", "marker")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    marker: str
    def __init__(self, limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class KeyListEntry(_message.Message):
    __slots__ = ("key_id", "key_arn")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ARN_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_arn: str
    def __init__(self, key_id: _Optional[str] = ..., key_arn: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "next_marker", "truncated")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyListEntry]
    next_marker: str
    truncated: bool
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyListEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class EnableKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EnableKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisableKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DisableKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateKeyDescriptionRequest(_message.Message):
    __slots__ = ("key_id", "description")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    description: str
    def __init__(self, key_id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class UpdateKeyDescriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("key_id", "plaintext", "encryption_context", "grant_tokens", "encryption_algorithm")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    plaintext: bytes
    encryption_context: _containers.ScalarMap[str, str]
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    encryption_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., grant_tokens: _Optional[_Iterable[str]] = ..., encryption_algorithm: _Optional[str] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "key_id", "encryption_algorithm")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    key_id: str
    encryption_algorithm: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ..., encryption_algorithm: _Optional[str] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "encryption_context", "grant_tokens", "key_id", "encryption_algorithm")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    encryption_context: _containers.ScalarMap[str, str]
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    key_id: str
    encryption_algorithm: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., grant_tokens: _Optional[_Iterable[str]] = ..., key_id: _Optional[str] = ..., encryption_algorithm: _Optional[str] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("key_id", "plaintext", "encryption_algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    plaintext: bytes
    encryption_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., encryption_algorithm: _Optional[str] = ...) -> None: ...

class ReEncryptRequest(_message.Message):
    __slots__ = ("ciphertext_blob", "source_encryption_context", "source_key_id", "destination_key_id", "destination_encryption_context", "source_encryption_algorithm", "destination_encryption_algorithm", "grant_tokens")
    class SourceEncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DestinationEncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    source_encryption_context: _containers.ScalarMap[str, str]
    source_key_id: str
    destination_key_id: str
    destination_encryption_context: _containers.ScalarMap[str, str]
    source_encryption_algorithm: str
    destination_encryption_algorithm: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., source_encryption_context: _Optional[_Mapping[str, str]] = ..., source_key_id: _Optional[str] = ..., destination_key_id: _Optional[str] = ..., destination_encryption_context: _Optional[_Mapping[str, str]] = ..., source_encryption_algorithm: _Optional[str] = ..., destination_encryption_algorithm: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ReEncryptResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "source_key_id", "key_id", "source_encryption_algorithm", "destination_encryption_algorithm")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_ENCRYPTION_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    source_key_id: str
    key_id: str
    source_encryption_algorithm: str
    destination_encryption_algorithm: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., source_key_id: _Optional[str] = ..., key_id: _Optional[str] = ..., source_encryption_algorithm: _Optional[str] = ..., destination_encryption_algorithm: _Optional[str] = ...) -> None: ...

class GenerateDataKeyRequest(_message.Message):
    __slots__ = ("key_id", "encryption_context", "number_of_bytes", "key_spec", "grant_tokens")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    encryption_context: _containers.ScalarMap[str, str]
    number_of_bytes: int
    key_spec: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., number_of_bytes: _Optional[int] = ..., key_spec: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateDataKeyResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "plaintext", "key_id")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    plaintext: bytes
    key_id: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., plaintext: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class GenerateDataKeyWithoutPlaintextRequest(_message.Message):
    __slots__ = ("key_id", "encryption_context", "number_of_bytes", "key_spec", "grant_tokens")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    encryption_context: _containers.ScalarMap[str, str]
    number_of_bytes: int
    key_spec: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., number_of_bytes: _Optional[int] = ..., key_spec: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateDataKeyWithoutPlaintextResponse(_message.Message):
    __slots__ = ("ciphertext_blob", "key_id")
    CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ciphertext_blob: bytes
    key_id: str
    def __init__(self, ciphertext_blob: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class GenerateRandomRequest(_message.Message):
    __slots__ = ("number_of_bytes", "custom_key_store_id")
    NUMBER_OF_BYTES_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    number_of_bytes: int
    custom_key_store_id: str
    def __init__(self, number_of_bytes: _Optional[int] = ..., custom_key_store_id: _Optional[str] = ...) -> None: ...

class GenerateRandomResponse(_message.Message):
    __slots__ = ("plaintext",)
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    def __init__(self, plaintext: _Optional[bytes] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("key_id", "message", "message_type", "grant_tokens", "signing_algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    message: bytes
    message_type: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    signing_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., message: _Optional[bytes] = ..., message_type: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ..., signing_algorithm: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("key_id", "signature", "signing_algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    signing_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signing_algorithm: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("key_id", "message", "message_type", "signature", "signing_algorithm", "grant_tokens")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    message: bytes
    message_type: str
    signature: bytes
    signing_algorithm: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., message: _Optional[bytes] = ..., message_type: _Optional[str] = ..., signature: _Optional[bytes] = ..., signing_algorithm: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("key_id", "signature_valid", "signing_algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_VALID_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature_valid: bool
    signing_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., signature_valid: _Optional[bool] = ..., signing_algorithm: _Optional[str] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("key_id", "grant_tokens")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("key_id", "public_key", "key_spec", "key_usage", "encryption_algorithms", "signing_algorithms", "key_agreement_algorithms")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    KEY_USAGE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    SIGNING_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    KEY_AGREEMENT_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    key_spec: str
    key_usage: str
    encryption_algorithms: _containers.RepeatedScalarFieldContainer[str]
    signing_algorithms: _containers.RepeatedScalarFieldContainer[str]
    key_agreement_algorithms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., key_spec: _Optional[str] = ..., key_usage: _Optional[str] = ..., encryption_algorithms: _Optional[_Iterable[str]] = ..., signing_algorithms: _Optional[_Iterable[str]] = ..., key_agreement_algorithms: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateMacRequest(_message.Message):
    __slots__ = ("message", "key_id", "mac_algorithm", "grant_tokens")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    key_id: str
    mac_algorithm: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message: _Optional[bytes] = ..., key_id: _Optional[str] = ..., mac_algorithm: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateMacResponse(_message.Message):
    __slots__ = ("mac", "mac_algorithm", "key_id")
    MAC_FIELD_NUMBER: _ClassVar[int]
    MAC_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    mac: bytes
    mac_algorithm: str
    key_id: str
    def __init__(self, mac: _Optional[bytes] = ..., mac_algorithm: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class VerifyMacRequest(_message.Message):
    __slots__ = ("message", "key_id", "mac_algorithm", "mac", "grant_tokens")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    key_id: str
    mac_algorithm: str
    mac: bytes
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message: _Optional[bytes] = ..., key_id: _Optional[str] = ..., mac_algorithm: _Optional[str] = ..., mac: _Optional[bytes] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyMacResponse(_message.Message):
    __slots__ = ("key_id", "mac_valid", "mac_algorithm")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_VALID_FIELD_NUMBER: _ClassVar[int]
    MAC_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    mac_valid: bool
    mac_algorithm: str
    def __init__(self, key_id: _Optional[str] = ..., mac_valid: _Optional[bool] = ..., mac_algorithm: _Optional[str] = ...) -> None: ...

class GenerateDataKeyPairRequest(_message.Message):
    __slots__ = ("encryption_context", "key_id", "key_pair_spec", "grant_tokens")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_PAIR_SPEC_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    encryption_context: _containers.ScalarMap[str, str]
    key_id: str
    key_pair_spec: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, encryption_context: _Optional[_Mapping[str, str]] = ..., key_id: _Optional[str] = ..., key_pair_spec: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateDataKeyPairResponse(_message.Message):
    __slots__ = ("private_key_ciphertext_blob", "private_key_plaintext", "public_key", "key_id", "key_pair_spec")
    PRIVATE_KEY_CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_PAIR_SPEC_FIELD_NUMBER: _ClassVar[int]
    private_key_ciphertext_blob: bytes
    private_key_plaintext: bytes
    public_key: bytes
    key_id: str
    key_pair_spec: str
    def __init__(self, private_key_ciphertext_blob: _Optional[bytes] = ..., private_key_plaintext: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_pair_spec: _Optional[str] = ...) -> None: ...

class GenerateDataKeyPairWithoutPlaintextRequest(_message.Message):
    __slots__ = ("encryption_context", "key_id", "key_pair_spec", "grant_tokens")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_PAIR_SPEC_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    encryption_context: _containers.ScalarMap[str, str]
    key_id: str
    key_pair_spec: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, encryption_context: _Optional[_Mapping[str, str]] = ..., key_id: _Optional[str] = ..., key_pair_spec: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateDataKeyPairWithoutPlaintextResponse(_message.Message):
    __slots__ = ("private_key_ciphertext_blob", "public_key", "key_id", "key_pair_spec")
    PRIVATE_KEY_CIPHERTEXT_BLOB_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_PAIR_SPEC_FIELD_NUMBER: _ClassVar[int]
    private_key_ciphertext_blob: bytes
    public_key: bytes
    key_id: str
    key_pair_spec: str
    def __init__(self, private_key_ciphertext_blob: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., key_id: _Optional[str] = ..., key_pair_spec: _Optional[str] = ...) -> None: ...

class DeriveSharedSecretRequest(_message.Message):
    __slots__ = ("key_id", "key_agreement_algorithm", "public_key", "grant_tokens")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_AGREEMENT_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_agreement_algorithm: str
    public_key: bytes
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., key_agreement_algorithm: _Optional[str] = ..., public_key: _Optional[bytes] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class DeriveSharedSecretResponse(_message.Message):
    __slots__ = ("key_id", "shared_secret", "key_agreement_algorithm", "key_origin")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SHARED_SECRET_FIELD_NUMBER: _ClassVar[int]
    KEY_AGREEMENT_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    shared_secret: bytes
    key_agreement_algorithm: str
    key_origin: str
    def __init__(self, key_id: _Optional[str] = ..., shared_secret: _Optional[bytes] = ..., key_agreement_algorithm: _Optional[str] = ..., key_origin: _Optional[str] = ...) -> None: ...

class GetParametersForImportRequest(_message.Message):
    __slots__ = ("key_id", "wrapping_algorithm", "wrapping_key_spec")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WRAPPING_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    WRAPPING_KEY_SPEC_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    wrapping_algorithm: str
    wrapping_key_spec: str
    def __init__(self, key_id: _Optional[str] = ..., wrapping_algorithm: _Optional[str] = ..., wrapping_key_spec: _Optional[str] = ...) -> None: ...

class GetParametersForImportResponse(_message.Message):
    __slots__ = ("key_id", "import_token", "public_key", "parameters_valid_to")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IMPORT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_VALID_TO_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    import_token: bytes
    public_key: bytes
    parameters_valid_to: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., import_token: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., parameters_valid_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImportKeyMaterialRequest(_message.Message):
    __slots__ = ("key_id", "import_token", "encrypted_key_material", "valid_to", "expiration_model")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    IMPORT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_KEY_MATERIAL_FIELD_NUMBER: _ClassVar[int]
    VALID_TO_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_MODEL_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    import_token: bytes
    encrypted_key_material: bytes
    valid_to: _timestamp_pb2.Timestamp
    expiration_model: str
    def __init__(self, key_id: _Optional[str] = ..., import_token: _Optional[bytes] = ..., encrypted_key_material: _Optional[bytes] = ..., valid_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expiration_model: _Optional[str] = ...) -> None: ...

class ImportKeyMaterialResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DeleteImportedKeyMaterialRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DeleteImportedKeyMaterialResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ScheduleKeyDeletionRequest(_message.Message):
    __slots__ = ("key_id", "pending_window_in_days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_WINDOW_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    pending_window_in_days: int
    def __init__(self, key_id: _Optional[str] = ..., pending_window_in_days: _Optional[int] = ...) -> None: ...

class ScheduleKeyDeletionResponse(_message.Message):
    __slots__ = ("key_id", "deletion_date", "key_state", "pending_window_in_days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DELETION_DATE_FIELD_NUMBER: _ClassVar[int]
    KEY_STATE_FIELD_NUMBER: _ClassVar[int]
    PENDING_WINDOW_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    deletion_date: _timestamp_pb2.Timestamp
    key_state: str
    pending_window_in_days: int
    def __init__(self, key_id: _Optional[str] = ..., deletion_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_state: _Optional[str] = ..., pending_window_in_days: _Optional[int] = ...) -> None: ...

class CancelKeyDeletionRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class CancelKeyDeletionResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class EnableKeyRotationRequest(_message.Message):
    __slots__ = ("key_id", "rotation_period_in_days")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    rotation_period_in_days: int
    def __init__(self, key_id: _Optional[str] = ..., rotation_period_in_days: _Optional[int] = ...) -> None: ...

class EnableKeyRotationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisableKeyRotationRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class DisableKeyRotationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetKeyRotationStatusRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetKeyRotationStatusResponse(_message.Message):
    __slots__ = ("key_rotation_enabled", "key_id", "rotation_period_in_days", "next_rotation_date", "on_demand_rotation_start_date")
    KEY_ROTATION_ENABLED_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PERIOD_IN_DAYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_DATE_FIELD_NUMBER: _ClassVar[int]
    ON_DEMAND_ROTATION_START_DATE_FIELD_NUMBER: _ClassVar[int]
    key_rotation_enabled: bool
    key_id: str
    rotation_period_in_days: int
    next_rotation_date: _timestamp_pb2.Timestamp
    on_demand_rotation_start_date: _timestamp_pb2.Timestamp
    def __init__(self, key_rotation_enabled: _Optional[bool] = ..., key_id: _Optional[str] = ..., rotation_period_in_days: _Optional[int] = ..., next_rotation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., on_demand_rotation_start_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateKeyOnDemandRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RotateKeyOnDemandResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ListKeyRotationsRequest(_message.Message):
    __slots__ = ("key_id", "limit", "marker")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limit: int
    marker: str
    def __init__(self, key_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class RotationsListEntry(_message.Message):
    __slots__ = ("key_id", "rotation_date", "rotation_type")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ROTATION_DATE_FIELD_NUMBER: _ClassVar[int]
    ROTATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    rotation_date: _timestamp_pb2.Timestamp
    rotation_type: str
    def __init__(self, key_id: _Optional[str] = ..., rotation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rotation_type: _Optional[str] = ...) -> None: ...

class ListKeyRotationsResponse(_message.Message):
    __slots__ = ("rotations", "next_marker", "truncated")
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    rotations: _containers.RepeatedCompositeFieldContainer[RotationsListEntry]
    next_marker: str
    truncated: bool
    def __init__(self, rotations: _Optional[_Iterable[_Union[RotationsListEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CreateAliasRequest(_message.Message):
    __slots__ = ("alias_name", "target_key_id")
    ALIAS_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    alias_name: str
    target_key_id: str
    def __init__(self, alias_name: _Optional[str] = ..., target_key_id: _Optional[str] = ...) -> None: ...

class CreateAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateAliasRequest(_message.Message):
    __slots__ = ("alias_name", "target_key_id")
    ALIAS_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    alias_name: str
    target_key_id: str
    def __init__(self, alias_name: _Optional[str] = ..., target_key_id: _Optional[str] = ...) -> None: ...

class UpdateAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("alias_name",)
    ALIAS_NAME_FIELD_NUMBER: _ClassVar[int]
    alias_name: str
    def __init__(self, alias_name: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ("key_id", "limit", "marker")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limit: int
    marker: str
    def __init__(self, key_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class AliasListEntry(_message.Message):
    __slots__ = ("alias_name", "alias_arn", "target_key_id", "creation_date", "last_updated_date")
    ALIAS_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_ARN_FIELD_NUMBER: _ClassVar[int]
    TARGET_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_DATE_FIELD_NUMBER: _ClassVar[int]
    alias_name: str
    alias_arn: str
    target_key_id: str
    creation_date: _timestamp_pb2.Timestamp
    last_updated_date: _timestamp_pb2.Timestamp
    def __init__(self, alias_name: _Optional[str] = ..., alias_arn: _Optional[str] = ..., target_key_id: _Optional[str] = ..., creation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_updated_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases", "next_marker", "truncated")
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[AliasListEntry]
    next_marker: str
    truncated: bool
    def __init__(self, aliases: _Optional[_Iterable[_Union[AliasListEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class Tag(_message.Message):
    __slots__ = ("tag_key", "tag_value")
    TAG_KEY_FIELD_NUMBER: _ClassVar[int]
    TAG_VALUE_FIELD_NUMBER: _ClassVar[int]
    tag_key: str
    tag_value: str
    def __init__(self, tag_key: _Optional[str] = ..., tag_value: _Optional[str] = ...) -> None: ...

class TagResourceRequest(_message.Message):
    __slots__ = ("key_id", "tags")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    def __init__(self, key_id: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ...) -> None: ...

class TagResourceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UntagResourceRequest(_message.Message):
    __slots__ = ("key_id", "tag_keys")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_KEYS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tag_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key_id: _Optional[str] = ..., tag_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class UntagResourceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResourceTagsRequest(_message.Message):
    __slots__ = ("key_id", "limit", "marker")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limit: int
    marker: str
    def __init__(self, key_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class ListResourceTagsResponse(_message.Message):
    __slots__ = ("tags", "next_marker", "truncated")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[Tag]
    next_marker: str
    truncated: bool
    def __init__(self, tags: _Optional[_Iterable[_Union[Tag, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class GetKeyLastUsageRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class KeyUsage(_message.Message):
    __slots__ = ("key_version", "last_used_date", "event_id", "operation")
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_DATE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    key_version: int
    last_used_date: _timestamp_pb2.Timestamp
    event_id: str
    operation: str
    def __init__(self, key_version: _Optional[int] = ..., last_used_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_id: _Optional[str] = ..., operation: _Optional[str] = ...) -> None: ...

class GetKeyLastUsageResponse(_message.Message):
    __slots__ = ("key_id", "last_usage", "version_usages")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_USAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_USAGES_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    last_usage: KeyUsage
    version_usages: _containers.RepeatedCompositeFieldContainer[KeyUsage]
    def __init__(self, key_id: _Optional[str] = ..., last_usage: _Optional[_Union[KeyUsage, _Mapping]] = ..., version_usages: _Optional[_Iterable[_Union[KeyUsage, _Mapping]]] = ...) -> None: ...

class LookupAttribute(_message.Message):
    __slots__ = ("attribute_key", "attribute_value")
    ATTRIBUTE_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_VALUE_FIELD_NUMBER: _ClassVar[int]
    attribute_key: str
    attribute_value: str
    def __init__(self, attribute_key: _Optional[str] = ..., attribute_value: _Optional[str] = ...) -> None: ...

class LookupEventsRequest(_message.Message):
    __slots__ = ("lookup_attributes", "start_time", "end_time", "max_results", "next_token")
    LOOKUP_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lookup_attributes: _containers.RepeatedCompositeFieldContainer[LookupAttribute]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    max_results: int
    next_token: str
    def __init__(self, lookup_attributes: _Optional[_Iterable[_Union[LookupAttribute, _Mapping]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_results: _Optional[int] = ..., next_token: _Optional[str] = ...) -> None: ...

class AuditResource(_message.Message):
    __slots__ = ("resource_type", "resource_name")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    resource_type: str
    resource_name: str
    def __init__(self, resource_type: _Optional[str] = ..., resource_name: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "event_name", "event_time", "username", "resources", "cloud_trail_event", "read_only", "event_source")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CLOUD_TRAIL_EVENT_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    EVENT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_name: str
    event_time: _timestamp_pb2.Timestamp
    username: str
    resources: _containers.RepeatedCompositeFieldContainer[AuditResource]
    cloud_trail_event: str
    read_only: bool
    event_source: str
    def __init__(self, event_id: _Optional[str] = ..., event_name: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., username: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[AuditResource, _Mapping]]] = ..., cloud_trail_event: _Optional[str] = ..., read_only: _Optional[bool] = ..., event_source: _Optional[str] = ...) -> None: ...

class LookupEventsResponse(_message.Message):
    __slots__ = ("events", "next_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_token: _Optional[str] = ...) -> None: ...

class PutKeyPolicyRequest(_message.Message):
    __slots__ = ("key_id", "policy_name", "policy", "bypass_policy_lockout_safety_check")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BYPASS_POLICY_LOCKOUT_SAFETY_CHECK_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy_name: str
    policy: str
    bypass_policy_lockout_safety_check: bool
    def __init__(self, key_id: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy: _Optional[str] = ..., bypass_policy_lockout_safety_check: _Optional[bool] = ...) -> None: ...

class PutKeyPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetKeyPolicyRequest(_message.Message):
    __slots__ = ("key_id", "policy_name")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy_name: str
    def __init__(self, key_id: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class GetKeyPolicyResponse(_message.Message):
    __slots__ = ("policy", "policy_name")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    policy: str
    policy_name: str
    def __init__(self, policy: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class ListKeyPoliciesRequest(_message.Message):
    __slots__ = ("key_id", "limit", "marker")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limit: int
    marker: str
    def __init__(self, key_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class ListKeyPoliciesResponse(_message.Message):
    __slots__ = ("policy_names", "next_marker", "truncated")
    POLICY_NAMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    policy_names: _containers.RepeatedScalarFieldContainer[str]
    next_marker: str
    truncated: bool
    def __init__(self, policy_names: _Optional[_Iterable[str]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class GrantConstraints(_message.Message):
    __slots__ = ("encryption_context_subset", "encryption_context_equals")
    class EncryptionContextSubsetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EncryptionContextEqualsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENCRYPTION_CONTEXT_SUBSET_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_EQUALS_FIELD_NUMBER: _ClassVar[int]
    encryption_context_subset: _containers.ScalarMap[str, str]
    encryption_context_equals: _containers.ScalarMap[str, str]
    def __init__(self, encryption_context_subset: _Optional[_Mapping[str, str]] = ..., encryption_context_equals: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateGrantRequest(_message.Message):
    __slots__ = ("key_id", "grantee_principal", "retiring_principal", "operations", "constraints", "grant_tokens", "name")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RETIRING_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grantee_principal: str
    retiring_principal: str
    operations: _containers.RepeatedScalarFieldContainer[str]
    constraints: GrantConstraints
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    name: str
    def __init__(self, key_id: _Optional[str] = ..., grantee_principal: _Optional[str] = ..., retiring_principal: _Optional[str] = ..., operations: _Optional[_Iterable[str]] = ..., constraints: _Optional[_Union[GrantConstraints, _Mapping]] = ..., grant_tokens: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ...) -> None: ...

class CreateGrantResponse(_message.Message):
    __slots__ = ("grant_token", "grant_id")
    GRANT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    grant_token: str
    grant_id: str
    def __init__(self, grant_token: _Optional[str] = ..., grant_id: _Optional[str] = ...) -> None: ...

class GrantListEntry(_message.Message):
    __slots__ = ("key_id", "grant_id", "name", "creation_date", "grantee_principal", "retiring_principal", "issuing_account", "operations", "constraints")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RETIRING_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ISSUING_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grant_id: str
    name: str
    creation_date: _timestamp_pb2.Timestamp
    grantee_principal: str
    retiring_principal: str
    issuing_account: str
    operations: _containers.RepeatedScalarFieldContainer[str]
    constraints: GrantConstraints
    def __init__(self, key_id: _Optional[str] = ..., grant_id: _Optional[str] = ..., name: _Optional[str] = ..., creation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grantee_principal: _Optional[str] = ..., retiring_principal: _Optional[str] = ..., issuing_account: _Optional[str] = ..., operations: _Optional[_Iterable[str]] = ..., constraints: _Optional[_Union[GrantConstraints, _Mapping]] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("key_id", "limit", "marker", "grant_id", "grantee_principal")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limit: int
    marker: str
    grant_id: str
    grantee_principal: str
    def __init__(self, key_id: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ..., grant_id: _Optional[str] = ..., grantee_principal: _Optional[str] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants", "next_marker", "truncated")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[GrantListEntry]
    next_marker: str
    truncated: bool
    def __init__(self, grants: _Optional[_Iterable[_Union[GrantListEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ListRetirableGrantsRequest(_message.Message):
    __slots__ = ("retiring_principal", "limit", "marker")
    RETIRING_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    retiring_principal: str
    limit: int
    marker: str
    def __init__(self, retiring_principal: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class RetireGrantRequest(_message.Message):
    __slots__ = ("grant_token", "key_id", "grant_id")
    GRANT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    grant_token: str
    key_id: str
    grant_id: str
    def __init__(self, grant_token: _Optional[str] = ..., key_id: _Optional[str] = ..., grant_id: _Optional[str] = ...) -> None: ...

class RetireGrantResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RevokeGrantRequest(_message.Message):
    __slots__ = ("key_id", "grant_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grant_id: str
    def __init__(self, key_id: _Optional[str] = ..., grant_id: _Optional[str] = ...) -> None: ...

class RevokeGrantResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SimulateRequest(_message.Message):
    __slots__ = ("principal", "operation", "key_id", "encryption_context", "via_service", "grant_tokens")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    VIA_SERVICE_FIELD_NUMBER: _ClassVar[int]
    GRANT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    operation: str
    key_id: str
    encryption_context: _containers.ScalarMap[str, str]
    via_service: str
    grant_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal: _Optional[str] = ..., operation: _Optional[str] = ..., key_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., via_service: _Optional[str] = ..., grant_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class SimulateResponse(_message.Message):
    __slots__ = ("decision", "decided_by", "grant_id", "key_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    decision: str
    decided_by: str
    grant_id: str
    key_id: str
    def __init__(self, decision: _Optional[str] = ..., decided_by: _Optional[str] = ..., grant_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class PutIdentityPolicyRequest(_message.Message):
    __slots__ = ("principal", "policy_name", "policy")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    principal: str
    policy_name: str
    policy: str
    def __init__(self, principal: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class PutIdentityPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetIdentityPolicyRequest(_message.Message):
    __slots__ = ("principal", "policy_name")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    principal: str
    policy_name: str
    def __init__(self, principal: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class GetIdentityPolicyResponse(_message.Message):
    __slots__ = ("principal", "policy_name", "policy", "is_default")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    principal: str
    policy_name: str
    policy: str
    is_default: bool
    def __init__(self, principal: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy: _Optional[str] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListIdentityPoliciesRequest(_message.Message):
    __slots__ = ("principal", "limit", "marker")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    principal: str
    limit: int
    marker: str
    def __init__(self, principal: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class IdentityPolicyEntry(_message.Message):
    __slots__ = ("principal", "policy_name", "last_updated")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    principal: str
    policy_name: str
    last_updated: _timestamp_pb2.Timestamp
    def __init__(self, principal: _Optional[str] = ..., policy_name: _Optional[str] = ..., last_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListIdentityPoliciesResponse(_message.Message):
    __slots__ = ("policies", "next_marker", "truncated")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[IdentityPolicyEntry]
    next_marker: str
    truncated: bool
    def __init__(self, policies: _Optional[_Iterable[_Union[IdentityPolicyEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class DeleteIdentityPolicyRequest(_message.Message):
    __slots__ = ("principal", "policy_name")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    principal: str
    policy_name: str
    def __init__(self, principal: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class DeleteIdentityPolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateCustomKeyStoreRequest(_message.Message):
    __slots__ = ("custom_key_store_name", "custom_key_store_type", "key_store_password", "pkcs11_module", "hsm_profile", "token_label", "token_serial")
    CUSTOM_KEY_STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_STORE_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    PKCS11_MODULE_FIELD_NUMBER: _ClassVar[int]
    HSM_PROFILE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SERIAL_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_name: str
    custom_key_store_type: str
    key_store_password: str
    pkcs11_module: str
    hsm_profile: str
    token_label: str
    token_serial: str
    def __init__(self, custom_key_store_name: _Optional[str] = ..., custom_key_store_type: _Optional[str] = ..., key_store_password: _Optional[str] = ..., pkcs11_module: _Optional[str] = ..., hsm_profile: _Optional[str] = ..., token_label: _Optional[str] = ..., token_serial: _Optional[str] = ...) -> None: ...

class CreateCustomKeyStoreResponse(_message.Message):
    __slots__ = ("custom_key_store_id",)
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    def __init__(self, custom_key_store_id: _Optional[str] = ...) -> None: ...

class DescribeCustomKeyStoresRequest(_message.Message):
    __slots__ = ("custom_key_store_id", "custom_key_store_name", "limit", "marker")
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    custom_key_store_name: str
    limit: int
    marker: str
    def __init__(self, custom_key_store_id: _Optional[str] = ..., custom_key_store_name: _Optional[str] = ..., limit: _Optional[int] = ..., marker: _Optional[str] = ...) -> None: ...

class CustomKeyStoresListEntry(_message.Message):
    __slots__ = ("custom_key_store_id", "custom_key_store_name", "custom_key_store_type", "pkcs11_module", "hsm_profile", "token_label", "token_serial", "connection_state", "connection_error_code", "creation_date")
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_KEY_STORE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PKCS11_MODULE_FIELD_NUMBER: _ClassVar[int]
    HSM_PROFILE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    CREATION_DATE_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    custom_key_store_name: str
    custom_key_store_type: str
    pkcs11_module: str
    hsm_profile: str
    token_label: str
    token_serial: str
    connection_state: str
    connection_error_code: str
    creation_date: _timestamp_pb2.Timestamp
    def __init__(self, custom_key_store_id: _Optional[str] = ..., custom_key_store_name: _Optional[str] = ..., custom_key_store_type: _Optional[str] = ..., pkcs11_module: _Optional[str] = ..., hsm_profile: _Optional[str] = ..., token_label: _Optional[str] = ..., token_serial: _Optional[str] = ..., connection_state: _Optional[str] = ..., connection_error_code: _Optional[str] = ..., creation_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DescribeCustomKeyStoresResponse(_message.Message):
    __slots__ = ("custom_key_stores", "next_marker", "truncated")
    CUSTOM_KEY_STORES_FIELD_NUMBER: _ClassVar[int]
    NEXT_MARKER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    custom_key_stores: _containers.RepeatedCompositeFieldContainer[CustomKeyStoresListEntry]
    next_marker: str
    truncated: bool
    def __init__(self, custom_key_stores: _Optional[_Iterable[_Union[CustomKeyStoresListEntry, _Mapping]]] = ..., next_marker: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ConnectCustomKeyStoreRequest(_message.Message):
    __slots__ = ("custom_key_store_id",)
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    def __init__(self, custom_key_store_id: _Optional[str] = ...) -> None: ...

class ConnectCustomKeyStoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisconnectCustomKeyStoreRequest(_message.Message):
    __slots__ = ("custom_key_store_id",)
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    def __init__(self, custom_key_store_id: _Optional[str] = ...) -> None: ...

class DisconnectCustomKeyStoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateCustomKeyStoreRequest(_message.Message):
    __slots__ = ("custom_key_store_id", "new_custom_key_store_name", "key_store_password", "pkcs11_module", "hsm_profile", "token_label", "token_serial")
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_CUSTOM_KEY_STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_STORE_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    PKCS11_MODULE_FIELD_NUMBER: _ClassVar[int]
    HSM_PROFILE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SERIAL_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    new_custom_key_store_name: str
    key_store_password: str
    pkcs11_module: str
    hsm_profile: str
    token_label: str
    token_serial: str
    def __init__(self, custom_key_store_id: _Optional[str] = ..., new_custom_key_store_name: _Optional[str] = ..., key_store_password: _Optional[str] = ..., pkcs11_module: _Optional[str] = ..., hsm_profile: _Optional[str] = ..., token_label: _Optional[str] = ..., token_serial: _Optional[str] = ...) -> None: ...

class UpdateCustomKeyStoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteCustomKeyStoreRequest(_message.Message):
    __slots__ = ("custom_key_store_id",)
    CUSTOM_KEY_STORE_ID_FIELD_NUMBER: _ClassVar[int]
    custom_key_store_id: str
    def __init__(self, custom_key_store_id: _Optional[str] = ...) -> None: ...

class DeleteCustomKeyStoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
