//! JSON <-> PostgreSQL values, in PostgreSQL's binary wire format, driven by the types PostgreSQL itself inferred
//! for each `$n` (from the prepared statement) and reported for each result column.
//!
//! Why hand-written encoders instead of tokio-postgres' `ToSql` impls for Rust types: the target type is only known
//! at run time, numeric must keep every digit (no `f64`/`rust_decimal` round trip), and every failure has to become
//! a clear `invalid_param` naming `$n` and the type *before* anything is sent. Values are validated and encoded into
//! [`Encoded`] first; binding then cannot fail.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::{Number, Value};
use std::error::Error as StdError;
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
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;
    pub(super) const VOID: u32 = 2278;
}

/// PostgreSQL's epoch (2000-01-01) relative to Unix', in seconds and days.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
const PG_EPOCH_UNIX_DAYS: i64 = 10_957;
/// Guard against "1e999999999" making us allocate a billion digits (PostgreSQL's own numeric limits are
/// 131072 digits before the point and 16383 after).
const MAX_NUMERIC_DIGITS: usize = 140_000;

/// A parameter already validated and encoded in binary format (`None` = SQL NULL).
#[derive(Debug)]
pub struct Encoded(Option<Vec<u8>>);

impl ToSql for Encoded {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(bytes) => {
                out.put_slice(bytes);
                Ok(IsNull::No)
            }
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
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

/// Converts one JSON parameter to the type PostgreSQL inferred for it. The error text completes
/// `cannot bind $n to <type>: ...`.
///
/// # Errors
/// Why the value does not fit the type.
pub fn encode_param(value: &Value, ty: &Type) -> Result<Encoded, String> {
    if value.is_null() {
        return Ok(Encoded(None));
    }
    let mut out = Vec::new();
    encode(value, ty, &mut out)?;
    Ok(Encoded(Some(out)))
}

fn encode(value: &Value, ty: &Type, out: &mut Vec<u8>) -> Result<(), String> {
    match ty.kind() {
        Kind::Domain(base) => return encode(value, base, out),
        Kind::Enum(labels) => {
            let Value::String(s) = value else {
                return Err(format!("expected one of the labels {labels:?}"));
            };
            out.extend_from_slice(s.as_bytes());
            return Ok(());
        }
        Kind::Array(elem) => return encode_array(value, elem, out),
        _ => {}
    }
    match ty.oid() {
        oid::BOOL => out.push(u8::from(as_bool(value)?)),
        oid::INT2 => {
            let n = as_int(value)?;
            let n = i16::try_from(n).map_err(|_| format!("{n} is out of range for int2"))?;
            out.extend_from_slice(&n.to_be_bytes());
        }
        oid::INT4 => {
            let n = as_int(value)?;
            let n = i32::try_from(n).map_err(|_| format!("{n} is out of range for int4"))?;
            out.extend_from_slice(&n.to_be_bytes());
        }
        oid::INT8 => out.extend_from_slice(&as_int(value)?.to_be_bytes()),
        oid::OID => {
            let n = as_int(value)?;
            let n = u32::try_from(n).map_err(|_| format!("{n} is out of range for oid"))?;
            out.extend_from_slice(&n.to_be_bytes());
        }
        #[allow(clippy::cast_possible_truncation)]
        oid::FLOAT4 => out.extend_from_slice(&(as_float(value)? as f32).to_be_bytes()),
        oid::FLOAT8 => out.extend_from_slice(&as_float(value)?.to_be_bytes()),
        oid::NUMERIC => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_owned(),
                _ => return Err("expected a number or a numeric string".into()),
            };
            encode_numeric(&text, out)?;
        }
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN => match value {
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            _ => {
                return Err(
                    "expected a string (pass JSON objects and arrays to a json/jsonb parameter, e.g. $n::jsonb)".into(),
                )
            }
        },
        oid::CHAR => match value {
            Value::String(s) if s.len() == 1 => out.push(s.as_bytes()[0]),
            _ => return Err("expected a one-character ASCII string".into()),
        },
        oid::JSON => out.extend_from_slice(value.to_string().as_bytes()),
        oid::JSONB => {
            out.push(1); // jsonb binary format version
            out.extend_from_slice(value.to_string().as_bytes());
        }
        oid::TIMESTAMP => {
            let s = as_str(value, "an ISO 8601 timestamp string like 2024-01-31T09:00:00")?;
            out.extend_from_slice(&parse_timestamp(s, false)?.to_be_bytes());
        }
        oid::TIMESTAMPTZ => {
            let s = as_str(value, "an ISO 8601 timestamp string like 2024-01-31T09:00:00+09:00")?;
            out.extend_from_slice(&parse_timestamp(s, true)?.to_be_bytes());
        }
        oid::DATE => {
            let s = as_str(value, "an ISO 8601 date string like 2024-01-31")?;
            out.extend_from_slice(&parse_date(s)?.to_be_bytes());
        }
        oid::TIME => {
            let s = as_str(value, "a time string like 09:30:00")?;
            let t = NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
                .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
                .map_err(|_| format!("{s:?} is not a time like 09:30:00"))?;
            let micros = (t - NaiveTime::MIN).num_microseconds().unwrap_or(0);
            out.extend_from_slice(&micros.to_be_bytes());
        }
        oid::UUID => {
            let s = as_str(value, "a UUID string")?;
            out.extend_from_slice(&parse_uuid(s)?);
        }
        oid::BYTEA => {
            let s = as_str(value, "a hex string like \\x0102ff")?;
            out.extend_from_slice(&parse_hex_bytea(s)?);
        }
        _ => {
            return Err(format!(
                "type {} is not supported for parameters; cast in SQL to one that is (e.g. $n::text)",
                type_name(ty)
            ))
        }
    }
    Ok(())
}

