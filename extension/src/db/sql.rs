//! Inspection of SQL text before it is sent. The extension owns each transaction's boundaries and hands the same
//! pooled sessions to every request, so it refuses up front:
//! - statements that would end or start a transaction ([`transaction_control`]);
//! - statements whose effect outlives the request's transaction, which the next request on the same connection
//!   would inherit ([`check`]): plain `SET`/`RESET`/`DISCARD`, session characteristics, SQL-level prepared
//!   statements, `LISTEN`, temporary objects without `ON COMMIT DROP`, session advisory locks, `set_config(...,
//!   false)`, `LOAD`, and `COPY` (its data does not fit one request and a half-done COPY holds a backend);
//! - in read-only mode, what a `READ ONLY` transaction does not stop: large-object writes, `COPY`, `SET ROLE` /
//!   `SET SESSION AUTHORIZATION`, and `DO` blocks (they can call anything).
//!
//! A small lexer (comments, nested comments, quoted identifiers, `'...'`/`E'...'` strings, dollar quotes, `$n`),
//! no parser: text inside strings, dollar quotes (function bodies) and comments is data. What runs inside `DO`
//! blocks and procedures cannot be seen, so such statements are reported as opaque ([`Effect::opaque`]) and the
//! connection is retired after the request (`db::exec`).
//!
//! It also recognises plain reads ([`Effect::plain_read`]): a `SELECT` / `VALUES` / `TABLE` / `WITH` with no
//! data-modifying keyword, no row lock and no call to anything but a known side-effect-free built-in. A request
//! made only of those runs as a `READ ONLY` transaction (PostgreSQL enforces it), which is what lets it take one
//! round trip and be resent after a lost connection (`db::exec`).

/// One token; words are lower-cased (SQL folds unquoted identifiers and keywords), quoted identifiers are kept.
#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Str(String),
    Punct(u8),
    Other,
}

