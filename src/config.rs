//! Settings: embedded defaults, an optional file, then environment variables.
//!
//! The defaults live in `config/default.toml` and are compiled into the binary
//! so that `esorisk serve` works on a machine with no configuration at all.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snafu::{ResultExt, Snafu};

/// The embedded default configuration (also the documentation of every key).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Snafu)]
pub enum ConfigError {
    #[snafu(display("cannot read settings: {source}"))]
    Load { source: config::ConfigError },
    /// A setting with a value it does not take: `key = value: reason`, or
    /// `key: reason` where the reason names the value (an entry of a list)
    /// or says that it is missing.
    #[snafu(display(
        "invalid setting {key}{}: {reason}",
        value.as_deref().map(|v| format!(" = {v}")).unwrap_or_default()
    ))]
    Invalid {
        key: String,
        value: Option<String>,
        reason: String,
    },
    #[snafu(display("cannot resolve host {host:?} of allowed caller {ae_title:?}: {source}"))]
    Resolve {
        host: String,
        ae_title: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub dicom: DicomSettings,
    pub storage: StorageSettings,
    pub server: ServerSettings,
    pub logging: LoggingSettings,
    pub dosiomics: DosiomicsSettings,
    pub model: ModelSettings,
    pub pipeline: PipelineSettings,
    pub train: crate::model::train::TrainConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSettings {
    pub ae_title: String,
    pub bind: String,
    pub port: u16,
    pub require_called_ae_title: bool,
    pub max_associations: usize,
    pub max_pdu: u32,
    pub read_timeout_secs: u64,
    pub write_timeout_secs: u64,
    pub accept_encapsulated: bool,
    /// Tables, or in the environment `AE[@host][,…]`.
    #[serde(deserialize_with = "tables_or_string")]
    pub allowed_callers: Vec<AllowedCaller>,
    pub tls: TlsSettings,
    /// Fault injection for tests: `panic-reading-data-set`, `panic-in-association`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fault: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedCaller {
    pub ae_title: String,
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub enabled: bool,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// Mutual TLS: callers must present a certificate of these CAs.
    #[serde(default)]
    pub client_ca_certificates: PathBuf,
}

/// TLS for the deliveries (`[pipeline.tls]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSettings {
    pub ca_certificates: PathBuf,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub min_free_mb: u64,
    pub fsync: bool,
    #[serde(default)]
    pub retention_days: u64,
    #[serde(default = "hourly")]
    pub retention_check_secs: u64,
    /// Days the `associations` log is kept; 0: for ever.
    #[serde(default = "a_year")]
    pub association_log_days: u64,
}

fn a_year() -> u64 {
    365
}

fn hourly() -> u64 {
    3600
}

fn sixty() -> u64 {
    60
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    pub enabled: bool,
    pub stable_seconds: u64,
    pub poll_seconds: u64,
    pub workers: usize,
    pub lease_seconds: u64,
    pub max_attempts: u32,
    pub retry_base_seconds: u64,
    pub not_scored_sr: bool,
    /// Tables, or in the environment `AE@host:port[+tls][,…]`.
    #[serde(deserialize_with = "tables_or_string")]
    pub destinations: Vec<Destination>,
    pub send_back_port: u16,
    /// Send back over TLS (with `pipeline.tls`).
    #[serde(default)]
    pub send_back_tls: bool,
    #[serde(default)]
    pub tls: ClientTlsSettings,
    pub delivery_max_attempts: u32,
    pub delivery_retry_base_seconds: u64,
    /// The longest wait between two tries of a delivery.
    pub delivery_retry_max_seconds: u64,
    /// How long to wait for a destination's C-STORE response.
    #[serde(default = "sixty")]
    pub delivery_response_seconds: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_claimed_seconds: u64,
    /// Fault injection for tests: `panic-in-scoring`, `panic-in-delivery`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fault: String,
}

impl PipelineSettings {
    /// Whether any delivery goes over TLS (and needs `pipeline.tls`).
    pub fn uses_tls(&self) -> bool {
        self.send_back_tls || self.destinations.iter().any(|d| d.tls)
    }
}

/// An entry of a list setting that the environment can give as one
/// string of comma-separated entries.
trait Entry: Sized + serde::de::DeserializeOwned {
    /// The string form, for the error message.
    const FORM: &'static str;
    fn from_entry(s: &str) -> Option<Self>;
}