fn encode_array(value: &Value, elem: &Type, out: &mut Vec<u8>) -> Result<(), String> {
    let Value::Array(items) = value else {
        return Err("expected a JSON array".into());
    };
    let has_null = items.iter().any(Value::is_null);
    let len = i32::try_from(items.len()).map_err(|_| "array too long".to_owned())?;
    out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&elem.oid().to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    for (i, item) in items.iter().enumerate() {
        if item.is_null() {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        if item.is_array() && !matches!(elem.oid(), oid::JSON | oid::JSONB) {
            return Err("only one-dimensional arrays are supported".into());
        }
        let at = out.len();
        out.extend_from_slice(&0i32.to_be_bytes());
        encode(item, elem, out).map_err(|e| format!("element [{i}]: {e}"))?;
        let n = i32::try_from(out.len() - at - 4).map_err(|_| "array element too large".to_owned())?;
        out[at..at + 4].copy_from_slice(&n.to_be_bytes());
    }
    Ok(())
}

fn as_str<'a>(value: &'a Value, expected: &str) -> Result<&'a str, String> {
    match value {
        Value::String(s) => Ok(s.trim()),
        other => Err(format!("expected {expected}, got {}", kind_of(other))),
    }
}

/// "a string", "an array", ...: how error messages name the JSON type a caller sent.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" => Ok(true),
            "false" | "f" => Ok(false),
            _ => Err(format!("expected true or false, got {s:?}")),
        },
        other => Err(format!("expected true or false, got {}", kind_of(other))),
    }
}

fn as_int(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => number_to_i64(n),
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| format!("{s:?} is not an integer")),
        other => Err(format!("expected an integer, got {}", kind_of(other))),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn number_to_i64(n: &Number) -> Result<i64, String> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(format!("{n} is out of range for int8"));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(format!("{n} is not an integer")),
    }
}

fn as_float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a float")),
        Value::String(s) => match s.trim() {
            "NaN" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            t => t.parse::<f64>().map_err(|_| format!("{s:?} is not a number")),
        },
        other => Err(format!("expected a number, got {}", kind_of(other))),
    }
}