impl Tok {
    fn is_word(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x == w)
    }
    /// The name of a word or quoted identifier (what a function call can be spelled as).
    fn name(&self) -> Option<&str> {
        match self {
            Tok::Word(x) | Tok::Quoted(x) => Some(x),
            _ => None,
        }
    }
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_char(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Ends a quoted run starting after its opening `q` at `i`: a doubled `q` is one character; with `backslash`
/// (`E'...'`) a backslash escapes the next byte. Returns (content, index after the closing quote).
fn quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> (String, usize) {
    let mut out = Vec::new();
    while i < b.len() {
        if backslash && b[i] == b'\\' && i + 1 < b.len() {
            out.push(b[i + 1]);
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                out.push(q);
                i += 2;
            } else {
                return (String::from_utf8_lossy(&out).into_owned(), i + 1);
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), i)
}

fn tokens(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == 0x0b {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' {
            let (s, next) = quoted(b, i + 1, b'\'', false);
            out.push(Tok::Str(s));
            i = next;
        } else if c == b'"' {
            let (s, next) = quoted(b, i + 1, b'"', false);
            out.push(Tok::Quoted(s));
            i = next;
        } else if c == b'$' {
            // `$1` is a parameter; `$tag$ ... $tag$` (tag possibly empty) a dollar-quoted string.
            let mut j = i + 1;
            if b.get(j).is_some_and(|d| d.is_ascii_digit()) {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                out.push(Tok::Other);
                i = j;
                continue;
            }
            while j < b.len() && ident_char(b[j]) && b[j] != b'$' {
                j += 1;
            }
            if b.get(j) != Some(&b'$') {
                out.push(Tok::Punct(b'$'));
                i += 1;
                continue;
            }
            let tag = &b[i..=j];
            let body = j + 1;
            let end = b[body..].windows(tag.len()).position(|w| w == tag);
            match end {
                Some(k) => {
                    out.push(Tok::Str(String::from_utf8_lossy(&b[body..body + k]).into_owned()));
                    i = body + k + tag.len();
                }
                None => {
                    out.push(Tok::Str(String::from_utf8_lossy(&b[body..]).into_owned()));
                    i = b.len();
                }
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let word = sql[start..i].to_ascii_lowercase();
            if (word == "e") && b.get(i) == Some(&b'\'') {
                // E'...': backslash escapes.
                let (s, next) = quoted(b, i + 1, b'\'', true);
                out.push(Tok::Str(s));
                i = next;
            } else {
                out.push(Tok::Word(word));
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Tok::Other);
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// The leading keywords of a statement (unquoted words before anything else).
fn leading_words(toks: &[Tok]) -> Vec<&str> {
    toks.iter()
        .map_while(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect()
}

/// The leading keyword of `sql` when it is a statement that ends or starts a transaction (`BEGIN`, `START`,
/// `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`), skipping whitespace and (nested) comments.
pub(crate) fn transaction_control(sql: &str) -> Option<&'static str> {
    let toks = tokens(sql);
    let words = leading_words(&toks);
    match words.first().copied() {
        Some("begin") => Some("BEGIN"),
        Some("start") => Some("START"),
        Some("commit") => Some("COMMIT"),
        Some("end") => Some("END"),
        Some("rollback") => Some("ROLLBACK"),
        Some("abort") => Some("ABORT"),
        Some("prepare") if words.get(1) == Some(&"transaction") => Some("PREPARE TRANSACTION"),
        _ => None,
    }
}

/// Why a statement is refused before it is sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400 `statement_not_supported`: the statement would change the session beyond the request (the message names
    /// the alternative).
    NotSupported(String),
    /// 403 `read_only`: read-only mode, and `READ ONLY` alone would not stop it.
    ReadOnly(String),
}

/// What an accepted statement may do that the extension cannot see.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    /// `DO` or `CALL`: procedural code whose session changes cannot be seen; the connection is retired afterwards.
    pub opaque: bool,
    /// A plain read (see the module docs): running it `READ ONLY` changes nothing but the guarantee.
    pub plain_read: bool,
}

/// Session advisory locks (held until the session ends or an explicit unlock).
const SESSION_ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];
/// Large-object functions that write (a `READ ONLY` transaction does not stop them) or touch server files.
const LARGE_OBJECT_WRITES: &[&str] = &[
    "lo_from_bytea",
    "lo_put",
    "lo_import",
    "lo_export",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
];
/// Settings whose change (even `SET LOCAL`) switches who the statements run as.
const IDENTITY_SETTINGS: &[&str] = &["role", "session_authorization"];

fn not_supported(what: &str, instead: &str) -> Refusal {
    Refusal::NotSupported(format!(
        "{what} would outlive this request's transaction and leak into later requests on the same pooled connection: {instead}"
    ))
}

fn read_only(what: &str) -> Refusal {
    Refusal::ReadOnly(format!(
        "{what} is refused in read-only mode (MAKENAIDE_DB_READ_ONLY=true): a READ ONLY transaction does not stop it"
    ))
}

/// Checks one statement (see the module docs). `read_only`: `MAKENAIDE_DB_READ_ONLY`.
pub(crate) fn check(sql: &str, read_only_mode: bool) -> Result<Effect, Refusal> {
    let toks = tokens(sql);
    let mut body: &[Tok] = &toks;
    // EXPLAIN [ANALYZE] [VERBOSE] [(options)] runs the statement that follows.
    if body.first().is_some_and(|t| t.is_word("explain")) {
        body = &body[1..];
        if body.first() == Some(&Tok::Punct(b'(')) {
            let close = body
                .iter()
                .position(|t| *t == Tok::Punct(b')'))
                .unwrap_or(body.len() - 1);
            body = &body[close + 1..];
        }
        while body
            .first()
            .is_some_and(|t| t.is_word("analyze") || t.is_word("analyse") || t.is_word("verbose"))
        {
            body = &body[1..];
        }
    }
    let words = leading_words(body);
    let w = |n: usize| words.get(n).copied().unwrap_or("");
    let mut effect = Effect::default();
    match w(0) {
        "set" => match w(1) {
            // Scoped to the transaction (SET LOCAL, SET TRANSACTION, SET CONSTRAINTS).
            "local" => {
                if read_only_mode && (w(2) == "role" || (w(2) == "session" && w(3) == "authorization")) {
                    return Err(read_only("SET LOCAL ROLE / SESSION AUTHORIZATION"));
                }
            }
            "transaction" | "constraints" => {}
            "role" if read_only_mode => return Err(read_only("SET ROLE")),
            "role" => return Err(not_supported("SET ROLE", "use SET LOCAL ROLE")),
            "session" if w(2) == "authorization" && read_only_mode => {
                return Err(read_only("SET SESSION AUTHORIZATION"))
            }
            "session" if w(2) == "authorization" => {
                return Err(not_supported(
                    "SET SESSION AUTHORIZATION",
                    "use SET LOCAL SESSION AUTHORIZATION",
                ))
            }
            "session" if w(2) == "characteristics" => {
                return Err(not_supported(
                    "SET SESSION CHARACTERISTICS",
                    "use SET TRANSACTION ... (this request's transaction only)",
                ))
            }
            _ => {
                return Err(not_supported(
                    "SET without LOCAL",
                    "use SET LOCAL (it ends with this request's transaction)",
                ))
            }
        },
        "reset" => return Err(not_supported("RESET", "use SET LOCAL name TO DEFAULT")),
        "discard" => {
            return Err(not_supported(
                "DISCARD",
                "it is not needed: every request starts from the session state of a fresh connection",
            ))
        }
        "prepare" | "execute" | "deallocate" => {
            return Err(not_supported(
                "a SQL-level prepared statement (PREPARE / EXECUTE / DEALLOCATE)",
                "send the statement itself with $n parameters (the extension prepares and caches it)",
            ))
        }
        "listen" | "unlisten" => {
            return Err(not_supported(
                "LISTEN / UNLISTEN",
                "notifications cannot be delivered over this API (NOTIFY and pg_notify work)",
            ))
        }
        "load" => {
            return Err(not_supported(
                "LOAD",
                "preload the library on the server (session_preload_libraries)",
            ))
        }
        "copy" if read_only_mode => return Err(read_only("COPY")),
        "copy" => {
            return Err(Refusal::NotSupported(
                "COPY is not supported (its data stream does not fit one request): read with SELECT, write with \
                 INSERT ... SELECT * FROM unnest($1::type[], ...)"
                    .into(),
            ))
        }
        "do" if read_only_mode => {
            return Err(read_only(
                "a DO block (it can call functions the extension cannot check)",
            ))
        }
        "do" | "call" => effect.opaque = true,
        "create" => {
            // CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP | TEMPORARY ..., or an object in schema pg_temp.
            let temp = words.iter().take(5).any(|x| *x == "temp" || *x == "temporary")
                || body
                    .windows(2)
                    .any(|p| p[0].name() == Some("pg_temp") && p[1] == Tok::Punct(b'.'));
            let table = words.iter().take(6).any(|x| *x == "table");
            let drops = body
                .windows(3)
                .any(|p| p[0].is_word("on") && p[1].is_word("commit") && p[2].is_word("drop"));
            if temp && !(table && drops) {
                return Err(not_supported(
                    "a temporary object",
                    "use CREATE TEMP TABLE ... ON COMMIT DROP (temporary views, sequences and functions are not \
                     supported)",
                ));
            }
        }
        _ => {}
    }
    // SELECT ... INTO TEMP t / INTO pg_temp.t: a temporary table for the session.
    for p in body.windows(3) {
        if p[0].is_word("into")
            && (p[1].is_word("temp")
                || p[1].is_word("temporary")
                || ((p[1].is_word("local") || p[1].is_word("global"))
                    && (p[2].is_word("temp") || p[2].is_word("temporary")))
                || (p[1].name() == Some("pg_temp") && p[2] == Tok::Punct(b'.')))
        {
            return Err(not_supported(
                "SELECT INTO TEMP",
                "use CREATE TEMP TABLE ... ON COMMIT DROP AS SELECT ...",
            ));
        }
    }
    // Function calls anywhere in the statement (schema-qualified or not).
    for (i, t) in body.iter().enumerate() {
        let Some(name) = t.name() else { continue };
        if body.get(i + 1) != Some(&Tok::Punct(b'(')) {
            continue;
        }
        if SESSION_ADVISORY_LOCKS.contains(&name) {
            return Err(not_supported(
                &format!("{name} (a session advisory lock)"),
                "use pg_advisory_xact_lock / pg_try_advisory_xact_lock (released when the request's transaction ends)",
            ));
        }
        if read_only_mode && LARGE_OBJECT_WRITES.contains(&name) {
            return Err(read_only(&format!("{name} (a large-object write)")));
        }
        if name == "set_config" {
            let args = arguments(&body[i + 2..]);
            let local = args.len() == 3
                && match args[2] {
                    [Tok::Word(x)] => x == "true",
                    [Tok::Str(s)] => matches!(s.to_ascii_lowercase().as_str(), "t" | "true" | "on" | "yes" | "y" | "1"),
                    _ => false,
                };
            if !local {
                return Err(not_supported(
                    "set_config(..., false)",
                    "pass true as its third argument, or use SET LOCAL",
                ));
            }
            if read_only_mode {
                match args[0] {
                    [Tok::Str(s)] if !IDENTITY_SETTINGS.contains(&s.to_ascii_lowercase().as_str()) => {}
                    _ => {
                        return Err(read_only(
                            "set_config of role, session_authorization or a computed name",
                        ))
                    }
                }
            }
        }
    }
    effect.plain_read = plain_read(body);
    Ok(effect)
}

/// Words that make a statement more than a read: data-modifying CTEs and `SELECT INTO` (a new table), row locks
/// (`FOR UPDATE` / `FOR [KEY] SHARE`, refused in a `READ ONLY` transaction).
const WRITE_WORDS: &[&str] = &[
    "insert", "update", "delete", "merge", "into", "share", "lock", "truncate",
];
/// Keywords and type names that precede a parenthesis without being a function call.
const PAREN_KEYWORDS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bit",
    "by",
    "case",
    "cast",
    "char",
    "character",
    "collate",
    "decimal",
    "distinct",
    "else",
    "except",
    "exists",
    "extract",
    "filter",
    "float",
    "from",
    "group",
    "having",
    "ilike",
    "in",
    "intersect",
    "interval",
    "is",
    "join",
    "lateral",
    "like",
    "limit",
    "materialized",
    "not",
    "numeric",
    "offset",
    "on",
    "or",
    "order",
    "over",
    "overlay",
    "partition",
    "position",
    "precision",
    "recursive",
    "row",
    "rows",
    "select",
    "similar",
    "some",
    "substring",
    "then",
    "time",
    "timestamp",
    "trim",
    "union",
    "using",
    "values",
    "varchar",
    "when",
    "where",
    "with",
    "within",
    "zone",
];
/// Built-in functions without side effects that reads commonly call (anything else, or anything
/// schema-qualified or quoted, could be a function that writes).
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_remove",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_setting",
    "date_bin",
    "date_part",
    "date_trunc",
    "dense_rank",
    "every",
    "exp",
    "first_value",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "isfinite",
    "json_agg",
    "json_array_elements",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_object_agg",
    "jsonb_set",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_sleep",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_replace",
    "replace",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "strpos",
    "sum",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trunc",
    "unnest",
    "upper",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "width_bucket",
];

