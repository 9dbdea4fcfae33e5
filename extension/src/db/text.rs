//! PostgreSQL's text output, rendered from the binary values tokio-postgres receives, for Neon's wire format
//! (`POST /sql`): its drivers get every value as the text PostgreSQL itself would print (DateStyle ISO, TimeZone
//! UTC, IntervalStyle postgres, shortest-exact floats) and parse it by type OID with `pg-types`. Also the other
//! direction: the drivers' JSON parameters as text for PostgreSQL to parse, as Neon's proxy passes them.
//!
//! Why render instead of asking PostgreSQL for text results: tokio-postgres always requests binary results.
//! Numeric and UUID text comes from `convert` (exact already); the rest is here. A type without a rendering
//! fails like `/db/*` does, asking for a cast (`x::text`).

use super::convert;
use serde_json::Value;
use std::error::Error as StdError;
use std::fmt::Write;
use tokio_postgres::types::{FromSql, Kind, Type};

/// A result cell as PostgreSQL's text output (`Neon-Raw-Text-Output: true`); NULL is JSON null.
pub struct TextCell(pub Value);

/// A result cell typed as Neon's proxy types text without raw output: booleans, int2/int4 and finite floats as
/// JSON, json/jsonb parsed, arrays as JSON arrays of such elements, everything else (int8, numeric, ...) as text.
pub struct TypedCell(pub Value);

impl<'a> FromSql<'a> for TextCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(Value::String(text(ty, raw)?)))
    }
    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(Value::Null))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

impl<'a> FromSql<'a> for TypedCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(typed(ty, raw)?))
    }
    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Self(Value::Null))
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A driver's JSON parameter as text, as Neon's proxy converts it: strings as they are (no quoting: it is a
/// parameter), arrays as PostgreSQL array literals, other values as their JSON text; null is SQL NULL.
#[must_use]
pub fn param(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(_) => Some(array_literal(value)),
        other => Some(other.to_string()),
    }
}

fn array_literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Array(items) => format!("{{{}}}", items.iter().map(array_literal).collect::<Vec<_>>().join(",")),
        Value::String(s) => quoted(s),
        Value::Object(_) => quoted(&value.to_string()),
        other => other.to_string(),
    }
}

/// `"..."` with `"` and `\` escaped: an array element as `array_out` writes it when it has to quote.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `pg_type.typlen` of the built-in fixed-size types (Neon's `dataTypeSize`); -1 = variable length.
#[must_use]
pub fn type_size(ty: &Type) -> i16 {
    match *ty {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::OID | Type::FLOAT4 | Type::DATE => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => 8,
        Type::TIMETZ => 12,
        Type::INTERVAL | Type::UUID => 16,
        Type::NAME => 64,
        _ => -1,
    }
}

fn base(mut ty: &Type) -> &Type {
    while let Kind::Domain(inner) = ty.kind() {
        ty = inner;
    }
    ty
}

fn utf8(raw: &[u8]) -> Result<String, String> {
    String::from_utf8(raw.to_vec()).map_err(|_| "invalid UTF-8 in text".into())
}

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "truncated value".into())
}

