"""What DescribeCustomKeyStores answers for one store (AWS ``CustomKeyStoresListEntry``).

Never the PIN, sealed or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionState


@dataclass(frozen=True)
class CustomKeyStoreDescription:
    """AWS fields, with the PKCS11 analogues of the CloudHSM ones.

    ``token_label``/``token_serial`` are how the store names its token (exactly
    one is set; AWS: CloudHsmClusterId). ``connected_token_serial`` is the serial
    the token reported at the first connect, the trust anchor analogue (AWS:
    TrustAnchorCertificate); None until then. ``connection_error_code`` is set
    while the store is FAILED (or CONNECTING again after an outage);
    ``connection_detail`` is one operator-facing line about it.
    """

    custom_key_store_id: str
    custom_key_store_name: str
    custom_key_store_type: str
    module: str
    hsm_profile: str
    token_label: str | None
    token_serial: str | None
    connected_token_serial: str | None
    creation_date: datetime
    connection_state: ConnectionState
    connection_error_code: ConnectionErrorCode | None = None
    connection_detail: str = ""
