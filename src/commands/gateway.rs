//! The `gateway` component of `berth run` (owned by the gateway area).

use anyhow::Result;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the component until `shutdown` fires; sends on `ready` once it really serves.
pub async fn run_daemon(
    _cfg: &Config,
    _shutdown: CancellationToken,
    _ready: oneshot::Sender<()>,
) -> Result<()> {
    anyhow::bail!("the gateway component is not implemented yet")
}

/// Appends this component's Prometheus metrics (text format).
pub fn render_metrics(_out: &mut String) {}
