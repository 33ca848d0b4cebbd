"""A fuzzing harness for the gRPC surface (issue 14, "Keep it fixed").

Strategies come from the proto descriptors (``strategies.py``), the requests
reach a real ``hsmstore serve`` seeded with keys, aliases and grants
(``corpus.py``), and ``engine.py`` checks the invariant after every call and
after the run: docs/api.md "Errors" -- every failure carries a contract status
code and an ErrorInfo of domain ``hsmstore`` -- never UNKNOWN or INTERNAL, no
call hangs, and afterwards the server still serves and its audit chain verifies.

``make test`` runs a short deterministic run (``test_fuzz.py``); ``make fuzz``
a long one (``python -m tests.fuzz.run``).
"""
