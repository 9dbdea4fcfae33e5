//! Secrets Manager `GetSecretValue` (`POST /`, `X-Amz-Target: secretsmanager.GetSecretValue`, JSON 1.1, SigV4
//! service `secretsmanager`) and the two forms of a database secret the extension accepts:
//! - a URL, `postgres://user:password@host:5432/db?sslmode=...`;
//! - the JSON of an RDS-managed secret, `{"username", "password", "host", "port", "dbname", "engine"}` (`port`
//!   defaults to 5432, `dbname` to `postgres`; `engine`, when present, must be a PostgreSQL one).
//!
//! The value is turned into connection settings at once and dropped; nothing here logs it or puts it in an error
//! message. Errors say what to fix (a missing secret, a denied permission, a malformed value).

use super::sigv4;
use super::AwsSettings;
use crate::config::{parse_database_url_with, DatabaseConfig, Secret, SecretSource, ENV_DATABASE_SECRET_ID};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// `X-Amz-Target` of the call.
pub const TARGET: &str = "secretsmanager.GetSecretValue";
/// SigV4 service name.
pub const SERVICE: &str = "secretsmanager";
/// Content type of AWS's JSON 1.1 protocol.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Attempts per fetch (transport errors, 5xx and throttling are retried), each bounded by [`ATTEMPT_TIMEOUT`].
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF: Duration = Duration::from_millis(100);

/// A failed fetch: what to tell the operator (never contains the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    /// What went wrong and how to fix it.
    pub message: String,
    /// Worth trying again soon (network, throttling, 5xx), as opposed to needing a fix.
    pub transient: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(message: String, transient: bool) -> FetchError {
    FetchError { message, transient }
}

/// Fetches the secret's `SecretString` (the `AWSCURRENT` version) and parses it into connection settings.
///
/// # Errors
/// The call failed (after retrying transient failures) or the value is not a database secret.
pub async fn fetch_database(http: &reqwest::Client, source: &SecretSource) -> Result<DatabaseConfig, FetchError> {
    let value = get_secret_value(http, &source.aws, &source.secret_id).await?;
    parse_database_secret(value.expose(), source).map_err(|m| fail(m, false))
}

/// `GetSecretValue` for `secret_id`: the `SecretString`.
///
/// # Errors
/// What failed, with what to fix; transient failures are retried first.
pub async fn get_secret_value(
    http: &reqwest::Client,
    aws: &AwsSettings,
    secret_id: &str,
) -> Result<Secret, FetchError> {
    let mut attempt = 1;
    loop {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, call_once(http, aws, secret_id)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if !e.transient || attempt >= ATTEMPTS => return Err(e),
            Err(_) if attempt >= ATTEMPTS => {
                return Err(fail(
                    format!(
                        "Secrets Manager at {} did not answer within {} ms ({ATTEMPTS} attempts): in a VPC, the \
                         functions' subnets need a route to it (a NAT gateway, or an interface VPC endpoint for \
                         secretsmanager)",
                        aws.endpoint_of(SERVICE),
                        ATTEMPT_TIMEOUT.as_millis()
                    ),
                    true,
                ))
            }
            Ok(Err(e)) => tracing::debug!(attempt, error = %e, "secretsmanager call failed; retrying"),
            Err(_) => tracing::debug!(attempt, "secretsmanager call timed out; retrying"),
        }
        tokio::time::sleep(BACKOFF * 4u32.pow(attempt - 1)).await;
        attempt += 1;
    }
}