/// One non-NULL binary value of type `ty` as PostgreSQL's text output.
///
/// # Errors
/// The type has no rendering here (the caller names the column and suggests a cast), or the bytes are malformed.
pub fn text(ty: &Type, raw: &[u8]) -> Result<String, String> {
    let ty = base(ty);
    match ty.kind() {
        Kind::Enum(_) => return utf8(raw),
        Kind::Array(elem) => return array_text(elem, raw),
        _ => {}
    }
    Ok(match *ty {
        Type::BOOL => (if raw.first().is_some_and(|b| *b != 0) { "t" } else { "f" }).into(),
        Type::INT2 => i16::from_be_bytes(be(raw)?).to_string(),
        Type::INT4 => i32::from_be_bytes(be(raw)?).to_string(),
        Type::INT8 => i64::from_be_bytes(be(raw)?).to_string(),
        Type::OID => u32::from_be_bytes(be(raw)?).to_string(),
        Type::FLOAT4 => {
            let f = f32::from_be_bytes(be(raw)?);
            float(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 6)
        }
        Type::FLOAT8 => {
            let f = f64::from_be_bytes(be(raw)?);
            float(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 15)
        }
        // The JSON writer's exact form of these is a string holding PostgreSQL's text.
        Type::NUMERIC | Type::UUID => {
            let mut out = Vec::new();
            convert::write_value(ty, raw, &mut out)?;
            match serde_json::from_slice::<Value>(&out).map_err(|e| e.to_string())? {
                Value::String(s) => s,
                other => other.to_string(),
            }
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::CHAR | Type::JSON => utf8(raw)?,
        // jsonb's binary form is a version byte and then exactly its text output.
        Type::JSONB => utf8(raw.get(1..).unwrap_or_default())?,
        Type::BYTEA => {
            let mut s = String::with_capacity(2 + 2 * raw.len());
            s.push_str("\\x");
            for b in raw {
                let _ = write!(s, "{b:02x}");
            }
            s
        }
        // Dates, timestamps and times print as in the JSON results, with PostgreSQL's own separator and zone.
        Type::DATE => convert::format_date(i32::from_be_bytes(be(raw)?)),
        Type::TIMESTAMP => convert::format_timestamp_with(i64::from_be_bytes(be(raw)?), ' ', ""),
        Type::TIMESTAMPTZ => convert::format_timestamp_with(i64::from_be_bytes(be(raw)?), ' ', "+00"),
        Type::TIME => time_of_day(i64::from_be_bytes(be(raw)?)),
        Type::TIMETZ => {
            let us = i64::from_be_bytes(be(raw)?);
            let west = i32::from_be_bytes(be(raw.get(8..).unwrap_or_default())?);
            time_of_day(us) + &zone(-west)
        }
        Type::INTERVAL => {
            let us = i64::from_be_bytes(be(raw)?);
            let days = i32::from_be_bytes(be(raw.get(8..).unwrap_or_default())?);
            let months = i32::from_be_bytes(be(raw.get(12..).unwrap_or_default())?);
            interval(months, days, us)
        }
        _ => return Err(format!("type {} has no text rendering", convert::type_name(ty))),
    })
}

/// One non-NULL binary value as Neon's proxy types it without raw text output.
///
/// # Errors
/// As [`text`].
pub fn typed(ty: &Type, raw: &[u8]) -> Result<Value, String> {
    let ty = base(ty);
    if let Kind::Array(elem) = ty.kind() {
        let a = Array::parse(raw)?;
        let mut items = a.items.into_iter();
        return match a.dims.is_empty() {
            true => Ok(Value::Array(Vec::new())),
            false => nest(&a.dims, elem, &mut items),
        };
    }
    Ok(match *ty {
        Type::BOOL => Value::Bool(raw.first().is_some_and(|b| *b != 0)),
        Type::INT2 => Value::from(i16::from_be_bytes(be(raw)?)),
        Type::INT4 => Value::from(i32::from_be_bytes(be(raw)?)),
        Type::FLOAT4 | Type::FLOAT8 => {
            let f = match *ty {
                Type::FLOAT4 => f64::from(f32::from_be_bytes(be(raw)?)),
                _ => f64::from_be_bytes(be(raw)?),
            };
            match serde_json::Number::from_f64(f) {
                Some(n) => Value::Number(n),
                None => Value::String(text(ty, raw)?),
            }
        }
        Type::JSON | Type::JSONB => {
            serde_json::from_str(&text(ty, raw)?).map_err(|e| format!("invalid json from server: {e}"))?
        }
        _ => Value::String(text(ty, raw)?),
    })
}

/// PostgreSQL's float output from Rust's shortest round-trip digits (`{:e}`, e.g. `1.5e-7`): fixed notation for
/// decimal exponents from -4 to below `fixed_below` (15 for float8, 6 for float4, as printf's `%g` defaults),
/// else `1.5e-07` (sign and at least two exponent digits).
fn float(nan: bool, inf: bool, negative: bool, sci: &str, fixed_below: i32) -> String {
    if nan {
        return "NaN".into();
    }
    if inf {
        return (if negative { "-Infinity" } else { "Infinity" }).into();
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if (-4..fixed_below).contains(&exp) {
        let body = if exp < 0 {
            format!("0.{}{digits}", "0".repeat(usize::try_from(-exp - 1).unwrap_or(0)))
        } else if exp + 1 >= n {
            format!("{digits}{}", "0".repeat(usize::try_from(exp + 1 - n).unwrap_or(0)))
        } else {
            let (int, frac) = digits.split_at(usize::try_from(exp + 1).unwrap_or(0));
            format!("{int}.{frac}")
        };
        return format!("{sign}{body}");
    }
    let (first, rest) = digits.split_at(1.min(digits.len()));
    let dot = if rest.is_empty() { "" } else { "." };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.unsigned_abs())
}

/// `HH:MM:SS[.ffffff]` (24:00:00 is a valid time).
fn time_of_day(us: i64) -> String {
    let mut s = String::with_capacity(15);
    convert::push_time(&mut s, us);
    s
}

/// `+05:30`, `-08`, `+00`: a UTC offset in seconds east, as PostgreSQL prints it.
fn zone(east: i32) -> String {
    let a = east.unsigned_abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    let sign = if east < 0 { '-' } else { '+' };
    match (m, s) {
        (_, s) if s != 0 => format!("{sign}{h:02}:{m:02}:{s:02}"),
        (0, _) => format!("{sign}{h:02}"),
        _ => format!("{sign}{h:02}:{m:02}"),
    }
}

/// IntervalStyle `postgres`: `1 year 2 mons -3 days +04:05:06.5`.
fn interval(months: i32, days: i32, us: i64) -> String {
    let mut out = String::new();
    let mut before_negative = false;
    for (value, unit) in [
        (i64::from(months / 12), "year"),
        (i64::from(months % 12), "mon"),
        (i64::from(days), "day"),
    ] {
        if value == 0 {
            continue;
        }
        let space = if out.is_empty() { "" } else { " " };
        let plus = if before_negative && value > 0 { "+" } else { "" };
        let plural = if value == 1 { "" } else { "s" };
        let _ = write!(out, "{space}{plus}{value} {unit}{plural}");
        before_negative = value < 0;
    }
    if out.is_empty() || us != 0 {
        let space = if out.is_empty() { "" } else { " " };
        let sign = if us < 0 {
            "-"
        } else if before_negative {
            "+"
        } else {
            ""
        };
        let a = us.unsigned_abs();
        let secs = a / 1_000_000;
        let _ = write!(
            out,
            "{space}{sign}{:02}:{:02}:{:02}{}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            {
                let mut f = String::new();
                convert::push_fraction(&mut f, i64::try_from(a % 1_000_000).unwrap_or(0));
                f
            }
        );
    }
    out
}

