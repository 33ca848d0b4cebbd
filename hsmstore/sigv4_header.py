"""The one piece of SigV4 both AWS transports parse the same way: the Authorization header's
parameters (``aws_json/sigv4.py`` verifies by itself, ``xks/sigv4.py`` with botocore's signer;
adapters do not import each other, so the shared part lives here).

AWS: ``Authorization: AWS4-HMAC-SHA256 Credential=<id>/<date>/<region>/<service>/aws4_request,
SignedHeaders=<names>, Signature=<hex>``.
"""

from __future__ import annotations


def authorization_parameters(text: str) -> dict[str, str]:
    """``Credential=..., SignedHeaders=..., Signature=...`` -> a dict (the first of each name wins)."""
    parameters: dict[str, str] = {}
    for part in text.split(","):
        name, equals, value = part.strip().partition("=")
        if equals and name not in parameters:
            parameters[name] = value.strip()
    return parameters
