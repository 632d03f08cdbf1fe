"""The queue's SQL dialects: its statements are written once, for SQLite, and translated here for PostgreSQL.

What translates mechanically does so (`postgres()` for statements, `postgres_ddl()` for migration scripts):
placeholders (`?` -> `%s`, `:name` -> `%(name)s`, a literal `%` -> `%%`), `INSERT OR IGNORE` -> `ON CONFLICT DO
NOTHING`, `INSERT OR REPLACE` -> an upsert on the table's key (KEYS), `INDEXED BY` hints (dropped: PostgreSQL's
planner has statistics), `ifnull`/`char`/two-argument `max`/`min`, the reserved word `user` as a column (quoted),
and column types. What does not (triggers, `json_each`, `json_patch`, temporary triggers calling Python) is written
for PostgreSQL beside the SQLite text: per migration in schema.py (`Migration.postgres`), per statement where the
query lives.
"""

from __future__ import annotations

import re
from functools import lru_cache

# The conflict target of the tables written with INSERT OR REPLACE (SQLite replaces on any unique key; these
# tables have one key each, apart from agent_tokens' token_hash, which is random and so never collides).
KEYS: dict[str, tuple[str, ...]] = {
    "agent_tokens": ("name",),
    "job_caches": ("job_id", "attempt", "name"),
    "snapshots": ("job_id",),
    "job_metrics": ("finished_at", "job_id"),
}

_TOKEN = re.compile(
    r"""(?P<str>'(?:[^']|'')*')|(?P<ident>"(?:[^"]|"")*")|(?P<comment>--[^\n]*)"""
    r"""|(?P<cast>::)|(?P<qmark>\?)|(?P<named>:[A-Za-z_]\w*)|(?P<pct>%)|(?P<word>[A-Za-z_]\w*)|(?P<other>.)""",
    re.S,
)
_REPLACE = re.compile(r"\bINSERT\s+OR\s+REPLACE\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I)
_NULL_ID = re.compile(r"\bINSERT\s+INTO\s+(\w+)\s*\(\s*id\s*,([^)]*)\)\s*VALUES\s*\(\s*NULL\s*,", re.I)
_IGNORE = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}
_RENAMED = {"ifnull": "coalesce", "char": "chr"}
# The columns SQLite uses as booleans (0/1 in INTEGER): bare in a condition, PostgreSQL needs `<> 0`.
FLAGS = frozenset({"blocked", "cancel_requested", "fork", "cascaded", "fail_fast", "continue_on_error",
                   "infra_retry"})
_CONDITION_BEFORE = frozenset({"not", "and", "or", "when", "where", "("})
_CONDITION_AFTER = frozenset({"and", "or", "then", ")", None, "order", "group", "limit", "returning"})
_NOT_OPERAND = frozenset({"null", "not", "true", "false", "distinct"})
_GREATEST = {"max": "greatest", "min": "least"}


@lru_cache(maxsize=1024)
def postgres(sql: str) -> str:
    """One SQLite statement (with placeholders) as PostgreSQL runs it through psycopg."""
    return _translate(sql, placeholders=True, ddl=False)


def postgres_ddl(script: str) -> str:
    """A migration script's statements as PostgreSQL DDL (no placeholders: psycopg leaves `%` alone then)."""
    from runner.queue.migration import statements

    return "\n".join(_translate(statement, placeholders=False, ddl=True) for statement in statements(script))


