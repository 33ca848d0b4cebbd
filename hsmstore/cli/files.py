"""``hsmstore encrypt`` / ``hsmstore decrypt``: files in the AWS Encryption SDK message format (issue 20).

    hsmstore encrypt --key-id alias/orders --input report.pdf --output report.pdf.enc \\
        --encryption-context app=orders env=prod
    hsmstore decrypt --input report.pdf.enc --output report.pdf --encryption-context app=orders

Not a new format: the ESDK's (framing, key commitment, signatures, the context
in the header), so ``aws-encryption-cli --wrapping-keys provider=hsmstore`` and
the ESDK library with ``hsmstore.client.esdk`` read and write the same files.
Streaming in bounded memory (``CHUNK_BYTES`` at a time, frames of
``--frame-length``); ``-`` is stdin or stdout. A file output is written to a
temporary file in the same folder, fsynced and renamed into place only when the
whole message was written or decrypted and verified, so a failure leaves no
partial output file. The progress bar (tqdm: small, no dependencies, draws on
stderr) shows only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CHUNK_BYTES = 1 << 20
DEFAULT_FRAME_LENGTH = (
    1 << 16
)  # ESDK's default is 4096; larger frames cost less per byte, memory stays bounded
USAGE_ERROR_EXIT = 2
FAILURE_EXIT = 1
DEFAULT_ENDPOINT = "127.0.0.1:50051"
NEEDS_ESDK = "hsmstore {command} needs the esdk extra: pip install 'hsmstore[esdk]'"


class FileCommandError(Exception):
    """One line for stderr: what failed and what to do."""


def add_files_parsers(commands: Any) -> None:
    """``hsmstore encrypt`` and ``hsmstore decrypt`` (argparse only: the ESDK is imported when run)."""
    encrypt = commands.add_parser(
        "encrypt", help="encrypt a file into an AWS Encryption SDK message under an hsmstore key"
    )
    encrypt.add_argument(
        "--key-id",
        dest="key_ids",
        action="append",
        required=True,
        metavar="KEY",
        help="(required) the hsmstore key (id, ARN, alias/NAME); repeat to wrap the data key under more keys",
    )
    decrypt = commands.add_parser(
        "decrypt", help="decrypt an AWS Encryption SDK message made with hsmstore keys"
    )
    decrypt.add_argument(
        "--key-id",
        dest="key_ids",
        action="append",
        metavar="KEY",
        help="only these hsmstore keys may decrypt (default: whichever hsmstore key made the message, "
        "if the caller may use it)",
    )
    for parser, verb in ((encrypt, "encrypt"), (decrypt, "decrypt")):
        parser.add_argument("--input", required=True, help="(required) the file to read; - for stdin")
        parser.add_argument(
            "--output",
            required=True,
            help="(required) the file to write (replaced only on success); - for stdout",
        )
        parser.add_argument(
            "--encryption-context",
            dest="encryption_context",
            action="extend",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help="encryption context pairs; on encrypt they are bound to the message, on decrypt each "
            "must be in the message's context",
        )
        parser.add_argument(
            "--endpoint",
            default=os.environ.get("HSMSTORE_ENDPOINT", DEFAULT_ENDPOINT),
            help="HOST:PORT of the hsmstore server (default $HSMSTORE_ENDPOINT or 127.0.0.1:50051)",
        )
        parser.add_argument("--ca", help="CA bundle that verifies the server (TLS)")
        parser.add_argument("--cert", help="client certificate (mutual TLS)")
        parser.add_argument("--key", help="client certificate's private key (mutual TLS)")
        parser.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bar even on a terminal"
        )
        parser.set_defaults(files_verb=verb)
    encrypt.add_argument(
        "--frame-length",
        dest="frame_length",
        type=int,
        default=DEFAULT_FRAME_LENGTH,
        help=f"bytes of plaintext per frame (default {DEFAULT_FRAME_LENGTH})",
    )


def run_files(args: argparse.Namespace) -> int:
    """Exit 0 on success, 1 when encrypting or decrypting failed, 2 for a usage error or missing extra."""
    try:
        import aws_encryption_sdk  # noqa: F401 - only to say which extra is missing
    except ImportError:
        print(NEEDS_ESDK.format(command=args.command), file=sys.stderr)
        return USAGE_ERROR_EXIT
    try:
        context = parse_context(args.encryption_context)
        if args.input != "-" and args.output != "-" and _same_file(args.input, args.output):
            raise FileCommandError("--output is the --input file; write to another file")
        _quiet_esdk_logs()
        if args.command == "encrypt":
            encrypt_file(args, context)
        else:
            decrypt_file(args, context)
    except FileCommandError as error:
        print(f"hsmstore {args.command}: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT if isinstance(error, UsageError) else FAILURE_EXIT
    return 0


class UsageError(FileCommandError):
    """A bad flag value (exit 2)."""


def parse_context(pairs: list[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise UsageError(f"--encryption-context takes KEY=VALUE pairs, not {pair!r}")
        context[name] = value
    return context


def _same_file(first: str, second: str) -> bool:
    try:
        return Path(first).resolve() == Path(second).resolve()
    except OSError:
        return False


def _quiet_esdk_logs() -> None:
    """The ESDK logs a traceback when a failed stream is closed; the command's one line says it all."""
    logger = logging.getLogger("aws_encryption_sdk")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _client(args: argparse.Namespace) -> Any:
    from hsmstore.client import ClientSetupError, KeyStoreClient

    try:
        return KeyStoreClient(args.endpoint, ca_file=args.ca, cert_file=args.cert, key_file=args.key)
    except ClientSetupError as error:
        raise UsageError(str(error)) from None


