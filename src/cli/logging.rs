//! env_logger behind a lock, so that a reload can change the filter (`--log-level`) of a
//! running server. A log call takes a read lock that nobody holds but a reload: logging is per
//! event, never per message.

use std::sync::{OnceLock, RwLock};

use log::{Log, Metadata, Record};

struct Reloadable(RwLock<env_logger::Logger>);

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

impl Log for Reloadable {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).log(record)
    }

    fn flush(&self) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn build(filter: &str) -> env_logger::Logger {
    env_logger::Builder::new().parse_filters(filter).build()
}

/// The filter when none is given: `$RUST_LOG`, else `info`.
pub fn default_filter() -> String {
    std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty()).unwrap_or("info".into())
}

/// Installs the logger with the default filter (before anything is logged).
pub fn init() {
    let logger = LOGGER.get_or_init(|| Reloadable(RwLock::new(build(&default_filter()))));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.0.read().unwrap_or_else(|p| p.into_inner()).filter());
    }
}

/// Filters from now on with `filter` (checked by `parse_filter`).
pub fn set_filter(filter: &str) {
    let Some(logger) = LOGGER.get() else { return };
    let new = build(filter);
    let max = new.filter();
    *logger.0.write().unwrap_or_else(|p| p.into_inner()) = new;
    log::set_max_level(max);
}

/// Checks a filter the way env_logger reads it (which would only print a warning and ignore a
/// bad directive): comma-separated `LEVEL`, `MODULE` or `MODULE=LEVEL`, then optionally `/TEXT`.
pub fn parse_filter(filter: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives = filter.split_once('/').map_or(filter, |(directives, _)| directives);
    for directive in directives.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.split_once('=') {
            Some((_, level)) => Some(level),
            None if directive.contains("::") => None,
            None => Some(directive),
        };
        if let Some(level) = level {
            if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
                return Err(format!(
                    "`{level}` is not a level: off, error, warn, info, debug or trace"
                ));
            }
        }
    }
    Ok(filter.to_string())
}
