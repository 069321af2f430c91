//! The command line of `fanout serve`: flags (`serve.rs`), the same keys in a TOML file
//! (`config_file.rs`), and a logger whose filter a reload may change (`logging.rs`). Part of the
//! binary, not of the library: an embedder builds a `fanout::Config` directly.

pub mod config_file;
pub mod logging;
pub mod namespace;
pub mod serve;

/// A secret file's contents without the trailing newline editors and `echo` leave.
pub fn read_secret(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, String> {
    fanout::sys::read_secret(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}
