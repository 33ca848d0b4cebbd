"""The AWS JSON 1.1 transport (issue 19): boto3, the AWS CLI and every AWS SDK, unchanged.

``POST /`` with ``X-Amz-Target: TrentService.<Operation>`` and a JSON body,
answered with AWS KMS's JSON shapes and error responses. A transport beside
``server/`` (docs/architecture.md, "a new transport"): it builds a
``CallOrigin``, runs the same use cases through ``CallEnvelope.run`` (same
gate, state table, quotas, observers and audit trail as gRPC) and maps a
``KMSError`` to AWS's ``{"__type", "message"}`` and HTTP status.

* ``shapes.py``      the converter kinds between AWS JSON members and use-case values
* ``operations.py``  the table: AWS operation -> use case, its members, its response
* ``dispatch.py``    one request through the call envelope, to a status and a JSON body
* ``errors.py``      KMSError -> HTTP status; the protocol's own errors
* ``server.py``      the HTTP server (standard library), its bounds, and authentication
"""
