//! The configuration file: schema, defaults and validation.
//!
//! The file is named by `P11WLD_CONFIG`, else `/etc/p11wld/p11wld.toml`; with
//! neither present the built-in default loads SoftHSM2 from its Debian path.
//! Every error names the file, the line and what is wrong.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const CONFIG_ENV: &str = "P11WLD_CONFIG";
pub const SYSTEM_CONFIG: &str = "/etc/p11wld/p11wld.toml";
pub const DEFAULT_SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration file {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// A random member among those with the fewest open sessions.
    #[default]
    LeastSessions,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    #[default]
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// One vendor module instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    pub name: Spanned<String>,
    pub path: Spanned<PathBuf>,
    /// Environment variables set while the instance's `C_GetFunctionList`
    /// and `C_Initialize` run.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A virtual slot id fixed for one label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    pub label: Spanned<String>,
    pub id: Spanned<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WldConfig {
    /// Labels to expose; `None` exposes every initialized token's label.
    pub labels: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub level: LogLevel,
    /// Log file; `None` writes to stderr.
    pub file: Option<PathBuf>,
}

/// Failure detection, recovery and retry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the background thread probes members that are down, in
    /// milliseconds.
    pub probe_interval_ms: u64,
    /// How long one call into a member may take before the member is marked
    /// down for new sessions, in milliseconds.
    pub call_deadline_ms: u64,
    /// How many bytes of a multi-part operation's input are kept per
    /// session, so the operation can be replayed on another member when its
    /// member fails.
    pub replay_limit_bytes: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_interval_ms: 5000,
            call_deadline_ms: 10_000,
            replay_limit_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(rename = "module")]
    pub modules: Vec<ModuleConfig>,
    #[serde(default)]
    pub wld: WldConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Where the configuration came from, for messages.
    #[serde(skip)]
    pub source: PathBuf,
}

impl Config {
    /// Loads the configuration the environment names, else the system file,
    /// else the built-in default.
    pub fn load() -> Result<Config, ConfigError> {
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            return Config::from_file(Path::new(&path));
        }
        let system = Path::new(SYSTEM_CONFIG);
        if system.exists() {
            return Config::from_file(system);
        }
        Ok(Config::builtin())
    }

    pub fn builtin() -> Config {
        let text = format!("[[module]]\nname = \"softhsm2\"\npath = \"{DEFAULT_SOFTHSM}\"\n");
        Config::parse(&text, Path::new("(built-in default)"))
            .expect("the built-in configuration is valid")
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(text, &e),
        })?;
        config.source = path.to_owned();
        config.validate(text)?;
        Ok(config)
    }

    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let invalid = |span: Range<usize>, message: String| ConfigError::Invalid {
            path: self.source.clone(),
            line: line_of(text, span.start),
            message,
        };

        if self.modules.is_empty() {
            return Err(invalid(0..0, "at least one [[module]] is required".into()));
        }
        let mut names = HashSet::new();
        for module in &self.modules {
            let name = module.name.get_ref();
            if name.is_empty() {
                return Err(invalid(module.name.span(), "module name is empty".into()));
            }
            if name.len() > 63 {
                return Err(invalid(
                    module.name.span(),
                    format!("module name {name:?} is longer than 63 bytes"),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(invalid(
                    module.name.span(),
                    format!("module name {name:?} is used twice"),
                ));
            }
            if module.path.get_ref().as_os_str().is_empty() {
                return Err(invalid(module.path.span(), "module path is empty".into()));
            }
            for (key, value) in &module.env {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    return Err(invalid(
                        module.name.span(),
                        format!("module {name:?} has an invalid env variable name {key:?}"),
                    ));
                }
                if value.contains('\0') {
                    return Err(invalid(
                        module.name.span(),
                        format!("module {name:?}: env variable {key} contains a NUL character"),
                    ));
                }
            }
        }

        for label in self.wld.labels.iter().flatten() {
            check_label(label).map_err(|m| invalid(label.span(), m))?;
        }
        let mut ids = HashSet::new();
        let mut labels = HashSet::new();
        for slot in &self.wld.slots {
            check_label(&slot.label).map_err(|m| invalid(slot.label.span(), m))?;
            if !labels.insert(slot.label.get_ref().as_str()) {
                return Err(invalid(
                    slot.label.span(),
                    format!("label {:?} has two fixed slot ids", slot.label.get_ref()),
                ));
            }
            if !ids.insert(*slot.id.get_ref()) {
                return Err(invalid(
                    slot.id.span(),
                    format!("slot id {} is fixed for two labels", slot.id.get_ref()),
                ));
            }
        }

        for (key, value) in [
            ("probe_interval_ms", self.health.probe_interval_ms),
            ("call_deadline_ms", self.health.call_deadline_ms),
        ] {
            if value == 0 {
                let at = key_offset(text, key);
                return Err(invalid(at..at, format!("[health] {key} must be above 0")));
            }
        }
        if self
            .log
            .file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid(0..0, "[log] file is empty".into()));
        }
        Ok(())
    }

    /// Returns whether tokens with this label are exposed.
    pub fn exposes(&self, label: &[u8]) -> bool {
        match &self.wld.labels {
            None => true,
            Some(list) => list.iter().any(|l| l.get_ref().as_bytes() == label),
        }
    }

    /// Returns the slot id fixed for a label, if any.
    pub fn fixed_id(&self, label: &[u8]) -> Option<u64> {
        self.wld
            .slots
            .iter()
            .find(|s| s.label.get_ref().as_bytes() == label)
            .map(|s| *s.id.get_ref())
    }
}