def _translate(sql: str, *, placeholders: bool, ddl: bool) -> str:
    conflict = ""
    sql = _NULL_ID.sub(r"INSERT INTO \1 (\2) VALUES (", sql)  # SQLite numbers a NULL id; PostgreSQL's default does
    if match := _REPLACE.search(sql):
        table, columns = match.group(1), [c.strip() for c in match.group(2).split(",")]
        if table not in KEYS:
            raise ValueError(f"INSERT OR REPLACE INTO {table}: name its key in runner.queue.dialect.KEYS")
        updates = ", ".join(f"{_column(c)} = EXCLUDED.{_column(c)}" for c in columns if c not in KEYS[table])
        conflict = f" ON CONFLICT ({', '.join(map(_column, KEYS[table]))}) " + \
            (f"DO UPDATE SET {updates}" if updates else "DO NOTHING")
        sql = sql[:match.start()] + f"INSERT INTO {table} ({match.group(2)})" + sql[match.end():]
    elif _IGNORE.search(sql):
        conflict = " ON CONFLICT DO NOTHING"
        sql = _IGNORE.sub("INSERT INTO", sql, count=1)
    lexemes = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(sql)]
    out: list[str] = []
    i = 0
    while i < len(lexemes):
        kind, text = lexemes[i]
        low = text.lower()
        if kind == "qmark" and placeholders:
            text = "%s"
        elif kind == "named" and placeholders:
            text = f"%({text[1:]})s"
        elif kind in ("pct", "str", "ident") and placeholders:
            text = text.replace("%", "%%")  # psycopg reads every % as a placeholder's, inside literals too
        elif kind == "word" and low == "indexed" and _word(lexemes, i + 1) == "by":
            i = _skip_word(lexemes, _skip_word(lexemes, i + 1) + 1) + 1  # INDEXED BY name
            while out and out[-1] in (" ", "\t"):
                out.pop()
            continue
        elif kind == "word" and low == "returning" and conflict:
            out.append(conflict.strip() + " ")
            conflict = ""
        elif kind == "word" and low == "user":
            text = '"user"'
        elif kind == "word" and low == "is" and _word(lexemes, i + 1) not in _NOT_OPERAND:
            text = "IS NOT DISTINCT FROM"  # SQLite's IS compares any values, NULL-safe
        elif kind == "word" and low == "not" and _prev_significant(out) == "is" \
                and _word(lexemes, i + 1) not in _NOT_OPERAND:
            out[_last_significant(out)] = "IS"
            text = "DISTINCT FROM"
        elif kind == "word" and low in FLAGS and _prev_significant(out) in ("set", ",") \
                and (end := _assigned_condition(lexemes, i)):
            value = _translate("".join(t for _, t in lexemes[end[0]:end[1]]), placeholders=placeholders, ddl=False)
            out.append(f"{text} = ({value})::int")  # `flag = a != b`: SQLite stores the comparison's 0/1
            i = end[1]
            continue
        elif kind == "word" and low in FLAGS and _is_condition(lexemes, i, out):
            text = f"({_flag_name(out, text)} <> 0)"
        elif kind == "word" and low in ("sum", "total") and _next_char(lexemes, i + 1) == "(":
            text, i = _sum(lexemes, i + 1, placeholders, low)
            out.append(text)
            continue
        elif kind == "word" and low in ("json_each", "json_patch") and _next_char(lexemes, i + 1) == "(":
            text, i = (_json_each if low == "json_each" else _json_patch)(lexemes, i + 1, placeholders)
            _cast_ids(out)
            out.append(text)
            continue
        elif kind == "word" and low in _RENAMED and _next_char(lexemes, i + 1) == "(":
            text = _RENAMED[low]
        elif kind == "word" and low in _GREATEST and _arguments(lexemes, i + 1) > 1:
            text = _GREATEST[low]
        elif kind == "word" and ddl and text.upper() in _TYPES:
            text = _ddl_type(lexemes, i, text.upper())
        elif kind == "word" and ddl and low == "without" and _word(lexemes, i + 1) == "rowid":
            i = _skip_word(lexemes, i + 1) + 1
            continue
        out.append(text)
        i += 1
    result = "".join(out).rstrip()
    if conflict:
        result = result.rstrip(";").rstrip() + conflict + (";" if result.endswith(";") else "")
    return result


def _column(name: str) -> str:
    return '"user"' if name.lower() == "user" else name


def _ddl_type(lexemes: list[tuple[str | None, str]], i: int, upper: str) -> str:
    """INTEGER PRIMARY KEY is SQLite's rowid alias: an identity column (explicit values allowed, never reused)."""
    if upper == "INTEGER" and _word(lexemes, i + 1) == "primary" and _word(lexemes, _skip_word(lexemes, i + 1) + 1) \
            == "key":
        return "BIGINT GENERATED BY DEFAULT AS IDENTITY"
    return _TYPES[upper]


def _skip_word(lexemes: list[tuple[str | None, str]], i: int) -> int:
    """The index of the next word token at or after i (whitespace and comments skipped)."""
    while i < len(lexemes) and lexemes[i][0] != "word":
        i += 1
    return i


def _word(lexemes: list[tuple[str | None, str]], i: int) -> str | None:
    while i < len(lexemes) and (lexemes[i][0] == "comment" or lexemes[i][1].isspace()):
        i += 1
    return lexemes[i][1].lower() if i < len(lexemes) and lexemes[i][0] == "word" else None


def _next_char(lexemes: list[tuple[str | None, str]], i: int) -> str | None:
    while i < len(lexemes) and lexemes[i][1].isspace():
        i += 1
    return lexemes[i][1] if i < len(lexemes) else None


def _arguments(lexemes: list[tuple[str | None, str]], i: int) -> int:
    """How many arguments the call starting at lexemes[i] ('(') has; 0 when it is not a call."""
    while i < len(lexemes) and lexemes[i][1].isspace():
        i += 1
    if i >= len(lexemes) or lexemes[i][1] != "(":
        return 0
    depth, count = 0, 1
    for kind, text in lexemes[i:]:
        if kind != "other":
            continue
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                return count
        elif text == "," and depth == 1:
            count += 1
    return count


def _significant(out: list[str]) -> list[int]:
    return [k for k, text in enumerate(out) if not text.isspace()]


def _last_significant(out: list[str]) -> int:
    return _significant(out)[-1]


def _prev_significant(out: list[str]) -> str | None:
    found = _significant(out)
    return out[found[-1]].lower() if found else None


