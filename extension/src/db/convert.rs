//! JSON <-> PostgreSQL values: every parameter either reaches PostgreSQL exactly as PostgreSQL itself reads it, or
//! is refused with `invalid_param` naming `$n` and the type; every result is exact or PostgreSQL's own text for it.
//!
//! Parameters arrive as raw JSON text ([`RawValue`]: the caller's own digits, never an `f64` in between) and are
//! encoded for the type PostgreSQL inferred for each `$n`:
//! - **binary** only where JSON is exact: `bool` from `true`/`false`; `int2`/`int4`/`int8`/`oid` from a JSON number
//!   whose exact value is an integer in range (else refused here, e.g. `-9223372036854775809` for `int8`);
//!   `float4`/`float8` from a JSON number that is finite and not flushed to zero in that type (else refused, e.g.
//!   `3.5e38` for `float4`, as `float4in` itself refuses it).
//! - **text format** for everything else, so PostgreSQL's own input function defines the semantics exactly as in
//!   psql (`'infinity'::date`, `'24:00:00'::time`, `'2024-03-01T01:00:00+09:00'::date` = 2024-03-01, numeric with
//!   every digit, enums, domains, ranges, user types): a JSON string is sent as its content, a number as its literal
//!   text, a boolean as `true`/`false`; JSON arrays for array types become an array literal (`{...}`, elements
//!   quoted); `json`/`jsonb` get the raw JSON text of the value, so numbers keep their digits. PostgreSQL's input
//!   errors come back on Bind with the parameter in the error's context, and `exec` turns them into the same 400.
//!
//! Results come in binary (tokio-postgres asks for binary results on every column) and are written straight into
//! the response's JSON text ([`write_value`]), without a `serde_json::Value` per cell. Decoding from the binary form
//! is exact for every type handled here: dates and timestamps over PostgreSQL's whole range (4713 BC to 294276/
//! 5874897 AD, `infinity`), `24:00:00`, intervals (PostgreSQL's `iso_8601` interval style), numeric with every digit
//! (and `NaN`/`Infinity`, as strings), floats as the shortest text that reads back to the same value (`NaN`,
//! `Infinity`, `-Infinity` as strings), `json`/`jsonb` as the text PostgreSQL sent (every digit kept). Types not
//! handled are refused with a hint to cast them (`col::text`): reading them as text would need per-column result
//! formats, which tokio-postgres does not offer.

use serde::de::{Deserializer, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::error::Error as StdError;
use std::io::Write as _;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};

/// Built-in type OIDs we convert (pg_type.dat).
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const CHAR: u32 = 18;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const UNKNOWN: u32 = 705;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const INTERVAL: u32 = 1186;
    pub(super) const TIMETZ: u32 = 1266;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;
    pub(super) const VOID: u32 = 2278;
}

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;

/// A parameter validated and encoded, in the format PostgreSQL is to read it in.
#[derive(Debug)]
pub enum Encoded {
    /// SQL NULL.
    Null,
    /// PostgreSQL's binary form (exact JSON kinds only).
    Binary(Vec<u8>),
    /// Text for the type's input function.
    Text(Vec<u8>),
}

impl ToSql for Encoded {
    fn to_sql(&self, _ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Binary(b) | Self::Text(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        match self {
            Self::Text(_) => tokio_postgres::types::Format::Text,
            _ => tokio_postgres::types::Format::Binary,
        }
    }
    tokio_postgres::types::to_sql_checked!();
}

/// The name we show for a type: PostgreSQL's, with arrays as `elem[]` instead of `_elem`.
#[must_use]
pub fn type_name(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(elem) => format!("{}[]", elem.name()),
        _ => ty.name().to_owned(),
    }
}

/// "a string", "an array", ...: how error messages name the JSON type a caller sent (from its first byte).
#[must_use]
pub fn kind_of_raw(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// A JSON string's content, borrowed from the request when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// One JSON value, classified without building a tree.
enum Json<'a> {
    Null,
    Bool(bool),
    /// The number's literal, exactly as the caller wrote it.
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<&'a RawValue>),
    /// Objects are only ever passed on as raw JSON text.
    Object,
}

fn classify(raw: &RawValue) -> Result<Json<'_>, String> {
    let text = raw.get();
    let bad = |e: serde_json::Error| format!("unreadable JSON: {e}");
    Ok(match text.as_bytes().first() {
        Some(b'n') => Json::Null,
        Some(b't') => Json::Bool(true),
        Some(b'f') => Json::Bool(false),
        Some(b'"') => Json::String(serde_json::from_str::<Str>(text).map_err(bad)?.0),
        Some(b'[') => Json::Array(serde_json::from_str(text).map_err(bad)?),
        Some(b'{') => Json::Object,
        _ => Json::Number(text),
    })
}

/// The type a domain stands for (domains are read and written as their base type).
fn base(ty: &Type) -> &Type {
    match ty.kind() {
        Kind::Domain(b) => base(b),
        _ => ty,
    }
}

