//! Which Docker engine berth talks to and how it connects (shared with `berth image build`).
//!
//! Deliberately not here: anything about tenants; this only yields a negotiated client.

use bollard::Docker;

use super::DockerError;
use crate::config::Config;

/// The Docker endpoint berth uses: config, else `DOCKER_HOST`, else the local socket.
pub fn docker_endpoint(cfg: &Config) -> String {
    cfg.docker_host
        .clone()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine named by the config and negotiates the API version.
pub async fn connect_docker(cfg: &Config) -> Result<(Docker, String), DockerError> {
    let endpoint = docker_endpoint(cfg);
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let docker = Docker::connect_with_host(&endpoint).map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    Ok((docker, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prefers_config() {
        let cfg = Config {
            docker_host: Some("tcp://10.0.0.1:2375".into()),
            ..Config::default()
        };
        assert_eq!(docker_endpoint(&cfg), "tcp://10.0.0.1:2375");
    }
}