/// Checks a label as the token stores it: at most 32 bytes, compared with
/// trailing blanks removed, so a label written with trailing blanks can
/// never match.
fn check_label(label: &Spanned<String>) -> Result<(), String> {
    let text = label.get_ref();
    if text.is_empty() {
        return Err("label is empty".into());
    }
    if text.len() > 32 {
        return Err(format!("label {text:?} is longer than 32 bytes"));
    }
    if text.ends_with(' ') {
        return Err(format!(
            "label {text:?} ends with a blank; token labels are compared without trailing blanks"
        ));
    }
    Ok(())
}

/// Returns the offset of the line that sets `key` (`key = ...`), or 0.
fn key_offset(text: &str, key: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let rest = line.trim_start().strip_prefix(key);
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            return offset;
        }
        offset += line.len();
    }
    0
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_message(text: &str, error: &toml::de::Error) -> String {
    let message = error.message();
    match error.span() {
        Some(span) => format!("line {}: {message}", line_of(text, span.start)),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn builtin_loads_softhsm() {
        let config = Config::builtin();
        assert_eq!(config.modules.len(), 1);
        assert_eq!(config.modules[0].path.get_ref(), Path::new(DEFAULT_SOFTHSM));
        assert_eq!(config.wld.policy, Policy::LeastSessions);
        assert_eq!(config.log.level, LogLevel::Error);
    }

    #[test]
    fn full_file_parses() {
        let config = parse(
            r#"
[[module]]
name = "a"
path = "/x/a.so"
env = { SOFTHSM2_CONF = "/tmp/a.conf" }

[[module]]
name = "b"
path = "/x/a.so"

[wld]
labels = ["WLD_A", "WLD_B"]
policy = "round-robin"
[[wld.slot]]
label = "WLD_B"
id = 7

[log]
level = "info"
file = "/tmp/p11wld.log"
"#,
        )
        .unwrap();
        assert_eq!(config.modules.len(), 2);
        assert_eq!(config.modules[0].env["SOFTHSM2_CONF"], "/tmp/a.conf");
        assert_eq!(config.wld.policy, Policy::RoundRobin);
        assert_eq!(config.fixed_id(b"WLD_B"), Some(7));
        assert_eq!(config.fixed_id(b"WLD_A"), None);
        assert!(config.exposes(b"WLD_A"));
        assert!(!config.exposes(b"OTHER"));
        assert_eq!(config.log.level, LogLevel::Info);
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("[[module]]\nname = \"a\"\npath = \n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("test.toml"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn unknown_key_names_line() {
        let err = parse("[[module]]\nname = \"a\"\npath = \"/a\"\nbogus = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 4"), "{text}");
        assert!(text.contains("bogus"), "{text}");
    }

    #[test]
    fn unknown_policy_rejected() {
        let err = parse("[[module]]\nname = \"a\"\npath = \"/a\"\n[wld]\npolicy = \"random\"\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 5"), "{text}");
        assert!(text.contains("random"), "{text}");
    }

    #[test]
    fn duplicate_module_name_rejected() {
        let err = parse(
            "[[module]]\nname = \"a\"\npath = \"/a\"\n[[module]]\nname = \"a\"\npath = \"/b\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 5"), "{text}");
        assert!(text.contains("used twice"), "{text}");
    }

    #[test]
    fn duplicate_slot_id_rejected() {
        let err = parse(
            "[[module]]\nname = \"a\"\npath = \"/a\"\n[[wld.slot]]\nlabel = \"X\"\nid = 1\n\
             [[wld.slot]]\nlabel = \"Y\"\nid = 1\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 9"), "{text}");
    }

    #[test]
    fn label_with_trailing_blank_rejected() {
        let err = parse("[[module]]\nname = \"a\"\npath = \"/a\"\n[wld]\nlabels = [\"WLD \"]\n")
            .unwrap_err();
        assert!(err.to_string().contains("line 5"), "{err}");
    }

    #[test]
    fn no_module_rejected() {
        assert!(parse("module = []\n").is_err());
        assert!(parse("[log]\nlevel = \"info\"\n").is_err());
    }

    #[test]
    fn zero_interval_named_at_its_line() {
        let err = parse(
            "# probe_interval_ms is in milliseconds\n[[module]]\nname = \"a\"\npath = \"/a\"\n\
             [health]\nprobe_interval_ms = 0\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 6"), "{text}");
    }

    #[test]
    fn nul_in_env_value_rejected() {
        let err = parse("[[module]]\nname = \"a\"\npath = \"/a\"\nenv = { X = \"a\\u0000b\" }\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("NUL"), "{text}");
    }

    #[test]
    fn missing_file_named() {
        let err = Config::from_file(Path::new("/nonexistent/p11wld.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/p11wld.toml"));
    }
}
