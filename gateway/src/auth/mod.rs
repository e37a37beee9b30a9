//! Authentication and admission: who may try, and whether what they presented is right.
//!
//! Owned by the "auth" work area. The SSH session code (`crate::server`) calls only the
//! [`Authenticator`] surface below; everything behind it (rate limits, bans, bcrypt on the
//! blocking pool, dummy-hash timing equalisation, key matching) is private to this module.
//!
//! CONTRACT (do not change signatures without telling the coordinator):
//! - `Authenticator::new(cfg: &crate::Config, backend: std::sync::Arc<dyn crate::Backend>) -> Self`
//! - `Authenticator::admit(&self, peer: std::net::IpAddr) -> Admission` — called on TCP accept,
//!   before the SSH handshake. `Admission::Accept(Permit)`: keep the `Permit` alive until the
//!   connection authenticates (then call `Permit::authenticated(self)`) or closes (drop);
//!   `Admission::Reject(reason)`: close the socket immediately.
//! - `Authenticator::password(&self, peer: IpAddr, user: &str, password: &str) -> Decision`
//!   (async; rate-limit check first, then bcrypt verify on the blocking pool; unknown server →
//!   dummy hash; same timing, same reply)
//! - `Authenticator::public_key(&self, peer: IpAddr, user: &str, key: &russh::keys::PublicKey,
//!   verified: bool) -> Decision` (async; `verified == false` is the probe step — answer must
//!   not reveal whether the server exists: accept a probe for any well-formed key and decide at
//!   the signed step, or equivalent)
//! - `Decision::Accept { server: tenants::ServerId, owner: String }` | `Decision::Reject`
//!   (`Reject` carries nothing the client may learn; the reason goes to the audit log only).
