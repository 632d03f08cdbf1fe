"""The schema machinery of both config files: kinds, issues, decode/encode, field docs, TOML loading."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Final

import tomli_w

from config.durations import EXPECTED as DURATION_EXPECTED
from config.durations import parse_duration, to_duration_string
from config.errors import ConfigError, ConfigIssue

# Every dataclass field of a config file carries a Kind (how to check and convert its TOML value) and a one-line
# doc; config.settings and config.pipeline declare their files with them.

MAX_FILE_BYTES: Final = 1024 * 1024  # a config file larger than this is a mistake, not a config
MAX_ISSUES: Final = 50  # past this, more messages only bury the first ones
# tomllib keeps every prefix of a dotted key (`a.b.c = 1`), so memory grows with the square of its parts:
# 400 lines of 1000-part keys (800 kB) take 1.7 GB. Each line costs (dots + 1)^2 against this budget,
# which real files (a few dots a line) never get near.
MAX_DOTTED_COST: Final = 1_000_000
_KEY_DOT = re.compile(r"\.(?=[ \t]*[\w\"'-])")
INVALID: Final = object()  # what a Kind returns after reporting an issue
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Issues:
    """Collects every problem in one file so the user sees them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[ConfigIssue] = []
        self.count = 0  # all issues found, including those past MAX_ISSUES

    @property
    def full(self) -> bool:
        return self.count >= MAX_ISSUES

    def add(self, path: str, message: str) -> None:
        self.count += 1
        if self.count <= MAX_ISSUES:
            self.items.append(ConfigIssue(self.source, path, message))

    def raise_if_any(self) -> None:
        if self.count > MAX_ISSUES:
            more = self.count - MAX_ISSUES
            self.items.append(ConfigIssue(self.source, "", f"... and {more} more issues"))
        if self.items:
            raise ConfigError(self.items)


Convert = Callable[[object, str, Issues], object]


@dataclass(frozen=True)
class Kind:
    """How one key's value is checked, converted, written back, and named in the reference."""

    label: str
    convert: Convert
    dump: Callable[[Any], object] = lambda value: value
    nested: type | None = None  # the dataclass whose fields live under this key
    nest: str = ""  # how nested paths continue: "." (table), ".<NAME>." (table of tables), "[]." (array)


@dataclass(frozen=True)
class FieldDoc:
    """One documented key: its path (`server.port`, `steps[].run`), type, default and meaning."""

    path: str
    type: str
    default: str
    doc: str


def option(kind: Kind, doc: str, default: Any = MISSING, *, factory: Any = MISSING, shown: str | None = None,
           key: str | None = None) -> Any:
    """A dataclass field described by `kind` and `doc`; `shown` overrides how its default is documented.

    `key` is the field's name in the file when it cannot be a Python name (`if`).
    """
    metadata = {"kind": kind, "doc": doc, **({"shown": shown} if shown is not None else {}),
                **({"key": key} if key is not None else {})}
    return field(default=default, default_factory=factory, metadata=metadata)


def file_key(f: dataclasses.Field[Any]) -> str:
    """The key of dataclass field `f` in the file."""
    return str(f.metadata.get("key", f.name))