/// A binary array: dimensions (length, lower bound) and the elements in row-major order (`None` = NULL).
struct Array<'a> {
    dims: Vec<(i32, i32)>,
    items: Vec<Option<&'a [u8]>>,
}

impl<'a> Array<'a> {
    fn parse(raw: &'a [u8]) -> Result<Self, String> {
        let mut r = raw;
        let mut i32_ = || -> Result<i32, String> {
            let v = i32::from_be_bytes(be(r)?);
            r = &r[4..];
            Ok(v)
        };
        let ndim = usize::try_from(i32_()?).map_err(|_| "bad array")?;
        let _has_null = i32_()?;
        let _elem_oid = i32_()?;
        let dims = (0..ndim)
            .map(|_| Ok((i32_()?, i32_()?)))
            .collect::<Result<Vec<_>, String>>()?;
        let count = dims.iter().try_fold(1usize, |n, (len, _)| {
            usize::try_from(*len).ok().and_then(|l| n.checked_mul(l))
        });
        let count = if dims.is_empty() { 0 } else { count.ok_or("bad array")? };
        let mut items = Vec::with_capacity(count.min(raw.len()));
        for _ in 0..count {
            let len = i32::from_be_bytes(be(r)?);
            r = &r[4..];
            if len < 0 {
                items.push(None);
                continue;
            }
            let len = usize::try_from(len).map_err(|_| "bad array")?;
            let (item, rest) = r.split_at_checked(len).ok_or("truncated array")?;
            items.push(Some(item));
            r = rest;
        }
        Ok(Self { dims, items })
    }
}

