"""Custom key stores over the wire (issue 17, Acceptance), against a real server and real tokens.

One mutual-TLS server (tenant acme's admin calls; globex is the other tenant)
with its dev token (the default key store) and four more SoftHSM2 tokens made
in the same token directory before it starts: A and B hold two stores'
keys, C is for the update/delete rules and the wrong PIN, D for the PIN scan.
The server allows the SoftHSM2 module under the name ``tenant-hsm``
(``--pkcs11-modules``), the library the dev token is on, so every store shares
one library instance; what each token holds is read with OpenSC's
pkcs11-tool, not with hsmstore's code.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore._proto.hsmstore.v1 import key_store_pb2_grpc as pb_grpc
from hsmstore.hsm.devtoken import find_softhsm_module, render_conf
from tests.integration import byok
from tests.integration.harness import DEV_TOKEN_LABEL, ServerProcess, error_of
from tests.integration.mtls import ACME_ADMIN, GLOBEX_ADMIN, Pki

pytestmark = pytest.mark.integration

MODULE_NAME = "tenant-hsm"  # the dev token's library again, by another name: one library instance
PROFILE = "softhsm2"
CONNECT_TIMEOUT = (
    10.0  # seconds for a store to settle after Connect/Disconnect (issue 17: nodes follow within 1 s)
)
CONTEXT = {"purpose": "custom-key-store-test"}
INIT_TOKEN = ["softhsm2-util", "--init-token", "--free"]
PIN_COUNT_LOW = "user PIN count low"  # SoftHSM2 sets CKF_USER_PIN_COUNT_LOW on a refused login


@dataclass(frozen=True)
class Token:
    label: str
    pin: str


@dataclass
class Stores:
    """The module's server, its tokens, and the two stores (A, B) every test may use."""

    server: ServerProcess
    pki: Pki
    tokens: dict[str, Token]
    conf: Path
    store_a: str = ""
    store_b: str = ""

    @property
    def acme(self) -> pb_grpc.KeyStoreStub:
        return self.server.stub

    def stub_as(self, identity: str) -> pb_grpc.KeyStoreStub:
        return pb_grpc.KeyStoreStub(self.pki.channel(self.server.address, identity))


# ------------------------------------------------------------------ tokens


def _softhsm_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SOFTHSM2_CONF": str(conf)}


def make_tokens(data_dir: Path, labels: list[str]) -> tuple[Path, dict[str, Token]]:
    """Extra tokens in the server's token directory (hsm/devtoken.py's layout), before it starts.

    The server makes its dev token beside them on its first start and, by
    SOFTHSM2_CONF, its SoftHSM2 module sees them all.
    """
    softhsm_dir = data_dir / "softhsm"
    tokendir = softhsm_dir / "tokens"
    tokendir.mkdir(mode=0o700, parents=True)
    os.chmod(softhsm_dir, 0o700)
    conf = softhsm_dir / "softhsm2.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_conf(tokendir))
    tokens = {}
    for label in labels:
        token = Token(label, secrets.token_hex(12))
        made = subprocess.run(
            [*INIT_TOKEN, "--label", label, "--so-pin", secrets.token_hex(8), "--pin", token.pin],
            env=_softhsm_env(conf),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        tokens[label] = token
    return conf, tokens


def pkcs11_tool(conf: Path, token: Token, *args: str, login: bool = True) -> subprocess.CompletedProcess[str]:
    command = ["pkcs11-tool", "--module", find_softhsm_module(), "--token-label", token.label]
    if login:
        command += ["--login", "--pin", token.pin]
    return subprocess.run(
        [*command, *args], env=_softhsm_env(conf), capture_output=True, text=True, timeout=120, check=False
    )


def object_labels(conf: Path, token: Token) -> set[str]:
    listing = pkcs11_tool(conf, token, "--list-objects", "--type", "secrkey")
    assert listing.returncode == 0, listing.stderr
    return {
        line.split(":", 1)[1].strip()
        for line in listing.stdout.splitlines()
        if line.strip().startswith("label:")
    }


def token_flags(conf: Path, token: Token) -> str:
    """The token's flags line as pkcs11-tool prints it (``-L``, no login)."""
    listing = subprocess.run(
        ["pkcs11-tool", "--module", find_softhsm_module(), "-L"],
        env=_softhsm_env(conf),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    blocks = listing.stdout.split("Slot ")
    block = next(b for b in blocks if f"token label        : {token.label}" in b)
    return next(line for line in block.splitlines() if "token flags" in line)


# ------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def stores(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    data_dir = tmp_path_factory.mktemp("custom-key-stores") / "data"
    conf, tokens = make_tokens(data_dir, ["tenant-a", "tenant-b", "tenant-c", "tenant-d"])
    server = pki.server(
        data_dir,
        ACME_ADMIN,
        extra_args=["--pkcs11-modules", f"{MODULE_NAME}={find_softhsm_module()}"],
    ).start()
    try:
        dev_pin = (data_dir / "softhsm" / "user.pin").read_text().strip()
        tokens["default"] = Token(DEV_TOKEN_LABEL, dev_pin)
        result = Stores(server, pki, tokens, conf)
        result.store_a = create_store(result.acme, "store-a", tokens["tenant-a"])
        result.store_b = create_store(result.acme, "store-b", tokens["tenant-b"])
        for store_id in (result.store_a, result.store_b):
            result.acme.ConnectCustomKeyStore(pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id))
        for store_id in (result.store_a, result.store_b):
            wait_for_state(result.acme, store_id, "CONNECTED")
        yield result
    finally:
        server.stop()


def create_store(stub: pb_grpc.KeyStoreStub, name: str, token: Token, pin: str | None = None) -> str:
    response = stub.CreateCustomKeyStore(
        pb.CreateCustomKeyStoreRequest(
            custom_key_store_name=name,
            custom_key_store_type="PKCS11",
            key_store_password=token.pin if pin is None else pin,
            pkcs11_module=MODULE_NAME,
            hsm_profile=PROFILE,
            token_label=token.label,
        )
    )
    assert response.custom_key_store_id.startswith("cks-")
    return response.custom_key_store_id


def describe(stub: pb_grpc.KeyStoreStub, store_id: str) -> pb.CustomKeyStoresListEntry:
    found = stub.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest(custom_key_store_id=store_id))
    assert len(found.custom_key_stores) == 1
    return found.custom_key_stores[0]