def describe(value: object) -> str:
    """A short, safe rendering of a user's value for messages (never a deep repr of containers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"  # only JSON submissions have it; TOML has no null
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    if isinstance(value, (list, tuple)):
        return "an array" if value else "an empty array"
    return f"a {type(value).__name__}"


def key_path(path: str, key: str) -> str:
    """`path.key`, quoting keys that are not bare TOML keys (`env."A B"`)."""
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key if len(key) <= 40 else key[:40] + "...")
    return f"{path}.{shown}" if path else shown


def scalar(label: str, check: Callable[[object], object],
           dump: Callable[[Any], object] = lambda value: value) -> Kind:
    """A Kind for a leaf value; `check` converts it or raises ValueError saying what was expected."""

    def convert(value: object, path: str, issues: Issues) -> object:
        try:
            return check(value)
        except ValueError as exc:
            issues.add(path, str(exc))
            return INVALID

    return Kind(label, convert, dump)


def as_text(value: object, what: str = "a string") -> str:
    """`value` if it is a string fit for a config (no NUL, valid Unicode), else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {describe(value)}")
    if "\x00" in value:
        raise ValueError(f"expected {what} without NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"expected {what} of valid Unicode text") from None
    return value


def nonempty_text(value: object) -> str:
    """`value` if it is a non-empty string, else ValueError."""
    if not as_text(value, "a non-empty string"):
        raise ValueError("expected a non-empty string, got ''")
    return value  # type: ignore[return-value]


def matching(pattern: re.Pattern[str], what: str, allow_empty: bool = False) -> Callable[[object], str]:
    """A check for strings that fully match `pattern` (or are empty, when allowed)."""
    def check(value: object) -> str:
        found = as_text(value, what)
        if (found or not allow_empty) and not pattern.fullmatch(found):
            raise ValueError(f"expected {what}, got {describe(found)}")
        return found
    return check


def _integer(lo: int, hi: int | None = None) -> Callable[[object], int]:
    what = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def check(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected {what}, got {describe(value)}")
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"expected {what}, got {describe(value)}")
        return value
    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def _duration(value: object) -> float:
    # A bare TOML integer is seconds, like a bare number in a string.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 < value < 10**9:
            raise ValueError(f"{DURATION_EXPECTED}, got {describe(value)} (a duration must be positive)")
        return float(value)
    return parse_duration(as_text(value, DURATION_EXPECTED[len("expected "):]))


def _choice(*choices: str) -> Callable[[object], str]:
    what = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected {what}, got {describe(value)}")
        return value
    return check


def _url(schemes: tuple[str, ...], allow_empty: bool) -> Callable[[object], str]:
    what = " or ".join(f"{s}://..." for s in schemes) + (' URL (or "")' if allow_empty else " URL")

    def check(value: object) -> str:
        found = as_text(value, what)
        if (found or not allow_empty) and not any(found.startswith(f"{s}://") and len(found) > len(s) + 3
                                                  for s in schemes):
            raise ValueError(f"expected {what}, got {describe(found)}")
        return found
    return check


def _string_list(item: Callable[[object], str], nonempty: bool) -> Callable[[object], tuple[str, ...]]:
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or (nonempty and not value):
            what = "a non-empty array" if nonempty else "an array"
            raise ValueError(f"expected {what} of strings, got {describe(value)}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return tuple(out)
    return check


def _string_table(value: object, path: str, issues: Issues) -> object:
    """A table of environment variables: names must be usable as variable names, values strings."""
    if not isinstance(value, dict):
        issues.add(path, f"expected a table of strings, got {describe(value)}")
        return INVALID
    before = issues.count
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            issues.add(path, f"expected variable names like NODE_ENV, got {describe(key)}")
        else:
            STRING.convert(item, key_path(path, key), issues)
    return dict(value) if issues.count == before else INVALID


def section(cls: type) -> Kind:
    """A Kind for a sub-table decoded into dataclass `cls`."""
    return Kind("table", lambda value, path, issues: decode(cls, value, path, issues),
                lambda obj: encode(obj), cls, ".")


def table_of(cls: type) -> Kind:
    """A Kind for a table whose keys are names chosen by the user and whose values are `cls` tables."""

    def convert(value: object, path: str, issues: Issues) -> object:
        if not isinstance(value, dict):
            issues.add(path, f"expected a table, got {describe(value)}")
            return INVALID
        before = issues.count
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
                issues.add(path, f"expected names like NPM_TOKEN, got {describe(key)}")
                continue
            out[key] = decode(cls, item, key_path(path, key), issues)
        return out if issues.count == before else INVALID

    return Kind("table of tables", convert, lambda obj: {k: encode(v) for k, v in obj.items()}, cls, ".<NAME>.")


def array_of_tables(cls: type, *, check: Callable[[Any, str, Issues], None] | None = None,
                    name: Callable[[Any, int], str] | None = None, limit: int | None = None) -> Kind:
    """A Kind for `[[key]]` tables decoded into dataclass `cls`, each checked by `check(item, path, issues)`;
    with `name(item, index)`, names must be unique; at most `limit` tables."""

    def convert(value: object, path: str, issues: Issues) -> object:
        if not isinstance(value, (list, tuple)):
            issues.add(path, f"expected [[{path}]] tables, got {describe(value)}")
            return INVALID
        if limit is not None and len(value) > limit:
            issues.add(path, f"at most {limit} [[{path}]] tables, got {len(value)}")
            return INVALID
        before = issues.count
        found: list[Any] = []
        first: dict[str, int] = {}
        for i, raw in enumerate(value):
            where = f"{path}[{i}]"
            item = decode(cls, raw, where, issues)
            if item is INVALID:
                continue
            if check is not None:
                check(item, where, issues)
            if name is not None:
                label = name(item, i)
                if label in first:
                    issues.add(f"{where}.name", f"duplicate name {describe(label)} (also {path}[{first[label]}])")
                first.setdefault(label, i)
            found.append(item)
        return tuple(found) if issues.count == before else INVALID

    return Kind("array of tables", convert, lambda items: [encode(item) for item in items], cls, "[].")


def decode(cls: type, obj: object, path: str, issues: Issues) -> Any:
    """Check table `obj` against dataclass `cls`, report every issue, and build `cls` (or INVALID)."""
    where = path or "(top level)"
    if not isinstance(obj, dict):
        issues.add(where, f"expected a table, got {describe(obj)}")
        return INVALID
    before = issues.count
    fields = {file_key(f): f for f in dataclasses.fields(cls)}
    suggested = set()  # a misspelt required key is one mistake, not also a missing key
    for key in obj:
        if not isinstance(key, str):
            issues.add(where, f"expected string keys, got {describe(key)}")
        elif key not in fields and issues.full:
            issues.add(key_path(path, key), "unknown key")  # counted only: no suggestion work for pathological input
        elif key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(fields)
            suggested.update(close)
            issues.add(key_path(path, key), f"unknown key ({hint})")
    values = {}
    for name, f in fields.items():
        kind: Kind = f.metadata["kind"]
        if name in obj:
            values[f.name] = kind.convert(obj[name], key_path(path, name), issues)
        elif f.default is MISSING and f.default_factory is MISSING and name not in suggested:
            issues.add(key_path(path, name), f"missing required key ({kind.label})")
    if issues.count > before:
        return INVALID
    return cls(**values)


def encode(obj: object) -> dict[str, object]:
    """The TOML-ready dict of dataclass `obj`, leaving out None and values equal to their default."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if value is None or value == default:
            continue
        out[file_key(f)] = f.metadata["kind"].dump(value)
    return out


def field_docs(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every key of `cls` and of the tables nested in it, in declaration order."""
    docs = []
    for f in dataclasses.fields(cls):
        kind: Kind = f.metadata["kind"]
        path = prefix + file_key(f)
        docs.append(FieldDoc(path, kind.label, _shown_default(f), f.metadata["doc"]))
        if kind.nested is not None:
            docs.extend(field_docs(kind.nested, path + kind.nest))
    return docs


def _shown_default(f: dataclasses.Field[Any]) -> str:
    if "shown" in f.metadata:
        return str(f.metadata["shown"])
    kind: Kind = f.metadata["kind"]
    if f.default is MISSING and f.default_factory is MISSING:
        return "required"
    if kind.nested is not None:
        return ""
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    return f"`{toml_inline(kind.dump(value))}`"


def toml_inline(value: object) -> str:
    """`value` as a one-line TOML literal (tomli-w alone writes arrays over several lines)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key_path('', k)} = {toml_inline(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"x": value})[len("x = "):].strip()


def markdown_table(docs: list[FieldDoc]) -> str:
    """A `key | type | default | meaning` Markdown table of `docs`."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{d.path}` | {cell(d.type)} | {cell(d.default)} | {cell(d.doc)} |" for d in docs]
    return "\n".join(rows)


def load_toml(data: bytes | str, source: str) -> dict[str, Any]:
    """Parse TOML from untrusted bytes; any failure (encoding, syntax, nesting, size) is a ConfigError."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    except (UnicodeEncodeError, TypeError) as exc:
        raise ConfigError(f"cannot read as TOML text: {exc}", source) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"file too large ({len(raw)} bytes; the limit is {MAX_FILE_BYTES})", source)
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some editors write
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 text (bad byte at offset {exc.start})", source) from None
    if sum((len(_KEY_DOT.findall(line)) + 1) ** 2 for line in text.split("\n")) > MAX_DOTTED_COST:
        raise ConfigError("too many dotted keys (a.b.c) to parse safely", source)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {_toml_message(exc)}", source) from None
    except RecursionError:
        raise ConfigError("invalid TOML: arrays or tables nested too deeply", source) from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ConfigError(f"invalid TOML: {exc}", source) from None


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    # tomllib says "Invalid value (at line 3, column 9)"; lead with the place, editors-style.
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", str(exc), re.DOTALL)
    return f"{match[2]}: {match[1]}" if match else str(exc)


# Kinds used by both files.
STRING: Final = scalar("string", as_text)
NONEMPTY: Final = scalar("string", nonempty_text)
BOOL: Final = scalar("boolean", _boolean)
DURATION: Final = scalar("duration", _duration, to_duration_string)
ENV_VAR: Final = scalar("env variable name", matching(ENV_NAME, "an environment variable name", True))
STRING_TABLE: Final = Kind("table of strings", _string_table)


def integer(lo: int, hi: int | None = None) -> Kind:
    """A Kind for integers in lo..hi (no upper bound when hi is None); booleans are not integers."""
    return scalar(f"integer {lo}..{hi}" if hi is not None else f"integer >= {lo}", _integer(lo, hi))


def choice(*choices: str) -> Kind:
    """A Kind for one of a fixed set of strings."""
    return scalar("one of " + ", ".join(f"`{c}`" for c in choices), _choice(*choices))


def url_kind(schemes: tuple[str, ...], allow_empty: bool = False) -> Kind:
    """A Kind for a URL with one of `schemes` (`http`, `s3`...), or "" when `allow_empty`."""
    return scalar("URL", _url(schemes, allow_empty))


def string_list(item: Callable[[object], str] = as_text, label: str = "array of strings",
                nonempty: bool = False) -> Kind:
    """A Kind for an array of strings, each checked by `item`; stored as a tuple."""
    return scalar(label, _string_list(item, nonempty), list)

