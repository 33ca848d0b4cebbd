"""Reading a seed file (cli/seed.py): the forms it accepts and the one line it refuses with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsmstore.cli.seed import SeedError, load_seed
from hsmstore.config import EXIT_CONFIG, Settings

KEY_ID = "0a0b0c0d-0000-4000-8000-00000000000b"


def seed_of(tmp_path: Path, text: str, name: str = "seed.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_seed_setting_reads_nothing() -> None:
    assert load_seed(Settings()) is None


def test_tags_as_a_table_and_as_aws_tag_lists_read_the_same(tmp_path: Path) -> None:
    table = seed_of(tmp_path, f'[[Keys]]\nKeyId = "{KEY_ID}"\nTags = {{ team = "payments" }}\n', "a.toml")
    listed = seed_of(
        tmp_path, f'[[Keys]]\nKeyId = "{KEY_ID}"\nTags = [{{ TagKey = "team", TagValue = "payments" }}]\n'
    )
    first, second = load_seed(Settings(seed=str(table))), load_seed(Settings(seed=str(listed)))
    assert first is not None and second is not None
    assert first.keys[0].tags == second.keys[0].tags == (("team", "payments"),)


def test_a_policy_given_as_a_table_is_stored_as_its_json(tmp_path: Path) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*"}]}
    path = seed_of(tmp_path, json.dumps({"Keys": [{"KeyId": KEY_ID, "Policy": policy}]}), "seed.json")
    seed = load_seed(Settings(seed=str(path)))
    assert seed is not None and json.loads(seed.keys[0].policy) == policy
    assert seed.keys[0].tenant == "local" and seed.keys[0].enabled


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Keys = 3\n", "Keys: must be a list"),
        (f'[[Keys]]\nKeyId = "{KEY_ID}"\nEnabled = "no"\n', "Keys[0]: Enabled must be true or false"),
        (f'[[Keys]]\nKeyId = "{KEY_ID.upper()}"\n', "is not a key id (a lower-case UUID)"),
        ('[[Aliases]]\nAliasName = "alias/x"\n', "Aliases[0]: an alias needs AliasName and TargetKeyId"),
        ("Grants = []\n", "the file: unknown field(s) Grants"),
        (f'[[Keys]]\nKeyId = "{KEY_ID}"\nAliases = [1]\n', "Keys[0].Aliases: must be a string"),
    ],
)
def test_a_bad_entry_is_one_line_naming_the_file_the_entry_and_the_source(
    tmp_path: Path, text: str, said: str
) -> None:
    path = seed_of(tmp_path, text)
    with pytest.raises(SeedError) as refused:
        load_seed(Settings(seed=str(path), sources={"seed": "env"}))
    message = str(refused.value)
    assert message.startswith(f"seed file {path}: ") and said in message
    assert "(HSMSTORE_SEED)" in message and "\n" not in message
    assert refused.value.exit_code == EXIT_CONFIG
