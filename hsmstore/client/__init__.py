"""The hsmstore client SDK (issue 20): ``KeyStoreClient``, its result types and typed errors.

    from hsmstore.client import KeyStoreClient, NotFoundException

Installs without the server (``pip install hsmstore``); docs/client.md.
"""

from hsmstore.client import types
from hsmstore.client.client import KeyStoreClient
from hsmstore.client.errors import ClientSetupError
from hsmstore.client.exceptions import (
    AccessDeniedException,
    AlreadyExistsException,
    CustomKeyStoreHasCMKsException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNameInUseException,
    CustomKeyStoreNotFoundException,
    DeadlineExceededError,
    DependencyTimeoutException,
    DisabledException,
    ExpiredImportTokenException,
    HsmstoreError,
    IncorrectKeyException,
    IncorrectKeyMaterialException,
    IncorrectTrustAnchorException,
    InvalidAliasNameException,
    InvalidArnException,
    InvalidCiphertextException,
    InvalidGrantIdException,
    InvalidGrantTokenException,
    InvalidImportTokenException,
    InvalidKeyUsageException,
    InvalidMarkerException,
    KeyUnavailableException,
    KMSInternalException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    KMSInvalidStateException,
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
    ServiceUnavailableError,
    TagException,
    ThrottlingException,
    UnauthenticatedException,
    UnsupportedOperationException,
    ValidationException,
)
from hsmstore.client.retry import RetryPolicy
from hsmstore.client.types import *  # noqa: F403 - every generated result type (types.__all__)

__all__ = [
    "AccessDeniedException",
    "AlreadyExistsException",
    "ClientSetupError",
    "CustomKeyStoreHasCMKsException",
    "CustomKeyStoreInvalidStateException",
    "CustomKeyStoreNameInUseException",
    "CustomKeyStoreNotFoundException",
    "DeadlineExceededError",
    "DependencyTimeoutException",
    "DisabledException",
    "ExpiredImportTokenException",
    "HsmstoreError",
    "IncorrectKeyException",
    "IncorrectKeyMaterialException",
    "IncorrectTrustAnchorException",
    "InvalidAliasNameException",
    "InvalidArnException",
    "InvalidCiphertextException",
    "InvalidGrantIdException",
    "InvalidGrantTokenException",
    "InvalidImportTokenException",
    "InvalidKeyUsageException",
    "InvalidMarkerException",
    "KMSInternalException",
    "KMSInvalidMacException",
    "KMSInvalidSignatureException",
    "KMSInvalidStateException",
    "KeyStoreClient",
    "KeyUnavailableException",
    "LimitExceededException",
    "MalformedPolicyDocumentException",
    "NotFoundException",
    "RetryPolicy",
    "ServiceUnavailableError",
    "TagException",
    "ThrottlingException",
    "UnauthenticatedException",
    "UnsupportedOperationException",
    "ValidationException",
]
__all__ += types.__all__
