//! Pure session policy: which client environment passes, what argv a shell/exec/sftp request
//! becomes inside the container, which forwarding destinations are allowed, how signals and exit
//! codes map. No IO here, so all of it is unit-tested.

use std::net::IpAddr;

/// Variables always passed from the client (besides the configured extras).
const BUILTIN_ENV: &[&str] = &["LANG", "LC_*", "TERM", "COLORTERM"];

/// True when `name` may be passed into the container.
pub fn env_allowed(name: &str, extra: &[String]) -> bool {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return false;
    }
    BUILTIN_ENV
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .any(|pat| match pat.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pat,
        })
}

/// True when an environment value is safe to pass (Docker takes `NAME=value` strings).
pub fn env_value_ok(value: &str) -> bool {
    value.len() <= 4096 && !value.contains('\0')
}

/// What a session channel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A login shell.
    Shell,
    /// `ssh host COMMAND`.
    Exec(String),
    /// The `sftp` subsystem.
    Sftp,
}

impl Program {
    /// Short name for audit and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Program::Shell => "shell",
            Program::Exec(_) => "exec",
            Program::Sftp => "sftp",
        }
    }
}

/// A root helper that makes the SSH login name (`server<N>`) a passwd alias of the exec user
/// inside the container: same uid, gid, home and shell, appended after the real entry (so
/// `id`, `whoami` and uid lookups still name the real user). Tools that expand `~<ssh user>`
/// (Ansible's remote temp dir) or run `getent passwd <ssh user>` then find the login user's
/// home. Idempotent; changes nothing when the name already exists or the user has no entry.
/// Uses only `sh` and `awk` (present in Debian minbase and busybox).
pub fn login_alias_argv(login: &str, user: &str) -> Vec<String> {
    const SCRIPT: &str = r#"f=/etc/passwd
awk -F: -v n="$1" '$1 == n { found = 1 } END { exit !found }' "$f" && exit 0
line=$(awk -F: -v u="$2" '$1 == u { print; exit }' "$f")
[ -n "$line" ] || exit 1
printf '%s:%s
' "$1" "${line#*:}" >> "$f""#;
    vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        "berth-login-alias".to_string(),
        login.to_string(),
        user.to_string(),
    ]
}

/// Quotes one word for POSIX `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The argv Docker runs for `program`. Every variant starts in `$HOME` (Docker exec does not).
/// With a PTY (`size = Some((cols, rows))`) the size is set with `stty` before the program runs:
/// Docker API 1.41 cannot size an exec's TTY at creation, and a resize after start races with
/// the program's first `TIOCGWINSZ`.
pub fn argv(program: &Program, sftp_paths: &[String], size: Option<(u32, u32)>) -> Vec<String> {
    let sh = |script: String, args: Vec<String>| {
        let mut v = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            script,
            "berth".to_string(),
        ];
        v.extend(args);
        v
    };
    let cd = match size {
        Some((cols, rows)) if cols > 0 && rows > 0 => format!(
            "stty rows {} cols {} 2>/dev/null; cd \"$HOME\" 2>/dev/null || cd /;",
            rows.min(10_000),
            cols.min(10_000)
        ),
        _ => "cd \"$HOME\" 2>/dev/null || cd /;".to_string(),
    };
    let cd = cd.as_str();
    match program {
        Program::Shell => sh(
            format!("{cd} if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"),
            vec![],
        ),
        Program::Exec(cmd) => sh(format!("{cd} exec /bin/sh -c \"$1\""), vec![cmd.clone()]),
        Program::Sftp => {
            let list = sftp_paths
                .iter()
                .map(|p| sh_quote(p))
                .collect::<Vec<_>>()
                .join(" ");
            let shown = sftp_paths.join(", ");
            let msg = sh_quote(&format!(
                "berth: this server's image has no sftp-server (looked in {shown}); install openssh-sftp-server in the image"
            ));
            sh(
                format!(
                    "{cd} for p in {list}; do if [ -x \"$p\" ]; then exec \"$p\"; fi; done; echo {msg} >&2; exit 127"
                ),
                vec![],
            )
        }
    }
}

/// Where a `direct-tcpip` connection goes, as seen from inside the tenant's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDest {
    /// The container's own loopback: `localhost` (IPv4 first, then `::1`), `127.x.y.z`, `::1`.
    Loopback(Option<IpAddr>),
    /// The container's address on the tenant network (its name or its address).
    Container(IpAddr),
}

