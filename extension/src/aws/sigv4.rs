//! AWS Signature Version 4, the two forms the extension needs, and nothing else:
//! - [`sign_request`]: the `Authorization` header of a request (Secrets Manager's `GetSecretValue`);
//! - [`presign_rds_connect`]: the presigned `connect` URL that is an RDS IAM authentication token.
//!
//! Built on `ring` (HMAC-SHA256, SHA-256), which rustls already links in: no new crate, a few KiB of code. The
//! signing time is a parameter, so tests can compare the output byte for byte with botocore's (the reference
//! implementation: `tests/tests/creds_iam.rs` checks the token against boto3's `generate_db_auth_token`, and every
//! Secrets Manager call of `tests/tests/creds_secrets.rs` is verified by moto with botocore's signer).
//!
//! Spec: <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::{digest, hmac};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The algorithm name in every signature.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Lifetime of an RDS IAM authentication token (RDS accepts it for 15 minutes).
pub const RDS_TOKEN_EXPIRES: Duration = Duration::from_secs(900);
/// Service name of RDS IAM authentication.
pub const RDS_SERVICE: &str = "rds-db";

/// SigV4's URI encoding: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` as `%XX` (upper-case hex).
const AWS_URI: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes `s` the way SigV4 canonicalises query parameters.
#[must_use]
pub fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_URI).to_string()
}

/// The credentials that sign (an execution role's temporary credentials carry a session token).
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: &'a str,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: &'a str,
    /// `AWS_SESSION_TOKEN` (temporary credentials only).
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// `(20240102T030405Z, 20240102)`: SigV4's timestamp and date, in UTC.
#[must_use]
pub fn timestamp(at: SystemTime) -> (String, String) {
    let t: chrono::DateTime<chrono::Utc> = at.into();
    (t.format("%Y%m%dT%H%M%SZ").to_string(), t.format("%Y%m%d").to_string())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// `date/region/service/aws4_request`.
fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

/// The signature of `canonical_request`: hex HMAC of the string to sign with the derived key.
fn signature(secret: &str, stamp: &str, date: &str, region: &str, service: &str, canonical_request: &str) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{stamp}\n{}\n{}",
        scope(date, region, service),
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    hex(hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes()).as_ref())
}

/// What to add to a request signed by [`sign_request`].
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `X-Amz-Date`.
    pub amz_date: String,
    /// `X-Amz-Security-Token`, with temporary credentials.
    pub security_token: Option<String>,
    /// `Authorization`.
    pub authorization: String,
}

impl std::fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeaders")
            .field("amz_date", &self.amz_date)
            .finish_non_exhaustive()
    }
}

/// Signs a request with an empty query string: `headers` are the other headers to sign (lower-case names, e.g.
/// `content-type`, `x-amz-target`); `host` is the `Host` header exactly as it is sent (`name` or `name:port`).
/// `x-amz-date` and `x-amz-security-token` are added and signed here.
#[must_use]
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    creds: Credentials<'_>,
    region: &str,
    service: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    at: SystemTime,
) -> SignedHeaders {
    let (stamp, date) = timestamp(at);
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    all.push(("host".into(), host.to_owned()));
    all.push(("x-amz-date".into(), stamp.clone()));
    if let Some(token) = creds.session_token {
        all.push(("x-amz-security-token".into(), token.to_owned()));
    }
    all.sort();
    let signed: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let mut canonical = format!("{method}\n{path}\n\n");
    for (k, v) in &all {
        let _ = writeln!(canonical, "{k}:{v}");
    }
    let _ = write!(canonical, "\n{signed}\n{}", sha256_hex(body));
    let sig = signature(creds.secret_access_key, &stamp, &date, region, service, &canonical);
    SignedHeaders {
        authorization: format!(
            "{ALGORITHM} Credential={}/{}, SignedHeaders={signed}, Signature={sig}",
            creds.access_key_id,
            scope(&date, region, service)
        ),
        amz_date: stamp,
        security_token: creds.session_token.map(str::to_owned),
    }
}

