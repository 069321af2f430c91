//! `--config FILE`: the long flags' names as TOML keys, and `[[namespace]]` tables.
//!
//! The file is not a second way to configure: each key becomes the flag of its name
//! (`workers = 2` is `--workers=2`, a list repeats the flag, `true` gives a switch), placed before
//! the command line's own flags, and clap reads the whole as one command line. So every key is
//! checked, defaulted and documented exactly as its flag is (`fanout serve --help`), and a flag
//! on the command line replaces the file's key of the same name rather than adding to it. A key
//! that names no flag is refused with its line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};

use fanout::namespace::Namespace;

use super::namespace;
use super::serve::ServeArgs;

/// Flags that only the command line gives (they say what to do with the file).
const COMMAND_LINE_ONLY: [&str; 2] = ["config", "print-config"];

/// Keys a reload applies to the running server (`ServerHandle::reload` and the logger);
/// a change to any other is logged and waits for a restart.
pub const RELOADABLE: [&str; 19] = [
    "auth-secret-file",
    "auth-public-key-file",
    "auth-audience",
    "auth-issuer",
    "api-key-file",
    "anonymous-sub",
    "anonymous-pub",
    "auth-timeout-secs",
    "auth-expiry-grace-secs",
    "max-token-bytes",
    "max-info-bytes",
    "allowed-origins",
    "max-publishes-per-sec",
    "max-subscribes-per-sec",
    "max-auth-failures",
    "max-connections-per-ip",
    "log-level",
    // Only its files' contents: `tls-cert`'s paths may change, TLS may not be turned on or off.
    "tls-cert",
    "tls-key",
];

/// `fanout serve`'s flags and file, read together.
#[derive(Debug)]
pub struct Resolved {
    /// Every setting, as if all were flags.
    pub args: ServeArgs,
    /// The file's `[[namespace]]` tables.
    pub namespaces: Vec<Namespace>,
    /// Each key's values in force (defaults included; none when unset), for `--print-config` and
    /// for telling what a reload changed.
    pub values: BTreeMap<String, Vec<String>>,
    /// A hash of the contents of the files the key and certificate settings name, by key: a
    /// reload tells a rotated secret from an unchanged one.
    pub contents: BTreeMap<String, u64>,
}

/// Settings that name files whose contents a reload re-reads.
const FILE_KEYS: [&str; 5] =
    ["auth-secret-file", "auth-public-key-file", "api-key-file", "tls-cert", "tls-key"];

/// A hash of every file `key`'s values name (`KID=FILE` for public keys; unreadable: 0).
fn contents_of(values: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, u64> {
    use std::hash::{Hash, Hasher};
    FILE_KEYS
        .iter()
        .filter_map(|key| values.get(*key).map(|paths| (key, paths)))
        .map(|(key, paths)| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for path in paths {
                let path = path.split_once('=').map_or(path.as_str(), |(_, path)| path);
                std::fs::read(path).unwrap_or_default().hash(&mut hasher);
            }
            (key.to_string(), hasher.finish())
        })
        .collect()
}

impl Resolved {
    /// The server's configuration (reads the key and certificate files the settings name, and
    /// checks the patterns and keys in them as the server will).
    pub fn config(&self) -> Result<fanout::Config, String> {
        let built = self.args.config().and_then(|mut config| {
            config.namespaces = self.namespaces.clone();
            fanout::namespace::Namespaces::new(&config.namespaces).map_err(|e| e.to_string())?;
            fanout::auth::Auth::new(&config.auth).map_err(|e| format!("access control: {e}"))?;
            Ok(config)
        });
        built.map_err(|e| self.in_settings(e))
    }

    /// `why` with where the settings came from, when a file gave some.
    pub fn in_settings(&self, why: String) -> String {
        match &self.args.config {
            Some(file) => format!("{why} (settings from {} and the command line)", file.display()),
            None => why,
        }
    }

    /// The log filter in force: `log-level`, else `$RUST_LOG`, else info.
    pub fn log_filter(&self) -> String {
        self.args.log_level.clone().unwrap_or_else(super::logging::default_filter)
    }
}