/// A list setting as TOML tables, or (handy in the environment) one string
/// `entry[,entry…]`. A visitor rather than an untagged enum, so that a
/// misspelt key in a table is reported as such, not as "no variant
/// matched".
fn tables_or_string<'de, D: serde::Deserializer<'de>, T: Entry>(d: D) -> Result<Vec<T>, D::Error> {
    struct Form<T>(std::marker::PhantomData<T>);
    impl<'de, T: Entry> serde::de::Visitor<'de> for Form<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of tables, or \"{},…\"", T::FORM)
        }

        fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Self::Value, E> {
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    T::from_entry(s)
                        .ok_or_else(|| E::custom(format!("{s:?}: expected {}", T::FORM)))
                })
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(d) = seq.next_element::<T>()? {
                out.push(d);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Form(std::marker::PhantomData))
}

impl Entry for Destination {
    const FORM: &'static str = "AE@host:port or AE@host:port+tls";
    fn from_entry(s: &str) -> Option<Self> {
        Destination::parse(s)
    }
}

impl Entry for AllowedCaller {
    const FORM: &'static str = "AE or AE@host";
    fn from_entry(s: &str) -> Option<Self> {
        let (ae, host) = match s.rsplit_once('@') {
            Some((ae, host)) => (ae, Some(host.to_string())),
            None => (s, None),
        };
        Some(AllowedCaller {
            ae_title: ae.to_string(),
            host,
        })
    }
}

/// A DICOM peer results are sent to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Associate over TLS (`pipeline.tls`).
    #[serde(default)]
    pub tls: bool,
    /// Which outputs go there: "sr" (the risk report, and the not-scored
    /// SR), "rtstruct" (the learned ROI); empty: all.
    #[serde(default)]
    pub objects: Vec<String>,
}

impl Destination {
    /// `AE@host:port`, or `AE@host:port+tls`, as the deliveries table
    /// records it.
    pub fn key(&self) -> String {
        let tls = if self.tls { "+tls" } else { "" };
        format!("{}@{}:{}{tls}", self.ae_title, self.host, self.port)
    }

    /// Whether outputs of `kind` (the `outputs.kind` column: sr,
    /// sr-not-scored, rtstruct) go to this destination.
    pub fn wants(&self, kind: &str) -> bool {
        let kind = if kind == "sr-not-scored" { "sr" } else { kind };
        self.objects.is_empty() || self.objects.iter().any(|o| o == kind)
    }

