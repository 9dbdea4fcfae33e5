//! RDS IAM authentication (`MAKENAIDE_DB_IAM_AUTH=true`): the password of every new connection is an
//! authentication token, a SigV4-presigned `connect` URL for the database user, signed with the execution role's
//! credentials. RDS accepts a token for 15 minutes; one is reused until it is [`TOKEN_REUSE`] old, so a pool
//! filling up signs once, and a connection opened at any time gets a token with at least 5 minutes left.
//!
//! The role needs `rds-db:connect` on `arn:aws:rds-db:REGION:ACCOUNT:dbuser:RESOURCE_ID/USER`, and the database
//! user `GRANT rds_iam TO user`. RDS limits the rate of new IAM-authenticated connections; the pool keeps them
//! few.

use super::sigv4;
use super::AwsSettings;
use crate::config::DatabaseConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A token is reused until it is this old (it stays valid for [`sigv4::RDS_TOKEN_EXPIRES`]).
pub const TOKEN_REUSE: Duration = Duration::from_secs(10 * 60);

/// Where the signing time comes from (the wall clock, or a fixed time in tests).
pub type Clock = fn() -> SystemTime;

/// The last token and when it was signed.
type Cached = Arc<Mutex<Option<(SystemTime, Arc<str>)>>>;

/// Token generator for one database user. Clones share the cached token.
#[derive(Clone)]
pub struct IamAuth {
    aws: AwsSettings,
    host: String,
    port: u16,
    user: String,
    clock: Clock,
    cached: Cached,
}

impl std::fmt::Debug for IamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamAuth")
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("region", &self.aws.region)
            .finish_non_exhaustive()
    }
}

impl IamAuth {
    /// For the host, port and user of `db` (a password-less URL).
    ///
    /// # Errors
    /// The URL's host is not a TCP host name (a Unix socket cannot use IAM authentication).
    pub fn new(db: &DatabaseConfig, aws: AwsSettings) -> Result<Self, String> {
        let host = match db.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err("IAM authentication needs a TCP host name in the URL (the RDS endpoint)".into()),
        };
        let port = db.pg.get_ports().first().copied().unwrap_or(5432);
        let user = db.pg.get_user().unwrap_or_default().to_owned();
        Ok(Self {
            aws,
            host,
            port,
            user,
            clock: SystemTime::now,
            cached: Arc::new(Mutex::new(None)),
        })
    }

    /// Signs with `clock` instead of the wall clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The token for a new connection: the cached one while it is younger than [`TOKEN_REUSE`], else a new one.
    #[must_use]
    pub fn token(&self) -> Arc<str> {
        let now = (self.clock)();
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, token)) = cached.as_ref() {
            // A clock that went backwards also gets a new token.
            if now.duration_since(*at).is_ok_and(|age| age < TOKEN_REUSE) {
                return token.clone();
            }
        }
        let token: Arc<str> = self.token_at(now).into();
        *cached = Some((now, token.clone()));
        tracing::debug!(user = %self.user, host = %self.host, "new RDS IAM authentication token");
        token
    }

    /// A fresh token signed at `at`.
    #[must_use]
    pub fn token_at(&self, at: SystemTime) -> String {
        sigv4::presign_rds_connect(
            self.aws.credentials.signing(),
            &self.aws.region,
            &self.host,
            self.port,
            &self.user,
            at,
        )
    }

    /// The resource of the `rds-db:connect` permission, with `RESOURCE_ID` for the DB instance's resource id (the
    /// extension cannot know it).
    #[must_use]
    pub fn policy_resource(&self) -> String {
        format!(
            "arn:aws:rds-db:{}:ACCOUNT:dbuser:RESOURCE_ID/{}",
            self.aws.region, self.user
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::aws::AwsCredentials;
    use crate::config::{parse_database_url, Secret};
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW: AtomicU64 = AtomicU64::new(1_704_164_645);
    fn clock() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::SeqCst))
    }

    #[test]
    fn a_token_is_reused_until_ten_minutes_old() {
        let db = parse_database_url("postgres://iam_user@db.example.com:5432/app?sslmode=require").unwrap();
        let aws = AwsSettings {
            region: "us-east-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                session_token: None,
            },
            endpoint: None,
        };
        let iam = IamAuth::new(&db, aws).unwrap().with_clock(clock);
        assert!(!format!("{iam:?}").contains("wJalr"));
        let first = iam.token();
        assert!(
            first.starts_with("db.example.com:5432/?Action=connect&DBUser=iam_user&"),
            "{first}"
        );
        assert!(first.contains("X-Amz-Date=20240102T030405Z"), "{first}");
        NOW.fetch_add(9 * 60 + 59, Ordering::SeqCst);
        assert_eq!(
            iam.clone().token(),
            first,
            "reused under 10 minutes (clones share the cache)"
        );
        NOW.fetch_add(1, Ordering::SeqCst);
        let second = iam.token();
        assert_ne!(second, first, "a new token at 10 minutes");
        assert!(second.contains("X-Amz-Date=20240102T031405Z"), "{second}");
        NOW.fetch_sub(3600, Ordering::SeqCst);
        assert!(
            iam.token().contains("X-Amz-Date=20240102T021405Z"),
            "clock went back: new token"
        );
        assert_eq!(
            iam.policy_resource(),
            "arn:aws:rds-db:us-east-1:ACCOUNT:dbuser:RESOURCE_ID/iam_user"
        );
    }
}
