"""``hsmstore serve --seed FILE`` against a real server: made at start, idempotent, audited, refused cleanly.

Issue 20, Deliver 5: "seeding keys and aliases from a file at start
(``--seed FILE``), as local-kms users do". cli/seed.py states the rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsmstore.client import KeyMetadata, KeyStoreClient, LookupAttribute
from hsmstore.testing.plugin import ServerFactory
from tests.servers import serve_command

pytestmark = pytest.mark.integration

ORDERS_ID = "0a0b0c0d-0000-4000-8000-00000000000a"
SEED = f"""
[[Keys]]
KeyId = "{ORDERS_ID}"
Description = "orders"
Tags = {{ team = "payments" }}
Aliases = ["alias/orders"]

[[Keys]]
Description = "switched off"
Enabled = false
Tags = [{{ TagKey = "state", TagValue = "off" }}]
Aliases = ["alias/off", "alias/off-too"]

[[Aliases]]
AliasName = "alias/orders-current"
TargetKeyId = "{ORDERS_ID}"
"""
REFUSED_WITHIN_SECONDS = 20.0  # a refused seed stops the start in seconds, never a hang


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed.toml"
    path.write_text(SEED)
    return path


def metadata(client: KeyStoreClient, key_id: str) -> KeyMetadata:
    described = client.describe_key(key_id=key_id).key_metadata
    assert described is not None
    return described


def key_ids(client: KeyStoreClient) -> set[str]:
    return {entry.key_id for entry in client.paginate_list_keys()}


def test_seeded_keys_and_aliases_are_there_when_the_server_serves(
    hsmstore_server_factory: ServerFactory, seed_file: Path
) -> None:
    server = hsmstore_server_factory(seed=seed_file)
    with server.client() as client:
        orders = metadata(client, "alias/orders")
        assert orders.key_id == ORDERS_ID and orders.description == "orders"
        assert metadata(client, "alias/orders-current").key_id == ORDERS_ID
        tags = {tag.tag_key: tag.tag_value for tag in client.paginate_list_resource_tags(key_id=ORDERS_ID)}
        assert tags == {"team": "payments"}
        off = metadata(client, "alias/off")
        assert off.key_state == "DISABLED" and not off.enabled
        assert metadata(client, "alias/off-too").key_id == off.key_id
        blob = client.encrypt(key_id="alias/orders", plaintext=b"seeded").ciphertext_blob
        assert client.decrypt(ciphertext_blob=blob).plaintext == b"seeded"
    assert any("created 2 key(s) and 4 alias(es)" in line for line in server.output)


def test_a_restart_with_the_same_seed_leaves_the_seeded_keys_alone(
    hsmstore_server_factory: ServerFactory, seed_file: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = hsmstore_server_factory(data_dir=data_dir, seed=seed_file)
    with first.client() as client:
        before = key_ids(client)
        off_id = metadata(client, "alias/off").key_id
        client.enable_key(key_id=off_id)  # a test changed a seeded key: the next start keeps the change
    first.stop()
    again = hsmstore_server_factory(data_dir=data_dir, seed=seed_file)
    with again.client() as client:
        assert key_ids(client) == before
        assert metadata(client, off_id).enabled
    said = "created 0 key(s) and 0 alias(es); 2 key(s) and 4 alias(es) were there already"
    assert any(said in line for line in again.output)


def test_with_workers_the_seed_is_made_once_before_any_worker_serves(
    hsmstore_server_factory: ServerFactory, seed_file: Path
) -> None:
    server = hsmstore_server_factory(seed=seed_file, extra_args=["--workers", "2"])
    with server.client() as client:
        assert metadata(client, "alias/orders").key_id == ORDERS_ID
        assert len(key_ids(client)) == 2
    assert sum("created 2 key(s)" in line for line in server.output) == 1


def test_seeding_is_audited_as_the_tenant_admin_from_the_seed(
    hsmstore_server_factory: ServerFactory, seed_file: Path
) -> None:
    server = hsmstore_server_factory(seed=seed_file)
    with server.client() as client:
        created = client.lookup_events(
            lookup_attributes=[LookupAttribute(attribute_key="ResourceName", attribute_value=ORDERS_ID)]
        ).events
    events = [json.loads(event.cloud_trail_event) for event in created]
    create = next(event for event in events if event["eventName"] == "CreateKey")
    assert create["sourceIPAddress"] == "hsmstore-seed"
    assert create["requestParameters"]["seedFile"] == str(seed_file)
    assert create["userIdentity"]["arn"] == "arn:hsmstore:iam::local:role/admin"


def test_a_json_seed_file_from_the_environment_is_applied(
    hsmstore_server_factory: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"Keys": [{"Description": "from json", "Aliases": ["alias/json"]}]}))
    server = hsmstore_server_factory(seed=None, extra_env={"HSMSTORE_SEED": str(path)})
    with server.client() as client:
        assert metadata(client, "alias/json").description == "from json"


BAD_SEEDS = {
    "unknown_field": (
        '[[Keys]]\nKeyId = "{id}"\nDescrption = "typo"\n',
        "Keys[0]: unknown field(s) Descrption",
    ),
    "not_a_key_id": ('[[Keys]]\nKeyId = "orders"\n', "Keys[0]: KeyId 'orders' is not a key id"),
    "neither_id_nor_alias": ('[[Keys]]\nDescription = "lost"\n', "Keys[0]: a key needs a KeyId or an alias"),
    "not_toml": ("[[Keys]\n", "not valid TOML"),
    "refused_by_create_key": (
        '[[Keys]]\nKeyId = "{id}"\nKeySpec = "NOPE_256"\n',
        "Keys[0]: CreateKey was refused: ValidationException",
    ),
    "refused_alias": (
        '[[Keys]]\nKeyId = "{id}"\n\n[[Aliases]]\nAliasName = "orders"\nTargetKeyId = "{id}"\n',
        "Aliases[0]: CreateAlias was refused",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SEEDS))
def test_a_bad_seed_file_stops_the_start_with_one_line_naming_the_file_and_entry(
    case: str, tmp_path: Path
) -> None:
    text, said = BAD_SEEDS[case]
    path = tmp_path / "seed.toml"
    path.write_text(text.format(id=ORDERS_ID))
    began = time.monotonic()
    done = subprocess.run(
        serve_command(tmp_path / "data", extra_args=["--seed", str(path)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert time.monotonic() - began < REFUSED_WITHIN_SECONDS
    assert done.returncode == 2, done.stderr  # config.py EXIT_CONFIG
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"hsmstore: seed file {path}: "), done.stderr
    assert said in line
    assert "(--seed flag)" in line
    assert "Traceback" not in done.stderr
    assert "listening on" not in done.stdout


def test_a_missing_seed_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done = subprocess.run(
        serve_command(tmp_path / "data", extra_args=["--seed", str(missing)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"seed file {missing}: cannot read it: No such file or directory" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before the dev token was made


def test_the_compose_examples_client_round_trips_against_its_seeded_server(
    hsmstore_server_factory: ServerFactory,
) -> None:
    """examples/compose: client.sh against a server started with the example's seed.toml, as in the
    compose file, but without docker (not on this machine): the same commands, the same seed."""
    compose = Path(__file__).resolve().parents[2] / "examples" / "compose"
    server = hsmstore_server_factory(seed=compose / "seed.toml")
    bin_dir = str(Path(sys.executable).parent)  # where this venv's hsmstore command is
    done = subprocess.run(
        ["/bin/sh", str(compose / "client.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HSMSTORE_ENDPOINT": server.endpoint, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "round trip through c0c0c0c0-0000-4000-8000-000000000001: hello from the client container"
        in done.stdout
    )