def wait_for_state(
    stub: pb_grpc.KeyStoreStub, store_id: str, state: str, timeout: float = CONNECT_TIMEOUT
) -> pb.CustomKeyStoresListEntry:
    deadline = time.monotonic() + timeout
    while True:
        entry = describe(stub, store_id)
        if entry.connection_state == state:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{store_id} is {entry.connection_state} ({entry.connection_error_code}), not {state}"
            )
        time.sleep(0.1)


def connect(stub: pb_grpc.KeyStoreStub, store_id: str) -> None:
    stub.ConnectCustomKeyStore(pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    wait_for_state(stub, store_id, "CONNECTED")


def disconnect(stub: pb_grpc.KeyStoreStub, store_id: str) -> None:
    stub.DisconnectCustomKeyStore(pb.DisconnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    wait_for_state(stub, store_id, "DISCONNECTED")


def create_key(stub: pb_grpc.KeyStoreStub, store_id: str = "") -> pb.KeyMetadata:
    return stub.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_id)).key_metadata


def crypto_calls(stub: pb_grpc.KeyStoreStub, key_id: str, blob: bytes) -> list[Callable[[], object]]:
    return [
        lambda: stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"secret")),
        lambda: stub.Decrypt(
            pb.DecryptRequest(ciphertext_blob=blob, key_id=key_id, encryption_context=CONTEXT)
        ),
        lambda: stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256")),
    ]


def assert_crypto_works(stub: pb_grpc.KeyStoreStub, key_id: str) -> bytes:
    """Encrypt/Decrypt and GenerateDataKey on the key; returns a blob of b"hello" under CONTEXT."""
    context = CONTEXT
    blob = stub.Encrypt(
        pb.EncryptRequest(key_id=key_id, plaintext=b"hello", encryption_context=context)
    ).ciphertext_blob
    assert (
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob, encryption_context=context)).plaintext
        == b"hello"
    )
    data_key = stub.GenerateDataKey(pb.GenerateDataKeyRequest(key_id=key_id, number_of_bytes=32))
    assert len(data_key.plaintext) == 32
    assert (
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=data_key.ciphertext_blob)).plaintext
        == data_key.plaintext
    )
    return blob


# ------------------------------------------------------------------ keys on their own tokens