/// Converts one JSON parameter for the type PostgreSQL inferred for it. The error text completes
/// `cannot bind $n to <type>: ...`.
///
/// # Errors
/// Why the value does not fit the type.
pub fn encode_param(raw: &RawValue, ty: &Type) -> Result<Encoded, String> {
    let ty = base(ty);
    let value = classify(raw)?;
    if matches!(ty.oid(), oid::JSON | oid::JSONB) {
        // The JSON text itself is the value: numbers keep every digit (jsonb's parser reads them as numeric).
        return Ok(match value {
            Json::Null => Encoded::Null,
            _ => Encoded::Text(raw.get().as_bytes().to_vec()),
        });
    }
    let text = |s: &str| Ok(Encoded::Text(s.as_bytes().to_vec()));
    match value {
        Json::Null => Ok(Encoded::Null),
        Json::String(s) => {
            no_nul(&s)?;
            text(&s)
        }
        Json::Array(items) => match ty.kind() {
            Kind::Array(elem) => {
                if let Some(binary) = binary_array(&items, elem)? {
                    return Ok(Encoded::Binary(binary));
                }
                let mut out = Vec::with_capacity(raw.get().len());
                array_literal(&items, elem, 1, &mut out)?;
                Ok(Encoded::Text(out))
            }
            _ => Err(format!(
                "expected {}, got an array (pass JSON arrays to an array or json/jsonb parameter, e.g. $n::text[] or $n::jsonb)",
                expected(ty)
            )),
        },
        Json::Object => Err(format!(
            "expected {}, got an object (pass JSON objects to a json/jsonb parameter, e.g. $n::jsonb)",
            expected(ty)
        )),
        Json::Bool(b) if ty.oid() == oid::BOOL => Ok(Encoded::Binary(vec![u8::from(b)])),
        // JSON has booleans: a number is a mistake, not a spelling of one (`"t"` or `"yes"` still go to boolin).
        Json::Number(n) if ty.oid() == oid::BOOL => Err(format!("expected true or false, got the number {n}")),
        Json::Bool(b) => text(if b { "true" } else { "false" }),
        Json::Number(n) => match ty.oid() {
            oid::INT2 => Ok(Encoded::Binary(int_in(n, i64::from(i16::MIN), i64::from(i16::MAX), "int2")?.to_be_bytes()[6..].to_vec())),
            oid::INT4 => Ok(Encoded::Binary(int_in(n, i64::from(i32::MIN), i64::from(i32::MAX), "int4")?.to_be_bytes()[4..].to_vec())),
            oid::INT8 => Ok(Encoded::Binary(int_in(n, i64::MIN, i64::MAX, "int8")?.to_be_bytes().to_vec())),
            oid::OID => Ok(Encoded::Binary(int_in(n, 0, i64::from(u32::MAX), "oid")?.to_be_bytes()[4..].to_vec())),
            oid::FLOAT4 => Ok(Encoded::Binary(float4_in(n)?.to_be_bytes().to_vec())),
            oid::FLOAT8 => Ok(Encoded::Binary(float8_in(n)?.to_be_bytes().to_vec())),
            _ if matches!(ty.kind(), Kind::Array(_)) => Err(format!("expected a JSON array, got the number {n}")),
            _ => text(n),
        },
    }
}

/// The binary form of a one-dimensional array whose elements JSON carries exactly: integers, floats, booleans or
/// strings for text (the collector's `unnest` columns). Sending it binary spares PostgreSQL parsing an array
/// literal element by element (bulk upserts were ~10 % slower with literals). `None`: not such an array (nested,
/// another element type, a string where a number goes...), so the literal path decides, with its messages.
fn binary_array(items: &[&RawValue], elem: &Type) -> Result<Option<Vec<u8>>, String> {
    let oid_ = elem.oid();
    let numeric = matches!(oid_, oid::INT2 | oid::INT4 | oid::INT8 | oid::FLOAT4 | oid::FLOAT8);
    if !(numeric || matches!(oid_, oid::BOOL | oid::TEXT | oid::VARCHAR)) {
        return Ok(None);
    }
    // Header: 1 dimension, the has-null flag (patched below), the element type, then length and lower bound 1.
    let mut out = Vec::with_capacity(20 + items.len() * 12);
    let count = i32::try_from(items.len()).map_err(|_| "too many array elements".to_string())?;
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&oid_.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    let mut has_null = false;
    for (i, item) in items.iter().enumerate() {
        let at = |e: String| format!("element [{i}]: {e}");
        let bytes: Vec<u8> = match (classify(item).map_err(at)?, oid_) {
            (Json::Null, _) => {
                has_null = true;
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            (Json::Number(n), oid::INT2) => int_in(n, i64::from(i16::MIN), i64::from(i16::MAX), "int2")
                .map_err(at)?
                .to_be_bytes()[6..]
                .to_vec(),
            (Json::Number(n), oid::INT4) => int_in(n, i64::from(i32::MIN), i64::from(i32::MAX), "int4")
                .map_err(at)?
                .to_be_bytes()[4..]
                .to_vec(),
            (Json::Number(n), oid::INT8) => int_in(n, i64::MIN, i64::MAX, "int8")
                .map_err(at)?
                .to_be_bytes()
                .to_vec(),
            (Json::Number(n), oid::FLOAT4) => float4_in(n).map_err(at)?.to_be_bytes().to_vec(),
            (Json::Number(n), oid::FLOAT8) => float8_in(n).map_err(at)?.to_be_bytes().to_vec(),
            (Json::Bool(b), oid::BOOL) => vec![u8::from(b)],
            (Json::String(s), oid::TEXT | oid::VARCHAR) => {
                no_nul(&s).map_err(at)?;
                s.into_owned().into_bytes()
            }
            _ => return Ok(None),
        };
        let len = i32::try_from(bytes.len()).map_err(|_| at("element too large".into()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    if has_null {
        out[4..8].copy_from_slice(&1i32.to_be_bytes());
    }
    Ok(Some(out))
}

/// What a parameter of `ty` takes, for messages.
fn expected(ty: &Type) -> &'static str {
    match ty.kind() {
        Kind::Array(_) => "a JSON array",
        _ => match ty.oid() {
            oid::BOOL => "true or false",
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => "an integer",
            oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => "a number",
            _ => "a string",
        },
    }
}

/// An array literal PostgreSQL's `array_in` reads with the element type's own input function: every element
/// quoted (backslash-escaped), NULL bare, nested JSON arrays as further dimensions (except for json/jsonb
/// elements, where a JSON array is one element). Integer and float elements are checked as scalars are, so an
/// array refuses the same values a scalar parameter does, naming the element.
fn array_literal(items: &[&RawValue], elem: &Type, depth: usize, out: &mut Vec<u8>) -> Result<(), String> {
    // PostgreSQL's MAXDIM; also keeps a hostile nesting from recursing without bound.
    if depth > 6 {
        return Err("arrays have at most 6 dimensions".into());
    }
    let elem_base = base(elem);
    let json_elem = matches!(elem_base.oid(), oid::JSON | oid::JSONB);
    out.push(b'{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let at = |e: String| format!("element [{i}]: {e}");
        if json_elem {
            if item.get() == "null" {
                out.extend_from_slice(b"NULL");
            } else {
                quoted(item.get(), out);
            }
            continue;
        }
        match classify(item).map_err(at)? {
            Json::Null => out.extend_from_slice(b"NULL"),
            Json::String(s) => {
                no_nul(&s).map_err(at)?;
                quoted(&s, out);
            }
            Json::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Json::Array(inner) => array_literal(&inner, elem, depth + 1, out).map_err(at)?,
            Json::Object => {
                return Err(at(
                    "expected a scalar, got an object (use a jsonb[] parameter for objects)".into(),
                ))
            }
            Json::Number(n) => match elem_base.oid() {
                oid::INT2 => write_num(
                    out,
                    int_in(n, i64::from(i16::MIN), i64::from(i16::MAX), "int2").map_err(at)?,
                ),
                oid::INT4 => write_num(
                    out,
                    int_in(n, i64::from(i32::MIN), i64::from(i32::MAX), "int4").map_err(at)?,
                ),
                oid::INT8 => write_num(out, int_in(n, i64::MIN, i64::MAX, "int8").map_err(at)?),
                oid::OID => write_num(out, int_in(n, 0, i64::from(u32::MAX), "oid").map_err(at)?),
                oid::FLOAT4 => {
                    float4_in(n).map_err(at)?;
                    out.extend_from_slice(n.as_bytes());
                }
                oid::FLOAT8 => {
                    float8_in(n).map_err(at)?;
                    out.extend_from_slice(n.as_bytes());
                }
                _ => quoted(n, out),
            },
        }
    }
    out.push(b'}');
    Ok(())
}

/// PostgreSQL's text values cannot hold NUL (its input functions take C strings): refused here, by name.
fn no_nul(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err("PostgreSQL text cannot contain the NUL character (\\u0000)".into());
    }
    Ok(())
}

fn write_num(out: &mut Vec<u8>, n: i64) {
    let _ = write!(out, "{n}");
}

fn quoted(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The parts of a JSON number literal: sign, digits before and after the point, exponent (`None` if it does not
/// fit an i64: then only the mantissa's zeroness matters).
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exp: Option<i64>,
}

fn decimal(n: &str) -> Option<Decimal<'_>> {
    let (negative, rest) = match n.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, n),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].trim_start_matches('+').parse::<i64>().ok()),
        None => (rest, Some(0)),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Decimal {
        negative,
        int,
        frac,
        exp,
    })
}

