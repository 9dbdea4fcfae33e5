//! The few AWS calls the extension makes itself, with the execution role's credentials from the environment and
//! the extension's one reqwest client (the Upbit client's TLS stack: rustls, webpki roots, keep-alive):
//! - [`secrets`]: Secrets Manager `GetSecretValue` for `MAKENAIDE_DATABASE_SECRET_ID`;
//! - [`rds_iam`]: RDS IAM authentication tokens for `MAKENAIDE_DB_IAM_AUTH=true` (no call: a presigned URL);
//! - [`sigv4`]: the signer both use.
//!
//! Nothing here logs a credential, a secret value or a token.

pub mod rds_iam;
pub mod secrets;
pub mod sigv4;

use crate::config::Secret;
use std::fmt;

/// The execution role's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), which
/// Lambda sets for the function and its extensions. `Debug` shows the key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    /// `AWS_ACCESS_KEY_ID` (not a secret; shown in logs as AWS does).
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `AWS_SESSION_TOKEN` (temporary credentials).
    pub session_token: Option<Secret>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// The borrowed form the signer takes.
    #[must_use]
    pub fn signing(&self) -> sigv4::Credentials<'_> {
        sigv4::Credentials {
            access_key_id: &self.access_key_id,
            secret_access_key: self.secret_access_key.expose(),
            session_token: self.session_token.as_ref().map(Secret::expose),
        }
    }
}

/// Region, credentials and (tests only) an endpoint override.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: String,
    /// The execution role's credentials.
    pub credentials: AwsCredentials,
    /// `MAKENAIDE_AWS_ENDPOINT_URL`: every AWS call goes there instead of the service's regional endpoint (an
    /// AWS-compatible server such as moto in tests; never set on Lambda). No trailing slash.
    pub endpoint: Option<String>,
}

impl AwsSettings {
    /// `https://<service>.<region>.amazonaws.com` (`.amazonaws.com.cn` in the China regions), or the override.
    #[must_use]
    pub fn endpoint_of(&self, service: &str) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None if self.region.starts_with("cn-") => format!("https://{service}.{}.amazonaws.com.cn", self.region),
            None => format!("https://{service}.{}.amazonaws.com", self.region),
        }
    }
}