/// Encodes a decimal string (`-12.50`, `1e-3`, `NaN`, `Infinity`) as PostgreSQL's binary numeric: base-10000
/// digits, a weight (position of the first digit group relative to the point), a sign and a display scale.
fn encode_numeric(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let bad = || format!("{text:?} is not a decimal number");
    let special = match text {
        "NaN" => Some(0xC000u16),
        "Infinity" | "+Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        return Ok(());
    }
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if exponent.unsigned_abs() > MAX_NUMERIC_DIGITS as u64 {
        return Err(format!("{text:?} is out of range for numeric"));
    }
    // Shift the decimal point by the exponent: digits = all mantissa digits, point after `point` of them.
    let digits: String = [int_part, frac_part].concat();
    #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
    let point = int_part.len() as i64 + exponent;
    let (int_digits, frac_digits) = if point <= 0 {
        (
            String::new(),
            "0".repeat(usize::try_from(-point).unwrap_or(0)) + &digits,
        )
    } else if usize::try_from(point).unwrap_or(usize::MAX) >= digits.len() {
        (
            digits.clone() + &"0".repeat(usize::try_from(point).unwrap_or(0) - digits.len()),
            String::new(),
        )
    } else {
        let p = usize::try_from(point).unwrap_or(0);
        (digits[..p].to_owned(), digits[p..].to_owned())
    };
    if int_digits.len() + frac_digits.len() > MAX_NUMERIC_DIGITS {
        return Err(format!("{text:?} is out of range for numeric"));
    }
    let dscale = u16::try_from(frac_digits.len()).map_err(|_| format!("{text:?} has too many decimals"))?;
    let int_trimmed = int_digits.trim_start_matches('0');

    // Base-10000 groups: integer part padded on the left, fraction padded on the right.
    let pad_left = (4 - int_trimmed.len() % 4) % 4;
    let int_padded = "0".repeat(pad_left) + int_trimmed;
    let pad_right = (4 - frac_digits.len() % 4) % 4;
    let frac_padded = frac_digits.clone() + &"0".repeat(pad_right);
    let group = |s: &str| s.parse::<i16>().unwrap_or(0);
    let mut groups: Vec<i16> = int_padded
        .as_bytes()
        .chunks(4)
        .map(|c| group(std::str::from_utf8(c).unwrap_or("0")))
        .collect();
    #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
    let mut weight = groups.len() as i32 - 1;
    groups.extend(
        frac_padded
            .as_bytes()
            .chunks(4)
            .map(|c| group(std::str::from_utf8(c).unwrap_or("0"))),
    );
    // Strip leading zero groups (each moves the weight down) and trailing zero groups.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
    {
        weight -= lead as i32;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, 0u16)
    } else {
        (weight, if negative { 0x4000 } else { 0 })
    };
    let ndigits = i16::try_from(groups.len()).map_err(|_| format!("{text:?} is out of range for numeric"))?;
    let weight = i16::try_from(weight).map_err(|_| format!("{text:?} is out of range for numeric"))?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
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

/// Parses ISO 8601 / RFC 3339 (also with a space instead of `T`, or date only). A naive value is UTC for
/// `timestamptz`; an offset given for a plain `timestamp` is converted to UTC (Upbit's `*_utc` convention).
/// Returns microseconds since 2000-01-01 UTC (`i64::MAX`/`MIN` for ±infinity, as PostgreSQL stores them).
fn parse_timestamp(s: &str, _with_tz: bool) -> Result<i64, String> {
    match s {
        "infinity" | "+infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let utc: NaiveDateTime = if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        dt.naive_utc()
    } else if let Some(dt) = [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
        "%Y-%m-%d %H:%M%#z",
    ]
    .iter()
    .find_map(|f| DateTime::parse_from_str(s, f).ok())
    {
        dt.naive_utc()
    } else if let Some(dt) = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    {
        dt
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_time(NaiveTime::MIN)
    } else {
        return Err(format!(
            "{s:?} is not an ISO 8601 timestamp like 2024-01-31T09:00:00 or 2024-01-31T09:00:00+09:00"
        ));
    };
    let secs = utc.and_utc().timestamp() - PG_EPOCH_UNIX_SECS;
    secs.checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(utc.and_utc().timestamp_subsec_micros())))
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn parse_date(s: &str) -> Result<i32, String> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| parse_timestamp(s, false).map(|us| micros_to_naive(us).date()))
        .map_err(|_| format!("{s:?} is not a date like 2024-01-31"))?;
    let days = d
        .signed_duration_since(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default())
        .num_days();
    i32::try_from(days).map_err(|_| format!("{s:?} is out of range"))
}

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: String = s
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 {
        return Err(format!("{s:?} is not a UUID"));
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
            .map_err(|_| format!("{s:?} is not a UUID"))?;
    }
    Ok(out)
}