/// A JSON number as an integer in `[min, max]`, exactly: `3`, `3.0` and `3e0` are 3; `1.5` and anything out of
/// range are refused (never rounded, never clamped).
fn int_in(n: &str, min: i64, max: i64, ty: &str) -> Result<i64, String> {
    let d = decimal(n).ok_or_else(|| format!("{n} is not a number"))?;
    let digits = || d.int.bytes().chain(d.frac.bytes());
    if digits().all(|b| b == b'0') {
        return Ok(0);
    }
    let out_of_range = || format!("{n} is out of range for {ty}");
    let not_integer = || format!("{n} is not an integer");
    let exp = d.exp.ok_or_else(|| {
        if n.contains("e-") || n.contains("E-") {
            not_integer()
        } else {
            out_of_range()
        }
    })?;
    // The point sits after `point` of the mantissa's digits.
    let len = d.int.len() + d.frac.len();
    let point = i64::try_from(d.int.len()).unwrap_or(i64::MAX).saturating_add(exp);
    let mut value: i128 = 0;
    for (i, b) in digits().enumerate() {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        if i >= point {
            if b != b'0' {
                return Err(not_integer());
            }
            continue;
        }
        value = value * 10 + i128::from(b - b'0');
        if value > i128::from(u64::MAX) {
            return Err(out_of_range());
        }
    }
    // Trailing zeros implied by a positive exponent beyond the digits.
    let zeros = point.saturating_sub(i64::try_from(len).unwrap_or(i64::MAX));
    for _ in 0..zeros.max(0) {
        value *= 10;
        if value > i128::from(u64::MAX) {
            return Err(out_of_range());
        }
    }
    if d.negative {
        value = -value;
    }
    i64::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(out_of_range)
}

/// Whether a JSON number's mantissa has a nonzero digit (a nonzero literal that parses to 0.0 underflowed).
fn nonzero(n: &str) -> bool {
    n.bytes()
        .take_while(|b| *b != b'e' && *b != b'E')
        .any(|b| (b'1'..=b'9').contains(&b))
}

/// A JSON number as float8: Rust's parse is correctly rounded, as PostgreSQL's `strtod` is, so the bits are the
/// ones `float8in` would produce; what `float8in` refuses (overflow, underflow to zero) is refused here.
fn float8_in(n: &str) -> Result<f64, String> {
    let f: f64 = n.parse().map_err(|_| format!("{n} is not a number"))?;
    if f.is_infinite() || (f == 0.0 && nonzero(n)) {
        return Err(format!("{n} is out of range for float8"));
    }
    Ok(f)
}