/// Where a `direct-tcpip` request may go: only the tenant's own container. `localhost` and
/// loopback addresses mean the container's loopback; the server's own name and its container
/// address mean its network address; anything else is refused (`None`).
pub fn forward_target(host: &str, login_name: &str, container: IpAddr) -> Option<ForwardDest> {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return Some(ForwardDest::Loopback(None));
    }
    if host.eq_ignore_ascii_case(login_name) {
        return Some(ForwardDest::Container(container));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Some(ForwardDest::Loopback(Some(ip))),
        Ok(ip) if ip == container => Some(ForwardDest::Container(container)),
        _ => None,
    }
}

/// The one signal table: Linux number, SSH name (RFC 4254's, plus USR2) and the russh variant
/// (`None`: russh has none, so it travels as `Sig::Custom`). Every mapping between numbers,
/// names and `russh::Sig` reads this table, so adding a signal is one line.
const SIGNALS: [(u8, &str, Option<russh::Sig>); 13] = [
    (1, "HUP", Some(russh::Sig::HUP)),
    (2, "INT", Some(russh::Sig::INT)),
    (3, "QUIT", Some(russh::Sig::QUIT)),
    (4, "ILL", Some(russh::Sig::ILL)),
    (6, "ABRT", Some(russh::Sig::ABRT)),
    (8, "FPE", Some(russh::Sig::FPE)),
    (9, "KILL", Some(russh::Sig::KILL)),
    (10, "USR1", Some(russh::Sig::USR1)),
    (11, "SEGV", Some(russh::Sig::SEGV)),
    (12, "USR2", None),
    (13, "PIPE", Some(russh::Sig::PIPE)),
    (14, "ALRM", Some(russh::Sig::ALRM)),
    (15, "TERM", Some(russh::Sig::TERM)),
];

/// SSH signal names by Linux signal number.
pub fn signal_name(n: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(num, _, _)| i32::from(*num) == n)
        .map(|(_, name, _)| *name)
}

/// Signal numbers (Linux) for the SSH signal names we deliver.
pub fn signal_number(name: &str) -> Option<u8> {
    SIGNALS
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(num, _, _)| *num)
}

/// The SSH name of a signal a client asked for (`Custom` names pass through unchecked; check
/// them with [`signal_number`]).
pub fn ssh_signal_name(sig: russh::Sig) -> String {
    if let russh::Sig::Custom(name) = sig {
        return name;
    }
    SIGNALS
        .iter()
        .find(|(_, _, s)| {
            s.as_ref()
                .is_some_and(|s| std::mem::discriminant(s) == std::mem::discriminant(&sig))
        })
        .map_or_else(String::new, |(_, name, _)| (*name).to_string())
}

/// The russh form of an SSH signal name, for `exit-signal`.
pub fn ssh_signal(name: &str) -> russh::Sig {
    SIGNALS
        .iter()
        .find(|(_, n, _)| *n == name)
        .and_then(|(_, _, s)| s.clone())
        .unwrap_or_else(|| russh::Sig::Custom(name.to_string()))
}

/// How a process that ended with `status` or `signal` is reported: a known signal becomes
/// `exit-signal`, an unknown one the shell's `128 + n`.
pub fn exit_from_wait(status: Option<i32>, signal: Option<i32>) -> Exit {
    match (status, signal) {
        (_, Some(n)) => match signal_name(n) {
            Some(name) => Exit::Signal(name.to_string()),
            None => Exit::Status(128 + n.unsigned_abs()),
        },
        (Some(c), None) => Exit::Status(c.unsigned_abs()),
        (None, None) => Exit::Status(255),
    }
}

/// How the channel reports the end of an exec: a signal we delivered that matches the
/// `128 + signo` exit code becomes `exit-signal`; everything else is `exit-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Status(u32),
    Signal(String),
}