/// The `serve` subcommand alone, as clap sees it.
fn command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("fanout serve")).no_binary_name(true)
}

/// Reads `serve`'s command line (`argv` after `serve`) and the file its `--config` names.
pub fn resolve(argv: &[OsString]) -> Result<Resolved, String> {
    let command = command();
    let on_command_line =
        command.clone().try_get_matches_from(argv).map_err(|e| clap_message(&e))?;
    let mut merged: Vec<OsString> = Vec::new();
    let mut namespaces = Vec::new();
    if let Some(path) = on_command_line.get_one::<std::path::PathBuf>("config") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        let (flags, specs) = flags_of_file(&command, &on_command_line, &text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Parsed alone first, so that a bad value is reported as the file's.
        command
            .clone()
            .try_get_matches_from(&flags)
            .map_err(|e| format!("{}: {}", path.display(), clap_message(&e)))?;
        merged.extend(flags.into_iter().map(OsString::from));
        namespaces = specs;
    }
    merged.extend(argv.iter().cloned());
    let matches = command.clone().try_get_matches_from(&merged).map_err(|e| clap_message(&e))?;
    let args = ServeArgs::from_arg_matches(&matches).map_err(|e| clap_message(&e))?;
    let values = values_of(&command, &matches);
    Ok(Resolved { args, namespaces, contents: contents_of(&values), values })
}

/// The first line of clap's message, without its `error: ` (the rest offers `--help`), and
/// without the password of a URL it quotes.
fn clap_message(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    mask_passwords(first.trim_start_matches("error: "))
}

/// `text` with the password of every `scheme://user:password@host` in it as `***` (clap quotes
/// a value it refuses: a Redis URL's password must not reach a log).
pub fn mask_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The URL's authority ends at whitespace, a quote or a slash; its credentials at the
        // last '@' in it.
        let end =
            after.find(|c: char| c.is_whitespace() || "'\"/".contains(c)).unwrap_or(after.len());
        match after[..end]
            .rfind('@')
            .and_then(|at_sign| after[..at_sign].find(':').map(|colon| (colon, at_sign)))
        {
            Some((colon, at_sign)) => {
                out.push_str(&after[..=colon]);
                out.push_str("***");
                out.push_str(&after[at_sign..end]);
            }
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The file's keys as flags, leaving out those the command line gives.
fn flags_of_file(
    command: &clap::Command,
    on_command_line: &ArgMatches,
    text: &str,
) -> Result<(Vec<String>, Vec<Namespace>), String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut flags = Vec::new();
    let mut namespaces = Vec::new();
    for (key, value) in &table {
        if key == "namespace" {
            namespaces = namespace::parse(value, text)?;
            continue;
        }
        let at = line_of(text, key, None);
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.as_str()) && !arg.is_hide_set())
            .filter(|_| !COMMAND_LINE_ONLY.contains(&key.as_str()))
            .ok_or_else(|| format!("{at}unknown key `{key}` (the keys are the long flags of `fanout serve --help`, without the dashes)"))?;
        if on_command_line.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        match value {
            toml::Value::Boolean(on) if switch => {
                if *on {
                    flags.push(format!("--{key}"));
                }
            }
            _ if switch => return Err(format!("{at}`{key}` is true or false")),
            toml::Value::Array(items) if repeatable => {
                for item in items {
                    flags.push(format!(
                        "--{key}={}",
                        scalar(key, item).map_err(|e| at.clone() + &e)?
                    ));
                }
            }
            toml::Value::Array(_) => {
                return Err(format!("{at}`{key}` takes one value, not a list"))
            }
            value => flags.push(format!("--{key}={}", scalar(key, value).map_err(|e| at + &e)?)),
        }
    }
    Ok((flags, namespaces))
}

/// A string, number or boolean as its flag's text.
fn scalar(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("`{key}` takes a string or a number")),
    }
}