async fn call_once(http: &reqwest::Client, aws: &AwsSettings, secret_id: &str) -> Result<Secret, FetchError> {
    let endpoint = aws.endpoint_of(SERVICE);
    let url = url::Url::parse(&format!("{endpoint}/"))
        .map_err(|e| fail(format!("bad Secrets Manager endpoint {endpoint}: {e}"), false))?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(fail(format!("bad Secrets Manager endpoint {endpoint}"), false)),
    };
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let signed = sigv4::sign_request(
        aws.credentials.signing(),
        &aws.region,
        SERVICE,
        "POST",
        &host,
        url.path(),
        &[("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)],
        body.as_bytes(),
        SystemTime::now(),
    );
    let mut req = http
        .post(url)
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .header("x-amz-target", TARGET)
        .header("x-amz-date", &signed.amz_date)
        .header(http::header::AUTHORIZATION, &signed.authorization);
    if let Some(token) = &signed.security_token {
        req = req.header("x-amz-security-token", token);
    }
    let resp = req.body(body).send().await.map_err(|e| {
        fail(
            format!("Secrets Manager at {endpoint} is unreachable: {}", error_chain(&e)),
            true,
        )
    })?;
    let status = resp.status();
    let error_type_header = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.map_err(|e| {
        fail(
            format!("Secrets Manager's reply was cut off: {}", error_chain(&e)),
            true,
        )
    })?;
    if status.is_success() {
        let reply: Value = serde_json::from_slice(&bytes)
            .map_err(|_| fail("Secrets Manager answered something that is not JSON".into(), true))?;
        return match reply.get("SecretString").and_then(Value::as_str) {
            Some(s) => Ok(Secret::new(s)),
            None if reply.get("SecretBinary").is_some() => Err(fail(
                format!(
                    "secret {secret_id} holds binary data: store the database URL or the RDS JSON as its secret string"
                ),
                false,
            )),
            None => Err(fail(
                format!("secret {secret_id} has no SecretString (Secrets Manager's reply has none)"),
                false,
            )),
        };
    }
    let (kind, message) = aws_error(&bytes, error_type_header.as_deref());
    Err(explain(&kind, &message, status.as_u16(), secret_id, aws))
}

/// `(error type, message)` of an AWS error reply: JSON `{"__type", "message"|"Message"}`, or the XML of a query
/// protocol error (what some emulators send for authorisation failures), or the `x-amzn-ErrorType` header.
fn aws_error(body: &[u8], header: Option<&str>) -> (String, String) {
    let short = |t: &str| {
        let t = t.split(':').next().unwrap_or(t);
        t.rsplit('#').next().unwrap_or(t).to_owned()
    };
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let kind = v.get("__type").and_then(Value::as_str).map(short);
        let message = v
            .get("message")
            .or_else(|| v.get("Message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(kind) = kind.or_else(|| header.map(short)) {
            return (kind, message);
        }
    }
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_owned())
    };
    match (tag("Code"), header) {
        (Some(code), _) => (code, tag("Message").unwrap_or_default()),
        (None, Some(h)) => (short(h), String::new()),
        (None, None) => ("UnknownError".into(), String::new()),
    }
}

/// The operator's message for an AWS error.
fn explain(kind: &str, message: &str, status: u16, secret_id: &str, aws: &AwsSettings) -> FetchError {
    let said = if message.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {message}")
    };
    match kind {
        "ResourceNotFoundException" => fail(
            format!(
                "secret {secret_id} does not exist in {} ({said}): check {ENV_DATABASE_SECRET_ID} (the secret's ARN, or \
                 its name in the function's region)",
                aws.region
            ),
            false,
        ),
        "AccessDeniedException" | "AccessDenied" => fail(
            format!(
                "the execution role may not read secret {secret_id} ({said}): allow secretsmanager:GetSecretValue on \
                 the secret's ARN in the role's policy (and kms:Decrypt on its key if the secret uses a customer \
                 managed KMS key)"
            ),
            false,
        ),
        "DecryptionFailure" => fail(
            format!(
                "Secrets Manager cannot decrypt secret {secret_id} ({said}): allow kms:Decrypt on the secret's KMS key \
                 for the execution role"
            ),
            false,
        ),
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "MissingAuthenticationToken" => fail(
            format!(
                "Secrets Manager refused the extension's credentials ({said}): the extension signs with \
                 AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN as Lambda sets them; do not override \
                 them in the function's environment"
            ),
            false,
        ),
        "InvalidRequestException" | "InvalidParameterException" => fail(
            format!(
                "Secrets Manager refused to return secret {secret_id} ({said}): is it scheduled for deletion, or is \
                 {ENV_DATABASE_SECRET_ID} malformed?"
            ),
            false,
        ),
        "ThrottlingException" | "Throttling" | "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
            fail(format!("Secrets Manager is unavailable for now ({said})"), true)
        }
        _ => fail(
            format!("Secrets Manager answered HTTP {status} for secret {secret_id} ({said})"),
            status >= 500,
        ),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The connection settings of a secret value (a `postgres://` URL or RDS JSON). The messages name the secret and
