"""Keep storage passwords out of everything mro-search prints, writes or stores.

A SQLAlchemy URL can carry a secret in several places, and the driver (psycopg 3, so libpq)
receives every one of them:

* the userinfo, ``postgresql://user:PASSWORD@host/db``, where SQLAlchemy takes everything from the
  first ``:`` after the scheme to the first ``@`` as the password (``/``, ``?`` and ``:`` included);
* a query parameter, ``...?password=PASSWORD`` or ``sslpassword=...`` (libpq), or any driver
  parameter whose name says it holds a secret (``SECRET_WORDS``); names are percent-decoded the
  way SQLAlchemy decodes them, so ``pass%77ord=`` is a password too;
* a value that is itself a connection string or URL (libpq expands a ``dbname`` holding
  ``host=... password=...``).

Each is written raw or percent-encoded, and error messages quote it decoded, percent-encoded,
JSON- or repr-escaped. So masking works in two ways: **by structure** (any ``scheme://user:X@``,
any ``NAME=X`` or ``"NAME": "X"`` whose name says secret, in any text) and **by value** (the
secrets of every URL this process has seen, in each of those spellings, wherever they appear).
``mask_password`` masks one URL, ``scrub`` any text, ``SecretFilter`` every log record, and
``install_secret_filter`` puts that filter on the handlers that print.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = ["MASK", "SecretFilter", "install_secret_filter", "mask_password", "remember", "scrub", "scrub_value", "url_secrets"]

MASK = "***"
# A parameter is secret when its (decoded, lower-cased) name is one of these, contains one of
# SECRET_WORDS or ends in "token": libpq's password and sslpassword, other drivers' passwd/pwd,
# access tokens and keys. ("tokens", as in the model's vector_tokens, is no secret.)
SECRET_NAMES = frozenset({"password", "sslpassword", "passwd", "pwd", "pass"})
SECRET_WORDS = ("pass", "pwd", "secret", "credential", "apikey", "api_key", "private_key", "auth_key")
MIN_PIECE = 8  # a piece of a secret cut at a parser's separator is masked as bare text from this length
MIN_LITERAL = 3  # a shorter secret is masked where it stands in a URL or NAME=, not as bare text

# SQLAlchemy's own URL grammar (sqlalchemy.engine.url._parse_url), so that the password found
# here is the one the driver gets; re.S so that nothing after a newline escapes the query.
_URL = re.compile(
    r"""
    (?P<name>[\w\+]+)://
    (?:
        (?P<username>[^:/]*)
        (?::(?P<password>[^@]*))?
    @)?
    (?:
        (?:
            \[(?P<ipv6host>[^/\?]+)\] |
            (?P<ipv4host>[^/:\?]+)
        )?
        (?::(?P<port>[^/\?]*))?
    )?
    (?:/(?P<database>[^\?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.X | re.S,
)
# In free text: scheme://user:SECRET@ (no spaces: text around it is not part of the URL)
_TEXT_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*:)([^@\s]+)@")
# NAME=VALUE (URL query, libpq conninfo, command lines, reprs of keyword arguments): a quoted
# value, else everything up to a space or '&' (libpq ends an unquoted value only at a space, so
# a closing bracket or quote after a secret may be masked with it: harmless)
_TEXT_ASSIGN = re.compile(r"""(?<![\w%])([\w%.-]+)(\s*=\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^ \t\n\r\f\v&]+)""")
# libpq's own rule (a connection string given where a URL was expected): 'quoted', else up to an
# ASCII space (libpq's isspace)
_CONNINFO_ASSIGN = re.compile(r"""(?<![\w%])([\w%.-]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^ \t\n\r\f\v]+)""")
# "NAME": "VALUE" and 'NAME': 'VALUE' (JSON, dict reprs)
_TEXT_MAPPING = re.compile(r"""(["'])([\w%.-]+)\1(\s*:\s*)(["'])((?:(?!\4)[^\\]|\\.)*)\4""")

_known: set[str] = set()
_known_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether a URL/conninfo parameter named ``name`` (raw or percent-encoded) holds a secret."""
    decoded = unquote_plus(name).strip().lower()
    return decoded in SECRET_NAMES or decoded.endswith("token") or any(word in decoded for word in SECRET_WORDS)


def mask_password(url: str) -> str:
    """``url`` with every secret it carries replaced by ``***`` (userinfo password, secret query
    parameters, secrets inside parameter values); anything that does not parse as a URL is
    scrubbed as text. The URL's secrets are remembered, so ``scrub`` also finds them alone."""
    url = str(url)
    remember(url)
    found = _URL.match(url)
    if found is None:
        return _scrub_structure(url)
    spans: list[tuple[int, int, str]] = []
    if found.group("password"):
        spans.append((found.start("password"), found.end("password"), MASK))
    if _odd_port(found):
        spans.append((found.start("port"), found.end("port"), MASK))
    if found.group("database"):
        database = found.group("database")
        if url_secrets(unquote(database)):  # a connection string as the database name
            spans.append((found.start("database"), found.end("database"), MASK))
    if found.group("query") is not None:
        start = found.start("query")
        spans.append((start, found.end("query"), _mask_query(found.group("query"))))
    out = url
    for begin, end, text in sorted(spans, reverse=True):
        out = out[:begin] + text + out[end:]
    return out


def _odd_port(found: re.Match) -> bool:
    """A "port" that is no number: ``postgresql://user:SECRET`` without its ``@host`` parses as
    host ``user`` and port ``SECRET``, so a port that is not a port is treated as a password."""
    port = found.group("port")
    return bool(port) and not port.isdigit()


def _mask_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and (is_secret_name(name) or url_secrets(unquote_plus(value))):
            value = MASK
        elif not sep:
            name = _scrub_structure(name)
        parts.append(f"{name}{sep}{value}")
    return "&".join(parts)


_RAW_QUERY_ASSIGN = re.compile(r"[?&]([^=&?#]+)=([^&#]*)")


def url_secrets(url: str) -> set[str]:
    """Every secret ``url`` carries, each as written in the URL and decoded."""
    secrets: set[str] = set()
    # a query-style NAME=VALUE read off the raw text too: where the URL's parse puts an '@' of a
    # query password into the host ("?password=x@y" read as host "y"), the value is still a secret
    for m in _RAW_QUERY_ASSIGN.finditer(str(url)):
        if is_secret_name(m.group(1)) and m.group(2):
            secrets.update((m.group(2), unquote_plus(m.group(2))))
    found = _URL.match(str(url))
    if found is None:
        for m in _TEXT_USERINFO.finditer(str(url)):
            secrets.update((m.group(2), unquote(m.group(2))))
        for m in _CONNINFO_ASSIGN.finditer(str(url)):  # a libpq connection string
            if is_secret_name(m.group(1)):
                value = m.group(2)
                unquoted = re.sub(r"\\(.)", r"\1", value[1:-1] if value.startswith("'") and value.endswith("'") and len(value) > 1 else value)
                secrets.update((value, unquoted, unquote_plus(value)))
        return {s for s in secrets if s and s != MASK}
    if found.group("password"):
        secrets.update((found.group("password"), unquote(found.group("password"))))
    if _odd_port(found):
        secrets.update((found.group("port"), unquote(found.group("port"))))
    for field, decode in (("database", unquote), ("query", unquote_plus)):
        raw = found.group(field)
        if not raw:
            continue
        parts = raw.split("&") if field == "query" else [raw]
        for part in parts:
            name, sep, value = part.partition("=")
            if field == "query" and sep and value and is_secret_name(name):
                secrets.update((value, decode(value)))
            inner = decode(value if field == "query" else raw)
            inside = url_secrets(inner) if inner != url else set()  # a conninfo or URL inside
            if inside:
                secrets.update(inside | {value if field == "query" else raw, inner})
    return {s for s in secrets if s and s != MASK}


# where URL, conninfo and format parsers cut a string: a driver's message may quote one piece of a
# password that held one of these ("x@host" read as a host, "{name}" as a format field)
_PIECE_BOUNDARY = re.compile(r"[@:/?#&=,;{}\[\]()'\"\\\s\x00-\x1f\x7f]+")


def _spellings(secret: str) -> set[str]:
    """How a secret may appear in text: as is, percent-encoded, JSON- and repr-escaped, and each
    piece a parser may have cut it into (``_PIECE_BOUNDARY``)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe=""), json.dumps(secret)[1:-1], repr(secret)[1:-1]}
    forms = {f for f in forms if len(f) >= MIN_LITERAL}
    # pieces only when long enough not to be an everyday word masked in every later message
    # (and never a parameter's name, "password" of a mis-parsed "x?password=y")
    return forms | {p for p in _PIECE_BOUNDARY.split(secret) if len(p) >= MIN_PIECE and not is_secret_name(p)}


def remember(url: str | None) -> None:
    """Add the secrets of ``url`` to those ``scrub`` removes from any text from now on."""
    if not url:
        return
    forms: set[str] = set()
    for secret in url_secrets(url):
        forms |= _spellings(secret)
    if forms - _known:
        with _known_lock:
            _known.update(forms)


def scrub(text: str, url: str | None = None) -> str:
    """``text`` without any secret: those of ``url`` and of every URL seen before (each spelling),
    then whatever looks like one (``scheme://user:X@``, ``password=X``, ``"password": "X"``)."""
    text = str(text)
    remember(url)
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return _scrub_structure(text)


def scrub_value(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string scrubbed: for
    configurations that are printed, written or stored."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    return value


def _scrub_structure(text: str) -> str:
    text = _TEXT_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)

    def assign(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2)}{MASK}" if is_secret_name(m.group(1)) and m.group(3) != MASK else m.group(0)

    def mapping(m: re.Match) -> str:
        if not is_secret_name(m.group(2)) or not m.group(5) or m.group(5) == MASK:
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{m.group(4)}{MASK}{m.group(4)}"

    text = _TEXT_ASSIGN.sub(assign, text)
    return _TEXT_MAPPING.sub(mapping, text)


class SecretFilter(logging.Filter):
    """Scrubs a log record's message, arguments and traceback before any handler prints it."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_secret_filter(*names: str) -> None:
    """Put a ``SecretFilter`` on the loggers named (default: ``mro_search`` and ``optuna``), on
    their handlers, on the root logger's handlers and on logging's last-resort handler. Records of
    child loggers (``optuna.storages``) reach only the handlers, hence both."""
    targets: list[logging.Filterer] = []
    for name in names or ("mro_search", "optuna"):
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    targets += logging.getLogger().handlers
    if logging.lastResort is not None:
        targets.append(logging.lastResort)
    for target in targets:
        if not any(isinstance(f, SecretFilter) for f in target.filters):
            target.addFilter(SecretFilter())
