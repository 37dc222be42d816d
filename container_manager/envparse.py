"""Parser for the dotenv-like text of environment templates, and secret masking.

Kept free of Django so it can be tested exhaustively (Hypothesis) and reused by the CLI.
The format, line by line (leading indentation is ignored, so text pasted from an indented
Python literal works):

* blank lines and lines starting with ``#`` are skipped;
* ``KEY=value`` or ``export KEY=value``; KEY is ``[A-Za-z_][A-Za-z0-9_]*``;
* an unquoted value runs to the end of the line, trailing spaces and a `` # comment`` removed;
* ``'single quoted'`` values are literal; ``"double quoted"`` values understand
  ``\\n \\t \\" \\\\``; after the closing quote only a comment may follow;
* anything else (no ``=``, a bad key, an unterminated quote, a key given twice) is an error
  that names the line. Error messages never repeat a value: values may be secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Names whose values are treated as secrets: a credential-like word anywhere in the name
#: (PASSWORD, PASSWD, PASSPHRASE, SECRET, TOKEN...), or a component that is one (DB_PASS,
#: PASS_FILE, MY_KEY, KEY_ID...). Over-masking is the safe mistake.
SECRET_KEY_RE = re.compile(
    r"SECRET|TOKEN|PASSW|PASSPHRASE|PWD|PRIVATE|CREDENTIAL|AUTH|API_?KEY|ACCESS_?KEY|DSN|COOKIE|SESSION"
    r"|SIGNATURE|CERT|SALT|BEARER|(?:\A|_)(?:PASS|KEY|PIN|JWT)(?:_|\Z)",
    re.IGNORECASE,
)
#: ``scheme://user:password@host``: the password (up to the last ``@`` before the path).
URL_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^\s/?#]*(?=@)")
#: Separators of a ``secret_keys`` list: commas and whitespace.
_NAME_LIST_RE = re.compile(r"[\s,]+")
MASK = "********"
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class EnvParseError(ValueError):
    """The environment text is malformed."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.detail = message
        super().__init__(f"line {line}: {message}")


def _parse_double_quoted(body: str, lineno: int) -> tuple[str, str]:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == '"':
            return "".join(out), body[i + 1 :]
        out.append(ch)
        i += 1
    raise EnvParseError(lineno, 'unterminated double quote (values cannot span lines; use "\\n")')


def _parse_value(raw: str, lineno: int, key: str) -> str:
    unquoted = raw
    raw = raw.lstrip(" \t")
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise EnvParseError(lineno, f"unterminated single quote in the value of {key}")
        value, rest = raw[1:end], raw[end + 1 :]
    elif raw.startswith('"'):
        value, rest = _parse_double_quoted(raw[1:], lineno)
    else:
        # Split before stripping, so that "KEY= # comment" is an empty value, not "# comment".
        value = re.split(r"\s+#", unquoted, maxsplit=1)[0].strip(" \t").rstrip()
        rest = ""
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise EnvParseError(lineno, f"unexpected text after the closing quote of {key}")
    if "\x00" in value:
        raise EnvParseError(lineno, f"the value of {key} contains a NUL byte")
    return value


def parse_env(text: str | None) -> dict[str, str]:
    """Parse environment text into an ordered dict, or raise ``EnvParseError``."""
    result: dict[str, str] = {}
    first_line: dict[str, int] = {}
    # Only \n, \r\n and \r end a line: str.splitlines() would also split on \f, \x85, \u2028...,
    # which render_env() leaves unescaped inside quoted values.
    for lineno, line in enumerate(_LINE_BREAK_RE.split(text or ""), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export ") or stripped.startswith("export\t"):
            stripped = stripped[len("export") :].lstrip()
        key, sep, raw_value = stripped.partition("=")
        key = key.rstrip()
        if not sep:
            shown = key if KEY_RE.match(key) else "this line"
            raise EnvParseError(lineno, f"expected KEY=VALUE but {shown} has no '='")
        if not KEY_RE.match(key):
            raise EnvParseError(
                lineno, "invalid variable name: names are letters, digits and '_', not starting with a digit"
            )
        if key in result:
            raise EnvParseError(lineno, f"{key} is already set on line {first_line[key]}")
        result[key] = _parse_value(raw_value, lineno, key)
        first_line[key] = lineno
    return result


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY_RE.search(key))


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by the mask."""
    if "://" not in text:
        return text
    return URL_PASSWORD_RE.sub(lambda mo: mo.group("head") + MASK, text)


def has_url_password(value: str) -> bool:
    return "://" in value and URL_PASSWORD_RE.search(value) is not None


def parse_name_list(text: str | None) -> list[str]:
    """The names of a ``secret_keys`` value ("A, B C"), in order, without empty items."""
    return [name for name in _NAME_LIST_RE.split(text or "") if name]


def secret_keys_of(env: Mapping[str, str], marked: Iterable[str] = ()) -> frozenset[str]:
    """Names in ``env`` whose values must never be shown: secret-looking names, names the user
    marked secret, and names whose value holds a password inside a URL."""
    marked = set(marked)
    return frozenset(k for k, v in env.items() if k in marked or is_secret_key(k) or has_url_password(v))


def mask_env(env: Mapping[str, str], extra_secret_keys: Iterable[str] = frozenset()) -> dict[str, str]:
    """A copy of ``env`` safe to show: values of secret-looking or marked names replaced by the
    mask, and passwords inside URLs masked in every other value."""
    extra = set(extra_secret_keys)
    return {k: (MASK if (is_secret_key(k) or k in extra) else mask_url_passwords(v)) for k, v in env.items()}


def mask_env_text(text: str | None, extra_secret_keys: Iterable[str] = frozenset()) -> str:
    """Environment text as it may be shown to someone who may not edit it: ``KEY=value`` lines
    with secret values masked. Text that does not parse is not shown at all."""
    try:
        env = parse_env(text)
    except EnvParseError as exc:
        return f"(not shown: the text does not parse, {exc})"
    return "\n".join(f"{k}={v}" for k, v in mask_env(env, extra_secret_keys).items())


def render_env(env: Mapping[str, str]) -> str:
    """Inverse of ``parse_env``: text that parses back to ``env``."""
    lines = []
    for key, value in env.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        escaped = escaped.replace("\t", "\\t").replace("\r", "\\r")
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines)