pub fn classify_exit(code: i64, delivered: &[String]) -> Exit {
    for name in delivered {
        if let Some(n) = signal_number(name)
            && code == 128 + i64::from(n)
        {
            return Exit::Signal(name.clone());
        }
    }
    Exit::Status(u32::try_from(code).unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_alias_appends_the_users_entry_under_the_login_name() {
        let dir = std::env::temp_dir().join(format!("berth-alias-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let passwd = dir.join("passwd");
        let original =
            "root:x:0:0:root:/root:/bin/bash\ntenant:x:1000:1000::/home/tenant:/bin/bash\n";
        let run = |login: &str, user: &str| {
            let mut argv = login_alias_argv(login, user);
            argv[2] = argv[2].replace("f=/etc/passwd", &format!("f={}", passwd.display()));
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .map(|s| s.code())
                .unwrap_or_else(|e| panic!("sh: {e}"))
        };
        let read = || std::fs::read_to_string(&passwd).unwrap_or_default();
        std::fs::write(&passwd, original).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run("server12", "tenant"), Some(0));
        assert_eq!(
            read(),
            format!("{original}server12:x:1000:1000::/home/tenant:/bin/bash\n")
        );
        // Idempotent.
        assert_eq!(run("server12", "tenant"), Some(0));
        assert_eq!(read().matches("server12:").count(), 1);
        // root works the same way; an unknown user changes nothing and fails.
        assert_eq!(run("server13", "root"), Some(0));
        assert!(read().ends_with("server13:x:0:0:root:/root:/bin/bash\n"));
        let before = read();
        assert_eq!(run("server14", "nobody-here"), Some(1));
        assert_eq!(read(), before);
        // A prefix of an existing name is not that name.
        assert_eq!(run("server1", "tenant"), Some(0));
        assert!(read().contains("\nserver1:x:1000:"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_allowlist() {
        let extra = vec!["EDITOR".to_string(), "GIT_*".to_string()];
        for ok in [
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "TERM",
            "EDITOR",
            "GIT_PROTOCOL",
        ] {
            assert!(env_allowed(ok, &extra), "{ok}");
        }
        for bad in [
            "PATH",
            "LD_PRELOAD",
            "EDITORX",
            "",
            "LC-ALL",
            "BASH_ENV",
            "LANGUAGE",
        ] {
            assert!(!env_allowed(bad, &extra), "{bad}");
        }
        assert!(env_value_ok("en_US.UTF-8"));
        assert!(!env_value_ok("a\0b"));
    }

    #[test]
    fn argv_shapes() {
        let a = argv(&Program::Exec("echo 'hi'; exit 3".into()), &[], None);
        assert_eq!(a[0], "/bin/sh");
        assert_eq!(a.last().map(String::as_str), Some("echo 'hi'; exit 3"));
        let s = argv(
            &Program::Sftp,
            &["/usr/lib/openssh/sftp-server".into()],
            None,
        );
        assert!(s[2].contains("'/usr/lib/openssh/sftp-server'"));
        assert!(s[2].contains("no sftp-server"));
        assert!(argv(&Program::Shell, &[], None)[2].contains("bash -l"));
        assert!(argv(&Program::Shell, &[], Some((80, 24)))[2].starts_with("stty rows 24 cols 80"));
    }

    #[test]
    fn quoting_roundtrip_is_single_word() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn forwarding_only_to_own_container() {
        let c: IpAddr = "172.19.2.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let lo4: IpAddr = IpAddr::from([127, 0, 0, 1]);
        let lo6: IpAddr = IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
        for (ok, want) in [
            ("localhost", ForwardDest::Loopback(None)),
            ("LOCALHOST.", ForwardDest::Loopback(None)),
            ("127.0.0.1", ForwardDest::Loopback(Some(lo4))),
            ("::1", ForwardDest::Loopback(Some(lo6))),
            ("[::1]", ForwardDest::Loopback(Some(lo6))),
            ("172.19.2.5", ForwardDest::Container(c)),
            ("server5", ForwardDest::Container(c)),
        ] {
            assert_eq!(forward_target(ok, "server5", c), Some(want), "{ok}");
        }
        for bad in [
            "172.19.2.6",
            "10.0.0.1",
            "server6",
            "example.com",
            "169.254.169.254",
            "0.0.0.0",
        ] {
            assert_eq!(forward_target(bad, "server5", c), None, "{bad}");
        }
    }

    #[test]
    fn exit_from_wait_status() {
        assert_eq!(exit_from_wait(Some(3), None), Exit::Status(3));
        assert_eq!(exit_from_wait(None, Some(15)), Exit::Signal("TERM".into()));
        assert_eq!(exit_from_wait(None, Some(7)), Exit::Status(135));
        assert_eq!(exit_from_wait(None, None), Exit::Status(255));
        assert_eq!(signal_number("USR2"), Some(12));
        assert_eq!(signal_number("BOGUS"), None);
        for (num, name, _) in SIGNALS {
            assert_eq!(signal_name(i32::from(num)), Some(name));
            assert_eq!(ssh_signal_name(ssh_signal(name)), name);
        }
        assert_eq!(ssh_signal_name(russh::Sig::TERM), "TERM");
        assert!(matches!(ssh_signal("WINCH"), russh::Sig::Custom(ref s) if s == "WINCH"));
    }

    #[test]
    fn exit_mapping() {
        assert_eq!(classify_exit(42, &[]), Exit::Status(42));
        assert_eq!(classify_exit(130, &[]), Exit::Status(130));
        assert_eq!(
            classify_exit(143, &["TERM".into()]),
            Exit::Signal("TERM".into())
        );
        assert_eq!(classify_exit(-1, &[]), Exit::Status(255));
    }
}
