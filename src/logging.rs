//! The module's own `log` backend: stderr or a file, errors only by default.
//!
//! A cdylib carries its own copy of the `log` crate, so this logger never
//! takes over the host application's logger.

use crate::config::LogConfig;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;

struct Logger {
    file: Mutex<Option<File>>,
}

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "p11wld[{}] {} {}: {}\n",
            std::process::id(),
            record.level(),
            record.target(),
            record.args()
        );
        let mut file = self.file.lock();
        match file.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Some(f) = self.file.lock().as_mut() {
            let _ = f.flush();
        }
    }
}

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| {
        let logger: &'static Logger = Box::leak(Box::new(Logger {
            file: Mutex::new(None),
        }));
        // Fails only when this copy of `log` already has a logger, which can
        // only be this one.
        let _ = log::set_logger(logger);
        log::set_max_level(log::LevelFilter::Error);
        logger
    })
}

/// Installs the logger at its default (errors only, to stderr) if it is not
/// installed yet, so configuration errors are reported.
pub fn init_default() {
    logger();
}

/// Applies the `[log]` section. A log file that cannot be opened is reported
/// on stderr and the logger keeps writing there.
pub fn apply(config: &LogConfig) {
    let logger = logger();
    let file = match &config.file {
        None => None,
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!(
                    "cannot open log file {}: {e}; logging to stderr",
                    path.display()
                );
                None
            }
        },
    };
    *logger.file.lock() = file;
    log::set_max_level(config.level.filter());
}
