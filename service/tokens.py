"""Bearer tokens of the HTTP API: their scopes, the hashed tokens file, the admin token
`make run` makes when none is configured, and a command to add tokens:

    python -m service.tokens add NAME --scopes submit,read [--file PATH]

prints a new token once and appends only its SHA-256 to the file (SYNTH_API_TOKENS_FILE).
A line of the file is `NAME sha256:<64 hex> SCOPE[,SCOPE...]`; `#` starts a comment. The
file is read again whenever it changes, so adding or removing a token needs no restart.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from dicom_synth.settings import Settings, get_settings

SCOPES = ("submit", "read", "admin")
"""submit: POST /synthesize (and STOW-RS); read: jobs, results (QIDO/WADO, dashboard);
admin: resend, retry, audit, settings, and everything the other two allow."""
_GRANTS = {"submit": {"submit"}, "read": {"read"}, "admin": set(SCOPES)}
GENERATED_TOKEN_FILE = "api-token"
"""Where `make run` keeps the admin token it made, in the data directory (mode 0600)."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: a token's name (or an OIDC subject) and what it may do."""

    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal("anonymous (SYNTH_AUTH=off)", frozenset(SCOPES))


def granted(scopes: object) -> frozenset[str]:
    """The scopes that `scopes` (names; unknown ones ignored) grant: admin grants all."""
    out: set[str] = set()
    for s in scopes if isinstance(scopes, list | tuple | set | frozenset) else str(scopes or "").split():
        out |= _GRANTS.get(str(s), set())
    return frozenset(out)


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class _Entry:
    name: str
    digest: str
    scopes: frozenset[str]


class TokenFileError(ValueError):
    pass


def parse_tokens(text: str, where: str = "tokens file") -> list[_Entry]:
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[1].startswith("sha256:") or len(parts[1]) != 71:
            raise TokenFileError(f"{where} line {n}: expected `NAME sha256:<64 hex> SCOPE[,SCOPE]`")
        names = parts[2].split(",")
        unknown = set(names) - set(SCOPES)
        if unknown:
            raise TokenFileError(f"{where} line {n}: unknown scope {sorted(unknown)[0]!r} (known: {', '.join(SCOPES)})")
        entries.append(_Entry(parts[0], parts[1].lower(), granted(names)))
    return entries


class TokenBook:
    """The tokens a request may present: SYNTH_API_TOKEN (admin) and the tokens file."""

    _cache: dict[Path, tuple[tuple[int, int], list[_Entry]]] = {}
    _lock = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def lookup(self, token: str) -> Principal | None:
        digest = hash_token(token)
        admin = self.settings.api_token
        if admin is not None and hmac.compare_digest(digest, hash_token(admin.get_secret_value())):
            return Principal("admin (SYNTH_API_TOKEN)", frozenset(SCOPES))
        for entry in self._file_entries():
            if hmac.compare_digest(digest, entry.digest):
                return Principal(entry.name, entry.scopes)
        return None

    def _file_entries(self) -> list[_Entry]:
        path = self.settings.api_tokens_file
        if path is None:
            return []
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is None or cached[0] != key:
                cached = (key, parse_tokens(path.read_text(), str(path)))
                self._cache[path] = cached
            return cached[1]


def add_token(path: Path, name: str, scopes: list[str]) -> str:
    """Append a new token to the file (created mode 0600); returns the token itself."""
    if not name or any(c.isspace() or c == "#" for c in name):
        raise TokenFileError(f"token name {name!r}: no spaces or '#'")
    if not scopes or set(scopes) - set(SCOPES):
        raise TokenFileError(f"scopes {scopes}: choose from {', '.join(SCOPES)}")
    token = new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(f"{name} {hash_token(token)} {','.join(scopes)}\n")
    return token


def ensure_admin_token(settings: Settings) -> tuple[str, Path | None] | None:
    """The admin token `make run` hands its gateway, and the file it is in when it made
    it: SYNTH_API_TOKEN when set; none when auth is off or tokens are configured otherwise
    (a tokens file, OIDC); else the one in <data_dir>/api-token, made there on first start."""
    if settings.auth == "off":
        return None
    if settings.api_token is not None:
        return settings.api_token.get_secret_value(), None
    if settings.api_tokens_file is not None or settings.oidc_issuer:
        return None
    path = settings.data_dir / GENERATED_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token, path
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = new_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.tokens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a token, append its hash to the tokens file, print it once")
    add.add_argument("name")
    add.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    add.add_argument("--file", type=Path, help="default: SYNTH_API_TOKENS_FILE")
    args = parser.parse_args(argv)
    path = args.file or get_settings().api_tokens_file
    if path is None:
        parser.error("no tokens file: pass --file or set SYNTH_API_TOKENS_FILE")
    try:
        print(add_token(path, args.name, [s.strip() for s in args.scopes.split(",") if s.strip()]))
    except TokenFileError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