    pub fn parse(key: &str) -> Option<Destination> {
        let (key, tls) = match key.strip_suffix("+tls") {
            Some(k) => (k, true),
            None => (key, false),
        };
        let (ae, addr) = key.rsplit_once('@')?;
        let (host, port) = addr.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        // As the settings check them: a usable AE title, a host, a port.
        (valid_ae_title(ae) && !host.is_empty() && port != 0).then(|| Destination {
            ae_title: ae.to_string(),
            host: host.to_string(),
            port,
            tls,
            objects: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub path: PathBuf,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DosiomicsSettings {
    pub bin_width_gy: f64,
    pub dose: crate::dosiomics::roi::DoseKind,
    pub alpha_beta_gy: f64,
    /// Isotropic voxel size (mm) the dose is interpolated to before the
    /// features; 0 keeps the dose grid.
    pub resample_mm: f64,
    pub model: PathBuf,
}

impl DosiomicsSettings {
    /// `resample_mm` as an option (0: none).
    pub fn resample(&self) -> Option<f64> {
        (self.resample_mm > 0.0).then_some(self.resample_mm)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// Load the embedded defaults, then `file` if given, then `ESORISK__*`
    /// environment variables, and check the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ESORISK")
                .prefix_separator("__")
                .separator("__")
                // Values stay text until a setting's type reads them: an AE
                // title "00042" is not the number 42.
                .try_parsing(false),
        );
        let settings: Settings = builder
            .build()
            .context(LoadSnafu)?
            .try_deserialize()
            .context(LoadSnafu)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings as a TOML file that `--config` reads back to the same
    /// settings (`esorisk settings`): what a site file can start from.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| e.to_string())
    }

    /// Check the values that deserialising lets through. Each error names
    /// the setting, the value it has (so that a value set in the
    /// environment, out of sight, can be found) and what it takes.
    fn validate(&self) -> Result<(), ConfigError> {
        // `key = value: reason`, with the value as TOML would write it.
        let invalid = |key: &str, value: &dyn std::fmt::Debug, reason: &str| ConfigError::Invalid {
            key: key.to_string(),
            value: Some(format!("{value:?}")),
            reason: reason.to_string(),
        };
        let d = &self.dicom;
        if let Some(why) = ae_title_problem(&d.ae_title) {
            return Err(invalid(
                "dicom.ae_title",
                &d.ae_title,
                &format!("it {why}; an AE title is {AE_TITLE_RULE}"),
            ));
        }
        if !["", "panic-reading-data-set", "panic-in-association"].contains(&d.fault.as_str()) {
            return Err(invalid(
                "dicom.fault",
                &d.fault,
                "leave it empty (tests only: panic-reading-data-set or panic-in-association)",
            ));
        }
        let pl = &self.pipeline;
        for (key, n) in [
            ("pipeline.workers", pl.workers as u64),
            ("pipeline.max_attempts", u64::from(pl.max_attempts)),
            (
                "pipeline.delivery_max_attempts",
                u64::from(pl.delivery_max_attempts),
            ),
        ] {
            if n == 0 {
                return Err(invalid(key, &n, "at least 1"));
            }
        }
        if pl.delivery_retry_max_seconds < pl.delivery_retry_base_seconds {
            return Err(invalid(
                "pipeline.delivery_retry_max_seconds",
                &pl.delivery_retry_max_seconds,
                &format!(
                    "at least pipeline.delivery_retry_base_seconds ({})",
                    pl.delivery_retry_base_seconds
                ),
            ));
        }
        if !["", "panic-in-scoring", "panic-in-delivery"].contains(&pl.fault.as_str()) {
            return Err(invalid(
                "pipeline.fault",
                &pl.fault,
                "leave it empty (tests only: panic-in-scoring or panic-in-delivery)",
            ));
        }
        for dest in &pl.destinations {
            let problem = match ae_title_problem(&dest.ae_title) {
                Some(why) => Some(format!(
                    "its AE title {why}; an AE title is {AE_TITLE_RULE}"
                )),
                None if dest.host.is_empty() => Some("it has no host".to_string()),
                None if dest.port == 0 => Some("its port is 0".to_string()),
                None => None,
            };
            if let Some(why) = problem {
                return Err(ConfigError::Invalid {
                    key: "pipeline.destinations".into(),
                    value: None,
                    reason: format!(
                        "destination {:?}: {why} (each needs ae_title, host and port)",
                        dest.key()
                    ),
                });
            }
            if let Some(o) = dest
                .objects
                .iter()
                .find(|o| !["sr", "rtstruct"].contains(&o.as_str()))
            {
                return Err(ConfigError::Invalid {
                    key: "pipeline.destinations".into(),
                    value: None,
                    reason: format!(
                        "destination {:?}: objects: {o:?} is not \"sr\" or \"rtstruct\"",
                        dest.key()
                    ),
                });
            }
        }
        if pl.uses_tls() && pl.tls.ca_certificates.as_os_str().is_empty() {
            let marked: Vec<String> = pl
                .destinations
                .iter()
                .filter(|d| d.tls)
                .map(Destination::key)
                .collect();
            let why = match (marked.as_slice(), pl.send_back_tls) {
                ([], _) => "pipeline.send_back_tls is on".to_string(),
                ([one], false) => format!("destination {one} is marked +tls"),
                (many, false) => format!("destinations {} are marked +tls", many.join(", ")),
                (many, true) => format!(
                    "pipeline.send_back_tls is on and {} marked +tls",
                    many.join(", ")
                ),
            };
            return Err(ConfigError::Invalid {
                key: "pipeline.tls.ca_certificates".into(),
                value: None,
                reason: format!(
                    "not set, but {why}: give a PEM file of the CA certificates that \
                     the TLS destinations' certificates chain to"
                ),
            });
        }
        let (cert, key) = (&pl.tls.certificate, &pl.tls.private_key);
        if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
            let (set, unset) = if key.as_os_str().is_empty() {
                (
                    ("pipeline.tls.certificate", cert),
                    "pipeline.tls.private_key",
                )
            } else {
                (
                    ("pipeline.tls.private_key", key),
                    "pipeline.tls.certificate",
                )
            };
            return Err(invalid(
                set.0,
                set.1,
                &format!(
                    "{unset} is not set; certificate and private_key go together (both or neither)"
                ),
            ));
        }
        let ds = &self.dosiomics;
        if !(ds.bin_width_gy.is_finite() && ds.bin_width_gy > 0.0) {
            return Err(invalid(
                "dosiomics.bin_width_gy",
                &ds.bin_width_gy,
                "a positive number of Gy",
            ));
        }
        if !(ds.resample_mm.is_finite() && (ds.resample_mm == 0.0 || ds.resample_mm >= 0.5)) {
            return Err(invalid(
                "dosiomics.resample_mm",
                &ds.resample_mm,
                "0 (the dose grid) or a voxel size of at least 0.5 mm",
            ));
        }
        if !(ds.alpha_beta_gy.is_finite() && ds.alpha_beta_gy > 0.0) {
            return Err(invalid(
                "dosiomics.alpha_beta_gy",
                &ds.alpha_beta_gy,
                "a positive number of Gy",
            ));
        }
        if !(1..=10_000).contains(&d.max_associations) {
            return Err(invalid(
                "dicom.max_associations",
                &d.max_associations,
                "1 to 10000",
            ));
        }
        if !(4096..=4_194_304).contains(&d.max_pdu) {
            return Err(invalid("dicom.max_pdu", &d.max_pdu, "4096 to 4194304"));
        }
        for caller in &d.allowed_callers {
            if let Some(why) = ae_title_problem(&caller.ae_title) {
                return Err(ConfigError::Invalid {
                    key: "dicom.allowed_callers".into(),
                    value: None,
                    reason: format!(
                        "{:?} is not an AE title: it {why}; an AE title is {AE_TITLE_RULE}",
                        caller.ae_title
                    ),
                });
            }
        }
        if d.tls.enabled {
            for (key, path) in [
                ("dicom.tls.certificate", &d.tls.certificate),
                ("dicom.tls.private_key", &d.tls.private_key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::Invalid {
                        key: key.into(),
                        value: None,
                        reason: "not set, but dicom.tls.enabled is true: TLS needs both \
                                 certificate and private_key (PEM files)"
                            .into(),
                    });
                }
            }
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "storage.data_dir",
                &self.storage.data_dir,
                "must not be empty",
            ));
        }
        for (key, days) in [
            ("storage.retention_days", self.storage.retention_days),
            (
                "storage.association_log_days",
                self.storage.association_log_days,
            ),
        ] {
            if days > 36_500 {
                return Err(invalid(
                    key,
                    &days,
                    "a number of days up to 36500 (0: keep for ever)",
                ));
            }
        }
        if !valid_log_filter(&self.logging.level) {
            return Err(invalid(
                "logging.level",
                &self.logging.level,
                "trace, debug, info, warn, error or off, or directives such as \"info,esorisk=debug\"",
            ));
        }
        let dev = self.model.device.as_str();
        if !(dev == "auto"
            || dev == "cpu"
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        {
            return Err(invalid("model.device", &dev, "auto, cpu or cuda:N"));
        }
        Ok(())
    }

    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        if self.storage.database.as_os_str().is_empty() {
            self.storage.data_dir.join("esorisk.db")
        } else {
            self.storage.database.clone()
        }
    }

    /// Resolve the allow-list hosts to addresses once, at start-up.
    pub fn resolve_allowed_callers(&self) -> Result<Vec<ResolvedCaller>, ConfigError> {
        use std::net::ToSocketAddrs;
        self.dicom
            .allowed_callers
            .iter()
            .map(|c| {
                let hosts = match c.host.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(h) => Some(match h.parse::<IpAddr>() {
                        Ok(ip) => vec![ip],
                        Err(_) => (h, 0)
                            .to_socket_addrs()
                            .context(ResolveSnafu {
                                host: h.to_string(),
                                ae_title: c.ae_title.clone(),
                            })?
                            .map(|a| a.ip())
                            .collect(),
                    }),
                };
                Ok(ResolvedCaller {
                    ae_title: c.ae_title.trim().to_string(),
                    hosts,
                })
            })
            .collect()
    }
}

