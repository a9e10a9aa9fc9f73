//! Credentials and tokens: where credentials come from (flags, the Docker credential store),
//! how `login`/`logout` store them, and the bearer-token cache keyed by scope.
//!
//! Reading the Docker config (auths, identity tokens, `credsStore`, `credHelpers`) is done by the
//! `docker_credential` crate; it is read-only, so `login`/`logout` write `config.json` (or call
//! the helper's `store`/`erase`) here.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::error::{Error, IoContext, Result};
use crate::reference::credential_key;

/// What we authenticate with at one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in the Docker config).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Never print secrets, even in debug traces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// Where to look for credentials, in order: explicit ones, then a config file.
#[derive(Clone, Debug, Default)]
pub struct CredentialSource {
    /// From `-u/-p` or `--password-stdin`.
    pub explicit: Option<Credential>,
    /// `--registry-config FILE`; default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub config_file: Option<PathBuf>,
}

impl CredentialSource {
    /// The credential for `registry` (host[:port]), if any is configured.
    /// Runs credential helpers, so call it off the async runtime (`spawn_blocking`).
    /// Docker Hub (`docker.io`) is looked up under `https://index.docker.io/v1/` first, where
    /// docker and oras store it, then under the name given.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>> {
        if let Some(c) = &self.explicit {
            return Ok(Some(c.clone()));
        }
        let key = credential_key(registry);
        match self.lookup_key(key)? {
            None if key != registry => self.lookup_key(registry),
            found => Ok(found),
        }
    }

    fn lookup_key(&self, registry: &str) -> Result<Option<Credential>> {
        let path = self.config_path();
        let Ok(file) = std::fs::File::open(&path) else {
            return Ok(None);
        };
        use docker_credential::{CredentialRetrievalError as E, DockerCredential as D};
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), registry)
        {
            Ok(D::UsernamePassword(username, password)) => {
                Ok(Some(Credential::Basic { username, password }))
            }
            Ok(D::IdentityToken(t)) => Ok(Some(Credential::IdentityToken(t))),
            Err(E::NoCredentialConfigured) => Ok(None),
            // A helper that does not know this registry answers with an error: anonymous.
            Err(E::HelperFailure { .. }) => Ok(None),
            Err(e) => Err(Error::Credentials(format!(
                "{}: {e}; fix or remove the entry for {registry}",
                path.display()
            ))),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_file.clone().unwrap_or_else(default_config_path)
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as Docker and oras use.
pub fn default_config_path() -> PathBuf {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
        .unwrap_or_else(|| PathBuf::from(".docker"));
    dir.join("config.json")
}

fn read_config(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Default::default()),
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Credentials(format!("{} is not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Replaces the config file atomically, private to the user (it holds secrets).
fn write_config(path: &Path, config: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).ctx(|| format!("writing in {}", dir.display()))?;
    let mut bytes = serde_json::to_vec_pretty(config).expect("JSON map serializes");
    bytes.push(b'\n');
    tmp.write_all(&bytes).ctx(|| "writing credentials".into())?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("replacing {}", path.display()), e.error))?;
    Ok(())
}

