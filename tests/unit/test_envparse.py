"""The dotenv-like parser of environment templates, its inverse, and secret masking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from container_manager.envparse import (
    MASK,
    EnvParseError,
    is_secret_key,
    mask_env,
    parse_env,
    render_env,
)

# The seed's example, indentation and all (text pasted from an indented Python literal).
SEED_TEXT = """
      PYTHONPATH=/app
      ENV=production
      DEBUG=False
      LOG_LEVEL=INFO
      """


def test_seed_example_with_leading_indentation() -> None:
    assert parse_env(SEED_TEXT) == {
        "PYTHONPATH": "/app",
        "ENV": "production",
        "DEBUG": "False",
        "LOG_LEVEL": "INFO",
    }


def test_keeps_order_of_definition() -> None:
    assert list(parse_env("Z=1\nA=2\nM=3")) == ["Z", "A", "M"]


@pytest.mark.parametrize("text", ["", None, "\n\n   \n\t\n", "# only a comment", "   # indented comment\n"])
def test_empty_text_comments_and_blank_lines(text: str | None) -> None:
    assert parse_env(text) == {}


def test_comments_and_blank_lines_between_values() -> None:
    text = "# header\n\nA=1\n   # indented\n\nB=2\n"
    assert parse_env(text) == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("A=b", "b"),
        ("A = b", "b"),
        ("A=b   ", "b"),
        ("A=b # comment", "b"),
        ("A=b\t# comment", "b"),
        ("A=b#not-a-comment", "b#not-a-comment"),
        ("A=#x", "#x"),
        ("A= # only a comment", ""),
        ("A=\t# only a comment", ""),
        ("A=", ""),
        ("A=   ", ""),
        ("A=a=b=c", "a=b=c"),
        ("A=postgres://u@h/db?x=1&y=2", "postgres://u@h/db?x=1&y=2"),
        ("A=two words", "two words"),
        ("export A=1", "1"),
        ("export\tA=1", "1"),
        ("   export    A = 1", "1"),
    ],
)
def test_unquoted_values(line: str, value: str) -> None:
    assert parse_env(line) == {"A": value}


def test_export_alone_is_a_valid_key_name() -> None:
    assert parse_env("export=1") == {"export": "1"}


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("A='single'", "single"),
        ("A='  padded  '", "  padded  "),
        ("A='no $escapes \\n here'", "no $escapes \\n here"),
        ("A='has # hash'", "has # hash"),
        ("A='has \"double\" quotes'", 'has "double" quotes'),
        ('A="double"', "double"),
        ('A=""', ""),
        ("A=''", ""),
        ('A="line\\nbreak"', "line\nbreak"),
        ('A="tab\\there"', "tab\there"),
        ('A="quote \\" inside"', 'quote " inside'),
        ('A="back\\\\slash"', "back\\slash"),
        ('A="dollar \\$HOME"', "dollar $HOME"),
        ('A="unknown \\q kept"', "unknown \\q kept"),
        ('A="has # hash"', "has # hash"),
        ('A="it\'s"', "it's"),
        ('A="x" # trailing comment', "x"),
        ("A='x'   # trailing comment", "x"),
        ('export A="quoted"', "quoted"),
    ],
)
def test_quoted_values(line: str, value: str) -> None:
    assert parse_env(line) == {"A": value}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("A=1\nnot a pair", 2, "no '='"),
        ("A=1\n\n# c\nJUSTKEY", 4, "JUSTKEY has no '='"),
        ("1BAD=x", 1, "invalid variable name"),
        ("BAD-NAME=x", 1, "invalid variable name"),
        ("BAD NAME=x", 1, "invalid variable name"),
        ("=x", 1, "invalid variable name"),
        ("A=1\nB=2\nA=3", 3, "A is already set on line 1"),
        ('A="unterminated', 1, "unterminated double quote"),
        ("X=1\nA='unterminated", 2, "unterminated single quote"),
        ('A="x" trailing', 1, "unexpected text after the closing quote"),
        ("A='x'trailing", 1, "unexpected text after the closing quote"),
    ],
)
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(EnvParseError) as info:
        parse_env(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        'PASSWORD="hunter2-secret',
        "PASSWORD='hunter2-secret",
        'PASSWORD="hunter2-secret" junk',
        "PASSWORD=hunter2-secret\nPASSWORD=hunter2-secret",
        "hunter2-secret",
        "hunter2-secret=value",
        'P="a\x00hunter2-secret"',
    ],
)
def test_errors_never_contain_the_value(text: str) -> None:
    with pytest.raises(EnvParseError) as info:
        parse_env(text)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value)


def test_nul_byte_in_value_is_an_error() -> None:
    with pytest.raises(EnvParseError, match="NUL"):
        parse_env('A="a\x00b"')


def test_values_do_not_span_lines() -> None:
    with pytest.raises(EnvParseError) as info:
        parse_env('A="first\nsecond"')
    assert info.value.line == 1


def test_error_is_a_value_error_with_detail() -> None:
    with pytest.raises(ValueError) as info:
        parse_env("A=1\n2=x")
    assert isinstance(info.value, EnvParseError)
    assert info.value.detail.startswith("invalid variable name")


def test_windows_line_endings() -> None:
    assert parse_env("A=1\r\nB='two'\r\n") == {"A": "1", "B": "two"}


# Round trip -------------------------------------------------------------------------------

keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
tricky_values = st.text(alphabet=" \t\n\r'\"\\#=$xé\u2028\x85\x0c", max_size=20)


@settings(max_examples=300)
@given(st.dictionaries(keys, st.one_of(values, tricky_values), max_size=8))
def test_render_then_parse_round_trips(env: dict[str, str]) -> None:
    assert parse_env(render_env(env)) == env


@given(st.dictionaries(keys, tricky_values, max_size=5))
def test_render_is_one_line_per_key(env: dict[str, str]) -> None:
    text = render_env(env)
    assert text.count("\n") == max(0, len(env) - 1)
    assert text.count("\r") == 0


def test_render_empty() -> None:
    assert render_env({}) == ""
    assert parse_env(render_env({})) == {}


# Masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "PASSWORD",
        "DB_PASSWORD",
        "db_passwd",
        "PGPASSWORD",
        "SECRET_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "API_KEY",
        "APIKEY",
        "STRIPE_KEY",
        "KEY",
        "SSH_PRIVATE_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SENTRY_DSN",
        "SESSION_COOKIE",
        "TLS_CERT",
        "Authorization",
    ],
)
def test_secret_looking_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["PYTHONPATH", "ENV", "DEBUG", "LOG_LEVEL", "HOME", "PATH", "KEYBOARD", "MONKEY", "WORKERS"]
)
def test_plain_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_mask_env_masks_only_secret_values() -> None:
    env = {"LOG_LEVEL": "INFO", "DB_PASSWORD": "hunter2", "API_KEY": "abc", "PATH": "/bin"}
    masked = mask_env(env)
    assert masked == {"LOG_LEVEL": "INFO", "DB_PASSWORD": MASK, "API_KEY": MASK, "PATH": "/bin"}
    assert "hunter2" not in repr(masked)
    # The input is not modified.
    assert env["DB_PASSWORD"] == "hunter2"


def test_mask_env_extra_keys() -> None:
    masked = mask_env({"PLAIN": "visible", "MARKED": "hidden"}, extra_secret_keys=frozenset({"MARKED"}))
    assert masked == {"PLAIN": "visible", "MARKED": MASK}


@given(st.dictionaries(keys, values, max_size=8))
def test_mask_env_keeps_keys_and_hides_every_secret(env: dict[str, str]) -> None:
    masked = mask_env(env)
    assert list(masked) == list(env)
    for key, value in masked.items():
        assert value == (MASK if is_secret_key(key) else env[key])