/// `array_out`: `{1,NULL,"a b"}`, nested braces per dimension, `[0:1]={...}` when a lower bound is not 1.
fn array_text(elem: &Type, raw: &[u8]) -> Result<String, String> {
    let a = Array::parse(raw)?;
    let mut out = String::new();
    if a.dims.is_empty() {
        return Ok("{}".into());
    }
    if a.dims.iter().any(|(_, lower)| *lower != 1) {
        for (len, lower) in &a.dims {
            let _ = write!(out, "[{lower}:{}]", lower + len - 1);
        }
        out.push('=');
    }
    let mut items = a.items.into_iter();
    write_level(&a.dims, elem, &mut items, &mut out)?;
    Ok(out)
}

fn write_level<'a>(
    dims: &[(i32, i32)],
    elem: &Type,
    items: &mut impl Iterator<Item = Option<&'a [u8]>>,
    out: &mut String,
) -> Result<(), String> {
    out.push('{');
    for i in 0..dims[0].0 {
        if i > 0 {
            out.push(',');
        }
        if dims.len() > 1 {
            write_level(&dims[1..], elem, items, out)?;
            continue;
        }
        match items.next().ok_or("truncated array")? {
            None => out.push_str("NULL"),
            Some(raw) => {
                let s = text(elem, raw)?;
                let quote = s.is_empty()
                    || s.eq_ignore_ascii_case("NULL")
                    || s.bytes().any(|b| {
                        matches!(
                            b,
                            b'"' | b'\\' | b'{' | b'}' | b',' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
                        )
                    });
                if quote {
                    out.push_str(&quoted(&s));
                } else {
                    out.push_str(&s);
                }
            }
        }
    }
    out.push('}');
    Ok(())
}

fn nest<'a>(
    dims: &[(i32, i32)],
    elem: &Type,
    items: &mut impl Iterator<Item = Option<&'a [u8]>>,
) -> Result<Value, String> {
    (0..dims[0].0)
        .map(|_| {
            if dims.len() > 1 {
                return nest(&dims[1..], elem, items);
            }
            match items.next().ok_or("truncated array")? {
                None => Ok(Value::Null),
                Some(raw) => typed(elem, raw),
            }
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_follow_postgres_thresholds() {
        let f8 = |f: f64| float(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 15);
        assert_eq!(f8(1.5), "1.5");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(1e14), "100000000000000");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001234), "1.234e-05");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        let f4 = |f: f32| float(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 6);
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(1e6), "1e+06");
    }

    #[test]
    fn intervals_zones_and_params() {
        assert_eq!(
            interval(14, 3, 4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000),
            "1 year 2 mons 3 days 04:05:06.5"
        );
        assert_eq!(interval(0, -1, 7_200_000_000), "-1 days +02:00:00");
        assert_eq!(interval(0, 0, 0), "00:00:00");
        assert_eq!(zone(19_800), "+05:30");
        assert_eq!(zone(-28_800), "-08");
        assert_eq!(
            param(&json!(["a b", null, "x\"y", 1, {"k": 1}])).as_deref(),
            Some(r#"{"a b",NULL,"x\"y",1,"{\"k\":1}"}"#)
        );
        assert_eq!(param(&json!(true)).as_deref(), Some("true"));
        assert_eq!(param(&Value::Null), None);
    }
}