/// "line N: " for the first line that sets `key` (`key = ...`) or opens it as a table (`[key]`,
/// `[[key]]`), after the `nth_table`-th `[[namespace]]` header when given (the TOML parser
/// keeps no positions for values), or nothing.
pub fn line_of(text: &str, key: &str, nth_table: Option<usize>) -> String {
    let sets = |line: &str| {
        let line = line.trim_start().trim_start_matches('"');
        let assigns = line.strip_prefix(key).is_some_and(|rest| {
            rest.trim_start().trim_start_matches('"').trim_start().starts_with('=')
        });
        let opens = line
            .trim_start_matches('[')
            .trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| line.starts_with('[') && rest.trim_start().starts_with(']'));
        assigns || opens
    };
    let mut tables = 0;
    for (at, line) in text.lines().enumerate() {
        if line.trim().starts_with("[[namespace]]") {
            tables += 1;
        }
        if nth_table.is_none_or(|nth| tables == nth) && sets(line) {
            return format!("line {}: ", at + 1);
        }
    }
    String::new()
}

/// Each setting's values in force, by key.
fn values_of(command: &clap::Command, matches: &ArgMatches) -> BTreeMap<String, Vec<String>> {
    let mut values = BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || COMMAND_LINE_ONLY.contains(&long) {
            continue;
        }
        let raw: Vec<String> = matches
            .get_raw(arg.get_id().as_str())
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        values.insert(long.to_string(), raw);
    }
    values
}

/// The keys whose values, or the contents of the files they name, differ between two
/// resolutions, reloadable or not.
pub fn changed<'a>(before: &'a Resolved, after: &'a Resolved) -> Vec<&'a str> {
    after
        .values
        .iter()
        .filter(|(key, value)| {
            before.values.get(*key) != Some(value)
                || before.contents.get(*key) != after.contents.get(*key)
        })
        .map(|(key, _)| key.as_str())
        .collect()
}

/// The configuration as a file `--config` reads back: every key, its help as a comment, unset
/// ones commented out. `resolved` overrides keys whose default is worked out at start (workers).
/// Passwords in Redis URLs are masked.
pub fn render(resolved: &Resolved, worked_out: &[(&str, String)], file: Option<&Path>) -> String {
    let command = command();
    let mut out = String::from("# fanout serve's configuration in force");
    if let Some(file) = file {
        let _ = write!(out, " (file {}, then the command line)", file.display());
    }
    out.push_str(
        ".\n# Keys are the long flags of `fanout serve --help`; a flag given wins over the file.\n",
    );
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let Some(values) = resolved.values.get(long) else { continue };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push('\n');
        for line in wrap(&help, 96) {
            let _ = writeln!(out, "# {line}");
        }
        let worked = worked_out.iter().find(|(key, _)| *key == long).map(|(_, v)| v.clone());
        let values: Vec<String> = match worked {
            Some(value) => vec![value],
            None => values.iter().map(|v| mask_passwords(v)).collect(),
        };
        let line = match (arg.get_action(), values.as_slice()) {
            (ArgAction::SetTrue, [value]) => format!("{long} = {value}"),
            (ArgAction::Append, []) => format!("# {long} = []"),
            (ArgAction::Append, values) => {
                let items: Vec<String> = values.iter().map(|v| toml_value(v)).collect();
                format!("{long} = [{}]", items.join(", "))
            }
            (_, []) => format!("# {long} ="),
            (_, [value, ..]) => format!("{long} = {}", toml_value(value)),
        };
        out.push_str(&line);
        out.push('\n');
    }
    for spec in &resolved.namespaces {
        out.push('\n');
        out.push_str(&namespace::render(spec));
    }
    out
}

/// A number stays a number; anything else is a TOML basic string.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() {
        return text.to_string();
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Help text folded into comment lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

#[cfg(test)]
mod tests {
    use super::mask_passwords;

    #[test]
    fn passwords_in_quoted_urls_are_masked() {
        assert_eq!(
            mask_passwords(
                "invalid value 'redis://u:topsecret@127.0.0.1:6390/x' for '--redis <URL>'"
            ),
            "invalid value 'redis://u:***@127.0.0.1:6390/x' for '--redis <URL>'"
        );
        assert_eq!(
            mask_passwords("rediss://:p@ss@host and http://x/y"),
            "rediss://:***@host and http://x/y"
        );
        assert_eq!(
            mask_passwords("redis://host:6379 no credentials"),
            "redis://host:6379 no credentials"
        );
    }
}
