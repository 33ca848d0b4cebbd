"""Custom key stores on the gRPC side (issue 17): the PIN stays out of the audit record and off
the command line; the conversions to the wire names (docs/api.md, "Custom key stores")."""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from hsmstore._proto.hsmstore.v1 import key_store_pb2 as pb
from hsmstore.cli.kms import build_request
from hsmstore.cli.main import build_parser
from hsmstore.core.key_stores.management import CustomKeyStorePorts
from hsmstore.core.key_stores.model import ConnectionErrorCode, ConnectionState, ConnectionStatus
from hsmstore.core.key_stores.results import CustomKeyStoreDescription
from hsmstore.core.keys.results import KeyDescription
from hsmstore.core.model import KeyManager, KeyRecord, KeySpec, KeyState, KeyUsage, Origin
from hsmstore.core.paging import Page
from hsmstore.core.use_cases import build_use_cases
from hsmstore.server import convert
from hsmstore.server.servicer import CallRunner, KeyStoreServicer
from tests.fakes.custom_key_stores import FakeLocatorChecks, FakeSecretSealer
from tests.fakes.store import FakeMetadataStore
from tests.unit.test_custom_key_stores import ACME, FixedClock, VaultsById

PIN = "s3cret-pin-1234"
STORE_ID = "cks-0123456789abcdef0"


@pytest.mark.parametrize(
    "request_message",
    [
        pb.CreateCustomKeyStoreRequest(
            custom_key_store_name="team-hsm", key_store_password=PIN, pkcs11_module="softhsm", token_label="t"
        ),
        pb.UpdateCustomKeyStoreRequest(custom_key_store_id=STORE_ID, key_store_password=PIN),
    ],
)
def test_request_parameters_never_hold_the_key_store_password(request_message: pb.Message) -> None:
    parameters = convert.request_parameters(request_message)
    assert "keyStorePassword" not in parameters
    assert PIN not in repr(parameters)
    assert parameters  # the other fields are kept, as CloudTrail keeps them


def test_request_parameters_keep_the_custom_key_store_fields_by_their_json_names() -> None:
    parameters = convert.request_parameters(
        pb.CreateCustomKeyStoreRequest(
            custom_key_store_name="team-hsm", pkcs11_module="softhsm", hsm_profile="softhsm2", token_label="t"
        )
    )
    assert parameters == {
        "customKeyStoreName": "team-hsm",
        "pkcs11Module": "softhsm",
        "hsmProfile": "softhsm2",
        "tokenLabel": "t",
    }


def parse(*argv: str) -> pb.Message:
    args = build_parser().parse_args(["kms", *argv])
    return build_request(args.method, args)


def test_the_cli_reads_the_key_store_password_from_a_file(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    request = parse(
        "create-custom-key-store",
        "--custom-key-store-name",
        "team-hsm",
        "--pkcs11-module",
        "softhsm",
        "--token-label",
        "t",
        "--key-store-password-file",
        str(pin_file),
    )
    assert request.key_store_password == PIN
    assert request.custom_key_store_name == "team-hsm"


def test_the_cli_reads_the_key_store_password_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PIN + "\n"))
    request = parse(
        "update-custom-key-store", "--custom-key-store-id", STORE_ID, "--key-store-password-file", "-"
    )
    assert request.key_store_password == PIN


def test_the_cli_takes_no_pin_on_its_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("create-custom-key-store", "--key-store-password", PIN)
    err = capsys.readouterr().err
    assert "--key-store-password-file" in err
    assert PIN not in err


def test_the_cli_refuses_an_empty_pin_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        parse("create-custom-key-store", "--key-store-password-file", str(empty))
    assert "is empty" in capsys.readouterr().err


def test_create_key_takes_a_custom_key_store_id() -> None:
    assert parse("create-key", "--custom-key-store-id", STORE_ID).custom_key_store_id == STORE_ID


def key(key_store_id: str, origin: Origin) -> KeyDescription:
    record = KeyRecord(
        key_id="1234abcd-12ab-34cd-56ef-1234567890ab",
        tenant="acme",
        description="",
        state=KeyState.ENABLED,
        key_usage=KeyUsage.ENCRYPT_DECRYPT,
        key_spec=KeySpec.SYMMETRIC_DEFAULT,
        origin=origin,
        key_manager=KeyManager.CUSTOMER,
        creation_date=datetime(2026, 1, 1, tzinfo=UTC),
        current_version=1,
        key_store_id=key_store_id,
    )
    return KeyDescription(record, "arn:hsmstore:kms:local:acme:key/" + record.key_id)


def test_key_metadata_names_the_custom_key_store_only_for_a_key_in_one() -> None:
    assert convert.key_metadata(key("default", Origin.AWS_KMS)).custom_key_store_id == ""
    in_store = convert.key_metadata(key(STORE_ID, Origin.AWS_KMS))
    assert in_store.custom_key_store_id == STORE_ID


def test_describe_custom_key_stores_entry_has_the_wire_names() -> None:
    description = CustomKeyStoreDescription(
        custom_key_store_id=STORE_ID,
        custom_key_store_name="team-hsm",
        custom_key_store_type="PKCS11",
        module="softhsm",
        hsm_profile="softhsm2",
        token_label="team",
        token_serial=None,
        connected_token_serial="a1b2c3d4",
        creation_date=datetime(2026, 1, 1, tzinfo=UTC),
        connection_state=ConnectionState.FAILED,
        connection_error_code=ConnectionErrorCode.INVALID_CREDENTIALS,
    )
    response = convert.describe_custom_key_stores_response(Page([description], "next", True))
    (entry,) = response.custom_key_stores
    assert (entry.custom_key_store_id, entry.custom_key_store_name) == (STORE_ID, "team-hsm")
    assert (entry.pkcs11_module, entry.hsm_profile, entry.token_label) == ("softhsm", "softhsm2", "team")
    assert entry.token_serial == "a1b2c3d4"
    assert (entry.connection_state, entry.connection_error_code) == ("FAILED", "INVALID_CREDENTIALS")
    assert entry.creation_date.ToDatetime(tzinfo=UTC) == datetime(2026, 1, 1, tzinfo=UTC)
    assert (response.next_marker, response.truncated) == ("next", True)


