//! `[[namespace]]` tables of the config file, read into `fanout::namespace::Namespace` and
//! printed back (`--print-config`).

use std::fmt::Write as _;
use std::time::Duration;

use fanout::namespace::Namespace;

/// Every key a `[[namespace]]` takes, with what it means.
const KEYS: [(&str, &str); 10] = [
    ("pattern", "the channels: a topic pattern (`chat.>`, `room.*`, `news`)"),
    ("history-messages", "messages kept per channel (0: no history)"),
    ("history-bytes-per-channel", "payload bytes kept per channel"),
    ("history-age-secs", "seconds a message stays in history (0: no age limit)"),
    ("presence", "track who is subscribed (true/false)"),
    ("join-leave", "subscribers hear joins and leaves (true/false)"),
    ("anonymous-sub", "clients without a token may subscribe (true/false)"),
    ("anonymous-pub", "clients without a token may publish (true/false)"),
    ("client-publish", "clients may publish; false: only the server API or the API key"),
    ("max-message-bytes", "longest message payload, in bytes"),
];

/// The `namespace` key's value: an array of tables (`text`: the file, for lines in errors).
pub fn parse(value: &toml::Value, text: &str) -> Result<Vec<Namespace>, String> {
    let toml::Value::Array(tables) = value else {
        return Err("`namespace` is a list of tables: write each as [[namespace]]".into());
    };
    tables.iter().enumerate().map(|(i, table)| one(i + 1, table, text)).collect()
}

fn one(nth: usize, value: &toml::Value, text: &str) -> Result<Namespace, String> {
    let toml::Value::Table(table) = value else {
        return Err(format!("namespace {nth}: not a table; write it as [[namespace]]"));
    };
    let line = |key: &str| super::config_file::line_of(text, key, Some(nth));
    let at = |key: &str| format!("{}namespace {nth}: `{key}`", line(key));
    let mut namespace = Namespace::default();
    for (key, value) in table {
        let count = || match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as usize),
            _ => Err(format!("{} is a number, 0 or more", at(key))),
        };
        let switch = || match value {
            toml::Value::Boolean(b) => Ok(*b),
            _ => Err(format!("{} is true or false", at(key))),
        };
        match key.as_str() {
            "pattern" => match value {
                toml::Value::String(text) => namespace.pattern = text.clone(),
                _ => return Err(format!("{} is a string", at(key))),
            },
            "history-messages" => namespace.history_messages = Some(count()?),
            "history-bytes-per-channel" => namespace.history_bytes_per_channel = Some(count()?),
            "history-age-secs" => {
                namespace.history_age = Some(Duration::from_secs(count()? as u64))
            }
            "presence" => namespace.presence = Some(switch()?),
            "join-leave" => namespace.join_leave = Some(switch()?),
            "anonymous-sub" => namespace.anonymous_subscribe = Some(switch()?),
            "anonymous-pub" => namespace.anonymous_publish = Some(switch()?),
            "client-publish" => namespace.client_publish = Some(switch()?),
            "max-message-bytes" => namespace.max_message_bytes = Some(count()?),
            _ => {
                let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "{}: unknown key (a namespace takes {})",
                    at(key),
                    keys.join(", ")
                ));
            }
        }
    }
    if namespace.pattern.is_empty() {
        return Err(format!("namespace {nth}: `pattern` is required"));
    }
    fanout::namespace::Namespaces::new(std::slice::from_ref(&namespace))
        .map_err(|e| format!("{}namespace {nth}: {e}", line("pattern")))?;
    Ok(namespace)
}

/// One namespace as the table `parse` reads.
pub fn render(namespace: &Namespace) -> String {
    let mut out = String::from("[[namespace]]\n");
    let _ = writeln!(out, "pattern = {:?}", namespace.pattern);
    let mut line = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value}");
        }
    };
    line("history-messages", namespace.history_messages.map(|v| v.to_string()));
    line("history-bytes-per-channel", namespace.history_bytes_per_channel.map(|v| v.to_string()));
    line("history-age-secs", namespace.history_age.map(|v| v.as_secs().to_string()));
    line("presence", namespace.presence.map(|v| v.to_string()));
    line("join-leave", namespace.join_leave.map(|v| v.to_string()));
    line("anonymous-sub", namespace.anonymous_subscribe.map(|v| v.to_string()));
    line("anonymous-pub", namespace.anonymous_publish.map(|v| v.to_string()));
    line("client-publish", namespace.client_publish.map(|v| v.to_string()));
    line("max-message-bytes", namespace.max_message_bytes.map(|v| v.to_string()));
    out
}