def _flag_name(out: list[str], text: str) -> str:
    """A qualified flag (`q.blocked`): the qualifier already went out; take it back into the parentheses."""
    found = _significant(out)
    if len(found) >= 2 and out[found[-1]] == "." and out[found[-2]][:1].isalpha():
        qualifier = out[found[-2]]
        del out[found[-2]:]
        return f"{qualifier}.{text}"
    return text


def _is_condition(lexemes: list[tuple[str | None, str]], i: int, out: list[str]) -> bool:
    found = _significant(out)
    before = out[found[-1]].lower() if found else None
    if before == "." and len(found) >= 3:
        before = out[found[-3]].lower()
    j = i + 1
    while j < len(lexemes) and (lexemes[j][1].isspace() or lexemes[j][0] == "comment"):
        j += 1
    after = lexemes[j][1].lower() if j < len(lexemes) else None
    return before in _CONDITION_BEFORE and after in _CONDITION_AFTER


def _json_each(lexemes: list[tuple[str | None, str]], i: int, placeholders: bool) -> tuple[str, int]:
    """json_each(X) / json_each(X, '$.key') -> the elements of X's array (as text, in a column named value)."""
    args, end = _argument_spans(lexemes, i)
    first = _translate("".join(t for _, t in lexemes[args[0][0]:args[0][1]]), placeholders=placeholders, ddl=False)
    if len(args) == 1:
        return f"json_array_elements_text(({first})::json)", end
    path = "".join(t for _, t in lexemes[args[1][0]:args[1][1]]).strip()
    if not re.fullmatch(r"'\$\.\w+'", path):
        raise ValueError(f"json_each path {path}: only '$.key' translates")
    return f"json_array_elements_text(({first})::json -> '{path[3:-1]}')", end


def _sum(lexemes: list[tuple[str | None, str]], i: int, placeholders: bool, name: str) -> tuple[str, int]:
    """sum(a = b) counts in SQLite (a comparison is 0/1); total(x) is a float sum that is 0.0 over no rows."""
    args, end = _argument_spans(lexemes, i)
    inner = "".join(t for _, t in lexemes[args[0][0]:args[0][1]])
    value = _translate(inner, placeholders=placeholders, ddl=False)
    if any(kind == "other" and text in "=<>!" or kind == "word" and text.lower() in ("is", "in", "like")
           for kind, text in lexemes[args[0][0]:args[0][1]]):
        value = f"({value})::int"
    return (f"coalesce(sum({value}), 0.0)" if name == "total" else f"sum({value})"), end


def _cast_ids(out: list[str]) -> None:
    """`x_id IN (SELECT value FROM json_each(...))`: the elements come as text; ids compare as numbers."""
    found = _significant(out)
    if len(found) >= 6 and [out[k].lower() for k in found[-5:]] == ["in", "(", "select", "value", "from"] \
            and (out[found[-6]].lower() == "id" or out[found[-6]].lower().endswith("_id")):
        out[found[-2]] = "value::bigint"


def _json_patch(lexemes: list[tuple[str | None, str]], i: int, placeholders: bool) -> tuple[str, int]:
    """json_patch(A, B) on the flat objects the queue patches (a job's env): B's keys over A's (jsonb ||)."""
    args, end = _argument_spans(lexemes, i)
    a, b = (_translate("".join(t for _, t in lexemes[x:y]), placeholders=placeholders, ddl=False) for x, y in args)
    return f"(({a})::jsonb || ({b})::jsonb)::text", end


def _argument_spans(lexemes: list[tuple[str | None, str]], i: int) -> tuple[list[tuple[int, int]], int]:
    """The token ranges of the arguments of the call whose '(' is at or after i, and the index after its ')'."""
    while lexemes[i][1] != "(":
        i += 1
    depth, start, spans = 0, i + 1, []
    for j in range(i, len(lexemes)):
        kind, text = lexemes[j]
        if kind != "other":
            continue
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                spans.append((start, j))
                return spans, j + 1
        elif text == "," and depth == 1:
            spans.append((start, j))
            start = j + 1
    raise ValueError("unbalanced parentheses")


def _assigned_condition(lexemes: list[tuple[str | None, str]], i: int) -> tuple[int, int] | None:
    """For `flag = <expr>` in a SET list: the token range of <expr> when it is a comparison, else None."""
    j = i + 1
    while j < len(lexemes) and lexemes[j][1].isspace():
        j += 1
    if j >= len(lexemes) or lexemes[j][1] != "=":
        return None
    start = j + 1
    depth, compares = 0, False
    for k in range(start, len(lexemes)):
        kind, text = lexemes[k]
        if kind == "other" and text == "(":
            depth += 1
        elif kind == "other" and text == ")":
            depth -= 1
            if depth < 0:
                return (start, k) if compares else None
        elif depth == 0 and (kind == "other" and text == "," or kind == "word" and text.lower() in
                             ("where", "returning", "from")):
            return (start, k) if compares else None
        elif depth == 0 and (kind == "other" and text in "<>!" or kind == "word" and text.lower() in
                             ("is", "in", "like", "and", "or", "not")):
            compares = True
    return (start, len(lexemes)) if compares else None