# -- the servicer over the use case with fakes -------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


class ListSink:
    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    def record(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)


class Wire:
    """A KeyStoreServicer on the custom key store use case, with fake ports, called as acme's admin."""

    def __init__(self) -> None:
        self.store = FakeMetadataStore()
        self.sink = ListSink()
        ports = CustomKeyStorePorts(
            records=self.store,
            sealer=FakeSecretSealer(),
            connector=FakeLocatorChecks(),
            status_of=lambda _store: ConnectionStatus(ConnectionState.DISCONNECTED),
            wake=lambda: None,
        )
        use_cases = build_use_cases(VaultsById(), self.store, FixedClock(), custom_key_store_ports=ports)
        runner = CallRunner(lambda _context: ACME, self.sink, False)
        self.servicer = KeyStoreServicer(use_cases, runner)

    def call(self, name: str, request: Message) -> Any:
        return getattr(self.servicer, name)(request, FakeContext())

    def reason(self, name: str, request: Message) -> str:
        context = FakeContext()
        with pytest.raises(Aborted):
            getattr(self.servicer, name)(request, context)
        assert context.status is not None
        return error_reason_of(context.status)

    def every_record(self) -> str:
        """The spooled records and the trail the store committed with its changes, as text."""
        return repr(self.sink.records) + repr(self.store._events)


def error_reason_of(status: grpc.Status) -> str:
    from google.rpc import error_details_pb2, status_pb2

    detail = status_pb2.Status()
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            detail.ParseFromString(value)
    info = error_details_pb2.ErrorInfo()
    detail.details[0].Unpack(info)
    return info.reason


def create_request(name: str = "team-hsm", **fields: str) -> pb.CreateCustomKeyStoreRequest:
    values = {
        "pkcs11_module": "softhsm",
        "hsm_profile": "softhsm2",
        "token_label": "team-a",
        "key_store_password": PIN,
    }
    values.update(fields)
    return pb.CreateCustomKeyStoreRequest(custom_key_store_name=name, **values)


def test_create_then_describe_over_the_servicer_never_records_the_pin() -> None:
    wire = Wire()
    created = wire.call("CreateCustomKeyStore", create_request())
    assert created.custom_key_store_id.startswith("cks-")
    described = wire.call(
        "DescribeCustomKeyStores",
        pb.DescribeCustomKeyStoresRequest(custom_key_store_id=created.custom_key_store_id),
    )
    (entry,) = described.custom_key_stores
    assert (entry.custom_key_store_name, entry.connection_state) == ("team-hsm", "DISCONNECTED")
    update = pb.UpdateCustomKeyStoreRequest(
        custom_key_store_id=created.custom_key_store_id, key_store_password=PIN + "-new"
    )
    wire.call("UpdateCustomKeyStore", update)
    wire.reason("CreateCustomKeyStore", create_request(key_store_password=PIN + "x"))  # name in use
    records = wire.every_record()
    assert "CreateCustomKeyStore" in records and "UpdateCustomKeyStore" in records
    assert PIN not in records
    assert "keyStorePassword" not in records


def test_the_servicer_answers_the_contract_reasons() -> None:
    wire = Wire()
    store_id = wire.call("CreateCustomKeyStore", create_request()).custom_key_store_id
    assert wire.reason("CreateCustomKeyStore", create_request()) == "CustomKeyStoreNameInUseException"
    assert wire.reason(
        "CreateCustomKeyStore", create_request("other", custom_key_store_type="AWS_CLOUDHSM")
    ) == ("ValidationException")
    assert wire.reason("CreateCustomKeyStore", create_request("other", pkcs11_module="/usr/lib/x.so")) == (
        "ValidationException"
    )
    unknown = pb.ConnectCustomKeyStoreRequest(custom_key_store_id="cks-00000000000000000")
    assert wire.reason("ConnectCustomKeyStore", unknown) == "CustomKeyStoreNotFoundException"
    wire.call("ConnectCustomKeyStore", pb.ConnectCustomKeyStoreRequest(custom_key_store_id=store_id))
    # The fake follower never connects it: it stays CONNECTING, and Delete needs DISCONNECTED.
    delete = pb.DeleteCustomKeyStoreRequest(custom_key_store_id=store_id)
    assert wire.reason("DeleteCustomKeyStore", delete) == "CustomKeyStoreInvalidStateException"
    assert wire.reason("CreateKey", pb.CreateKeyRequest(custom_key_store_id=store_id)) == (
        "CustomKeyStoreInvalidStateException"
    )


def test_a_server_without_custom_key_stores_answers_unsupported() -> None:
    store = FakeMetadataStore()
    use_cases = build_use_cases(VaultsById(), store, FixedClock())
    servicer = KeyStoreServicer(use_cases, CallRunner(lambda _context: ACME, ListSink(), False))
    context = FakeContext()
    with pytest.raises(Aborted):
        servicer.DescribeCustomKeyStores(pb.DescribeCustomKeyStoresRequest(), context)
    assert context.status is not None
    assert error_reason_of(context.status) == "UnsupportedOperationException"