def test_keys_in_each_store_live_on_their_own_token(stores: Stores) -> None:
    stub = stores.acme
    keys = {
        "tenant-a": create_key(stub, stores.store_a),
        "tenant-b": create_key(stub, stores.store_b),
        "default": create_key(stub),
    }
    labels = {name: object_labels(stores.conf, stores.tokens[name]) for name in keys}
    for name, metadata in keys.items():
        holders = {
            token for token, found in labels.items() if any(metadata.key_id in label for label in found)
        }
        assert holders == {name}, f"key {metadata.key_id} of {name} is on {sorted(holders)}"


def test_crypto_works_in_both_custom_stores_and_the_default_one(stores: Stores) -> None:
    stub = stores.acme
    for store_id in (stores.store_a, stores.store_b, ""):
        key_id = create_key(stub, store_id).key_id
        assert_crypto_works(stub, key_id)


def test_describe_key_and_list_keys_show_the_custom_store(stores: Stores) -> None:
    stub = stores.acme
    in_a = create_key(stub, stores.store_a)
    assert in_a.custom_key_store_id == stores.store_a
    assert in_a.origin == "PKCS11"
    described = stub.DescribeKey(pb.DescribeKeyRequest(key_id=in_a.key_id)).key_metadata
    assert (described.custom_key_store_id, described.origin) == (stores.store_a, "PKCS11")
    in_default = stub.DescribeKey(pb.DescribeKeyRequest(key_id=create_key(stub).key_id)).key_metadata
    assert (in_default.custom_key_store_id, in_default.origin) == ("", "AWS_KMS")
    listed: set[str] = set()
    marker = ""
    while True:
        page = stub.ListKeys(pb.ListKeysRequest(limit=1000, marker=marker))
        listed |= {entry.key_id for entry in page.keys}
        if not page.truncated:
            break
        marker = page.next_marker
    assert {in_a.key_id, in_default.key_id} <= listed


def test_describe_custom_key_stores_shows_each_store_and_never_its_pin(stores: Stores) -> None:
    entry = describe(stores.acme, stores.store_a)
    assert entry.custom_key_store_name == "store-a"
    assert entry.custom_key_store_type == "PKCS11"
    assert (entry.pkcs11_module, entry.hsm_profile, entry.token_label) == (MODULE_NAME, PROFILE, "tenant-a")
    assert entry.token_serial  # the serial the token reported on its first connect
    assert entry.connection_state == "CONNECTED"
    assert entry.connection_error_code == ""
    assert entry.HasField("creation_date")
    by_name = stores.acme.DescribeCustomKeyStores(
        pb.DescribeCustomKeyStoresRequest(custom_key_store_name="store-b")
    ).custom_key_stores
    assert [found.custom_key_store_id for found in by_name] == [stores.store_b]
    assert stores.tokens["tenant-a"].pin not in str(entry)


def test_describe_custom_key_stores_pages(stores: Stores) -> None:
    stub = stores.acme
    seen: list[str] = []
    marker = ""
    while True:
        page = stub.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest(limit=1, marker=marker))
        assert len(page.custom_key_stores) <= 1
        seen += [entry.custom_key_store_id for entry in page.custom_key_stores]
        if not page.truncated:
            break
        marker = page.next_marker
    assert {stores.store_a, stores.store_b} <= set(seen)
    assert len(seen) == len(set(seen))


# ------------------------------------------------------------------ tenants


def test_another_tenant_cannot_see_or_use_a_store(stores: Stores) -> None:
    globex = stores.stub_as(GLOBEX_ADMIN)
    store_id = stores.store_a
    listed = globex.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest()).custom_key_stores
    assert store_id not in {entry.custom_key_store_id for entry in listed}
    not_found = "CustomKeyStoreNotFoundException"
    by_id = pb.DescribeCustomKeyStoresRequest(custom_key_store_id=store_id)
    assert error_of(lambda: globex.DescribeCustomKeyStores(by_id)) == not_found
    by_name = pb.DescribeCustomKeyStoresRequest(custom_key_store_name="store-a")
    assert error_of(lambda: globex.DescribeCustomKeyStores(by_name)) == not_found
    calls: list[Callable[[], object]] = [
        lambda: globex.ConnectCustomKeyStore(pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id)),
        lambda: globex.DisconnectCustomKeyStore(
            pb.DisconnectCustomKeyStoreRequest(custom_key_store_id=store_id)
        ),
        lambda: globex.UpdateCustomKeyStore(
            pb.UpdateCustomKeyStoreRequest(custom_key_store_id=store_id, new_custom_key_store_name="mine")
        ),
        lambda: globex.DeleteCustomKeyStore(pb.DeleteCustomKeyStoreRequest(custom_key_store_id=store_id)),
        lambda: globex.CreateKey(pb.CreateKeyRequest(custom_key_store_id=store_id)),
    ]
    for call in calls:
        assert error_of(call) == not_found
    arn = create_key(stores.acme, store_id).arn
    assert (
        error_of(lambda: globex.Encrypt(pb.EncryptRequest(key_id=arn, plaintext=b"x"))) == "NotFoundException"
    )
    assert describe(stores.acme, store_id).connection_state == "CONNECTED"  # globex changed nothing


