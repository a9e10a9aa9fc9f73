//! Flags shared by every command that talks to a registry, and `login`/`logout`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use oras_fs::auth::{self, Credential, CredentialSource};
use oras_fs::reference::Reference;
use oras_fs::registry::mirrors::RegistriesConf;
use oras_fs::registry::{
    header_map, Access, Client, ClientOptions, ReferrersCapability, Repository, Request,
    ResolveOverride, SpeedLimit,
};
use oras_fs::{Error, Result};

/// Where `mount` hands its `-H` headers to its background process: values may be tokens,
/// and a long-lived process's command line is readable by every user (its environment is not).
pub const HEADERS_ENV: &str = "ORAS_FS_MOUNT_HEADERS";

/// The `-H` headers a background mount process got from the `mount` that started it.
fn inherited_headers() -> Vec<String> {
    std::env::var(HEADERS_ENV)
        .map(|h| h.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Registry username.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Registry password or identity token (prefer --password-stdin: flags show in `ps`).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password or identity token from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Credentials file to use instead of the Docker config (~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// Use HTTP instead of HTTPS (the default for localhost and 127.0.0.1).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept any TLS certificate of the registry.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) too.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Client certificate (PEM) for registries that require one (with --key-file).
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Registry identity token (an OAuth2 refresh token; prefer --identity-token-stdin).
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["username", "password", "password_stdin", "identity_token_stdin"])]
    pub identity_token: Option<String>,
    /// Read the identity token from stdin.
    #[arg(long, conflicts_with_all = ["username", "password", "password_stdin"])]
    pub identity_token_stdin: bool,
    /// Add a header to every request, to the registry and its token service (repeatable).
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,
    /// Connect to ADDRESS for HOST:PORT instead of asking DNS (repeatable); ADDRESS_PORT,
    /// if given, must equal PORT.
    #[arg(long, value_name = "HOST:PORT:ADDRESS[:ADDRESS_PORT]")]
    pub resolve: Vec<ResolveOverride>,
    /// List and record referrers by the referrers API only (v1.1-referrers-api) or by the
    /// tag schema only (v1.1-referrers-tag). Default: the API, else the tag schema.
    #[arg(long, value_name = "SPEC")]
    pub distribution_spec: Option<ReferrersCapability>,
    /// Registry mirrors and locations for reads (containers' registries.conf, v2). Default:
    /// ~/.config/containers/registries.conf, else /etc/containers/registries.conf.
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
    /// Speak HTTP/1.1 only (as curl's --http1.1). Without it, HTTPS registries are offered
    /// HTTP/2 and fall back to HTTP/1.1. Also ORAS_FS_HTTP1=1 (which a mount's background
    /// process inherits).
    #[arg(long = "http1.1")]
    pub http1_1: bool,
    /// Upload blobs in chunks of SIZE (e.g. 16M; one PATCH each, resumed after a dropped
    /// connection) instead of one request per blob. Without it, a blob the registry refuses
    /// as too large (413) is sent again in 16M chunks.
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
}

/// `--chunk-size`: a size above zero.
fn parse_chunk_size(s: &str) -> std::result::Result<u64, String> {
    match super::mount::parse_size(s)? {
        0 => Err("a chunk holds at least one byte (e.g. 16M)".into()),
        n => Ok(n),
    }
}

