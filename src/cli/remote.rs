//! Flags shared by every command that talks to a registry, and `login`/`logout`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use oras_fs::auth::{self, Credential, CredentialSource};
use oras_fs::reference::Reference;
use oras_fs::registry::{Access, Client, ClientOptions, Repository, Request, SpeedLimit};
use oras_fs::{Error, Result};

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
}

impl RemoteArgs {
    fn credential(&self) -> Result<Option<Credential>> {
        let password = if self.password_stdin {
            if self.password.is_some() {
                return Err(Error::Usage(
                    "--password and --password-stdin are mutually exclusive".into(),
                ));
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::io("reading the password from stdin", e))?;
            Some(s.trim_end_matches(['\n', '\r']).to_string())
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
        })
    }

    pub fn repository(&self, reference: &Reference) -> Result<Repository> {
        Repository::for_reference(reference, self.client_options(reference.is_localhost())?)
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
    let mut options = args.remote.client_options(local.is_localhost())?;
    let Some(credential) = options.credentials.explicit.clone() else {
        let hint = if std::io::stdin().is_terminal() {
            ""
        } else {
            " (stdin is not a terminal)"
        };
        return Err(Error::Usage(format!(
            "login needs credentials{hint}: oras-fs login {registry} -u USER --password-stdin"
        )));
    };
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