/// An allow-list entry with its host resolved to addresses.
#[derive(Debug, Clone)]
pub struct ResolvedCaller {
    pub ae_title: String,
    /// `None`: any host.
    pub hosts: Option<Vec<IpAddr>>,
}

impl ResolvedCaller {
    pub fn admits(&self, calling_ae: &str, peer: IpAddr) -> bool {
        if self.ae_title != wire_ae_title(calling_ae) {
            return false;
        }
        match &self.hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| same_ip(*h, peer)),
        }
    }
}

/// Compare addresses treating IPv4-mapped IPv6 addresses as their IPv4 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// An AE title as it came from the network (an A-ASSOCIATE-RQ, or a row
/// that recorded one), without what PS3.5 makes insignificant: spaces at
/// either end, and the NUL padding some older peers send instead. Every
/// AE title from the wire is compared, stored and reused in this form.
pub fn wire_ae_title(raw: &str) -> &str {
    raw.trim_matches([' ', '\0'])
}

/// A log level, or comma-separated directives (`target=level`) with at
/// most one bare level: a word that is no level would otherwise be read as
/// a target name, and logging would silently stop.
fn valid_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !filter.trim().is_empty()
        && filter.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && level(l),
            None => level(d),
        })
}

/// An AE title is 1-16 characters of the default repertoire, no backslash or
/// control characters, and not only spaces.
pub fn valid_ae_title(ae: &str) -> bool {
    ae_title_problem(ae).is_none()
}