/// Reads a secret piped to stdin, without its final newline.
fn read_stdin_secret(what: &str) -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Error::io(format!("reading the {what} from stdin"), e))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// The remote flags of one side of `copy`, prefixed as oras spells them (`--from-username`,
/// `--to-plain-http`...). Given flags override the shared, unprefixed ones for that side.
macro_rules! side_remote_args {
    ($name:ident, $p:literal, $who:literal) => {
        #[derive(Args, Debug, Clone, Default)]
        pub struct $name {
            #[arg(id = concat!($p, "_username"), long = concat!($p, "-username"), value_name = "USER",
                  help = concat!("Registry username of the ", $who))]
            pub username: Option<String>,
            #[arg(id = concat!($p, "_password"), long = concat!($p, "-password"), value_name = "PASSWORD",
                  help = concat!("Registry password of the ", $who, " (prefer --", $p, "-password-stdin)"))]
            pub password: Option<String>,
            #[arg(id = concat!($p, "_password_stdin"), long = concat!($p, "-password-stdin"),
                  help = concat!("Read the password of the ", $who, " from stdin"))]
            pub password_stdin: bool,
            #[arg(id = concat!($p, "_identity_token"), long = concat!($p, "-identity-token"), value_name = "TOKEN",
                  help = concat!("Registry identity token of the ", $who))]
            pub identity_token: Option<String>,
            #[arg(id = concat!($p, "_identity_token_stdin"), long = concat!($p, "-identity-token-stdin"),
                  help = concat!("Read the identity token of the ", $who, " from stdin"))]
            pub identity_token_stdin: bool,
            #[arg(id = concat!($p, "_registry_config"), long = concat!($p, "-registry-config"), value_name = "FILE",
                  help = concat!("Credentials file for the ", $who))]
            pub registry_config: Option<PathBuf>,
            #[arg(id = concat!($p, "_plain_http"), long = concat!($p, "-plain-http"),
                  help = concat!("Use HTTP instead of HTTPS for the ", $who))]
            pub plain_http: bool,
            #[arg(id = concat!($p, "_insecure"), long = concat!($p, "-insecure"),
                  help = concat!("Accept any TLS certificate of the ", $who))]
            pub insecure: bool,
            #[arg(id = concat!($p, "_ca_file"), long = concat!($p, "-ca-file"), value_name = "FILE",
                  help = concat!("Trust this CA certificate (PEM) for the ", $who))]
            pub ca_file: Vec<PathBuf>,
            #[arg(id = concat!($p, "_cert_file"), long = concat!($p, "-cert-file"), value_name = "FILE",
                  requires = concat!($p, "_key_file"),
                  help = concat!("Client certificate (PEM) for the ", $who))]
            pub cert_file: Option<PathBuf>,
            #[arg(id = concat!($p, "_key_file"), long = concat!($p, "-key-file"), value_name = "FILE",
                  requires = concat!($p, "_cert_file"),
                  help = concat!("Private key (PEM) of --", $p, "-cert-file"))]
            pub key_file: Option<PathBuf>,
            #[arg(id = concat!($p, "_header"), long = concat!($p, "-header"), value_name = "'NAME: VALUE'",
                  help = concat!("Add a header to requests to the ", $who, " (repeatable)"))]
            pub headers: Vec<String>,
            #[arg(id = concat!($p, "_resolve"), long = concat!($p, "-resolve"),
                  value_name = "HOST:PORT:ADDRESS[:ADDRESS_PORT]",
                  help = concat!("Connect to ADDRESS for HOST:PORT of the ", $who, " (repeatable)"))]
            pub resolve: Vec<ResolveOverride>,
            #[arg(id = concat!($p, "_distribution_spec"), long = concat!($p, "-distribution-spec"),
                  value_name = "SPEC",
                  help = concat!("How referrers are listed and recorded at the ", $who,
                                 " (v1.1-referrers-api or v1.1-referrers-tag)"))]
            pub distribution_spec: Option<ReferrersCapability>,
        }

        impl $name {
            /// This side's flags over `shared`: a credential flag here replaces the shared
            /// credential; headers and overrides add to the shared ones.
            pub fn over(&self, shared: &RemoteArgs) -> RemoteArgs {
                let own_credential = self.username.is_some()
                    || self.password.is_some()
                    || self.password_stdin
                    || self.identity_token.is_some()
                    || self.identity_token_stdin;
                let cred = if own_credential {
                    RemoteArgs {
                        username: self.username.clone(),
                        password: self.password.clone(),
                        password_stdin: self.password_stdin,
                        identity_token: self.identity_token.clone(),
                        identity_token_stdin: self.identity_token_stdin,
                        ..Default::default()
                    }
                } else {
                    shared.clone()
                };
                let own_cert = self.cert_file.is_some();
                RemoteArgs {
                    registry_config: self
                        .registry_config
                        .clone()
                        .or_else(|| shared.registry_config.clone()),
                    plain_http: self.plain_http || shared.plain_http,
                    insecure: self.insecure || shared.insecure,
                    ca_file: if self.ca_file.is_empty() {
                        shared.ca_file.clone()
                    } else {
                        self.ca_file.clone()
                    },
                    cert_file: if own_cert {
                        self.cert_file.clone()
                    } else {
                        shared.cert_file.clone()
                    },
                    key_file: if own_cert {
                        self.key_file.clone()
                    } else {
                        shared.key_file.clone()
                    },
                    headers: [shared.headers.clone(), self.headers.clone()].concat(),
                    resolve: [shared.resolve.clone(), self.resolve.clone()].concat(),
                    distribution_spec: self.distribution_spec.or(shared.distribution_spec),
                    http1_1: shared.http1_1,
                    chunk_size: shared.chunk_size,
                    registries_conf: shared.registries_conf.clone(),
                    username: cred.username,
                    password: cred.password,
                    password_stdin: cred.password_stdin,
                    identity_token: cred.identity_token,
                    identity_token_stdin: cred.identity_token_stdin,
                }
            }

            fn reads_stdin(&self) -> bool {
                self.password_stdin || self.identity_token_stdin
            }
        }
    };
}

