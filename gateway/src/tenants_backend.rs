//! The production [`Backend`]: credentials and audit from `tenants::Store`, containers from
//! `tenants::Provisioner`, sessions and forwards through [`DockerExec`].

use std::sync::Arc;

use tenants::{AuditEvent, AuditKind, ProvisionError, Provisioner, ServerId, Store};
use tracing::warn;

use crate::backend::{
    AuditRecord, Backend, BackendError, Credentials, ExecRequest, ListenSpec, Listener, Process,
    Stream, Target,
};
use crate::docker::DockerExec;
use crate::policy::ForwardDest;

#[derive(Clone)]
pub struct TenantsBackend {
    store: Store,
    provisioner: Provisioner,
    exec: Arc<DockerExec>,
}

impl TenantsBackend {
    /// `ssh` supplies the exec settings (`exec_user`, `exec_workdir`, `agent_binary`).
    pub fn new(store: Store, provisioner: Provisioner, ssh: &crate::Config) -> Self {
        let exec = Arc::new(DockerExec::new(provisioner.docker().clone(), ssh));
        Self {
            store,
            provisioner,
            exec,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn provisioner(&self) -> &Provisioner {
        &self.provisioner
    }
}

fn provision_error(e: ProvisionError) -> BackendError {
    if e.is_retryable() {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Failed(e.to_string())
    }
}

#[async_trait::async_trait]
impl Backend for TenantsBackend {
    async fn credentials(&self, server: ServerId) -> Result<Option<Credentials>, BackendError> {
        match self.store.server_auth(server).await {
            Ok(None) => Ok(None),
            Ok(Some(a)) => Ok(Some(Credentials {
                server: a.server,
                login_allowed: a.login_allowed(),
                owner: a.owner,
                password_hash: a.password_hash,
                authorized_keys: a.authorized_keys,
            })),
            Err(e) if e.is_retryable() => Err(BackendError::Unavailable(e.to_string())),
            Err(e) => Err(BackendError::Failed(e.to_string())),
        }
    }

    async fn ensure_running(&self, server: ServerId) -> Result<Target, BackendError> {
        let r = self
            .provisioner
            .ensure_running(server)
            .await
            .map_err(provision_error)?;
        Ok(Target {
            server: r.id,
            container_id: r.container_id,
            address: r.address.into(),
            started_now: r.started_now,
            user: r.user,
            agent_dir: r.agent_dir,
            route: None,
        })
    }

    async fn exec(
        &self,
        target: &Target,
        login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError> {
        self.exec.exec(target, login, req).await
    }

    async fn connect(
        &self,
        target: &Target,
        login: &str,
        dest: ForwardDest,
        port: u16,
    ) -> Result<Stream, BackendError> {
        self.exec.connect(target, login, dest, port).await
    }

    async fn listen(
        &self,
        target: &Target,
        login: &str,
        spec: ListenSpec,
    ) -> Result<Listener, BackendError> {
        self.exec.listen(target, login, spec).await
    }

    async fn connect_unix(
        &self,
        target: &Target,
        login: &str,
        path: &str,
    ) -> Result<Stream, BackendError> {
        self.exec.connect_unix(target, login, path).await
    }

    async fn audit(&self, record: AuditRecord) {
        let kind = match record.kind {
            "auth" => AuditKind::Auth,
            _ => AuditKind::Session,
        };
        let mut detail = record.detail;
        if record.kind != "auth"
            && record.kind != "session"
            && let Some(m) = detail.as_object_mut()
        {
            m.insert("kind".into(), record.kind.into());
        }
        let event = AuditEvent {
            kind,
            server: record.server,
            account: record.account,
            peer: record.peer.map(|p| p.to_string()),
            method: record.method,
            outcome: record.outcome,
            detail,
        };
        if let Err(e) = self.store.record_audit(event).await {
            warn!(error = %e, "audit record not stored");
        }
    }

    async fn operations(
        &self,
        server: ServerId,
    ) -> Result<tenants::ServerOperations, BackendError> {
        self.store
            .server_operations(server)
            .await
            .map_err(|e| BackendError::Unavailable(e.to_string()))
    }

    async fn recording_done(&self, recording: tenants::Recording) {
        if let Err(e) = self.store.add_recording(&recording).await {
            warn!(server = %recording.server.login_name(), id = %recording.id, error = %e, "recording metadata not stored");
        }
    }

    async fn prune_recordings(&self, before: i64) -> Vec<String> {
        match self.store.prune_recordings(before).await {
            Ok(rows) => rows.into_iter().filter_map(|r| r.file).collect(),
            Err(e) => {
                warn!(error = %e, "expired recordings not pruned");
                Vec::new()
            }
        }
    }
}
