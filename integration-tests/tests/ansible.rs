//! A tenant manages their server with Ansible through the gateway: a real `ansible-playbook`
//! (ansible-core 2.19 with the `ansible.posix` collection, installed into a venv by
//! `scripts/test`) against a real tenant container, with pipelining off and on and with SSH
//! ControlPersist. Each configuration runs the same play twice: the first run changes things,
//! the second reports nothing changed (idempotence).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::GatewayHarness;

/// `ansible-playbook` from the venv `scripts/test` prepares (`BERTH_TEST_ANSIBLE_PLAYBOOK`), or
/// the same default location.
fn ansible_playbook() -> Result<PathBuf> {
    let p = std::env::var_os("BERTH_TEST_ANSIBLE_PLAYBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ansible-venv/bin/ansible-playbook")
        });
    if !p.exists() {
        bail!(
            "ansible-playbook not found at {} (scripts/test --setup-only installs ansible into a venv)",
            p.display()
        );
    }
    Ok(p)
}

const PLAY: &str = r#"
- hosts: tenant
  gather_facts: true
  vars:
    base: "~/managed-{{ run_name }}"
  tasks:
    - name: facts describe the tenant
      ansible.builtin.assert:
        that:
          - ansible_facts.user_id == "tenant"
          - ansible_facts.env.HOME == "/home/tenant"
          - ansible_facts.env.USER == "tenant"
          - ansible_facts.python.version.major == 3
    - name: directory
      ansible.builtin.file:
        path: "{{ base }}"
        state: directory
        mode: "0755"
    - name: copy
      ansible.builtin.copy:
        content: "hello from ansible\n"
        dest: "{{ base }}/hello.txt"
        mode: "0644"
    - name: template
      ansible.builtin.template:
        src: motd.j2
        dest: "{{ base }}/motd"
        mode: "0644"
    - name: lineinfile
      ansible.builtin.lineinfile:
        path: "{{ base }}/app.conf"
        line: "listen = 8080"
        create: true
        mode: "0644"
    - name: command
      ansible.builtin.command: cat {{ base }}/hello.txt
      register: hello
      changed_when: false
    - name: shell
      ansible.builtin.shell: echo "$USER:$(id -un):$HOME" | tr a-z A-Z
      register: who
      changed_when: false
    - name: results
      ansible.builtin.assert:
        that:
          - hello.stdout == "hello from ansible"
          - who.stdout == "TENANT:TENANT:/HOME/TENANT"
    - name: fetch
      ansible.builtin.fetch:
        src: "{{ base }}/motd"
        dest: "{{ fetch_dir }}/motd-{{ run_name }}"
        flat: true
    - name: synchronize (rsync over the gateway)
      ansible.posix.synchronize:
        src: "{{ tree }}/"
        dest: "{{ ansible_facts.env.HOME }}/managed-{{ run_name }}/tree/"
"#;

struct Setup {
    dir: PathBuf,
    inventory: PathBuf,
    play: PathBuf,
}

fn setup(h: &GatewayHarness) -> Result<Setup> {
    let dir = h.path("ansible");
    std::fs::create_dir_all(dir.join("tree/sub"))?;
    std::fs::create_dir_all(dir.join("fetched"))?;
    std::fs::create_dir_all(dir.join("home"))?;
    std::fs::write(dir.join("tree/a.txt"), "tree file a\n")?;
    std::fs::write(dir.join("tree/sub/b.bin"), vec![7u8; 100_000])?;
    std::fs::write(
        dir.join("motd.j2"),
        "Managed by Ansible on {{ ansible_facts.hostname }} as {{ ansible_user }}\n",
    )?;
    let play = dir.join("play.yml");
    std::fs::write(&play, PLAY)?;
    let inventory = dir.join("inventory.ini");
    std::fs::write(
        &inventory,
        format!(
            "[tenants]\ntenant ansible_host=127.0.0.1 ansible_port={port} ansible_user={user} \
             ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3\n",
            port = h.addr.port(),
            user = h.user(),
            key = h.key.display(),
        ),
    )?;
    Ok(Setup {
        dir,
        inventory,
        play,
    })
}