def test_store_names_are_unique_within_a_tenant_only(stores: Stores) -> None:
    """AWS: a custom key store name is unique in the account (the tenant here), so globex may name a
    store store-a while acme cannot make a second one."""
    globex = stores.stub_as(GLOBEX_ADMIN)
    store_id = create_store(globex, "store-a", stores.tokens["tenant-d"], pin="0000-not-the-pin")
    try:
        assert store_id != stores.store_a
        assert describe(globex, store_id).connection_state == "DISCONNECTED"
    finally:
        globex.DeleteCustomKeyStore(pb.DeleteCustomKeyStoreRequest(custom_key_store_id=store_id))
    reason = error_of(lambda: create_store(stores.acme, "store-a", stores.tokens["tenant-d"]))
    assert reason == "CustomKeyStoreNameInUseException"


# ------------------------------------------------------------------ connect and disconnect


def test_disconnected_store_key_answers_kms_invalid_state_and_others_keep_serving(stores: Stores) -> None:
    stub = stores.acme
    in_a = create_key(stub, stores.store_a).key_id
    in_b = create_key(stub, stores.store_b).key_id
    in_default = create_key(stub).key_id
    blob_a = assert_crypto_works(stub, in_a)
    disconnect(stub, stores.store_a)
    try:
        for call in crypto_calls(stub, in_a, blob_a):
            assert error_of(call) == "KMSInvalidStateException"
        assert stub.DescribeKey(pb.DescribeKeyRequest(key_id=in_a)).key_metadata.key_state == "ENABLED"
        stub.UpdateKeyDescription(pb.UpdateKeyDescriptionRequest(key_id=in_a, description="still managed"))
        assert error_of(lambda: create_key(stub, stores.store_a)) == "CustomKeyStoreInvalidStateException"
        assert_crypto_works(stub, in_b)
        assert_crypto_works(stub, in_default)
    finally:
        connect(stub, stores.store_a)
    assert_crypto_works(stub, in_a)
    assert (
        stub.Decrypt(pb.DecryptRequest(ciphertext_blob=blob_a, encryption_context=CONTEXT)).plaintext
        == b"hello"
    )


def test_update_and_delete_follow_the_connection_state(stores: Stores) -> None:
    stub = stores.acme
    token = stores.tokens["tenant-c"]
    store_id = create_store(stub, "store-c", token)
    connect(stub, store_id)
    rename = pb.UpdateCustomKeyStoreRequest(
        custom_key_store_id=store_id, new_custom_key_store_name="store-c2"
    )
    delete = pb.DeleteCustomKeyStoreRequest(custom_key_store_id=store_id)
    assert error_of(lambda: stub.UpdateCustomKeyStore(rename)) == "CustomKeyStoreInvalidStateException"
    assert error_of(lambda: stub.DeleteCustomKeyStore(delete)) == "CustomKeyStoreInvalidStateException"
    disconnect(stub, store_id)
    stub.UpdateCustomKeyStore(rename)
    assert describe(stub, store_id).custom_key_store_name == "store-c2"
    stub.DeleteCustomKeyStore(delete)
    gone = pb.DescribeCustomKeyStoresRequest(custom_key_store_id=store_id)
    assert error_of(lambda: stub.DescribeCustomKeyStores(gone)) == "CustomKeyStoreNotFoundException"


def test_delete_of_a_store_with_keys_answers_has_cmks(stores: Stores) -> None:
    stub = stores.acme
    create_key(stub, stores.store_b)
    disconnect(stub, stores.store_b)
    try:
        delete = pb.DeleteCustomKeyStoreRequest(custom_key_store_id=stores.store_b)
        assert error_of(lambda: stub.DeleteCustomKeyStore(delete)) == "CustomKeyStoreHasCMKsException"
        assert describe(stub, stores.store_b).custom_key_store_name == "store-b"
    finally:
        connect(stub, stores.store_b)