/// What an AE title is, for the messages that refuse one.
const AE_TITLE_RULE: &str = "1 to 16 printable ASCII characters, no backslash, not only spaces";

/// Why `ae` is not an AE title, to follow "it" ("is 20 characters
/// long"), or None.
fn ae_title_problem(ae: &str) -> Option<String> {
    if ae.trim().is_empty() {
        Some(
            if ae.is_empty() {
                "is empty"
            } else {
                "is only spaces"
            }
            .to_string(),
        )
    } else if ae.contains('\\') {
        Some("holds a backslash".into())
    } else if !ae.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Some("holds a character that is not printable ASCII".into())
    } else if ae.len() > 16 {
        Some(format!("is {} characters long", ae.len()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load() {
        let s = Settings::load(None).expect("defaults");
        assert_eq!(s.dicom.ae_title, "ESORISK");
        assert_eq!(s.dicom.port, 11112);
        assert_eq!(s.storage.data_dir, PathBuf::from("./var"));
        assert_eq!(s.database_path(), PathBuf::from("./var/esorisk.db"));
        assert!(s.dicom.allowed_callers.is_empty());
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[dicom]\nport = 4000\nallowed_callers = [ { ae_title = \"TPS\", host = \"127.0.0.1\" } ]\n",
        )
        .expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        assert_eq!(s.dicom.port, 4000);
        assert_eq!(s.dicom.ae_title, "ESORISK");
        let callers = s.resolve_allowed_callers().expect("resolve");
        assert!(callers[0].admits("TPS", "127.0.0.1".parse().expect("ip")));
        assert!(callers[0].admits("TPS ", "::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!callers[0].admits("TPS", "10.0.0.1".parse().expect("ip")));
        assert!(!callers[0].admits("OTHER", "127.0.0.1".parse().expect("ip")));
    }

    /// The settings `scripts/gpu-train` trains with: each file loads, and
    /// changes the training (a misspelt key would leave it as the default).
    #[test]
    fn experiment_settings_load_and_differ_from_the_defaults() {
        use crate::model::train::FusionFeatures;
        let defaults = Settings::load(None).expect("defaults").train;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/experiments");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("config/experiments") {
            let path = entry.expect("entry").path();
            let s = Settings::load(Some(&path)).expect("experiment settings");
            let t = s.train;
            assert_eq!(t.fusion_features, FusionFeatures::Predicted, "{path:?}");
            assert!(
                t.net != defaults.net
                    || t.input != defaults.input
                    || t.seed != defaults.seed
                    || t.epochs != defaults.epochs,
                "{path:?} trains what the defaults train"
            );
            n += 1;
        }
        assert!(n >= 4, "{n} experiment files");
    }

    #[test]
    fn destination_strings_are_checked_like_settings() {
        assert!(Destination::parse("TPS@host:104").is_some());
        assert!(Destination::parse("TPS@host:104+tls").is_some_and(|d| d.tls));
        for bad in [
            "@localhost:104",
            "T\\PS@localhost:104",
            "A_TITLE_FAR_TOO_LONG@localhost:104",
            "TPS@:104",
            "TPS@host:0",
            "TPS@host",
        ] {
            assert!(Destination::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "[dicom]\nae_title = \"THIS_TITLE_IS_FAR_TOO_LONG\"\n",
        )
        .expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(err.to_string().contains("dicom.ae_title"), "{err}");
        // A misspelt fault injection is refused, not silently ignored.
        std::fs::write(&path, "[pipeline]\nfault = \"panic_in_scoring\"\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(err.to_string().contains("pipeline.fault"), "{err}");
        std::fs::write(&path, "[dicom]\nfault = \"panic-in-scoring\"\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(err.to_string().contains("dicom.fault"), "{err}");
        // A level that is no level would be read as a target and silence
        // every line; a device that is none would leave the node unscoring.
        for (toml, key) in [
            ("[logging]\nlevel = \"warning\"\n", "logging.level"),
            (
                "[logging]\nlevel = \"info,esorisk=loud\"\n",
                "logging.level",
            ),
            ("[model]\ndevice = \"gpu\"\n", "model.device"),
            ("[model]\ndevice = \"cuda:\"\n", "model.device"),
            (
                "[storage]\nretention_days = 200000000\n",
                "storage.retention_days",
            ),
            (
                "[dicom]\nmax_associations = 4611686018427387904\n",
                "dicom.max_associations",
            ),
        ] {
            std::fs::write(&path, toml).expect("write");
            let err = Settings::load(Some(&path)).expect_err(toml);
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        for toml in [
            "[logging]\nlevel = \"WARN\"\n",
            "[logging]\nlevel = \"info,esorisk=debug\"\n",
            "[model]\ndevice = \"cuda:1\"\n",
        ] {
            std::fs::write(&path, toml).expect("write");
            Settings::load(Some(&path)).expect(toml);
        }
    }

    /// Every refused value is named in the message, beside the setting and
    /// what it takes: a value set in the environment is out of sight, and
    /// "invalid setting logging.level" alone leaves the admin guessing.
    #[test]
    fn refused_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        for (toml, says) in [
            (
                "[logging]\nlevel = \"verbose\"\n",
                "invalid setting logging.level = \"verbose\": trace, debug, info",
            ),
            (
                "[dicom]\nae_title = \"ABCDEFGHIJKLMNOPQRST\"\n",
                "invalid setting dicom.ae_title = \"ABCDEFGHIJKLMNOPQRST\": it is 20 characters long; \
                 an AE title is 1 to 16",
            ),
            (
                "[dicom]\nae_title = \"  \"\n",
                "dicom.ae_title = \"  \": it is only spaces",
            ),
            (
                "[dicom]\nfault = \"panic\"\n",
                "dicom.fault = \"panic\": leave it empty",
            ),
            (
                "[pipeline]\nfault = \"panic_in_scoring\"\n",
                "pipeline.fault = \"panic_in_scoring\": leave it empty",
            ),
            ("[pipeline]\nworkers = 0\n", "pipeline.workers = 0: at least 1"),
            (
                "[pipeline]\nmax_attempts = 0\n",
                "pipeline.max_attempts = 0: at least 1",
            ),
            (
                "[pipeline]\ndelivery_max_attempts = 0\n",
                "pipeline.delivery_max_attempts = 0: at least 1",
            ),
            (
                "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 0 } ]\n",
                "pipeline.destinations: destination \"TPS@tps:0\": its port is 0",
            ),
            (
                "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"\", port = 104 } ]\n",
                "destination \"TPS@:104\": it has no host",
            ),
            (
                "[pipeline]\ndestinations = [ { ae_title = \"A_TITLE_TOO_LONG_\", host = \"tps\", port = 104 } ]\n",
                "destination \"A_TITLE_TOO_LONG_@tps:104\": its AE title is 17 characters long",
            ),
            (
                "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104, objects = [\"dose\"] } ]\n",
                "destination \"TPS@tps:104\": objects: \"dose\" is not \"sr\" or \"rtstruct\"",
            ),
            // The example of config/default.toml, without the CAs.
            (
                "[pipeline]\ndestinations = \"TPS@10.0.0.5:104,PACS@pacs.example.org:2762+tls\"\n",
                "invalid setting pipeline.tls.ca_certificates: not set, but destination \
                 PACS@pacs.example.org:2762+tls is marked +tls",
            ),
            (
                "[pipeline]\nsend_back_port = 11112\nsend_back_tls = true\n",
                "pipeline.tls.ca_certificates: not set, but pipeline.send_back_tls is on",
            ),
            (
                "[pipeline.tls]\ncertificate = \"node.pem\"\n",
                "pipeline.tls.certificate = \"node.pem\": pipeline.tls.private_key is not set",
            ),
            (
                "[pipeline.tls]\nprivate_key = \"node.key\"\n",
                "pipeline.tls.private_key = \"node.key\": pipeline.tls.certificate is not set",
            ),
            (
                "[dosiomics]\nbin_width_gy = -1.0\n",
                "dosiomics.bin_width_gy = -1.0: a positive number of Gy",
            ),
            (
                "[dosiomics]\nresample_mm = 0.1\n",
                "dosiomics.resample_mm = 0.1: 0 (the dose grid) or",
            ),
            (
                "[dosiomics]\nalpha_beta_gy = 0.0\n",
                "dosiomics.alpha_beta_gy = 0.0: a positive number of Gy",
            ),
            (
                "[dicom]\nmax_associations = 0\n",
                "dicom.max_associations = 0: 1 to 10000",
            ),
            (
                "[dicom]\nmax_associations = 20000\n",
                "dicom.max_associations = 20000: 1 to 10000",
            ),
            ("[dicom]\nmax_pdu = 100\n", "dicom.max_pdu = 100: 4096 to 4194304"),
            (
                "[dicom]\nallowed_callers = [ { ae_title = \"A\\\\B\" } ]\n",
                "dicom.allowed_callers: \"A\\\\B\" is not an AE title: it holds a backslash",
            ),
            (
                "[dicom.tls]\nenabled = true\ncertificate = \"node.pem\"\n",
                "dicom.tls.private_key: not set, but dicom.tls.enabled is true",
            ),
            ("[storage]\ndata_dir = \"\"\n", "storage.data_dir = \"\": must not be empty"),
            (
                "[storage]\nretention_days = 200000000\n",
                "storage.retention_days = 200000000: a number of days up to 36500",
            ),
            (
                "[storage]\nassociation_log_days = 40000\n",
                "storage.association_log_days = 40000: a number of days up to 36500",
            ),
            ("[model]\ndevice = \"gpu\"\n", "model.device = \"gpu\": auto, cpu or cuda:N"),
        ] {
            std::fs::write(&path, toml).expect("write");
            let err = Settings::load(Some(&path)).expect_err(toml);
            assert!(err.to_string().contains(says), "{toml}: {err}");
        }
    }

    /// A misspelt key is an error naming it, in every section and in a
    /// destination's table: `destination = …` for `destinations` used to
    /// leave the node sending its results nowhere, silently.
    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo.toml");
        for (text, key) in [
            ("[dicom]\nae_tile = \"X\"\n", "ae_tile"),
            ("[pipeline]\ndestination = \"TPS@tps:104\"\n", "destination"),
            ("[storage]\nretention_day = 30\n", "retention_day"),
            ("[train]\nepoch = 3\n", "epoch"),
            ("[train.net]\nwidht = 8\n", "widht"),
            ("[nonsense]\nx = 1\n", "nonsense"),
            (
                "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104, object = [\"sr\"] } ]\n",
                "object",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Settings::load(Some(&path)).expect_err(key);
            assert!(err.to_string().contains(&format!("unknown field `{key}`")), "{err}");
        }
    }

    /// Allowed callers and destinations as one string, the form the
    /// environment gives (`ESORISK__DICOM__ALLOWED_CALLERS=TPS,PACS@host`).
    #[test]
    fn list_settings_read_from_one_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[dicom]\nallowed_callers = \"TPS, PACS@127.0.0.1\"\n[pipeline]\ndestinations = \"TPS@tps:104\"\n",
        )
        .expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        let callers: Vec<(&str, Option<&str>)> = s
            .dicom
            .allowed_callers
            .iter()
            .map(|c| (c.ae_title.as_str(), c.host.as_deref()))
            .collect();
        assert_eq!(callers, [("TPS", None), ("PACS", Some("127.0.0.1"))]);
        assert_eq!(s.pipeline.destinations[0].key(), "TPS@tps:104");
        std::fs::write(&path, "[pipeline]\ndestinations = \"TPS\"\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("no host");
        assert!(
            err.to_string().contains("\"TPS\": expected AE@host:port"),
            "{err}"
        );
    }

    /// `esorisk settings` prints a settings file that reads back to the
    /// same settings, lists and optional keys included.
    #[test]
    fn printed_settings_read_back_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site.toml");
        std::fs::write(
            &site,
            "[dicom]\nport = 4242\nallowed_callers = [ { ae_title = \"TPS\", host = \"127.0.0.1\" }, { ae_title = \"PACS\" } ]\n\
             [pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104, objects = [\"rtstruct\"] } ]\n\
             [train.net]\nwidth = 8\n",
        )
        .expect("write");
        let first = Settings::load(Some(&site)).expect("load");
        let printed = first.to_toml().expect("toml");
        assert!(
            printed.contains("port = 4242") && printed.contains("width = 8"),
            "{printed}"
        );
        assert!(
            !printed.contains("fault"),
            "test-only keys stay out: {printed}"
        );
        let again = dir.path().join("printed.toml");
        std::fs::write(&again, &printed).expect("write");
        let second = Settings::load(Some(&again)).expect("the printed settings load");
        assert_eq!(second.to_toml().expect("toml"), printed);
        assert_eq!(second.dicom.allowed_callers.len(), 2);
        assert_eq!(second.dicom.allowed_callers[1].host, None);
        assert_eq!(second.pipeline.destinations, first.pipeline.destinations);
    }

    #[test]
    fn tls_destinations_read_and_record_their_transport() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104 },\n\
             { ae_title = \"PACS\", host = \"10.0.0.9\", port = 2762, tls = true } ]\n\
             [pipeline.tls]\nca_certificates = \"ca.pem\"\n",
        )
        .expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        let keys: Vec<String> = s
            .pipeline
            .destinations
            .iter()
            .map(Destination::key)
            .collect();
        assert_eq!(keys, ["TPS@tps:104", "PACS@10.0.0.9:2762+tls"]);
        for (d, k) in s.pipeline.destinations.iter().zip(&keys) {
            assert_eq!(Destination::parse(k).as_ref(), Some(d));
        }
        // Without the CAs to check a TLS destination against: refused.
        std::fs::write(&path, "[pipeline]\ndestinations = \"PACS@pacs:2762+tls\"\n")
            .expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(
            err.to_string().contains("pipeline.tls.ca_certificates"),
            "{err}"
        );
        // What a destination wants: both kinds unless it says.
        std::fs::write(
            &path,
            "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104, \
             objects = [\"rtstruct\"] } ]\n",
        )
        .expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        let tps = &s.pipeline.destinations[0];
        assert!(tps.wants("rtstruct") && !tps.wants("sr") && !tps.wants("sr-not-scored"));
        let odd = Destination::parse("A@B+C@pacs:104+tls").expect("an AE title with @ and +");
        assert_eq!(
            (odd.ae_title.as_str(), odd.host.as_str(), odd.tls),
            ("A@B+C", "pacs", true)
        );
        let all = Destination::parse("PACS@pacs:104").expect("parse");
        assert!(all.wants("sr") && all.wants("sr-not-scored") && all.wants("rtstruct"));
        std::fs::write(
            &path,
            "[pipeline]\ndestinations = [ { ae_title = \"TPS\", host = \"tps\", port = 104, \
             objects = [\"dose\"] } ]\n",
        )
        .expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(err.to_string().contains("\"dose\" is not"), "{err}");
        // A certificate without its key: refused.
        std::fs::write(&path, "[pipeline.tls]\ncertificate = \"node.pem\"\n").expect("write");
        let err = Settings::load(Some(&path)).expect_err("must fail");
        assert!(err.to_string().contains("both or neither"), "{err}");
    }

    #[test]
    fn ae_titles() {
        assert!(valid_ae_title("ESORISK"));
        assert!(!valid_ae_title("   "));
        assert!(!valid_ae_title("A\\B"));
        assert!(!valid_ae_title("12345678901234567"));
    }
}
