//! Gateway sessions through the real OpenSSH client: exec, exit codes, stderr, stdin, PTY, env,
//! ControlMaster, disconnect cleanup.

use integration_tests::gateway::GatewayHarness;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_exit_code_and_stderr_are_separate() -> anyhow::Result<()> {
    let h = GatewayHarness::start("exec_exit").await?;
    let out = tokio::task::block_in_place(|| h.ssh_exec("echo out; echo err >&2; exit 42", b""))?;
    assert_eq!(out.status.code(), Some(42), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let who = tokio::task::block_in_place(|| h.ssh_exec("id -un; pwd", b""))?;
    assert_eq!(String::from_utf8_lossy(&who.stdout), "tenant\n/home/tenant\n");
    Ok(())
}