/// [`float8_in`] for float4, parsed straight to `f32` (no double rounding), as `float4in`'s `strtof`.
fn float4_in(n: &str) -> Result<f32, String> {
    let f: f32 = n.parse().map_err(|_| format!("{n} is not a number"))?;
    if f.is_infinite() || (f == 0.0 && nonzero(n)) {
        return Err(format!("{n} is out of range for float4"));
    }
    Ok(f)
}

/// One result cell: the raw binary value (`None` = NULL), whatever its type.
pub struct RawCell<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawCell<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(Some(raw)))
    }
    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(None))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("truncated value".into());
        }
        let mut b = [0u8; N];
        b.copy_from_slice(&self.0[..N]);
        self.0 = &self.0[N..];
        Ok(b)
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.take::<2>().map(i16::from_be_bytes)
    }
    fn u16(&mut self) -> Result<u16, String> {
        self.take::<2>().map(u16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.take::<4>().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take::<8>().map(i64::from_be_bytes)
    }
    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated value".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn utf8(raw: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(raw).map_err(|_| "invalid UTF-8 in text".into())
}

/// A float as the shortest JSON number that reads back to the same value (Rust's formatting is shortest
/// round-trip, like PostgreSQL's since 12), always with a point or an exponent; `NaN`/`Infinity`/`-Infinity` as PostgreSQL spells them, in strings.
fn write_float(out: &mut Vec<u8>, f: f64, shortest: impl std::fmt::Display + std::fmt::LowerExp) {
    if f.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" });
    } else if f != 0.0 && !(1e-5..1e16).contains(&f.abs()) {
        let _ = write!(out, "{shortest:e}");
    } else {
        let at = out.len();
        let _ = write!(out, "{shortest}");
        // `1.0`, not `1`: JSON parsers that keep integers and floats apart (Python's, serde_json's) see a float.
        if !out[at..].contains(&b'.') {
            out.extend_from_slice(b".0");
        }
    }
}

/// Writes one non-NULL binary value of type `ty` as JSON text.
///
/// # Errors
/// The type has no JSON conversion (the caller names the column and suggests a cast), or the value is malformed.
/// Whether [`write_value`] has a JSON conversion for `ty` (known before anything runs, from the statement's
/// columns).
#[must_use]
pub fn writable(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Domain(base) => writable(base),
        Kind::Enum(_) => true,
        Kind::Array(elem) => writable(elem),
        _ => matches!(
            ty.oid(),
            oid::VOID
                | oid::BOOL
                | oid::INT2
                | oid::INT4
                | oid::INT8
                | oid::OID
                | oid::FLOAT4
                | oid::FLOAT8
                | oid::NUMERIC
                | oid::TEXT
                | oid::VARCHAR
                | oid::BPCHAR
                | oid::NAME
                | oid::UNKNOWN
                | oid::CHAR
                | oid::JSON
                | oid::JSONB
                | oid::TIMESTAMP
                | oid::TIMESTAMPTZ
                | oid::DATE
                | oid::TIME
                | oid::TIMETZ
                | oid::INTERVAL
                | oid::UUID
                | oid::BYTEA
        ),
    }
}

pub fn write_value(ty: &Type, raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    match ty.kind() {
        Kind::Domain(base) => return write_value(base, raw, out),
        Kind::Enum(_) => {
            json_str(out, utf8(raw)?);
            return Ok(());
        }
        Kind::Array(elem) => return write_array(elem, raw, out),
        _ => {}
    }
    let mut r = Reader(raw);
    match ty.oid() {
        oid::VOID => out.extend_from_slice(b"null"),
        oid::BOOL => out.extend_from_slice(if raw.first().is_some_and(|b| *b != 0) {
            b"true"
        } else {
            b"false"
        }),
        oid::INT2 => write_num(out, i64::from(r.i16()?)),
        oid::INT4 => write_num(out, i64::from(r.i32()?)),
        oid::INT8 => write_num(out, r.i64()?),
        oid::OID => write_num(out, i64::from(r.take::<4>().map(u32::from_be_bytes)?)),
        oid::FLOAT4 => {
            let f = r.take::<4>().map(f32::from_be_bytes)?;
            write_float(out, f64::from(f), f);
        }
        oid::FLOAT8 => {
            let f = r.take::<8>().map(f64::from_be_bytes)?;
            write_float(out, f, f);
        }
        oid::NUMERIC => json_str(out, &decode_numeric(raw)?),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::CHAR => json_str(out, utf8(raw)?),
        // The server's text of the value, as is: every digit kept (`serde_json::Value` would hold numbers as f64).
        oid::JSON => write_raw_json(utf8(raw)?, out)?,
        oid::JSONB => match raw.split_first() {
            Some((1, text)) => write_raw_json(utf8(text)?, out)?,
            _ => return Err("unknown jsonb binary format version".into()),
        },
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let s = format_timestamp(r.i64()?, ty.oid() == oid::TIMESTAMPTZ);
            json_str(out, &s);
        }
        oid::DATE => json_str(out, &format_date(r.i32()?)),
        oid::TIME => {
            let mut s = String::new();
            push_time(&mut s, r.i64()?);
            json_str(out, &s);
        }
        oid::TIMETZ => {
            let mut s = String::new();
            push_time(&mut s, r.i64()?);
            // PostgreSQL stores the zone as seconds *west* of UTC.
            push_offset(&mut s, -i64::from(r.i32()?));
            json_str(out, &s);
        }
        oid::INTERVAL => {
            let us = r.i64()?;
            let days = r.i32()?;
            let months = r.i32()?;
            json_str(out, &format_interval(months, days, us));
        }
        oid::UUID => {
            let b = r.take::<16>()?;
            let mut s = String::with_capacity(38);
            s.push('"');
            for (i, x) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push('-');
                }
                let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{x:02x}"));
            }
            s.push('"');
            out.extend_from_slice(s.as_bytes());
        }
        oid::BYTEA => {
            out.extend_from_slice(b"\"\\\\x");
            for x in raw {
                let _ = write!(out, "{x:02x}");
            }
            out.push(b'"');
        }
        _ => return Err(format!("type {} has no JSON conversion", type_name(ty))),
    }
    Ok(())
}

