//! An AWS-compatible API for tests: `moto_server` on a free 127.0.0.1 port, with IAM authorisation switched on
//! after set-up, so every call the extension makes is really signed and checked (moto recomputes SigV4 with
//! botocore's signer and evaluates the caller's IAM policies).
//!
//! - [`Moto::start`] finds moto (`$MAKENAIDE_MOTO_SERVER`, else `<repo>/.venv-deploy-tests/bin/moto_server`,
//!   which `tests/deploy/run.sh --setup` installs, else `moto_server` on `PATH`, else `python -m moto.server` with
//!   the venv's or the machine's Python), starts it and waits until it answers; it is killed on drop.
//! - [`Moto::accounts`] sets up, while moto still accepts anything, an admin user (access key `AKIA...`) and two
//!   execution roles assumed through STS (temporary `ASIA...` credentials with a session token, like Lambda's): one
//!   allowed `secretsmanager:GetSecretValue`, one not. Then authorisation is switched on.
//! - [`Moto::secrets_call`] makes a signed Secrets Manager call (the tests' own: create, update a secret).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::error::{HarnessError, Result};
use crate::lambda_env::{bins::workspace_root, free_port, random_hex};

/// Path of the `moto_server` executable, overriding the search.
pub const MOTO_SERVER_ENV: &str = "MAKENAIDE_MOTO_SERVER";
/// The region the tests use.
pub const REGION: &str = "ap-northeast-2";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// Credentials as the tests hand them to an environment (`AWS_ACCESS_KEY_ID`, ...).
#[derive(Clone)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Creds {
    /// Anything goes before authorisation is switched on.
    pub fn dummy() -> Self {
        Self {
            access_key_id: "AKIAMOTOSETUP0000000".into(),
            secret_access_key: "setup".into(),
            session_token: None,
        }
    }

    /// The environment variables of a Lambda function with these credentials and [`REGION`].
    pub fn lambda_env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("AWS_ACCESS_KEY_ID".to_string(), self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), self.secret_access_key.clone()),
            ("AWS_REGION".to_string(), REGION.to_string()),
            ("AWS_DEFAULT_REGION".to_string(), REGION.to_string()),
        ];
        if let Some(t) = &self.session_token {
            v.push(("AWS_SESSION_TOKEN".to_string(), t.clone()));
        }
        v
    }

    fn signing(&self) -> makenaide_core::aws::sigv4::Credentials<'_> {
        makenaide_core::aws::sigv4::Credentials {
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            session_token: self.session_token.as_deref(),
        }
    }
}

/// The identities of [`Moto::accounts`].
#[derive(Debug, Clone)]
pub struct Accounts {
    /// IAM user allowed everything (`AKIA...`, no session token).
    pub admin: Creds,
    /// Assumed role allowed `secretsmanager:GetSecretValue` (like an execution role).
    pub reader: Creds,
    /// Assumed role allowed nothing in Secrets Manager.
    pub denied: Creds,
    /// The denied role's name (a test may grant it later).
    pub denied_role: String,
}

