"""Masking storage secrets (``search_service.redaction``): every place a SQLAlchemy/libpq URL can
carry a password, every way it can be spelled in text.

The property tests draw passwords from an alphabet of URL-significant characters (``@ : / ? # %
& = +``, quotes, backslashes, spaces, non-ASCII) with a fixed seed, put each into a URL the way a
user must write it, ask SQLAlchemy what the driver would receive, and check that none of it is
left in the masked URL or in scrubbed text quoting it in any spelling."""

from __future__ import annotations

import io
import json
import logging
import random
import zlib
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import make_url

from search_service.redaction import (
    SecretFilter,
    install_secret_filter,
    is_secret_name,
    mask_password,
    remember,
    scrub,
)
from search_service.storage import mask_password as storage_mask_password
from search_service.storage import scrub as storage_scrub

ALPHABET = "abcXYZ0189@:/?#%&=+ '\"\\`;,$!~*()[]{}<>|^é中\u00a0"
EXAMPLES = 120  # passwords per URL form


def _passwords(seed: int, n: int = EXAMPLES) -> list[str]:
    rng = random.Random(seed)
    # at least 8 characters: a shorter random string may occur in the URL's own text by chance
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(8, 24))) for _ in range(n)]


def _forms(secret: str) -> dict[str, str]:
    base = "postgresql+psycopg://mro{userinfo}@db.example:5432/mro"
    forms = {
        "userinfo, percent-encoded": base.format(userinfo=":" + quote(secret, safe="")),
        "query password": base.format(userinfo="") + "?password=" + quote_plus(secret),
        "query sslpassword among others": base.format(userinfo="") + f"?sslmode=require&sslpassword={quote(secret, safe='')}&application_name=w1",
        "query, percent-encoded name": base.format(userinfo="") + "?pass%77ord=" + quote_plus(secret),
        "mixed: userinfo and query": base.format(userinfo=":" + quote(secret[::-1], safe="")) + "?connect_timeout=5&password=" + quote_plus(secret),
        "a conninfo inside dbname": base.format(userinfo="") + "?dbname=" + quote_plus(f"host=db2 password={secret.replace(' ', '_')}"),
    }
    if "@" not in secret and "/" not in secret[:1]:
        forms["userinfo, as typed"] = base.format(userinfo=":" + secret)
    return forms


def _driver_secrets(url: str) -> set[str]:
    """What the driver would receive as secrets (SQLAlchemy's reading of the URL)."""
    parsed = make_url(url)
    found = {parsed.password} if parsed.password else set()
    for name, value in parsed.query.items():
        values = value if isinstance(value, tuple) else (value,)
        if is_secret_name(name):
            found.update(values)
        elif name == "dbname":
            found.update(v.split("password=", 1)[1] for v in values if "password=" in v)
    return {str(s) for s in found}


def _spellings(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], repr(secret)[1:-1]]


@pytest.mark.parametrize("form", list(_forms("x")) + ["userinfo, as typed"])
def test_no_secret_survives_masking_or_scrubbing(form: str) -> None:
    checked = 0
    for secret in _passwords(seed=zlib.crc32(form.encode())):
        url = _forms(secret).get(form)
        if url is None:
            continue
        secrets = _driver_secrets(url)
        assert secrets, (form, url)  # the URL really carries a secret for the driver
        masked = mask_password(url)
        parsed, original = make_url(masked), make_url(url)
        assert (parsed.host, parsed.port, parsed.database, parsed.username) == (original.host, original.port, original.database, original.username)
        text = f"connection to {url} failed: {' / '.join(sp for s in secrets for sp in _spellings(s))} {original!r}"
        scrubbed = scrub(text, url)
        for s in secrets:
            for spelling in _spellings(s):
                assert spelling not in masked, (form, url, masked, spelling)
                assert spelling not in scrubbed, (form, url, scrubbed, spelling)
        assert "db.example:5432" in masked
        checked += 1
    assert checked >= EXAMPLES // 2