/// Copies JSON text from the server into the response after checking it is one JSON value (so a surprise can
/// never break the response's own JSON).
fn write_raw_json(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let v: &RawValue = serde_json::from_str(text).map_err(|e| format!("invalid json from server: {e}"))?;
    out.extend_from_slice(v.get().as_bytes());
    Ok(())
}

/// Proleptic Gregorian (year, month, day) of a day count from 1970-01-01, for any i64 (H. Hinnant's algorithm),
/// as PostgreSQL's `j2date`; astronomical years (0 = 1 BC).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` as PostgreSQL's ISO style prints it (at least 4 year digits, more past 9999); returns whether the
/// year is BC (PostgreSQL then prints `1 - year` and appends ` BC` to the whole value).
fn push_date(s: &mut String, days_since_2000: i64) -> bool {
    let (y, m, d) = civil_from_days(days_since_2000 + PG_EPOCH_UNIX_DAYS);
    let bc = y <= 0;
    let y = if bc { 1 - y } else { y };
    let _ = std::fmt::Write::write_fmt(s, format_args!("{y:04}-{m:02}-{d:02}"));
    bc
}

/// A `date` as PostgreSQL prints it (also its text output, for `/sql`).
pub(super) fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let mut s = String::with_capacity(13);
            if push_date(&mut s, i64::from(d)) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// `HH:MM:SS[.ffffff]`, trailing zeros of the fraction dropped, as PostgreSQL prints (`24:00:00` included).
pub(super) fn push_time(s: &mut String, us: i64) {
    let (h, rem) = (us / 3_600_000_000, us % 3_600_000_000);
    let (m, rem) = (rem / 60_000_000, rem % 60_000_000);
    let _ = std::fmt::Write::write_fmt(s, format_args!("{h:02}:{m:02}:{:02}", rem / 1_000_000));
    push_fraction(s, rem % 1_000_000);
}

pub(super) fn push_fraction(s: &mut String, micros: i64) {
    if micros != 0 {
        let f = format!(".{:06}", micros.abs());
        s.push_str(f.trim_end_matches('0'));
    }
}

/// `+HH:MM` (`+HH:MM:SS` when the offset has seconds), from seconds east of UTC.
fn push_offset(s: &mut String, east: i64) {
    let sign = if east < 0 { '-' } else { '+' };
    let a = east.abs();
    let _ = std::fmt::Write::write_fmt(s, format_args!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60));
    if a % 60 != 0 {
        let _ = std::fmt::Write::write_fmt(s, format_args!(":{:02}", a % 60));
    }
}

/// ISO 8601 with `T`, at microsecond precision over PostgreSQL's whole range: `2024-01-31T09:00:00.5`,
/// timestamptz in UTC with `+00:00`; BC years as PostgreSQL writes them (`4714-11-24T00:00:00 BC`), which its input
/// reads back; `infinity`/`-infinity`.
fn format_timestamp(us: i64, tz: bool) -> String {
    format_timestamp_with(us, 'T', if tz { "+00:00" } else { "" })
}

/// A timestamp over PostgreSQL's whole range with `sep` between date and time and `zone` after the time:
/// [`format_timestamp`]'s ISO 8601 (`'T'`, `+00:00`) or PostgreSQL's own text output (`' '`, `+00`, for `/sql`).
pub(super) fn format_timestamp_with(us: i64, sep: char, zone: &str) -> String {
    match us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let mut s = String::with_capacity(32);
    let bc = push_date(&mut s, us.div_euclid(USECS_PER_DAY));
    s.push(sep);
    push_time(&mut s, us.rem_euclid(USECS_PER_DAY));
    s.push_str(zone);
    if bc {
        s.push_str(" BC");
    }
    s
}

/// PostgreSQL's `iso_8601` interval style, field for field (`P1Y2M3DT4H5M6.5S`, each field with its own sign,
/// `PT0S` for zero), which its input reads back exactly; `infinity`/`-infinity` (PostgreSQL 17).
fn format_interval(months: i32, days: i32, micros: i64) -> String {
    if (months, days, micros) == (i32::MAX, i32::MAX, i64::MAX) {
        return "infinity".into();
    }
    if (months, days, micros) == (i32::MIN, i32::MIN, i64::MIN) {
        return "-infinity".into();
    }
    if (months, days, micros) == (0, 0, 0) {
        return "PT0S".into();
    }
    let mut s = String::from("P");
    let part = |s: &mut String, v: i64, unit: char| {
        if v != 0 {
            let _ = std::fmt::Write::write_fmt(s, format_args!("{v}{unit}"));
        }
    };
    part(&mut s, i64::from(months / 12), 'Y');
    part(&mut s, i64::from(months % 12), 'M');
    part(&mut s, i64::from(days), 'D');
    if micros != 0 {
        s.push('T');
        let (h, rem) = (micros / 3_600_000_000, micros % 3_600_000_000);
        let (m, rem) = (rem / 60_000_000, rem % 60_000_000);
        part(&mut s, h, 'H');
        part(&mut s, m, 'M');
        if rem != 0 {
            if rem < 0 {
                s.push('-');
            }
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{}", (rem / 1_000_000).abs()));
            push_fraction(&mut s, rem % 1_000_000);
            s.push('S');
        }
    }
    s
}

