"""hsmstore for tests: the server harness and the pytest plugin (issue 20, Deliver 5; docs/testing.md).

``hsmstore.testing.servers`` starts ``hsmstore serve`` as a command and waits,
boundedly, until it serves; ``hsmstore.testing.plugin`` is the pytest plugin
(entry point ``hsmstore`` of ``pytest11``) built on it. This package needs no
server code of hsmstore in the test process (import-linter checks it): only
grpcio, grpcio-health-checking and, for ``client()``, the client SDK. pytest is
imported by the plugin module only.
"""

from hsmstore.testing.servers import HsmstoreServer, ServerProcess, ServerStartError, serve_command

__all__ = ["HsmstoreServer", "ServerProcess", "ServerStartError", "serve_command"]