fn run_play(s: &Setup, run_name: &str, pipelining: bool, control_persist: bool) -> Result<Output> {
    let ssh_args = if control_persist {
        format!(
            "-o ControlMaster=auto -o ControlPersist=60s -o ControlPath={}/cm-%C \
             -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
            s.dir.display()
        )
    } else {
        "-o ControlMaster=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes".to_string()
    };
    let out = Command::new(ansible_playbook()?)
        .arg("-i")
        .arg(&s.inventory)
        .arg(&s.play)
        .arg("-e")
        .arg(format!(
            "run_name={run_name} fetch_dir={} tree={}",
            s.dir.join("fetched").display(),
            s.dir.join("tree").display()
        ))
        .current_dir(&s.dir)
        .env("HOME", s.dir.join("home"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env(
            "ANSIBLE_PIPELINING",
            if pipelining { "True" } else { "False" },
        )
        .env("ANSIBLE_SSH_ARGS", ssh_args)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_LOCAL_TEMP", s.dir.join("local-tmp"))
        .stdin(Stdio::null())
        .output()
        .context("run ansible-playbook")?;
    Ok(out)
}

/// `ok=… changed=… unreachable=… failed=…` of the recap line.
fn recap(out: &Output) -> Result<(u32, u32, u32)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("tenant ") && l.contains("changed="))
        .with_context(|| format!("no PLAY RECAP line in:\n{text}"))?;
    let field = |name: &str| -> u32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|v| v.parse().ok()))
            .unwrap_or(u32::MAX)
    };
    Ok((field("changed="), field("unreachable="), field("failed=")))
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn docker_exec(h: &GatewayHarness, args: &[&str]) -> Result<String> {
    let out = h.docker_exec(h.server.context("server")?, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ansible_manages_a_tenant_through_the_gateway() -> Result<()> {
    let h = GatewayHarness::start("ansible").await?;
    let s = setup(&h)?;
    for (run_name, pipelining, cp) in [
        ("plain", false, false),
        ("pipelined", true, false),
        ("persist", false, true),
    ] {
        let first = tokio::task::block_in_place(|| run_play(&s, run_name, pipelining, cp))?;
        let (changed, unreachable, failed) = recap(&first)?;
        assert!(
            first.status.success() && unreachable == 0 && failed == 0 && changed >= 6,
            "{run_name}: first run: {}",
            show(&first)
        );
        let second = tokio::task::block_in_place(|| run_play(&s, run_name, pipelining, cp))?;
        let (changed, unreachable, failed) = recap(&second)?;
        assert!(
            second.status.success() && unreachable == 0 && failed == 0 && changed == 0,
            "{run_name}: second run must change nothing: {}",
            show(&second)
        );
        let base = format!("/home/tenant/managed-{run_name}");
        assert_eq!(
            docker_exec(&h, &["cat", &format!("{base}/hello.txt")])?,
            "hello from ansible\n"
        );
        assert_eq!(
            docker_exec(&h, &["cat", &format!("{base}/tree/a.txt")])?,
            "tree file a\n"
        );
        assert_eq!(
            docker_exec(
                &h,
                &["stat", "-c", "%s %U", &format!("{base}/tree/sub/b.bin")]
            )?,
            "100000 tenant\n"
        );
        assert_eq!(
            docker_exec(&h, &["cat", &format!("{base}/app.conf")])?,
            "listen = 8080\n"
        );
        let fetched = read(&s.dir.join(format!("fetched/motd-{run_name}")));
        assert!(
            fetched.starts_with("Managed by Ansible on ")
                && fetched.ends_with(&format!(" as {}\n", h.user())),
            "{run_name}: fetched motd {fetched:?}"
        );
    }
    // Ansible's remote temp dir went to the login user's home, not to a literal `~server<N>`.
    let stray = docker_exec(
        &h,
        &["find", "/", "-xdev", "-maxdepth", "4", "-name", "~server*"],
    )?;
    assert_eq!(stray, "", "stray literal ~server directories");
    assert!(
        docker_exec(&h, &["ls", "-d", "/home/tenant/.ansible"])?.contains(".ansible"),
        "no ~/.ansible in the login user's home"
    );
    Ok(())
}