/// A running moto server.
pub struct Moto {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Moto {
    /// How to run moto: the `moto_server` executable, else a Python that has moto (`python -m moto.server`); or an
    /// error saying how to install it.
    pub fn command() -> Result<(PathBuf, Vec<String>)> {
        if let Some(p) = std::env::var_os(MOTO_SERVER_ENV).filter(|p| !p.is_empty()) {
            return Ok((PathBuf::from(p), Vec::new()));
        }
        let venv = workspace_root().join(".venv-deploy-tests/bin");
        let mut tried = vec![venv.join("moto_server")];
        if let Some(path) = std::env::var_os("PATH") {
            tried.extend(std::env::split_paths(&path).map(|d| d.join("moto_server")));
        }
        if let Some(bin) = tried.iter().find(|p| p.is_file()) {
            return Ok((bin.clone(), Vec::new()));
        }
        // A venv that sees moto in the machine's site-packages has no moto_server script of its own.
        for py in [venv.join("python"), PathBuf::from("python3")] {
            let has_moto = std::process::Command::new(&py)
                .args(["-c", "import moto.server"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if has_moto {
                return Ok((py, vec!["-m".into(), "moto.server".into()]));
            }
        }
        Err(HarnessError::Command {
            command: "moto_server".into(),
            detail: format!(
                "not found (looked in {}, PATH, and for a Python with moto): run `tests/deploy/run.sh --setup` \
                 (installs moto[server] into .venv-deploy-tests), or `pip install 'moto[server]'`, or set \
                 {MOTO_SERVER_ENV}",
                tried[0].display()
            ),
        })
    }

    /// Starts moto on a free port and waits until it answers (bounded; the process must stay alive).
    pub async fn start() -> Result<Self> {
        let (bin, prefix) = Self::command()?;
        let port = free_port();
        let dir = tempfile::Builder::new().prefix("mk-moto-").tempdir()?;
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new(&bin)
            .args(&prefix)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| HarnessError::Spawn {
                what: bin.display().to_string(),
                source: e,
            })?;
        lambda_simulator::ensure_default_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut moto = Self {
            child,
            port,
            log,
            _dir: dir,
            http,
        };
        // Readiness: moto's own API answers (importing every service takes a few seconds).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut backoff = Duration::from_millis(20);
        loop {
            if let Some(status) = moto.child.try_wait()? {
                return Err(HarnessError::Command {
                    command: bin.display().to_string(),
                    detail: format!("exited with {status} before answering: {}", moto.log_text()),
                });
            }
            let url = format!("{}/moto-api/data.json", moto.url());
            if let Ok(r) = moto.http.get(url).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Ok(moto);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: format!("moto_server on port {port}: {}", moto.log_text()),
                    after: Duration::from_secs(90),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A signed call of AWS's JSON 1.1 protocol (`X-Amz-Target: <prefix>.<action>`); `(status, body)`.
    pub async fn json_call(&self, creds: &Creds, service: &str, target: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .signed_post(
                creds,
                service,
                "application/x-amz-json-1.1",
                Some(target),
                body.to_string(),
            )
            .await?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// A signed call of AWS's query protocol (IAM, STS); `(status, XML body)`.
    pub async fn query_call(&self, creds: &Creds, service: &str, params: &[(&str, &str)]) -> Result<(u16, String)> {
        let enc = makenaide_core::aws::sigv4::uri_encode;
        let body = params
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let r = self.signed_post(creds, service, content_type, None, body).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// `POST /` signed with SigV4 (the extension's own signer) for `service`, with `x-amz-target` when given.
    async fn signed_post(
        &self,
        creds: &Creds,
        service: &str,
        content_type: &str,
        target: Option<&str>,
        body: String,
    ) -> Result<reqwest::Response> {
        let mut headers = vec![("content-type", content_type)];
        if let Some(t) = target {
            headers.push(("x-amz-target", t));
        }
        let signed = makenaide_core::aws::sigv4::sign_request(
            creds.signing(),
            REGION,
            service,
            "POST",
            &self.host(),
            "/",
            &headers,
            body.as_bytes(),
            SystemTime::now(),
        );
        let mut req = self
            .http
            .post(format!("{}/", self.url()))
            .header("x-amz-date", &signed.amz_date)
            .header("authorization", &signed.authorization);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = &signed.security_token {
            req = req.header("x-amz-security-token", t);
        }
        Ok(req.body(body).send().await?)
    }

    async fn must_query(&self, creds: &Creds, service: &str, params: &[(&str, &str)]) -> Result<String> {
        let (status, text) = self.query_call(creds, service, params).await?;
        if status != 200 {
            return Err(HarnessError::State(format!(
                "{service} {params:?}: HTTP {status}: {text}"
            )));
        }
        Ok(text)
    }

    /// A Secrets Manager call (`secretsmanager.<action>`) that must succeed.
    pub async fn secrets_call(&self, creds: &Creds, action: &str, body: Value) -> Result<Value> {
        let (status, v) = self
            .json_call(creds, "secretsmanager", &format!("secretsmanager.{action}"), &body)
            .await?;
        if status != 200 {
            return Err(HarnessError::State(format!(
                "secretsmanager {action}: HTTP {status}: {v}"
            )));
        }
        Ok(v)
    }

    /// Creates a secret holding `value`; returns its ARN.
    pub async fn create_secret(&self, creds: &Creds, name: &str, value: &str) -> Result<String> {
        let v = self
            .secrets_call(creds, "CreateSecret", json!({"Name": name, "SecretString": value}))
            .await?;
        Ok(v["ARN"].as_str().unwrap_or_default().to_string())
    }

    /// Replaces the secret's current value (a new `AWSCURRENT` version, as rotation leaves it).
    pub async fn put_secret_value(&self, creds: &Creds, name: &str, value: &str) -> Result<()> {
        self.secrets_call(
            creds,
            "PutSecretValue",
            json!({"SecretId": name, "SecretString": value}),
        )
        .await
        .map(drop)
    }

    /// Grants `role` an inline policy.
    pub async fn put_role_policy(&self, creds: &Creds, role: &str, policy: &Value) -> Result<()> {
        self.must_query(
            creds,
            "iam",
            &[
                ("Action", "PutRolePolicy"),
                ("Version", "2010-05-08"),
                ("RoleName", role),
                ("PolicyName", &format!("p-{}", random_hex(4))),
                ("PolicyDocument", &policy.to_string()),
            ],
        )
        .await
        .map(drop)
    }

    /// Sets up the admin user and the two roles (see the module docs), then switches authorisation on: from then
    /// on every call must be signed by a known identity and allowed by its policies.
    pub async fn accounts(&self) -> Result<Accounts> {
        let setup = Creds::dummy();
        let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com", "AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
            "Action": "sts:AssumeRole"}]})
        .to_string();
        let allow = |action: &str| json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]});
        let mut roles = Vec::new();
        for (name, policy) in [
            ("makenaide-reader", allow("secretsmanager:GetSecretValue")),
            ("makenaide-denied", allow("logs:PutLogEvents")),
        ] {
            self.must_query(
                &setup,
                "iam",
                &[
                    ("Action", "CreateRole"),
                    ("Version", "2010-05-08"),
                    ("RoleName", name),
                    ("AssumeRolePolicyDocument", &trust),
                ],
            )
            .await?;
            self.put_role_policy(&setup, name, &policy).await?;
            let xml = self
                .must_query(
                    &setup,
                    "sts",
                    &[
                        ("Action", "AssumeRole"),
                        ("Version", "2011-06-15"),
                        ("RoleArn", &format!("arn:aws:iam::{ACCOUNT}:role/{name}")),
                        ("RoleSessionName", "makenaide-test"),
                    ],
                )
                .await?;
            roles.push(Creds {
                access_key_id: xml_tag(&xml, "AccessKeyId")?,
                secret_access_key: xml_tag(&xml, "SecretAccessKey")?,
                session_token: Some(xml_tag(&xml, "SessionToken")?),
            });
        }
        let iam = |action: &'static str| [("Action", action), ("Version", "2010-05-08"), ("UserName", "admin")];
        self.must_query(&setup, "iam", &iam("CreateUser")).await?;
        let mut put = iam("PutUserPolicy").to_vec();
        let admin_policy = allow("*").to_string();
        put.extend([("PolicyName", "admin"), ("PolicyDocument", admin_policy.as_str())]);
        self.must_query(&setup, "iam", &put).await?;
        let xml = self.must_query(&setup, "iam", &iam("CreateAccessKey")).await?;
        let admin = Creds {
            access_key_id: xml_tag(&xml, "AccessKeyId")?,
            secret_access_key: xml_tag(&xml, "SecretAccessKey")?,
            session_token: None,
        };
        // Authorisation on: the count of unauthenticated actions allowed from now on is 0.
        let r = self
            .http
            .post(format!("{}/moto-api/reset-auth", self.url()))
            .body("0")
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(HarnessError::State(format!("moto reset-auth: HTTP {}", r.status())));
        }
        let denied = roles.pop().ok_or_else(|| HarnessError::State("no role".into()))?;
        let reader = roles.pop().ok_or_else(|| HarnessError::State("no role".into()))?;
        Ok(Accounts {
            admin,
            reader,
            denied,
            denied_role: "makenaide-denied".into(),
        })
    }
}

fn xml_tag(xml: &str, tag: &str) -> Result<String> {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .ok_or_else(|| HarnessError::State(format!("no <{tag}> in {xml}")))?;
    let end = xml[start..]
        .find(&format!("</{tag}>"))
        .ok_or_else(|| HarnessError::State(format!("no </{tag}> in {xml}")))?;
    Ok(xml[start..start + end].to_string())
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