/// what is wrong, never the value.
///
/// # Errors
/// The value is neither form, or lacks a field.
pub fn parse_database_secret(value: &str, source: &SecretSource) -> Result<DatabaseConfig, String> {
    let id = &source.secret_id;
    let value = value.trim();
    let url = if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        value.to_owned()
    } else if value.starts_with('{') {
        url_of_rds_json(value).map_err(|m| format!("secret {id} is JSON but {m}"))?
    } else {
        return Err(format!(
            "secret {id} holds neither a postgres:// URL nor the JSON of an RDS secret (username, password, host, \
             port, dbname): store one of them as its secret string"
        ));
    };
    parse_database_url_with(&url, ENV_DATABASE_SECRET_ID, &source.ssl)
        .map_err(|e| format!("secret {id}: {}", e.message))
}

/// `postgres://user:password@host:port/dbname` of an RDS secret's JSON, user and password percent-encoded.
fn url_of_rds_json(value: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(value).map_err(|_| "not valid JSON".to_owned())?;
    let Some(obj) = v.as_object() else {
        return Err("not an object".into());
    };
    let text = |key: &str| -> Result<Option<&str>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{key}\" is not a string")),
        }
    };
    let user = text("username")?.ok_or("has no \"username\"")?;
    let password = text("password")?.ok_or("has no \"password\"")?;
    let host = text("host")?.ok_or(
        "has no \"host\" (RDS's own master-user secret holds only username and password: add host, port and dbname \
         to a secret of your own, or store a postgres:// URL)",
    )?;
    if let Some(engine) = text("engine")? {
        if !engine.to_ascii_lowercase().contains("postgres") {
            return Err(format!("its engine is {engine:?}, not PostgreSQL"));
        }
    }
    let port = match obj.get("port") {
        None | Some(Value::Null) => 5432,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("\"port\" is not a port number")?,
        Some(Value::String(s)) => s.trim().parse::<u16>().map_err(|_| "\"port\" is not a port number")?,
        Some(_) => return Err("\"port\" is not a port number".into()),
    };
    let dbname = text("dbname")?.unwrap_or("postgres");
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(format!(
        "postgres://{}:{}@{host}:{port}/{}",
        sigv4::uri_encode(user),
        sigv4::uri_encode(password),
        sigv4::uri_encode(dbname)
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::aws::AwsCredentials;
    use crate::config::{SslMode, SslSettings, DEFAULT_SSLMODE_SECRET};

    fn source() -> SecretSource {
        SecretSource {
            secret_id: "makenaide/db".into(),
            ssl: SslSettings {
                mode: None,
                root_cert: None,
                default_mode: DEFAULT_SSLMODE_SECRET,
            },
            aws: AwsSettings {
                region: "ap-northeast-2".into(),
                credentials: AwsCredentials {
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: Secret::new("k"),
                    session_token: None,
                },
                endpoint: None,
            },
        }
    }

    #[test]
    fn rds_json_becomes_an_encoded_url_with_sslmode_require() {
        let pw = "p@ss:w/rd?#%+ é&=";
        let value = serde_json::json!({"username": "app user", "password": pw, "host": "db.example.com",
            "port": 6543, "dbname": "market", "engine": "postgres", "dbInstanceIdentifier": "x"})
        .to_string();
        let db = parse_database_secret(&value, &source()).unwrap();
        assert_eq!(db.pg.get_user(), Some("app user"));
        assert_eq!(db.pg.get_password(), Some(pw.as_bytes()));
        assert_eq!(db.pg.get_dbname(), Some("market"));
        assert_eq!(db.pg.get_ports(), &[6543]);
        assert_eq!(db.ssl_mode, SslMode::Require);
        assert_eq!(db.display, "app user@db.example.com:6543/market");
        assert!(!format!("{db:?}").contains("p@ss"));

        // Defaults: port 5432, dbname postgres; a string port; sslmode from the settings.
        let mut src = source();
        src.ssl.mode = Some(SslMode::Disable);
        let db = parse_database_secret(
            r#"{"username":"u","password":"p","host":"::1","port":"5433","engine":"aurora-postgresql"}"#,
            &src,
        )
        .unwrap();
        assert_eq!(db.pg.get_dbname(), Some("postgres"));
        assert_eq!(db.pg.get_ports(), &[5433]);
        assert_eq!(db.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn url_secrets_keep_their_sslmode_unless_overridden() {
        let db = parse_database_secret("postgres://u:pw@h:5432/d?sslmode=verify-full", &source()).unwrap();
        assert_eq!(db.ssl_mode, SslMode::VerifyFull);
        let db = parse_database_secret(" postgresql://u:pw@h/d \n", &source()).unwrap();
        assert_eq!(db.ssl_mode, SslMode::Require, "a secret defaults to require");
    }

    #[test]
    fn malformed_secrets_say_what_is_wrong_without_the_value() {
        for (value, needle) in [
            ("hunter2-secret", "neither a postgres:// URL nor the JSON"),
            ("{not json hunter2-secret", "not valid JSON"),
            ("[\"hunter2-secret\"]", "neither"),
            (r#"{"password":"hunter2-secret","host":"h"}"#, "no \"username\""),
            (r#"{"username":"u","host":"h"}"#, "no \"password\""),
            (r#"{"username":"u","password":"hunter2-secret"}"#, "no \"host\""),
            (
                r#"{"username":"u","password":"hunter2-secret","host":"h","port":99999}"#,
                "port",
            ),
            (
                r#"{"username":"u","password":"hunter2-secret","host":"h","engine":"mysql"}"#,
                "not PostgreSQL",
            ),
            (
                r#"{"username":7,"password":"hunter2-secret","host":"h"}"#,
                "\"username\" is not a string",
            ),
            ("postgres://u:hunter2-secret@/db", "host"),
            ("postgres://u:hunter2-secret@h/db?sslmode=sometimes", "sslmode"),
        ] {
            let e = parse_database_secret(value, &source()).unwrap_err();
            assert!(e.contains(needle), "{value}: {e}");
            assert!(e.contains("makenaide/db"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn aws_errors_are_explained() {
        let aws = source().aws;
        let (k, m) = aws_error(
            br#"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#,
            None,
        );
        let e = explain(&k, &m, 400, "makenaide/db", &aws);
        assert!(e.message.contains("does not exist in ap-northeast-2"), "{e}");
        assert!(!e.transient);
        let (k, m) = aws_error(
            b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>User: arn:aws:sts::1:assumed-role/r/s is not authorized</Message></Error></ErrorResponse>",
            None,
        );
        let e = explain(&k, &m, 403, "makenaide/db", &aws);
        assert!(e.message.contains("allow secretsmanager:GetSecretValue"), "{e}");
        assert!(e.message.contains("is not authorized"), "{e}");
        let (k, m) = aws_error(b"", Some("ThrottlingException:http://internal.amazon.com/coral/"));
        assert_eq!(k, "ThrottlingException");
        assert!(explain(&k, &m, 400, "x", &aws).transient);
        let (k, m) = aws_error(
            br#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","Message":"bad"}"#,
            None,
        );
        assert_eq!(k, "UnrecognizedClientException");
        assert!(explain(&k, &m, 400, "x", &aws).message.contains("AWS_SESSION_TOKEN"));
        assert!(explain("Weird", "", 503, "x", &aws).transient);
    }
}