/// Decodes PostgreSQL's binary numeric into its exact decimal text (`dscale` decimals, like PostgreSQL prints).
fn decode_numeric(raw: &[u8]) -> Result<String, String> {
    let mut r = Reader(raw);
    let ndigits = usize::try_from(r.i16()?).map_err(|_| "bad numeric".to_owned())?;
    let weight = i32::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = usize::from(r.u16()?);
    let digits: Vec<i16> = (0..ndigits).map(|_| r.i16()).collect::<Result<_, _>>()?;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digit_at = |idx: i32| -> i16 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut s = String::new();
    if sign == 0x4000 && !digits.is_empty() {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                s.push_str(&digit_at(i).to_string());
            } else {
                s.push_str(&format!("{:04}", digit_at(i)));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut idx = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit_at(idx)));
            idx += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

/// Binary array: ndim, has-null flag, element oid, (length, lower bound) per dimension, then length-prefixed
/// elements in row-major order. Multi-dimensional arrays come out as nested JSON arrays.
fn write_array(elem: &Type, raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut r = Reader(raw);
    let ndim = usize::try_from(r.i32()?).map_err(|_| "bad array".to_owned())?;
    let _has_null = r.i32()?;
    let _elem_oid = r.i32()?;
    if ndim == 0 {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    if ndim > 6 {
        return Err("bad array dimensions".into());
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(r.i32()?).map_err(|_| "bad array".to_owned())?);
        let _lower = r.i32()?;
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| "bad array length".to_owned())?;
    // Every element takes at least its 4-byte length.
    if total > raw.len() / 4 {
        return Err("bad array length".into());
    }
    write_dims(elem, &dims, &mut r, out)
}