side_remote_args!(FromRemoteArgs, "from", "source");
side_remote_args!(ToRemoteArgs, "to", "destination");

/// The remote flags of each side of `copy`: `shared` (unprefixed, for both) under each side's
/// own. Stdin is read here, once: only one flag may ask for it.
pub fn copy_sides(
    shared: &RemoteArgs,
    from: &FromRemoteArgs,
    to: &ToRemoteArgs,
) -> Result<(RemoteArgs, RemoteArgs)> {
    let shared_stdin = shared.password_stdin || shared.identity_token_stdin;
    if [shared_stdin, from.reads_stdin(), to.reads_stdin()]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        return Err(Error::Usage(
            "only one flag may read stdin (--password-stdin, --from-password-stdin, \
             --to-password-stdin or an --identity-token-stdin)"
                .into(),
        ));
    }
    let mut shared = shared.clone();
    shared.take_stdin()?;
    let mut from = from.over(&shared);
    from.take_stdin()?;
    let mut to = to.over(&shared);
    to.take_stdin()?;
    Ok((from, to))
}

impl RemoteArgs {
    /// Reads a secret the flags ask to read from stdin now, so it is read once however many
    /// registries use these flags.
    fn take_stdin(&mut self) -> Result<()> {
        if self.identity_token_stdin {
            self.identity_token = Some(read_stdin_secret("identity token")?);
            self.identity_token_stdin = false;
        }
        if self.password_stdin {
            if self.password.is_some() {
                return Err(Error::Usage(
                    "--password and --password-stdin are mutually exclusive".into(),
                ));
            }
            self.password = Some(read_stdin_secret("password")?);
            self.password_stdin = false;
        }
        Ok(())
    }