def encrypt_file(args: argparse.Namespace, context: dict[str, str]) -> None:
    import aws_encryption_sdk

    from hsmstore.client.esdk import HsmstoreMasterKeyProvider

    if args.frame_length < 1:
        raise UsageError("--frame-length is at least 1")
    with _client(args) as client:
        provider = HsmstoreMasterKeyProvider(client=client, key_ids=args.key_ids)
        sdk = aws_encryption_sdk.EncryptionSDKClient()  # REQUIRE_ENCRYPT_REQUIRE_DECRYPT, the default
        with (
            _opened_input(args) as source,
            _atomic_output(args.output) as sink,
            _failures("encrypt"),
            sdk.stream(
                mode="e",
                source=source,
                key_provider=provider,
                encryption_context=context,
                frame_length=args.frame_length,
            ) as encryptor,
        ):
            _pump(encryptor, sink)


def decrypt_file(args: argparse.Namespace, context: dict[str, str]) -> None:
    import aws_encryption_sdk

    from hsmstore.client.esdk import HsmstoreMasterKeyProvider

    with _client(args) as client:
        provider = HsmstoreMasterKeyProvider(
            client=client, key_ids=args.key_ids or [], discovery=not args.key_ids
        )
        sdk = aws_encryption_sdk.EncryptionSDKClient()
        with (
            _opened_input(args) as source,
            _atomic_output(args.output) as sink,
            _failures("decrypt"),
            sdk.stream(mode="d", source=source, key_provider=provider) as decryptor,
        ):
            first = decryptor.read(CHUNK_BYTES)  # reads and checks the header first
            _check_context(decryptor.header.encryption_context, context)
            sink.write(first)
            _pump(decryptor, sink)


def _check_context(found: dict[Any, Any], required: dict[str, str]) -> None:
    """Each given pair must be in the message's context (as aws-encryption-cli's --encryption-context)."""
    found_text = {_text(k): _text(v) for k, v in found.items()}
    missing = sorted(name for name, value in required.items() if found_text.get(name) != value)
    if missing:
        raise FileCommandError(
            f"the message's encryption context does not have {', '.join(missing)} as given "
            "(--encryption-context); nothing was written"
        )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pump(stream: Any, sink: IO[bytes]) -> None:
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            return
        sink.write(chunk)


@contextlib.contextmanager
def _failures(verb: str) -> Iterator[None]:
    """ESDK and hsmstore failures as one line each; never a traceback."""
    from aws_encryption_sdk.exceptions import (
        AWSEncryptionSDKClientError,
        DecryptKeyError,
        EncryptKeyError,
        GenerateKeyError,
    )
    from cryptography.exceptions import InvalidSignature, InvalidTag

    from hsmstore.client import HsmstoreError

    try:
        yield
    except DecryptKeyError:
        raise FileCommandError(
            "no hsmstore key could decrypt the message's data key (another key than --key-id, a key "
            "the caller may not use, or a changed message)"
        ) from None
    except (GenerateKeyError, EncryptKeyError) as error:  # hsmstore.client.esdk: names the key and reason
        raise FileCommandError(str(error)) from None
    except (
        AWSEncryptionSDKClientError,
        InvalidTag,
        InvalidSignature,
    ) as error:  # a frame's tag, the signature
        detail = str(error) or type(error).__name__
        raise FileCommandError(f"the message is not intact or not an ESDK message ({detail})") from None
    except HsmstoreError as error:
        raise FileCommandError(str(error)) from None
    except OSError as error:
        raise FileCommandError(f"{error.strerror or error}") from None


@contextlib.contextmanager
def _opened_input(args: argparse.Namespace) -> Iterator[IO[bytes]]:
    if args.input == "-":
        yield _with_progress(sys.stdin.buffer, None, args)
        return
    try:
        handle = Path(args.input).open("rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise UsageError(f"cannot read --input {args.input}: {error.strerror}") from None
    with handle:
        yield _with_progress(handle, os.fstat(handle.fileno()).st_size, args)


def _with_progress(raw: IO[bytes], total: int | None, args: argparse.Namespace) -> IO[bytes]:
    if not args.progress or not sys.stderr.isatty():
        return raw
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=args.command, file=sys.stderr)
    return _ProgressReader(raw, bar)  # type: ignore[return-value]


class _ProgressReader:
    """The input file, counting what is read into the progress bar."""

    def __init__(self, raw: IO[bytes], bar: Any) -> None:
        self._raw, self._bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        if not data:
            self._bar.close()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@contextlib.contextmanager
def _atomic_output(path: str) -> Iterator[IO[bytes]]:
    """A temp file beside ``path``: fsynced and renamed over it on success, removed on any failure."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        descriptor, temp_name = tempfile.mkstemp(
            dir=target.parent or Path("."), prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as error:
        raise UsageError(f"cannot write --output {path}: {error.strerror}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable, where the folder can be opened
        folder = os.open(target.parent or Path("."), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