fn parse_hex_bytea(s: &str) -> Result<Vec<u8>, String> {
    let hex = s
        .strip_prefix("\\x")
        .ok_or_else(|| format!("{s:?} is not bytea hex (expected \\x followed by hex digits)"))?;
    if hex.len() % 2 != 0 {
        return Err(format!("{s:?} has an odd number of hex digits"));
    }
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{s:?} is not bytea hex")))
        .collect()
}

fn micros_to_naive(us: i64) -> NaiveDateTime {
    let secs = us.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let nanos = (us.rem_euclid(1_000_000) * 1000) as u32;
    DateTime::from_timestamp(secs, nanos).unwrap_or_default().naive_utc()
}

/// One result cell decoded to JSON, whatever its column type.
pub struct JsonCell(pub Value);

impl<'a> FromSql<'a> for JsonCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        decode(ty, raw).map(JsonCell).map_err(Into::into)
    }
    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(JsonCell(Value::Null))
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

fn float_json(f: f64) -> Value {
    Number::from_f64(f).map_or_else(
        || {
            Value::from(if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            })
        },
        Value::Number,
    )
}

fn text(raw: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(raw)
        .map(Value::from)
        .map_err(|_| "invalid UTF-8 in text".into())
}

/// Decodes one non-NULL binary value of type `ty`.
///
/// # Errors
/// The type has no JSON conversion (the caller names the column and suggests a cast).
pub fn decode(ty: &Type, raw: &[u8]) -> Result<Value, String> {
    match ty.kind() {
        Kind::Domain(base) => return decode(base, raw),
        Kind::Enum(_) => return text(raw),
        Kind::Array(elem) => return decode_array(elem, raw),
        _ => {}
    }
    let mut r = Reader(raw);
    Ok(match ty.oid() {
        oid::VOID => Value::Null,
        oid::BOOL => Value::Bool(raw.first().is_some_and(|b| *b != 0)),
        oid::INT2 => Value::from(r.i16()?),
        oid::INT4 => Value::from(r.i32()?),
        oid::INT8 => Value::from(r.i64()?),
        oid::OID => Value::from(r.take::<4>().map(u32::from_be_bytes)?),
        oid::FLOAT4 => float_json(f64::from(r.take::<4>().map(f32::from_be_bytes)?)),
        oid::FLOAT8 => float_json(r.take::<8>().map(f64::from_be_bytes)?),
        oid::NUMERIC => Value::from(decode_numeric(raw)?),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::CHAR => text(raw)?,
        oid::JSON => serde_json::from_slice(raw).map_err(|e| format!("invalid json from server: {e}"))?,
        oid::JSONB => serde_json::from_slice(raw.get(1..).unwrap_or_default())
            .map_err(|e| format!("invalid jsonb from server: {e}"))?,
        oid::TIMESTAMP => match r.i64()? {
            i64::MAX => Value::from("infinity"),
            i64::MIN => Value::from("-infinity"),
            us => Value::from(micros_to_naive(us).format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
        },
        oid::TIMESTAMPTZ => match r.i64()? {
            i64::MAX => Value::from("infinity"),
            i64::MIN => Value::from("-infinity"),
            us => Value::from(
                micros_to_naive(us)
                    .and_utc()
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            ),
        },
        oid::DATE => match r.i32()? {
            i32::MAX => Value::from("infinity"),
            i32::MIN => Value::from("-infinity"),
            days => {
                let secs = (i64::from(days) + PG_EPOCH_UNIX_DAYS) * 86_400;
                Value::from(
                    DateTime::<Utc>::from_timestamp(secs, 0)
                        .unwrap_or_default()
                        .format("%Y-%m-%d")
                        .to_string(),
                )
            }
        },
        oid::TIME => {
            let us = r.i64()?;
            let t = NaiveTime::MIN + chrono::Duration::microseconds(us);
            Value::from(t.format("%H:%M:%S%.f").to_string())
        }
        oid::INTERVAL => {
            let us = r.i64()?;
            let days = r.i32()?;
            let months = r.i32()?;
            Value::from(format_interval(months, days, us))
        }
        oid::UUID => {
            let b = r.take::<16>()?;
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::from(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        oid::BYTEA => Value::from(format!(
            "\\x{}",
            raw.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        _ => return Err(format!("type {} has no JSON conversion", type_name(ty))),
    })
}

/// ISO 8601 duration, e.g. `P1M2DT3H4M5.5S`.
fn format_interval(months: i32, days: i32, micros: i64) -> String {
    let mut s = String::from("P");
    if months != 0 {
        s.push_str(&format!("{months}M"));
    }
    if days != 0 {
        s.push_str(&format!("{days}D"));
    }
    if micros != 0 || s.len() == 1 {
        s.push('T');
        let (h, rem) = (micros / 3_600_000_000, micros % 3_600_000_000);
        let (m, rem) = (rem / 60_000_000, rem % 60_000_000);
        if h != 0 {
            s.push_str(&format!("{h}H"));
        }
        if m != 0 {
            s.push_str(&format!("{m}M"));
        }
        if rem != 0 || (h == 0 && m == 0) {
            let secs = rem / 1_000_000;
            let frac = (rem % 1_000_000).abs();
            if frac == 0 {
                s.push_str(&format!("{secs}S"));
            } else {
                let sign = if rem < 0 && secs == 0 { "-" } else { "" };
                s.push_str(format!("{sign}{secs}.{frac:06}").trim_end_matches('0'));
                s.push('S');
            }
        }
    }
    s
}

/// Binary array: ndim, has-null flag, element oid, (length, lower bound) per dimension, then length-prefixed
/// elements in row-major order. Multi-dimensional arrays come out as nested JSON arrays.
fn decode_array(elem: &Type, raw: &[u8]) -> Result<Value, String> {
    let mut r = Reader(raw);
    let ndim = usize::try_from(r.i32()?).map_err(|_| "bad array".to_owned())?;
    let _has_null = r.i32()?;
    let _elem_oid = r.i32()?;
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
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
    if total > raw.len() {
        return Err("bad array length".into());
    }
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        let len = r.i32()?;
        if len < 0 {
            flat.push(Value::Null);
        } else {
            let bytes = r.bytes(usize::try_from(len).map_err(|_| "bad array".to_owned())?)?;
            flat.push(decode(elem, bytes)?);
        }
    }
    // Fold the flat list into nested arrays, innermost dimension first.
    for &d in dims.iter().skip(1).rev() {
        let mut grouped = Vec::with_capacity(flat.len() / d.max(1));
        let mut it = flat.into_iter();
        loop {
            let chunk: Vec<Value> = it.by_ref().take(d).collect();
            if chunk.is_empty() {
                break;
            }
            grouped.push(Value::Array(chunk));
        }
        flat = grouped;
    }
    Ok(Value::Array(flat))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn numeric_roundtrip(s: &str) -> String {
        let mut out = Vec::new();
        encode_numeric(s, &mut out).unwrap();
        decode_numeric(&out).unwrap()
    }

    #[test]
    fn numeric_encoding_roundtrips_exactly() {
        for (input, expected) in [
            ("0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("12345.6789", "12345.6789"),
            ("0.0001", "0.0001"),
            ("100000000", "100000000"),
            ("-0.5", "-0.5"),
            ("1.50", "1.50"),
            (
                "123456789012345678901234567890.123456789",
                "123456789012345678901234567890.123456789",
            ),
            ("1e3", "1000"),
            ("1.5e-3", "0.0015"),
            ("0.000", "0.000"),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
            ("10000", "10000"),
            ("0.00010000", "0.00010000"),
        ] {
            assert_eq!(numeric_roundtrip(input), expected, "{input}");
        }
        let mut out = Vec::new();
        assert!(encode_numeric("12a", &mut out).is_err());
        assert!(encode_numeric("", &mut out).is_err());
        assert!(encode_numeric("1e999999999", &mut out).is_err());
    }

    #[test]
    fn ints_floats_bools() {
        assert_eq!(
            encode_param(&json!(5), &Type::INT4).unwrap().0.unwrap(),
            5i32.to_be_bytes()
        );
        assert_eq!(
            encode_param(&json!("7"), &Type::INT8).unwrap().0.unwrap(),
            7i64.to_be_bytes()
        );
        assert_eq!(
            encode_param(&json!(3.0), &Type::INT2).unwrap().0.unwrap(),
            3i16.to_be_bytes()
        );
        assert!(encode_param(&json!(70000), &Type::INT2)
            .unwrap_err()
            .contains("out of range"));
        assert!(encode_param(&json!(1.5), &Type::INT4)
            .unwrap_err()
            .contains("not an integer"));
        assert!(encode_param(&json!("x"), &Type::INT4).is_err());
        assert!(encode_param(&json!(18_446_744_073_709_551_615u64), &Type::INT8).is_err());
        assert_eq!(encode_param(&json!(true), &Type::BOOL).unwrap().0.unwrap(), vec![1]);
        assert!(encode_param(&json!(1), &Type::BOOL).is_err());
        assert_eq!(encode_param(&json!("NaN"), &Type::FLOAT8).unwrap().0.unwrap().len(), 8);
        assert!(encode_param(&json!({}), &Type::TEXT).is_err());
        assert!(encode_param(&Value::Null, &Type::INT4).unwrap().0.is_none());
    }

    #[test]
    fn timestamps_and_dates() {
        let us = parse_timestamp("2000-01-01T00:00:01", false).unwrap();
        assert_eq!(us, 1_000_000);
        assert_eq!(parse_timestamp("2000-01-01 09:00:01+09:00", true).unwrap(), 1_000_000);
        assert_eq!(parse_timestamp("2000-01-01T00:00:01Z", true).unwrap(), 1_000_000);
        assert_eq!(parse_timestamp("2000-01-01", false).unwrap(), 0);
        assert!(parse_timestamp("yesterday", false).is_err());
        assert_eq!(parse_date("2000-01-02").unwrap(), 1);
        let ts = decode(&Type::TIMESTAMP, &1_500_000i64.to_be_bytes()).unwrap();
        assert_eq!(ts, json!("2000-01-01T00:00:01.500"));
        let ts = decode(&Type::TIMESTAMPTZ, &0i64.to_be_bytes()).unwrap();
        assert_eq!(ts, json!("2000-01-01T00:00:00+00:00"));
        assert_eq!(
            decode(&Type::DATE, &(-1i32).to_be_bytes()).unwrap(),
            json!("1999-12-31")
        );
    }

    #[test]
    fn uuid_bytea_interval() {
        let u = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(
            decode(&Type::UUID, &u).unwrap(),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(parse_hex_bytea("\\x01ff").unwrap(), vec![1, 255]);
        assert_eq!(decode(&Type::BYTEA, &[1, 255]).unwrap(), json!("\\x01ff"));
        assert_eq!(format_interval(1, 2, 3_723_500_000), "P1M2DT1H2M3.5S");
        assert_eq!(format_interval(0, 0, 0), "PT0S");
    }

    #[test]
    fn arrays_roundtrip() {
        let enc = encode_param(&json!(["a", null, "c"]), &Type::TEXT_ARRAY)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(decode(&Type::TEXT_ARRAY, &enc).unwrap(), json!(["a", null, "c"]));
        let enc = encode_param(&json!([1, 2]), &Type::INT8_ARRAY).unwrap().0.unwrap();
        assert_eq!(decode(&Type::INT8_ARRAY, &enc).unwrap(), json!([1, 2]));
        let err = encode_param(&json!([1, "x"]), &Type::INT4_ARRAY).unwrap_err();
        assert!(err.contains("element [1]"), "{err}");
        assert!(encode_param(&json!([[1]]), &Type::INT4_ARRAY).is_err());
        assert!(encode_param(&json!("x"), &Type::INT4_ARRAY).is_err());
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

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
                ".{0,40}".prop_map(Value::from),
                "[-+]?[0-9]{0,30}(\\.[0-9]{0,30})?([eE][-+]?[0-9]{1,6})?".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop::collection::vec(inner, 0..4).prop_map(Value::Array)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn encoding_never_panics(v in json_value(), t in 0usize..21) {
                let _ = encode_param(&v, &types()[t]);
            }

            #[test]
            fn decoding_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64), t in 0usize..21) {
                let _ = decode(&types()[t], &raw);
            }

            #[test]
            fn numeric_strings_roundtrip(int in "[1-9][0-9]{0,25}|0", frac in "[0-9]{0,20}", neg in any::<bool>()) {
                let text = format!("{}{int}{}{frac}", if neg && int != "0" { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
                let mut out = Vec::new();
                encode_numeric(&text, &mut out).unwrap();
                prop_assert_eq!(decode_numeric(&out).unwrap(), text);
            }
        }
    }
}