/// Whether `body` is a plain read (see the module docs). Conservative: a statement it cannot vouch for is not one
/// (it then simply runs read-write, in two round trips).
fn plain_read(body: &[Tok]) -> bool {
    if !body
        .first()
        .is_some_and(|t| t.is_word("select") || t.is_word("values") || t.is_word("table") || t.is_word("with"))
    {
        return false;
    }
    body.iter().enumerate().all(|(i, t)| match t {
        Tok::Word(w) if WRITE_WORDS.contains(&w.as_str()) => false,
        Tok::Word(w) if body.get(i + 1) == Some(&Tok::Punct(b'(')) => {
            let qualified = i > 0 && body[i - 1] == Tok::Punct(b'.');
            !qualified && (PAREN_KEYWORDS.contains(&w.as_str()) || PURE_FUNCTIONS.contains(&w.as_str()))
        }
        Tok::Quoted(_) => body.get(i + 1) != Some(&Tok::Punct(b'(')),
        _ => true,
    })
}

/// The top-level arguments of a call whose `(` was just consumed, up to the matching `)`.
fn arguments(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct(b'(' | b'[') => depth += 1,
            Tok::Punct(b')' | b']') if depth > 0 => depth -= 1,
            Tok::Punct(b')') => {
                args.push(&toks[start..i]);
                return args;
            }
            Tok::Punct(b',') if depth == 0 => {
                args.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(&toks[start..]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised() {
        for sql in [
            "commit",
            "  CoMmIt and chain",
            "/* a /* nested */ comment */ ROLLBACK",
            "-- c\nend",
            "abort",
            "begin read write",
            "START TRANSACTION",
            "prepare transaction 'x'",
        ] {
            assert!(transaction_control(sql).is_some(), "{sql}");
        }
        for sql in [
            "select 1",
            "prepare p as select 1",
            "select 'commit'",
            "committed",
            "/* commit */ select 1",
            "with x as (select 1) select * from x",
            "",
            "/* unterminated",
            "\"commit\"",
        ] {
            assert_eq!(transaction_control(sql), None, "{sql}");
        }
    }

    fn refused(sql: &str, ro: bool) -> bool {
        check(sql, ro).is_err()
    }

    #[test]
    fn session_changes_are_refused() {
        for sql in [
            "set role app",
            "SET search_path = x",
            "/* c */ set\n TIME ZONE 'UTC'",
            "set session search_path to x",
            "set session characteristics as transaction isolation level serializable",
            "set session authorization app",
            "reset all",
            "RESET search_path",
            "discard temp",
            "prepare p as select 1",
            "execute p",
            "deallocate all",
            "listen ch",
            "unlisten *",
            "load 'auto_explain'",
            "copy t from stdin",
            "COPY (select 1) TO STDOUT",
            "create temp table t (x int)",
            "create temporary table t (x int) on commit delete rows",
            "CREATE GLOBAL TEMPORARY TABLE t (x int)",
            "create temp view v as select 1",
            "create table pg_temp.t (x int)",
            "create function pg_temp.f() returns int language sql as 'select 1'",
            "select 1 into temp t",
            "select 1 into pg_temp.t",
            "select pg_advisory_lock(1)",
            "select pg_catalog.pg_try_advisory_lock_shared(1, 2)",
            "select \"pg_advisory_lock\"(1)",
            "select set_config('search_path', 'x', false)",
            "select set_config('search_path', 'x', $1)",
            "select set_config('a.b', 'x')",
            "explain analyze select pg_advisory_lock(1)",
            "explain (analyze, verbose) create temp table t as select 1",
        ] {
            assert!(refused(sql, false), "{sql}");
        }
        for sql in [
            "select 1",
            "set local search_path = x",
            "SET LOCAL ROLE app",
            "set transaction isolation level serializable",
            "set constraints all deferred",
            "select 'set role x', $$reset all$$, $f$ pg_advisory_lock(1) $f$",
            "select 1 -- set role x",
            "/* copy */ select 1",
            "create temp table t (x int) on commit drop",
            "CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1",
            "create table t (x int)",
            "select pg_advisory_xact_lock(1)",
            "select set_config('search_path', 'x', true)",
            "select set_config('search_path', 'x', 'on')",
            "select pg_advisory_lock_count",
            "insert into t (set_x) values ($1)",
            "notify ch",
            "select e'it''s \\' set role x' as s",
            "select copy from t",
            "create function f() returns void language plpgsql as $$ begin perform pg_advisory_lock(1); end $$",
        ] {
            assert!(!refused(sql, false), "{sql}");
        }
        let opaque = Effect {
            opaque: true,
            plain_read: false,
        };
        assert_eq!(check("do $$ begin null; end $$", false), Ok(opaque));
        assert_eq!(
            check("call p()", false),
            Ok(Effect {
                opaque: true,
                plain_read: false
            })
        );
        assert_eq!(
            check("select 1", false),
            Ok(Effect {
                opaque: false,
                plain_read: true
            })
        );
    }

    #[test]
    fn plain_reads_are_recognised_conservatively() {
        let read = |sql: &str| check(sql, false).is_ok_and(|e| e.plain_read);
        for sql in [
            "select 1",
            "SELECT market, count(*) FROM candles WHERE market = any($1) AND ts >= $2::timestamptz GROUP BY 1",
            "with x as (select * from t) select coalesce(max(a), 0)::numeric(10,2) from x",
            "values (1), (2)",
            "table candles",
            "select 'insert into t values (1)' as s -- update\n",
            "select pg_sleep(0.1)",
            "explain analyze select 1",
            "select * from t where exists (select 1 from u where u.id = t.id) order by a limit 10",
        ] {
            assert!(read(sql), "{sql}");
        }
        for sql in [
            "insert into t values (1)",
            "with d as (delete from t returning *) select * from d",
            "select * from t for update",
            "select * from t for key share",
            "select 1 into t2",
            "select nextval('s')",
            "select my_fn($1)",
            "select public.count(1)",
            "select \"count\"(1)",
            "explain analyze insert into t values (1)",
            "show search_path",
            "update t set a = 1",
        ] {
            assert!(!read(sql), "{sql}");
        }
    }

    #[test]
    fn read_only_refusals() {
        for sql in [
            "select lo_from_bytea(0, '\\x00'::bytea)",
            "select lo_put(1, 0, 'x')",
            "select pg_catalog.lo_unlink(1)",
            "select lowrite(0, 'x')",
            "set role app",
            "set local role app",
            "set session authorization app",
            "set local session authorization app",
            "select set_config('role', 'app', true)",
            "select set_config($1, 'app', true)",
            "copy t to stdout",
            "do $$ begin null; end $$",
        ] {
            assert!(matches!(check(sql, true), Err(Refusal::ReadOnly(_))), "{sql}");
        }
        assert!(matches!(check("set role app", false), Err(Refusal::NotSupported(_))));
        assert!(check("select lo_get(1)", true).is_ok());
        assert!(check("select lo_put(1, 0, 'x')", false).is_ok());
        assert!(check("select set_config('search_path', 'x', true)", true).is_ok());
    }
}