/// An RDS IAM authentication token: the presigned URL `host:port/?Action=connect&DBUser=user&X-Amz-...` (service
/// `rds-db`, valid 900 s from `at`), without its `https://` scheme, with the parameters in the order botocore's
/// `generate_db_auth_token` writes them. It is the password of a connection as `user`.
#[must_use]
pub fn presign_rds_connect(
    creds: Credentials<'_>,
    region: &str,
    host: &str,
    port: u16,
    user: &str,
    at: SystemTime,
) -> String {
    let (stamp, date) = timestamp(at);
    let credential = uri_encode(&format!(
        "{}/{}",
        creds.access_key_id,
        scope(&date, region, RDS_SERVICE)
    ));
    let expires = RDS_TOKEN_EXPIRES.as_secs().to_string();
    let token = creds.session_token.map(uri_encode);
    let user = uri_encode(user);
    // In the order of the URL; the canonical query string is the same pairs sorted by name.
    let mut params: Vec<(&str, &str)> = vec![
        ("Action", "connect"),
        ("DBUser", &user),
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", &stamp),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(token) = &token {
        params.push(("X-Amz-Security-Token", token));
    }
    let join = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut sorted = params.clone();
    sorted.sort();
    let authority = format!("{host}:{port}");
    let canonical = format!(
        "GET\n/\n{}\nhost:{authority}\n\nhost\n{}",
        join(&sorted),
        sha256_hex(b"")
    );
    let sig = signature(creds.secret_access_key, &stamp, &date, region, RDS_SERVICE, &canonical);
    format!("{authority}/?{}&X-Amz-Signature={sig}", join(&params))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: Credentials<'static> = Credentials {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };

    /// 2024-01-02T03:04:05Z.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(at()), ("20240102T030405Z".into(), "20240102".into()));
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved() {
        assert_eq!(uri_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(uri_encode("iam user+1/=é"), "iam%20user%2B1%2F%3D%C3%A9");
    }

    /// The signature of AWS's documented example request ("get-vanilla" of the SigV4 test suite:
    /// `GET /` to `example.amazonaws.com`, service `service`, 2015-08-30T12:36:00Z).
    #[test]
    fn aws_test_suite_get_vanilla() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let signed = sign_request(
            CREDS,
            "us-east-1",
            "service",
            "GET",
            "example.amazonaws.com",
            "/",
            &[],
            b"",
            at,
        );
        assert_eq!(signed.amz_date, "20150830T123600Z");
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// Tokens generated by boto3 1.43 (`generate_db_auth_token`, time fixed at 2024-01-02T03:04:05Z): the Rust
    /// test `creds_iam` compares against a live boto3 too, this pins the value without Python.
    #[test]
    fn rds_tokens_match_boto3() {
        assert_eq!(
            presign_rds_connect(CREDS, "us-east-1", "db.example.com", 5432, "iam_user", at()),
            "db.example.com:5432/?Action=connect&DBUser=iam_user&X-Amz-Algorithm=AWS4-HMAC-SHA256&\
             X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240102T030405Z&\
             X-Amz-Expires=900&X-Amz-SignedHeaders=host&\
             X-Amz-Signature=2decb3f3f2ef619f4d65af16100f556687be30f9df1f103d1879af80dc9a5d1f"
        );
        let creds = Credentials {
            session_token: Some("tok/en+=="),
            ..CREDS
        };
        assert_eq!(
            presign_rds_connect(creds, "us-east-1", "db.example.com", 5432, "iam user+1", at()),
            "db.example.com:5432/?Action=connect&DBUser=iam%20user%2B1&X-Amz-Algorithm=AWS4-HMAC-SHA256&\
             X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240102T030405Z&\
             X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok%2Fen%2B%3D%3D&\
             X-Amz-Signature=d3f510bcaa02fa5f22f0ba2a0b46fcde7bfe9ac714ed2e5155e75f2eea2134c9"
        );
    }
}
