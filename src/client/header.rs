//! What a recording says about its session: the command to run and the asciicast v2 header.
//!
//! Everything is computed from a [`SessionEnv`] snapshot so that the OpenSSH `ForceCommand`
//! rules and the Tailscale header fields can be unit-tested without touching the process
//! environment.

use std::collections::BTreeMap;

use serde::Serialize;

/// Shell used when neither a command nor `$SHELL` is given.
const FALLBACK_SHELL: &str = "/bin/sh";

/// The environment variables the recorder client cares about, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnv {
    /// `$SHELL`: the shell run when no command is given.
    pub shell: Option<String>,
    /// `$TERM`: copied into the header's `env`.
    pub term: Option<String>,
    /// `$USER`, or the effective user's name when `$USER` is unset.
    pub user: Option<String>,
    /// `$SSH_CONNECTION` ("client_ip client_port server_ip server_port") set by sshd.
    pub ssh_connection: Option<String>,
    /// `$SSH_CLIENT` ("client_ip client_port server_port"), the older form.
    pub ssh_client: Option<String>,
    /// `$SSH_ORIGINAL_COMMAND`: what the SSH client asked for under a `ForceCommand`.
    pub ssh_original_command: Option<String>,
}

impl SessionEnv {
    /// Reads the real process environment (empty values count as unset).
    pub fn current() -> Self {
        let mut env = Self::from_lookup(|key| std::env::var(key).ok());
        if env.user.is_none() {
            env.user = effective_user_name();
        }
        env
    }

    /// Builds the snapshot from any variable lookup (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        Self {
            shell: get("SHELL"),
            term: get("TERM"),
            user: get("USER"),
            ssh_connection: get("SSH_CONNECTION"),
            ssh_client: get("SSH_CLIENT"),
            ssh_original_command: get("SSH_ORIGINAL_COMMAND"),
        }
    }

    /// True when we run inside an OpenSSH session (so the SSH header fields mean something).
    fn in_ssh(&self) -> bool {
        self.ssh_connection.is_some()
            || self.ssh_client.is_some()
            || self.ssh_original_command.is_some()
    }

    /// The SSH client's address: first field of `$SSH_CONNECTION`, else of `$SSH_CLIENT`.
    fn src_node(&self) -> Option<String> {
        [&self.ssh_connection, &self.ssh_client]
            .into_iter()
            .flatten()
            .find_map(|v| v.split_whitespace().next().map(str::to_owned))
    }

    fn shell(&self) -> String {
        self.shell
            .clone()
            .unwrap_or_else(|| FALLBACK_SHELL.to_owned())
    }
}

/// The program to run in the PTY and how the header names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program and arguments passed to exec (never empty).
    pub argv: Vec<String>,
    /// The header's `command` field: `None` for an interactive shell, as Tailscale does.
    pub command: Option<String>,
}

impl Invocation {
    /// Explicit command > `ForceCommand` (`$SHELL -c "$SSH_ORIGINAL_COMMAND"`) > `$SHELL`.
    pub fn resolve(args: &[String], env: &SessionEnv) -> Self {
        if !args.is_empty() {
            return Self {
                argv: args.to_vec(),
                command: Some(shell_join(args)),
            };
        }
        match &env.ssh_original_command {
            Some(cmd) => Self {
                argv: vec![env.shell(), "-c".to_owned(), cmd.clone()],
                command: Some(cmd.clone()),
            },
            None => Self {
                argv: vec![env.shell()],
                command: None,
            },
        }
    }
}

/// The asciicast v2 header line, with Tailscale's extra fields when they are known.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Header {
    /// Always 2.
    pub version: u8,
    /// Terminal columns at start.
    pub width: u16,
    /// Terminal rows at start.
    pub height: u16,
    /// Session start, unix seconds.
    pub timestamp: i64,
    /// The command line, absent for an interactive shell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Captured environment: only `TERM`.
    pub env: BTreeMap<String, String>,
    /// User the SSH client logged in as (OpenSSH: the local account).
    #[serde(rename = "sshUser", skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    /// Local account running the session.
    #[serde(rename = "localUser", skip_serializing_if = "Option::is_none")]
    pub local_user: Option<String>,
    /// Where the SSH client connects from (its IP address under OpenSSH).
    #[serde(rename = "srcNode", skip_serializing_if = "Option::is_none")]
    pub src_node: Option<String>,
    /// A fresh id for this SSH connection's recording.
    #[serde(rename = "connectionID", skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
}

