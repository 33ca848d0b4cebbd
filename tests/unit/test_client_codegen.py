"""The client's generated methods and types match the proto: no RPC without a method (issue 20)."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime

import pytest

from hsmstore._proto.hsmstore.v1 import key_store_pb2
from hsmstore.client import GenerateDataKeyResult, KeyStoreClient, Tag, _convert, codegen
from hsmstore.client.codegen_names import snake


@pytest.mark.parametrize("service", codegen.SERVICES)
def test_every_rpc_of_the_proto_has_a_client_method(service: str) -> None:
    rpcs = [method.name for method in key_store_pb2.DESCRIPTOR.services_by_name[service].methods]
    missing = [rpc for rpc in rpcs if not callable(getattr(KeyStoreClient, snake(rpc), None))]
    assert rpcs
    assert missing == []


def test_every_method_takes_exactly_the_request_fields() -> None:
    for service in codegen.SERVICES:
        for method in key_store_pb2.DESCRIPTOR.services_by_name[service].methods:
            parameters = list(inspect.signature(getattr(KeyStoreClient, snake(method.name))).parameters)[1:]
            assert parameters == [field.name for field in method.input_type.fields], method.name


def test_the_committed_generated_files_are_what_codegen_writes() -> None:
    """Run ``python -m hsmstore.client.codegen`` after changing the proto."""
    assert codegen.TYPES_FILE.read_text() == codegen.formatted(codegen.render_types(), codegen.TYPES_FILE)
    assert codegen.METHODS_FILE.read_text() == codegen.formatted(
        codegen.render_methods(), codegen.METHODS_FILE
    )


def test_list_calls_have_a_paginator() -> None:
    for name in (
        "list_keys",
        "list_aliases",
        "list_grants",
        "list_resource_tags",
        "describe_custom_key_stores",
    ):
        assert callable(getattr(KeyStoreClient, f"paginate_{name}"))


def test_results_are_frozen_and_keep_plaintext_out_of_their_repr() -> None:
    result = GenerateDataKeyResult(key_id="k", plaintext=b"secret-bytes", ciphertext_blob=b"c")
    assert "secret" not in repr(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.key_id = "other"  # type: ignore[misc]


def test_tags_are_taken_as_a_mapping_or_as_tag_objects() -> None:
    from_mapping = _convert.fill(key_store_pb2.CreateKeyRequest(), {"tags": {"team": "payments"}})
    from_tags = _convert.fill(key_store_pb2.CreateKeyRequest(), {"tags": [Tag("team", "payments")]})
    assert from_mapping == from_tags
    assert from_mapping.tags[0].tag_key == "team"


def test_a_string_where_a_list_is_expected_is_refused() -> None:
    with pytest.raises(TypeError, match="grant_tokens takes a list"):
        _convert.fill(key_store_pb2.DecryptRequest(), {"grant_tokens": "one-token"})


def test_aws_shape_matches_members_by_name_and_keeps_false_booleans() -> None:
    request = _convert.fill(key_store_pb2.ListKeysRequest(), {"Limit": 5, "Marker": "m"}, aws=True)
    assert (request.limit, request.marker) == (5, "m")
    answer = _convert.to_aws_dict(
        key_store_pb2.DescribeKeyResponse(
            key_metadata=key_store_pb2.KeyMetadata(aws_account_id="t", key_id="k", enabled=False)
        )
    )
    assert answer == {
        "KeyMetadata": {
            "AWSAccountId": "t",
            "KeyId": "k",
            "Enabled": False,
            "MultiRegion": False,
            "EncryptionAlgorithms": [],
            "SigningAlgorithms": [],  # issue 23: lists are always present, empty too
            "MacAlgorithms": [],
            "KeyAgreementAlgorithms": [],
        }
    }


def test_timestamps_round_trip_as_aware_datetimes() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    request = _convert.fill(key_store_pb2.LookupEventsRequest(), {"start_time": when})
    response = key_store_pb2.AliasListEntry(alias_name="alias/a")
    response.creation_date.CopyFrom(request.start_time)
    assert _convert.to_dataclass(response).creation_date == when
    assert _convert.to_dataclass(response).last_updated_date is None


def test_an_unknown_member_is_refused() -> None:
    with pytest.raises(TypeError, match="no member 'KeyIdd'"):
        _convert.fill(key_store_pb2.DescribeKeyRequest(), {"KeyIdd": "x"}, aws=True)


def test_every_generated_result_type_is_exported_from_the_package() -> None:
    """hsmstore.client re-exports types.__all__: a new RPC's result needs no hand-kept list (the
    issue-22 results were missing from the one there was)."""
    import hsmstore.client
    from hsmstore.client import codegen

    exported = set(hsmstore.client.__all__)
    for message in codegen.result_messages():
        name = codegen.dataclass_name(message)
        assert name in exported and getattr(hsmstore.client, name) is not None, name