/// The helper that stores credentials for `registry`, if the config names one.
fn helper_for(
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Option<String> {
    config
        .get("credHelpers")
        .and_then(|h| h.get(registry))
        .or_else(|| config.get("credsStore"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn run_helper(helper: &str, verb: &str, input: &[u8]) -> Result<()> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Credentials(format!("cannot run {program}: {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .ctx(|| format!("talking to {program}"))?;
    let out = child
        .wait_with_output()
        .ctx(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        return Err(Error::Credentials(format!(
            "{program} {verb} failed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(())
}

/// Stores `credential` for `registry` as `docker login` does: in the credential helper the
/// config names, else base64 in `auths`; Docker Hub's under `https://index.docker.io/v1/`.
pub fn store_credential(config_path: &Path, registry: &str, credential: &Credential) -> Result<()> {
    let registry = credential_key(registry);
    let mut config = read_config(config_path)?;
    let (username, secret) = match credential {
        Credential::Basic { username, password } => (username.as_str(), password.as_str()),
        Credential::IdentityToken(t) => ("<token>", t.as_str()),
    };
    if let Some(helper) = helper_for(&config, registry) {
        let input =
            serde_json::json!({"ServerURL": registry, "Username": username, "Secret": secret});
        return run_helper(&helper, "store", input.to_string().as_bytes());
    }
    let entry = match credential {
        Credential::Basic { username, password } => serde_json::json!({
            "auth": base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        }),
        Credential::IdentityToken(t) => serde_json::json!({"identitytoken": t}),
    };
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}));
    let Some(auths) = auths.as_object_mut() else {
        return Err(Error::Credentials(format!(
            "{}: \"auths\" is not an object",
            config_path.display()
        )));
    };
    auths.insert(registry.to_string(), entry);
    write_config(config_path, &config)
}

/// Removes stored credentials for `registry`. Returns whether there were any. Docker Hub's
/// are removed under both its keys (`https://index.docker.io/v1/` and the name as given, which
/// older versions wrote), since a lookup falls back from one to the other.
pub fn remove_credential(config_path: &Path, registry: &str) -> Result<bool> {
    let mut removed = false;
    let mut keys = vec![credential_key(registry)];
    if keys[0] != registry {
        keys.push(registry);
    }
    for key in keys {
        let mut config = read_config(config_path)?;
        if let Some(helper) = helper_for(&config, key) {
            run_helper(&helper, "erase", key.as_bytes())?;
            removed = true;
            continue;
        }
        let here = config
            .get_mut("auths")
            .and_then(|a| a.as_object_mut())
            .and_then(|a| a.remove(key))
            .is_some();
        if here {
            write_config(config_path, &config)?;
            removed = true;
        }
    }
    Ok(removed)
}

/// A `WWW-Authenticate` challenge, reduced to what we act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
        /// `error="insufficient_scope"`: the token was fine but may not do this.
        error: Option<String>,
    },
}

impl Challenge {
    /// Whether the registry says the credentials are valid but lack the access asked for.
    pub fn insufficient_scope(&self) -> bool {
        matches!(self, Challenge::Bearer { error: Some(e), .. } if e == "insufficient_scope")
    }
}

/// Parses a `WWW-Authenticate` header (via `http-auth`); `None` if no scheme we support.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges = http_auth::parse_challenges(header).ok()?;
    for c in challenges {
        let param = |name: &str| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        if c.scheme.eq_ignore_ascii_case("bearer") {
            return Some(Challenge::Bearer {
                realm: param("realm")?,
                service: param("service"),
                scope: param("scope"),
                error: param("error"),
            });
        }
        if c.scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
    }
    None
}

/// Bearer tokens by scope set, with their expiry. A registry may grant fewer scopes than asked
/// for; we find out only when a request fails, then ask again.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, scope_key: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap();
        let (token, expires) = tokens.get(scope_key)?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub fn put(&self, scope_key: &str, token: String, expires_in: Duration) {
        // Refresh a little early so a token never expires mid-request.
        let margin = Duration::from_secs(5).min(expires_in / 2);
        self.tokens.lock().unwrap().insert(
            scope_key.to_string(),
            (token, Instant::now() + expires_in - margin),
        );
    }

    pub fn forget(&self, scope_key: &str) {
        self.tokens.lock().unwrap().remove(scope_key);
    }
}

/// The JSON a token endpoint answers with.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime (60 s when unsaid, as the spec says).
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let secs = self.expires_in.filter(|s| *s > 0).unwrap_or(60);
        Some((token, Duration::from_secs(secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
                error: None,
            })
        );
        let c = parse_challenge(
            r#"Bearer realm="https://a/token",service="s",scope="repository:a/b:pull,push",error="insufficient_scope""#,
        )
        .unwrap();
        assert!(c.insufficient_scope());
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("garbage ="), None);
    }

    #[test]
    fn stores_and_removes_credentials_in_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"other":1}"#).unwrap();
        let cred = Credential::Basic {
            username: "u".into(),
            password: "p:w".into(),
        };
        store_credential(&path, "reg.example:5000", &cred).unwrap();
        let source = CredentialSource {
            explicit: None,
            config_file: Some(path.clone()),
        };
        assert_eq!(source.lookup("reg.example:5000").unwrap(), Some(cred));
        assert_eq!(source.lookup("elsewhere").unwrap(), None);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"other\""));
        assert!(remove_credential(&path, "reg.example:5000").unwrap());
        assert_eq!(source.lookup("reg.example:5000").unwrap(), None);
    }

    #[test]
    fn docker_hub_credentials_are_found_as_docker_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let source = CredentialSource {
            explicit: None,
            config_file: Some(path.clone()),
        };
        let basic = |u: &str| Credential::Basic {
            username: u.into(),
            password: "p".into(),
        };
        // What `docker login` writes.
        let auth = base64::engine::general_purpose::STANDARD.encode("hub:p");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        for name in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(source.lookup(name).unwrap(), Some(basic("hub")), "{name}");
        }
        assert_eq!(source.lookup("ghcr.io").unwrap(), None);
        // An entry keyed `docker.io` (written by hand or by other tools) is found too.
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"docker.io":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(source.lookup("docker.io").unwrap(), Some(basic("hub")));
        // Our own login stores where docker looks, and logout removes it.
        std::fs::remove_file(&path).unwrap();
        store_credential(&path, "docker.io", &basic("me")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("https://index.docker.io/v1/"), "{text}");
        assert_eq!(source.lookup("docker.io").unwrap(), Some(basic("me")));
        assert!(remove_credential(&path, "docker.io").unwrap());
        assert_eq!(source.lookup("docker.io").unwrap(), None);
        // Logout also removes an entry under the plain name, which lookup would still find.
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"docker.io":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert!(remove_credential(&path, "docker.io").unwrap());
        assert_eq!(source.lookup("docker.io").unwrap(), None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