def test_requests_out_of_their_limits_answer_validation(stores: Stores) -> None:
    stub = stores.acme
    token = stores.tokens["tenant-c"]
    base = {
        "custom_key_store_name": "limits",
        "key_store_password": token.pin,
        "pkcs11_module": MODULE_NAME,
        "hsm_profile": PROFILE,
        "token_label": token.label,
    }
    bad_creates = [
        {**base, "custom_key_store_name": ""},
        {**base, "custom_key_store_name": "n" * 257},
        {**base, "key_store_password": ""},
        {**base, "pkcs11_module": find_softhsm_module()},  # a path, never
        {**base, "pkcs11_module": "not-configured"},
        {**base, "custom_key_store_type": "AWS_CLOUDHSM"},
        {**base, "token_serial": "0123456789abcdef"},  # both label and serial
        {**base, "token_label": ""},  # neither
    ]
    for fields in bad_creates:
        request = pb.CreateCustomKeyStoreRequest(**fields)
        assert error_of(lambda r=request: stub.CreateCustomKeyStore(r)) == "ValidationException", fields
    names = [
        entry.custom_key_store_name
        for entry in stub.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest()).custom_key_stores
    ]
    assert "limits" not in names
    both = pb.DescribeCustomKeyStoresRequest(
        custom_key_store_id=stores.store_a, custom_key_store_name="store-a"
    )
    assert error_of(lambda: stub.DescribeCustomKeyStores(both)) == "ValidationException"
    too_many = pb.DescribeCustomKeyStoresRequest(limit=1001)
    assert error_of(lambda: stub.DescribeCustomKeyStores(too_many)) == "ValidationException"


# ------------------------------------------------------------------ a wrong PIN