def test_examples() -> None:
    assert mask_password("postgresql+psycopg://mro@db/x?password=S3cret&sslmode=require") == "postgresql+psycopg://mro@db/x?password=***&sslmode=require"
    assert mask_password("postgresql+psycopg://mro:pw1234@db/x?sslpassword=k3y%2Bpass") == "postgresql+psycopg://mro:***@db/x?sslpassword=***"
    assert mask_password("postgresql+psycopg://mro@db/x?pass%77ord=S3cret") == "postgresql+psycopg://mro@db/x?pass%77ord=***"
    assert mask_password("postgresql+psycopg://mro@db/x?password=") == "postgresql+psycopg://mro@db/x?password="  # nothing to hide
    assert mask_password("sqlite:////tmp/x.db?mode=ro") == "sqlite:////tmp/x.db?mode=ro"
    # SQLAlchemy reads everything from the first ':' to the first '@' as the password
    assert mask_password("postgresql+psycopg://mro:a/b?c=d@db/x") == "postgresql+psycopg://mro:***@db/x"
    # not a URL at all: masked as text
    assert "S3cret" not in mask_password("host=db password=S3cret")
    # the names re-exported by storage are these
    assert storage_mask_password is mask_password and storage_scrub is scrub


def test_scrub_finds_secrets_by_shape_in_any_text() -> None:
    text = (
        "FATAL: bad conninfo host=db password='two words' user=mro; kwargs {'password': 'Hunter2x', 'host': 'db'}; "
        'json {"sslpassword": "k3y"}; url mysql://root:toor99@h/db; env PGPASSWORD=abc123 and vector_tokens=4 sslmode=require'
    )
    out = scrub(text)
    for secret in ("two words", "Hunter2x", "k3y", "toor99", "abc123"):
        assert secret not in out, (secret, out)
    assert "vector_tokens=4" in out and "sslmode=require" in out and "'host': 'db'" in out


def test_secrets_of_a_remembered_url_are_scrubbed_wherever_they_appear() -> None:
    remember("postgresql+psycopg://mro@db/x?password=Only%21Here")
    assert scrub("the server said Only!Here and Only%21Here") == "the server said *** and ***"


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    url = "postgresql+psycopg://mro@db/x?password=L0gSecret"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    optuna_root = logging.getLogger("optuna")
    optuna_root.addHandler(handler)
    try:
        install_secret_filter("optuna")
        assert any(isinstance(f, SecretFilter) for f in handler.filters)
        child = logging.getLogger("optuna.storages._rdb.storage")  # records of a child reach only the handler
        try:
            raise RuntimeError(f"could not connect to {url}")
        except RuntimeError:
            child.error("storage %s failed", url, exc_info=True)
        child.warning("plain %s and %d%%", "password=L0gSecret", 5)
    finally:
        optuna_root.removeHandler(handler)
    out = stream.getvalue()
    assert "L0gSecret" not in out and "Traceback" in out and "RuntimeError" in out and "5%" in out, out


def test_a_driver_quoting_a_piece_of_a_password_shows_no_piece():
    """Found by the storage-URL fuzz: SQLAlchemy reads an '@' inside a query password as the
    host's start ("?password=x@y": host "y"), and psycopg's "failed to resolve host 'y'" printed
    that piece; a "{name}" password reached a KeyError('name'). Pieces of 8 characters and more,
    cut where such parsers cut, are masked too."""
    from search_service.redaction import scrub, url_secrets

    url = "postgresql+psycopg://u%40x@localhost:1/db?password=\x7f\U000d0810@\u00b6Pw0000000000"
    assert "\x7f\U000d0810@\u00b6Pw0000000000" in url_secrets(url)
    assert "Pw0000000000" not in scrub("failed to resolve host '\u00b6Pw0000000000'", url)
    assert "Pw0000000001" not in scrub("KeyError: 'Pw0000000001'", "postgresql+psycopg://postgres:{Pw0000000001}@h/db")
    assert scrub("my pass word", "postgresql+psycopg://u:my@pass@h/db") == "my pass word"  # short pieces: not bare text