fn write_dims(elem: &Type, dims: &[usize], r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    out.push(b'[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(b',');
        }
        if dims.len() > 1 {
            write_dims(elem, &dims[1..], r, out)?;
            continue;
        }
        let len = r.i32()?;
        if len < 0 {
            out.extend_from_slice(b"null");
        } else {
            let bytes = r.bytes(usize::try_from(len).map_err(|_| "bad array".to_owned())?)?;
            write_value(elem, bytes, out)?;
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `writable` answers exactly where `write_value` has a conversion (every built-in type, arrays included).
    #[test]
    fn writable_matches_write_value() {
        let mut checked = 0;
        for oid in 0..10_000 {
            let Some(ty) = Type::from_oid(oid) else { continue };
            let scalar = match ty.kind() {
                Kind::Array(elem) => elem.clone(),
                _ => ty.clone(),
            };
            let mut out = Vec::new();
            let converts =
                !write_value(&scalar, &[0u8; 64], &mut out).is_err_and(|e| e.contains("has no JSON conversion"));
            assert_eq!(writable(&ty), converts, "{}", ty.name());
            checked += 1;
        }
        assert!(checked > 150, "{checked}");
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn enc(json: &str, ty: &Type) -> Result<Encoded, String> {
        encode_param(&raw(json), ty)
    }

    fn binary(json: &str, ty: &Type) -> Vec<u8> {
        match enc(json, ty).unwrap() {
            Encoded::Binary(b) => b,
            other => panic!("{json} for {ty}: {other:?}"),
        }
    }

    fn text(json: &str, ty: &Type) -> String {
        match enc(json, ty).unwrap() {
            Encoded::Text(b) => String::from_utf8(b).unwrap(),
            other => panic!("{json} for {ty}: {other:?}"),
        }
    }

    fn out(ty: &Type, raw: &[u8]) -> String {
        let mut o = Vec::new();
        write_value(ty, raw, &mut o).unwrap();
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn integers_are_exact_or_refused() {
        assert_eq!(binary("5", &Type::INT4), 5i32.to_be_bytes());
        assert_eq!(binary("-5", &Type::INT2), (-5i16).to_be_bytes());
        assert_eq!(binary("3.0", &Type::INT2), 3i16.to_be_bytes());
        assert_eq!(binary("1.2e3", &Type::INT8), 1200i64.to_be_bytes());
        assert_eq!(binary("-9223372036854775808", &Type::INT8), i64::MIN.to_be_bytes());
        assert_eq!(binary("4294967295", &Type::OID), u32::MAX.to_be_bytes());
        for (n, ty, why) in [
            ("-9223372036854775809", &Type::INT8, "out of range for int8"),
            ("9223372036854775808", &Type::INT8, "out of range for int8"),
            ("18446744073709551616000", &Type::INT8, "out of range"),
            ("1e999999999999999999", &Type::INT8, "out of range"),
            ("70000", &Type::INT2, "out of range for int2"),
            ("2147483648", &Type::INT4, "out of range for int4"),
            ("-1", &Type::OID, "out of range for oid"),
            ("1.5", &Type::INT4, "not an integer"),
            ("1e-1", &Type::INT4, "not an integer"),
        ] {
            let e = enc(n, ty).unwrap_err();
            assert!(e.contains(why), "{n}: {e}");
        }
        // Strings go to PostgreSQL's own int8in.
        assert_eq!(text("\" 7 \"", &Type::INT8), " 7 ");
        assert_eq!(text("true", &Type::INT8), "true");
    }

    #[test]
    fn floats_are_exact_or_refused() {
        assert_eq!(binary("1.5", &Type::FLOAT4), 1.5f32.to_be_bytes());
        assert_eq!(binary("0.1", &Type::FLOAT4), 0.1f32.to_be_bytes());
        assert_eq!(binary("0.1", &Type::FLOAT8), 0.1f64.to_be_bytes());
        assert_eq!(
            binary("1e-45", &Type::FLOAT4),
            1e-45f32.to_be_bytes(),
            "denormals are kept, as float4in does"
        );
        assert!(enc("3.5e38", &Type::FLOAT4)
            .unwrap_err()
            .contains("out of range for float4"));
        assert!(enc("1e400", &Type::FLOAT8)
            .unwrap_err()
            .contains("out of range for float8"));
        assert!(enc("1e-400", &Type::FLOAT8).unwrap_err().contains("out of range"));
        assert_eq!(binary("0e-400", &Type::FLOAT8), 0f64.to_be_bytes());
        assert_eq!(text("\"NaN\"", &Type::FLOAT8), "NaN");
    }

    #[test]
    fn text_format_for_what_json_cannot_say_exactly() {
        assert_eq!(
            text("12345678901234567890.123456789", &Type::NUMERIC),
            "12345678901234567890.123456789"
        );
        assert_eq!(text("\"infinity\"", &Type::DATE), "infinity");
        assert_eq!(text("\"24:00:00\"", &Type::TIME), "24:00:00");
        assert_eq!(text("\"a\\\"b\"", &Type::TEXT), "a\"b");
        assert_eq!(text("12345678901234567890.5", &Type::TEXT), "12345678901234567890.5");
        assert_eq!(
            text(r#"{"n": 12345678901234567890.123456789}"#, &Type::JSONB),
            r#"{"n": 12345678901234567890.123456789}"#
        );
        assert_eq!(text("\"x\"", &Type::JSONB), "\"x\"");
        assert!(matches!(enc("null", &Type::JSONB).unwrap(), Encoded::Null));
        assert!(matches!(enc("null", &Type::INT4).unwrap(), Encoded::Null));
        assert_eq!(binary("true", &Type::BOOL), [1]);
        assert_eq!(text("\"t\"", &Type::BOOL), "t");
        assert!(enc("1", &Type::BOOL).unwrap_err().contains("true or false"));
        assert!(enc("\"a\\u0000b\"", &Type::TEXT).unwrap_err().contains("NUL"));
        assert!(enc("[\"a\\u0000b\"]", &Type::TEXT_ARRAY).unwrap_err().contains("NUL"));
        assert!(enc("{}", &Type::TEXT).unwrap_err().contains("json/jsonb"));
        assert!(enc("[1]", &Type::TEXT).unwrap_err().contains("array"));
        assert!(enc("1", &Type::INT4_ARRAY).is_err());
    }

    #[test]
    fn arrays_become_literals_checked_like_scalars() {
        // Nested arrays, and elements JSON does not carry exactly, go as literals for array_in.
        assert_eq!(text(r#"["a", 1]"#, &Type::TEXT_ARRAY), r#"{"a","1"}"#);
        assert_eq!(text("[[1, 2], [3, 4]]", &Type::INT4_ARRAY), "{{1,2},{3,4}}");
        assert_eq!(text(r#"[1, "2"]"#, &Type::INT8_ARRAY), "{1,\"2\"}");
        assert_eq!(
            text("[12345678901234567890.5]", &Type::NUMERIC_ARRAY),
            r#"{"12345678901234567890.5"}"#
        );
        assert_eq!(
            text(r#"[{"a": [1]}, [2], null, "s"]"#, &Type::JSONB_ARRAY),
            r#"{"{\"a\": [1]}","[2]",NULL,"\"s\""}"#
        );
        assert_eq!(text("\"{1,2}\"", &Type::INT4_ARRAY), "{1,2}");
        let e = enc("[1, 1.5]", &Type::INT4_ARRAY).unwrap_err();
        assert!(e.contains("element [1]") && e.contains("not an integer"), "{e}");
        assert!(enc("[3.5e38]", &Type::FLOAT4_ARRAY)
            .unwrap_err()
            .contains("element [0]"));
        assert!(enc("[{}]", &Type::TEXT_ARRAY).is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(enc(&deep, &Type::INT4_ARRAY).unwrap_err().contains("6 dimensions"));
        assert_eq!(text("[[[[[[1]]]]]]", &Type::INT4_ARRAY), "{{{{{{1}}}}}}");
    }

    #[test]
    fn flat_arrays_of_exact_elements_go_binary() {
        // ndim 1, has-null, element oid, length, lower bound 1, then (length, bytes) per element.
        let header = |has_null: i32, oid: u32, n: i32| {
            [
                1i32.to_be_bytes(),
                has_null.to_be_bytes(),
                oid.to_be_bytes(),
                n.to_be_bytes(),
                1i32.to_be_bytes(),
            ]
            .concat()
        };
        let mut want = header(1, oid::INT8, 3);
        for v in [Some(1i64), None, Some(-3)] {
            match v {
                Some(v) => {
                    want.extend_from_slice(&8i32.to_be_bytes());
                    want.extend_from_slice(&v.to_be_bytes());
                }
                None => want.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(binary("[1, null, -3e0]", &Type::INT8_ARRAY), want);
        let mut want = header(0, oid::TEXT, 2);
        for v in ["a", "c\"\\{x,y}"] {
            want.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
            want.extend_from_slice(v.as_bytes());
        }
        assert_eq!(binary(r#"["a", "c\"\\{x,y}"]"#, &Type::TEXT_ARRAY), want);
        let mut want = header(0, oid::FLOAT8, 1);
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&0.1f64.to_be_bytes());
        assert_eq!(binary("[0.1]", &Type::FLOAT8_ARRAY), want);
        let mut want = header(0, oid::BOOL, 1);
        want.extend_from_slice(&1i32.to_be_bytes());
        want.push(1);
        assert_eq!(binary("[true]", &Type::BOOL_ARRAY), want);
        assert_eq!(binary("[]", &Type::FLOAT8_ARRAY), header(0, oid::FLOAT8, 0));
        assert!(enc(r#"["a\u0000"]"#, &Type::TEXT_ARRAY).unwrap_err().contains("NUL"));
    }

    #[test]
    fn results_print_as_postgresql_does() {
        let ts = |us: i64| out(&Type::TIMESTAMP, &us.to_be_bytes());
        assert_eq!(ts(1_500_000), "\"2000-01-01T00:00:01.5\"");
        assert_eq!(ts(i64::MAX), "\"infinity\"");
        assert_eq!(ts(i64::MIN), "\"-infinity\"");
        // PostgreSQL's limits: 4714-11-24 BC and 294276-12-31 AD.
        assert_eq!(ts(-211_813_488_000_000_000), "\"4714-11-24T00:00:00 BC\"");
        assert_eq!(ts(9_223_371_331_199_999_999), "\"294276-12-31T23:59:59.999999\"");
        assert_eq!(
            out(&Type::TIMESTAMPTZ, &0i64.to_be_bytes()),
            "\"2000-01-01T00:00:00+00:00\""
        );
        assert_eq!(out(&Type::DATE, &(-1i32).to_be_bytes()), "\"1999-12-31\"");
        assert_eq!(out(&Type::DATE, &i32::MAX.to_be_bytes()), "\"infinity\"");
        assert_eq!(out(&Type::DATE, &2_145_031_948i32.to_be_bytes()), "\"5874897-12-31\"");
        assert_eq!(out(&Type::TIME, &86_400_000_000i64.to_be_bytes()), "\"24:00:00\"");
        let mut tz = 43_200_000_000i64.to_be_bytes().to_vec();
        tz.extend_from_slice(&(-19_815i32).to_be_bytes());
        assert_eq!(out(&Type::TIMETZ, &tz), "\"12:00:00+05:30:15\"");
        assert_eq!(format_interval(1, 2, 3_723_500_000), "P1M2DT1H2M3.5S");
        assert_eq!(format_interval(14, 0, 0), "P1Y2M");
        assert_eq!(format_interval(-14, 3, -14_706_500_000), "P-1Y-2M3DT-4H-5M-6.5S");
        assert_eq!(format_interval(0, 0, -500_000), "PT-0.5S");
        assert_eq!(format_interval(0, 0, 0), "PT0S");
        assert_eq!(out(&Type::FLOAT4, &0.1f32.to_be_bytes()), "0.1");
        assert_eq!(out(&Type::FLOAT4, &f32::MAX.to_be_bytes()), "3.4028235e38");
        assert_eq!(out(&Type::FLOAT8, &f64::NAN.to_be_bytes()), "\"NaN\"");
        assert_eq!(out(&Type::FLOAT8, &f64::NEG_INFINITY.to_be_bytes()), "\"-Infinity\"");
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(br#"{"n": 12345678901234567890.123456789}"#);
        assert_eq!(out(&Type::JSONB, &jsonb), r#"{"n": 12345678901234567890.123456789}"#);
        assert_eq!(out(&Type::BYTEA, &[1, 255]), r#""\\x01ff""#);
        assert_eq!(
            out(
                &Type::UUID,
                &[0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11]
            ),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
        );
    }

    #[test]
    fn arrays_decode_nested() {
        // '{{1,2},{3,NULL}}'::int4[] in binary.
        let mut a = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            a.extend_from_slice(&v.to_be_bytes());
        }
        for v in [Some(1i32), Some(2), Some(3), None] {
            match v {
                Some(v) => {
                    a.extend_from_slice(&4i32.to_be_bytes());
                    a.extend_from_slice(&v.to_be_bytes());
                }
                None => a.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(out(&Type::INT4_ARRAY, &a), "[[1,2],[3,null]]");
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn types() -> Vec<Type> {
            vec![
                Type::BOOL,
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::FLOAT4,
                Type::FLOAT8,
                Type::NUMERIC,
                Type::TEXT,
                Type::JSONB,
                Type::TIMESTAMP,
                Type::TIMESTAMPTZ,
                Type::DATE,
                Type::TIME,
                Type::TIMETZ,
                Type::UUID,
                Type::BYTEA,
                Type::INTERVAL,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::NUMERIC_ARRAY,
                Type::OID,
                Type::CHAR,
            ]
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
                ".{0,40}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop::collection::vec(inner, 0..4).prop_map(Value::Array)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn encoding_never_panics(v in json_value(), t in 0usize..22) {
                let raw = serde_json::value::to_raw_value(&v).unwrap();
                let _ = encode_param(&raw, &types()[t]);
            }

            #[test]
            fn number_literals_never_panic(n in "-?[0-9]{1,25}(\\.[0-9]{0,25})?([eE][-+]?[0-9]{1,22})?", t in 0usize..22) {
                if let Ok(raw) = RawValue::from_string(n) {
                    let _ = encode_param(&raw, &types()[t]);
                }
            }

            #[test]
            fn int_literals_are_exact(i in any::<i64>(), zeros in 0usize..3) {
                let lit = format!("{i}{}", if zeros > 0 { format!(".{}", "0".repeat(zeros)) } else { String::new() });
                prop_assert_eq!(int_in(&lit, i64::MIN, i64::MAX, "int8"), Ok(i));
            }

            #[test]
            fn decoding_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64), t in 0usize..22) {
                let mut out = Vec::new();
                let _ = write_value(&types()[t], &raw, &mut out);
            }

            #[test]
            fn timestamps_match_chrono_where_chrono_reaches(us in -200_000_000_000_000_000i64..200_000_000_000_000_000i64) {
                let secs = us.div_euclid(1_000_000) + 946_684_800;
                let nanos = u32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap();
                if let Some(dt) = chrono::DateTime::from_timestamp(secs, nanos) {
                    let ours = format_timestamp(us, false);
                    let year = chrono::Datelike::year(&dt);
                    if (1..=9999).contains(&year) {
                        let theirs = dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
                        prop_assert_eq!(ours, theirs.trim_end_matches('0').trim_end_matches('.'));
                    }
                }
            }
        }
    }
}