    fn credential(&self) -> Result<Option<Credential>> {
        if self.identity_token_stdin {
            return Ok(Some(Credential::IdentityToken(read_stdin_secret(
                "identity token",
            )?)));
        }
        if let Some(t) = &self.identity_token {
            return Ok(Some(Credential::IdentityToken(t.clone())));
        }
        let password = if self.password_stdin {
            if self.password.is_some() {
                return Err(Error::Usage(
                    "--password and --password-stdin are mutually exclusive".into(),
                ));
            }
            Some(read_stdin_secret("password")?)
        } else {
            self.password.clone()
        };
        Ok(match (&self.username, password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credential::Basic {
                username: u.clone(),
                password: p,
            }),
            (_, Some(_)) => return Err(Error::Usage("a password needs --username (-u)".into())),
            (Some(_), None) => {
                return Err(Error::Usage(
                    "--username needs a password: add --password-stdin (or -p)".into(),
                ))
            }
            (None, None) => None,
        })
    }

    /// Client options for a registry; localhost speaks plain HTTP unless told otherwise.
    pub fn client_options(&self, registry_is_localhost: bool) -> Result<ClientOptions> {
        let plain_by_default = registry_is_localhost && self.ca_file.is_empty() && !self.insecure;
        Ok(ClientOptions {
            plain_http: self.plain_http || plain_by_default,
            plain_http_by_default: !self.plain_http && plain_by_default,
            insecure: self.insecure,
            ca_files: self.ca_file.clone(),
            credentials: CredentialSource {
                explicit: self.credential()?,
                config_file: self.registry_config.clone(),
            },
            retry: Default::default(),
            timeout: Some(Duration::from_secs(30)),
            speed_limit: SpeedLimit::from_env()?,
            headers: header_map(&[self.headers.clone(), inherited_headers()].concat())?,
            client_cert: self.cert_file.clone().zip(self.key_file.clone()),
            resolve: self.resolve.clone(),
            referrers: self.distribution_spec.unwrap_or_default(),
            http1_only: self.http1_1 || env_flag("ORAS_FS_HTTP1")?,
            chunk_size: self.chunk_size,
        })
    }

    pub fn repository(&self, reference: &Reference) -> Result<Repository> {
        let conf = RegistriesConf::load(self.registries_conf.as_deref())?;
        let options = self.client_options(reference.is_localhost())?;
        Repository::open(reference, options, conf.as_ref())
    }
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Registry host[:port].
    pub registry: String,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let registry = args.registry.trim_end_matches('/').to_string();
    let local: Reference = format!("{registry}/x").parse()?;
    let mut remote = args.remote.clone();
    // `-u USER` alone at a terminal: ask for the password only, as oras does.
    if remote.username.is_some()
        && remote.password.is_none()
        && !remote.password_stdin
        && std::io::stdin().is_terminal()
    {
        let tty = |e| Error::io("reading from the terminal", e);
        remote.password = Some(rpassword::prompt_password("Password: ").map_err(tty)?);
    }
    let mut options = remote.client_options(local.is_localhost())?;
    let credential = match options.credentials.explicit.clone() {
        Some(c) => c,
        None if std::io::stdin().is_terminal() => prompt_credential()?,
        None => {
            return Err(Error::Usage(format!(
                "login needs credentials (stdin is not a terminal): \
                 oras-fs login {registry} -u USER --password-stdin"
            )))
        }
    };
    options.credentials.explicit = Some(credential.clone());
    options.credentials.config_file = None;
    let client = Client::new(&registry, options)?;
    // GET /v2/ with the credentials proves them (and fetches a token where the registry uses them).
    let req = Request::new(reqwest::Method::GET, client.url(""), None, Access::Pull);
    let resp = client.send(&req).await?;
    if !resp.status().is_success() {
        return Err(client.error_for(resp, "login").await);
    }
    let path = args
        .remote
        .registry_config
        .clone()
        .unwrap_or_else(auth::default_config_path);
    auth::store_credential(&path, &registry, &credential)?;
    outln!("Login Succeeded");
    Ok(())
}

/// Asks at the terminal, as oras does: a username, then its password (not echoed); no
/// username means an identity token (not echoed).
fn prompt_credential() -> Result<Credential> {
    let tty = |e| Error::io("reading from the terminal", e);
    eprint!("Username: ");
    let mut username = String::new();
    std::io::stdin().read_line(&mut username).map_err(tty)?;
    let username = username.trim().to_string();
    if username.is_empty() {
        let token = rpassword::prompt_password("Token: ").map_err(tty)?;
        if token.is_empty() {
            return Err(Error::Usage("an identity token is required".into()));
        }
        return Ok(Credential::IdentityToken(token));
    }
    let password = rpassword::prompt_password("Password: ").map_err(tty)?;
    if password.is_empty() {
        return Err(Error::Usage("a password is required".into()));
    }
    Ok(Credential::Basic { username, password })
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Registry host[:port].
    pub registry: String,
    /// Credentials file to use instead of the Docker config.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let path = args
        .registry_config
        .unwrap_or_else(auth::default_config_path);
    if auth::remove_credential(&path, args.registry.trim_end_matches('/'))? {
        outln!("Removing login credentials for {}", args.registry);
    } else {
        eprintln!("Not logged in to {}", args.registry);
    }
    Ok(())
}

/// Whether the boolean environment variable `name` is on: `1`, `true`, `yes`, `on` (any case);
/// unset, empty, `0`, `false`, `no`, `off`: off. Anything else is an error that names it. The
/// one parser of the `ORAS_FS_*` switches.
pub(super) fn env_flag(name: &str) -> Result<bool> {
    let Ok(v) = std::env::var(name) else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(Error::Usage(format!(
            "{name}={v:?}: expected 1 (on) or 0 (off)"
        ))),
    }
}
