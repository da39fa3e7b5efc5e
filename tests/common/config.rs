//! p11wld configuration files for tests.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::env::ScopedEnv;

/// Environment variable from which p11wld reads the path of its
/// configuration file.
pub const P11WLD_CONFIG: &str = "P11WLD_CONFIG";

/// One `[[module]]` entry of a p11wld configuration: a vendor PKCS#11
/// module instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    pub name: String,
    pub path: PathBuf,
    /// Environment variables that p11wld sets while the instance's
    /// `C_GetFunctionList` and `C_Initialize` run, in file order.
    pub env: Vec<(String, String)>,
}

impl ModuleEntry {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> ModuleEntry {
        ModuleEntry {
            name: name.into(),
            path: path.into(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable to the entry.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> ModuleEntry {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Formats the entry as a TOML `[[module]]` table, ending with a newline.
    pub fn to_toml(&self) -> String {
        let mut text = String::from("[[module]]\n");
        text.push_str(&format!("name = {}\n", toml_string(&self.name)));
        text.push_str(&format!(
            "path = {}\n",
            toml_string(&self.path.display().to_string())
        ));
        if !self.env.is_empty() {
            let pairs: Vec<String> = self
                .env
                .iter()
                .map(|(name, value)| format!("{} = {}", toml_key(name), toml_string(value)))
                .collect();
            text.push_str(&format!("env = {{ {} }}\n", pairs.join(", ")));
        }
        text
    }
}

/// Formats `value` as a TOML string, quoted and escaped.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// Formats `key` as a TOML key: bare when TOML allows it, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

/// Builds the text of a p11wld configuration: the module entries in order,
/// then `extra` (for example `[wld]` and `[log]` tables) verbatim.
pub fn config_text(modules: &[ModuleEntry], extra: &str) -> String {
    let mut text =
        String::from("# p11wld configuration written by the integration-test fixture.\n");
    for module in modules {
        text.push('\n');
        text.push_str(&module.to_toml());
    }
    if !extra.is_empty() {
        text.push('\n');
        text.push_str(extra);
        if !extra.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// A p11wld configuration file in a temporary directory, removed on drop.
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `config_text(modules, extra)` to `p11wld.toml` in a new
    /// temporary directory.
    pub fn write(modules: &[ModuleEntry], extra: &str) -> ConfigFile {
        ConfigFile::write_text(&config_text(modules, extra))
    }

    /// Writes `text` verbatim to `p11wld.toml` in a new temporary directory,
    /// for tests of invalid configurations.
    pub fn write_text(text: &str) -> ConfigFile {
        let dir = tempfile::Builder::new()
            .prefix("p11wld-config-")
            .tempdir()
            .expect("failed to create a temporary directory for the configuration");
        let path = dir.path().join("p11wld.toml");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
        ConfigFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", self.path.display()))
    }

    /// Sets `P11WLD_CONFIG` to this file until the guard is dropped.
    pub fn set_env(&self) -> ScopedEnv {
        ScopedEnv::set(P11WLD_CONFIG, &self.path)
    }
}