impl Header {
    /// Builds the header; the SSH fields are filled only inside an SSH session.
    pub fn new(
        env: &SessionEnv,
        invocation: &Invocation,
        (width, height): (u16, u16),
        timestamp: i64,
        connection_id: uuid::Uuid,
    ) -> Self {
        let ssh = env.in_ssh();
        Self {
            version: 2,
            width,
            height,
            timestamp,
            command: invocation.command.clone(),
            env: env
                .term
                .iter()
                .map(|t| ("TERM".to_owned(), t.clone()))
                .collect(),
            ssh_user: env.user.clone().filter(|_| ssh),
            local_user: env.user.clone(),
            src_node: env.src_node().filter(|_| ssh),
            connection_id: ssh.then(|| connection_id.to_string()),
        }
    }

    /// The first line of the recording (JSON plus newline).
    pub fn to_line(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Joins argv into one shell-readable string, single-quoting words that need it.
fn shell_join(args: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    args.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(safe) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The effective user's login name from the password database (`getpwuid_r`).
fn effective_user_name() -> Option<String> {
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; on success `result` points to `pwd`,
    // whose string fields point into `buf`, which outlives the read below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr((*result).pw_name) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> SessionEnv {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SessionEnv::from_lookup(|k| map.get(k).cloned())
    }

    fn id() -> uuid::Uuid {
        uuid::Uuid::from_u128(0x1234)
    }

    #[test]
    fn explicit_command_wins_and_is_quoted() {
        let e = env(&[("SSH_ORIGINAL_COMMAND", "ls"), ("SHELL", "/bin/bash")]);
        let args: Vec<String> = ["sh", "-c", "echo 'hi there'"].map(String::from).into();
        let inv = Invocation::resolve(&args, &e);
        assert_eq!(inv.argv, args);
        assert_eq!(
            inv.command.as_deref(),
            Some(r"sh -c 'echo '\''hi there'\'''")
        );
    }

    #[test]
    fn force_command_runs_original_command_through_shell() {
        let e = env(&[
            ("SSH_ORIGINAL_COMMAND", "uptime; id"),
            ("SHELL", "/bin/zsh"),
        ]);
        let inv = Invocation::resolve(&[], &e);
        assert_eq!(inv.argv, ["/bin/zsh", "-c", "uptime; id"]);
        assert_eq!(inv.command.as_deref(), Some("uptime; id"));
    }

    #[test]
    fn default_is_interactive_shell_or_bin_sh() {
        let inv = Invocation::resolve(&[], &env(&[("SHELL", "/bin/bash")]));
        assert_eq!(
            (inv.argv, inv.command),
            (vec!["/bin/bash".to_owned()], None)
        );
        let inv = Invocation::resolve(&[], &env(&[("SHELL", "")]));
        assert_eq!(inv.argv, ["/bin/sh"]);
    }

    #[test]
    fn ssh_session_fills_tailscale_fields() {
        let e = env(&[
            ("USER", "alice"),
            ("TERM", "xterm-256color"),
            ("SSH_CONNECTION", "203.0.113.7 50022 10.0.0.2 22"),
            ("SSH_ORIGINAL_COMMAND", "ls"),
        ]);
        let inv = Invocation::resolve(&[], &e);
        let h = Header::new(&e, &inv, (120, 40), 1_700_000_000, id());
        let v: serde_json::Value = serde_json::from_slice(&h.to_line()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": 2, "width": 120, "height": 40, "timestamp": 1_700_000_000,
                "command": "ls", "env": {"TERM": "xterm-256color"},
                "sshUser": "alice", "localUser": "alice", "srcNode": "203.0.113.7",
                "connectionID": id().to_string(),
            })
        );
        assert!(h.to_line().ends_with(b"}\n"));
    }

    #[test]
    fn ssh_client_is_used_when_ssh_connection_is_missing() {
        let e = env(&[("USER", "bob"), ("SSH_CLIENT", "198.51.100.1 4242 22")]);
        let h = Header::new(&e, &Invocation::resolve(&[], &e), (80, 24), 0, id());
        assert_eq!(h.src_node.as_deref(), Some("198.51.100.1"));
        assert_eq!(h.ssh_user.as_deref(), Some("bob"));
    }

    #[test]
    fn outside_ssh_only_local_fields_are_set() {
        let e = env(&[("USER", "carol")]);
        let h = Header::new(&e, &Invocation::resolve(&[], &e), (80, 24), 5, id());
        let v: serde_json::Value = serde_json::from_slice(&h.to_line()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 2, "width": 80, "height": 24, "timestamp": 5,
                               "env": {}, "localUser": "carol"})
        );
    }

    #[test]
    fn effective_user_has_a_name() {
        // Every account this test runs as has a passwd entry (CI runs as root).
        assert!(effective_user_name().is_some_and(|n| !n.is_empty()));
    }
}
