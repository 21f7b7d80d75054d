"""The stack's .env text, written so that every reader gets each value back byte for byte.

Four parsers read the file the deploy uploads, and they disagree on quoting:

* Compose v2 (compose-go's dotenv), for `env_file:` and for `${X}` in the compose files:
  unquoted and "double-quoted" values expand `$X`/`${X}` (a `$` that starts no variable is an
  error); 'single-quoted' values are raw, except that `\\'` stands for `'`. In double quotes it
  decodes `\\\\`, `\\"`, `\\$`, `\\n` ... escapes.
* Compose v1.29 (python-dotenv 0.21, Debian) and the toolkit's own Settings (python-dotenv 1.x):
  single quotes decode `\\\\` and `\\'`, double quotes decode `\\\\ \\' \\" \\a \\b \\f \\n \\r \\t
  \\v`, and `${NAME}` / `${NAME:-default}` is expanded in *every* value, quoted or not (v1 reads
  both the project .env and `env_file:` with interpolation on), with no escape for it.

python-dotenv 0.21 also misreads a quoted value whose last character is a backslash (its regex
takes the closing quote for an escaped one and runs on into the next lines).

So a value is written unquoted when it is plainly safe, else single-quoted (`'` as `\\'`) when
its backslashes mean the same to both parsers, else double-quoted (`\\` and `"` escaped) when it
holds no `$`, else unquoted when nothing in it is special there. What none of these can carry is
refused with a ValueError that names the key and never shows the value: line breaks, NUL and other
control characters (tab is fine), a `${...}` that python-dotenv would expand, and the rare value
mixing `$` with a backslash before another backslash, before a `'` or at its end.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Written as is: nothing any of the parsers treats specially.
PLAIN_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# python-dotenv's own pattern for a variable reference (dotenv/variables.py, 0.21 and 1.x alike).
DOTENV_VARIABLE_RE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
FORBIDDEN_CHARS = {"\n": "a line break", "\r": "a carriage return", "\x00": "a NUL character"}


def render(values: Mapping[str, str]) -> str:
    """`KEY=value` lines, one per item in order, each read back unchanged by Compose v1 and v2."""
    return "".join(f"{key}={quote(key, value)}\n" for key, value in values.items())


def quote(key: str, value: str) -> str:
    """One value in the form every reader decodes to `value`; ValueError (naming `key` only) if
    none."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"{key!r} is not a valid .env key (letters, digits and '_', not starting "
                         "with a digit)")
    if not isinstance(value, str):
        raise ValueError(f"{key}: the value must be a string, not {type(value).__name__}")
    for char, name in FORBIDDEN_CHARS.items():
        if char in value:
            raise ValueError(f"{key}: the value contains {name}, which a .env file cannot hold; "
                             "choose another value")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t" for c in value):
        # Control characters and Unicode line separators: some readers (and Compose v1's own
        # `config` output) treat them as line ends or fold them.
        raise ValueError(f"{key}: the value contains a control character or line separator; choose "
                         "another value")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key}: the value is not valid Unicode text; "
                         "choose another value") from None
    if DOTENV_VARIABLE_RE.search(value):
        raise ValueError(f"{key}: the value contains '${{...}}', which Compose v1 (python-dotenv) "
                         "would replace "
                         "by a variable in any quoting; choose a value without '${' ... '}'")
    if value == "":
        return ""
    if PLAIN_RE.fullmatch(value):
        return value
    if _single_quote_safe(value):
        return "'" + value.replace("'", "\\'") + "'"
    if "$" not in value and not value.endswith("\\"):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _unquoted_safe(value):
        return value
    raise ValueError(f"{key}: no .env quoting reads this value back unchanged in both Compose v1 "
                     "and v2 (it mixes '$', "
                     "quotes, '#' or edge spaces with a backslash before a backslash, before a "
                     "quote or at its end); choose another value")


def _single_quote_safe(value: str) -> bool:
    """In single quotes both parsers keep a backslash, except before a backslash or a quote (and
    a final one would escape the closing quote)."""
    return not value.endswith("\\") and "\\\\" not in value and "\\'" not in value


def _unquoted_safe(value: str) -> bool:
    """Unquoted, compose-go expands `$` and cuts at " #", python-dotenv cuts at whitespace + `#`;
    both drop surrounding whitespace and read a leading quote as quoting."""
    return ("$" not in value and value[0] not in "'\"" and not value[0].isspace()
            and not value[-1].isspace()
            and not re.search(r"\s#", value))