def test_wrong_pin_on_connect_fails_with_invalid_credentials_and_is_not_retried(stores: Stores) -> None:
    stub = stores.acme
    token = stores.tokens["tenant-c"]
    store_id = create_store(stub, "wrong-pin", token, pin="not-" + token.pin)
    stub.ConnectCustomKeyStore(pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    failed = wait_for_state(stub, store_id, "FAILED")
    assert failed.connection_error_code == "INVALID_CREDENTIALS"
    assert PIN_COUNT_LOW in token_flags(stores.conf, token)  # the token saw the wrong PIN
    # A right login clears the token's flag; a retry of the wrong PIN would set it again.
    assert pkcs11_tool(stores.conf, token, "--list-objects").returncode == 0
    assert PIN_COUNT_LOW not in token_flags(stores.conf, token)
    time.sleep(4.0)  # several of the reconnector's backoff periods (0.5 s, doubling)
    assert PIN_COUNT_LOW not in token_flags(stores.conf, token), "the wrong PIN was tried again"
    still = describe(stub, store_id)
    assert (still.connection_state, still.connection_error_code) == ("FAILED", "INVALID_CREDENTIALS")
    # The user is not locked out: the right PIN given by Update connects.
    disconnect(stub, store_id)
    stub.UpdateCustomKeyStore(
        pb.UpdateCustomKeyStoreRequest(custom_key_store_id=store_id, key_store_password=token.pin)
    )
    connect(stub, store_id)
    disconnect(stub, store_id)
    stub.DeleteCustomKeyStore(pb.DeleteCustomKeyStoreRequest(custom_key_store_id=store_id))


# ------------------------------------------------------------------ the PIN appears nowhere


def kms_cli(stores: Stores, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cert, key = stores.pki.client_files(ACME_ADMIN)
    command = [sys.executable, "-m", "hsmstore.cli.main", "kms", "--endpoint", stores.server.address]
    command += ["--ca", str(stores.pki.ca_path), "--cert", str(cert), "--key", str(key), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def cli_with_pin_on_stdin(
    stores: Stores, pin: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run a CLI command that reads the PIN from stdin; return its result and its /proc cmdline,
    read while it waited for the PIN."""
    cert, key = stores.pki.client_files(ACME_ADMIN)
    command = [sys.executable, "-m", "hsmstore.cli.main", "kms", "--endpoint", stores.server.address]
    command += ["--ca", str(stores.pki.ca_path), "--cert", str(cert), "--key", str(key), *args]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    stdout, stderr = process.communicate(pin + "\n", timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), cmdline


def every_event(stores: Stores) -> list[str]:
    audit = pb_grpc.AuditStub(stores.server.channel)
    records: list[str] = []
    token = ""
    while True:
        page = audit.LookupEvents(pb.LookupEventsRequest(max_results=50, next_token=token))
        records += [event.cloud_trail_event for event in page.events]
        if not page.next_token:
            return records
        token = page.next_token


def test_the_pin_appears_nowhere(stores: Stores, tmp_path: Path) -> None:
    token = stores.tokens["tenant-d"]
    first_pin = "first-" + secrets.token_hex(10)  # wrong, then replaced by Update
    created, cli_cmdline = cli_with_pin_on_stdin(
        stores,
        first_pin,
        "create-custom-key-store",
        "--custom-key-store-name",
        "scanned",
        "--pkcs11-module",
        MODULE_NAME,
        "--hsm-profile",
        PROFILE,
        "--token-label",
        token.label,
        "--key-store-password-file",
        "-",
    )
    assert created.returncode == 0, created.stderr
    store_id = json.loads(created.stdout)["CustomKeyStoreId"]
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    pin_file.chmod(0o600)
    updated = kms_cli(
        stores,
        "update-custom-key-store",
        "--custom-key-store-id",
        store_id,
        "--key-store-password-file",
        str(pin_file),
    )
    assert updated.returncode == 0, updated.stderr
    connected = kms_cli(stores, "connect-custom-key-store", "--custom-key-store-id", store_id)
    assert connected.returncode == 0, connected.stderr
    wait_for_state(stores.acme, store_id, "CONNECTED")
    key = kms_cli(stores, "create-key", "--custom-key-store-id", store_id)
    assert key.returncode == 0, key.stderr
    assert json.loads(key.stdout)["KeyMetadata"]["CustomKeyStoreId"] == store_id
    described = kms_cli(stores, "describe-custom-key-stores", "--custom-key-store-id", store_id)
    assert described.returncode == 0, described.stderr

    pins = [first_pin, token.pin]
    outputs = created.stdout + created.stderr + updated.stdout + described.stdout + key.stdout
    events = every_event(stores)
    assert any(json.loads(event)["eventName"] == "CreateCustomKeyStore" for event in events)
    assert any(json.loads(event)["eventName"] == "UpdateCustomKeyStore" for event in events)
    for event in events:
        assert "keyStorePassword" not in json.loads(event).get("requestParameters", {})
    server_cmdlines = b"".join(
        Path(f"/proc/{pid}/cmdline").read_bytes()
        for pid in stores.server.pids
        if Path(f"/proc/{pid}").exists()
    )
    for pin in pins:
        assert pin.encode() not in cli_cmdline
        assert pin.encode() not in server_cmdlines
        assert pin not in outputs
        assert pin not in "".join(stores.server.output), "the PIN is in the server's log"
        assert not [event for event in events if pin in event], "the PIN is in the audit trail"
        for path in stores.server.data_dir.rglob("*"):  # the SQLite file and its WAL, the audit spool
            if path.is_file() and "softhsm" not in path.relative_to(stores.server.data_dir).parts:
                assert pin.encode() not in path.read_bytes(), f"the PIN is in {path}"


# ------------------------------------------------------------------ imported material (issue 22)


def test_imported_material_lives_on_the_custom_stores_token_and_is_the_material_in_use(
    stores: Stores,
) -> None:
    """Issue 22, item 6: an EXTERNAL key in a custom key store gets its wrapping key and its
    material on that store's token (nowhere else), and what it encrypts opens under the material."""
    stub = stores.acme
    key_id = stub.CreateKey(
        pb.CreateKeyRequest(origin="EXTERNAL", custom_key_store_id=stores.store_a)
    ).key_metadata.key_id
    material = os.urandom(32)
    byok.import_material(stub, key_id, material)
    labels = {name: object_labels(stores.conf, token) for name, token in stores.tokens.items()}
    holders = {name for name, found in labels.items() if any(key_id in label for label in found)}
    assert holders == {"tenant-a"}
    blob = stub.Encrypt(pb.EncryptRequest(key_id=key_id, plaintext=b"byok", encryption_context=CONTEXT))
    assert byok.decrypt_outside(blob.ciphertext_blob, material, key_id, CONTEXT) == b"byok"
    assert (
        stub.DescribeKey(pb.DescribeKeyRequest(key_id=key_id)).key_metadata.custom_key_store_id
        == stores.store_a
    )
