//! Bearer tokens with roles. Tokens come from the environment
//! (`PHASEFLEET_API_TOKENS="admin:<token>,approve:sha256:<hex>,..."`); only their
//! SHA-256 is kept in memory, and a request's token is hashed and compared in constant
//! time. Roles: `read` (list and show), `submit` (read + submit + cancel), `approve`
//! (read + approvals), `admin` (everything).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Submit,
    Approve,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "submit" => Self::Submit,
            "approve" => Self::Approve,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Submit => "submit",
            Self::Approve => "approve",
            Self::Admin => "admin",
        }
    }

    /// Whether a holder of `self` may do what `needed` allows.
    #[must_use]
    pub fn grants(self, needed: Role) -> bool {
        self == Self::Admin || self == needed || needed == Self::Read
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "PHASEFLEET_API_TOKENS entry {0}: expected ROLE:TOKEN or ROLE:sha256:HEX with ROLE one of read, submit, approve, admin"
    )]
    Malformed(usize),
    #[error("PHASEFLEET_API_TOKENS entry {0}: a token needs at least 16 characters")]
    TooShort(usize),
}

/// The configured tokens, hashed. Empty means authentication is off (`--no-auth`).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role, String)>,
    enabled: bool,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parse the `PHASEFLEET_API_TOKENS` format.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the entry at fault (never echoing a token).
    pub fn parse(spec: &str) -> Result<Self, AuthConfigError> {
        let mut entries = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let n = i + 1;
            let (role, secret) = entry.split_once(':').ok_or(AuthConfigError::Malformed(n))?;
            let role = Role::parse(role.trim()).ok_or(AuthConfigError::Malformed(n))?;
            let digest = if let Some(hex_digest) = secret.strip_prefix("sha256:") {
                let bytes = hex::decode(hex_digest).map_err(|_| AuthConfigError::Malformed(n))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| AuthConfigError::Malformed(n))?
            } else {
                if secret.len() < 16 {
                    return Err(AuthConfigError::TooShort(n));
                }
                hash(secret)
            };
            entries.push((digest, role, format!("{}-token-{n}", role.as_str())));
        }
        Ok(Self {
            entries,
            enabled: true,
        })
    }

    /// No authentication: every request acts as admin. For `phasefleet dev` on loopback.
    #[must_use]
    pub fn disabled() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lookup(&self, token: &str) -> Option<(Role, &str)> {
        let h = hash(token);
        let mut found = None;
        // Compare against every entry, byte by byte, without early exit.
        for (digest, role, name) in &self.entries {
            let diff = digest
                .iter()
                .zip(h.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some((*role, name.as_str()));
            }
        }
        found
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// Who, for audit fields (`decided_by`, `submitted_by`): the token's label.
    pub name: String,
}

impl Caller {
    /// Refuse unless the caller's role grants `needed`.
    ///
    /// # Errors
    /// 403 naming the role needed.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.grants(needed) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this needs the {} role; the token has {}",
                    needed.as_str(),
                    self.role.as_str()
                ),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.tokens.enabled() {
            return Ok(Self {
                role: Role::Admin,
                name: "anonymous".into(),
            });
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send Authorization: Bearer <token>",
            ));
        };
        let (role, name) = state
            .tokens
            .lookup(token)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))?;
        Ok(Self {
            role,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_hashed_tokens_and_roles_grant_what_they_should() {
        let hashed = hex::encode(hash("approver-secret-0001"));
        let t = Tokens::parse(&format!(
            "admin:admin-secret-00001, approve:sha256:{hashed}"
        ))
        .unwrap();
        assert_eq!(
            t.lookup("admin-secret-00001").map(|r| r.0),
            Some(Role::Admin)
        );
        assert_eq!(
            t.lookup("approver-secret-0001").map(|r| r.0),
            Some(Role::Approve)
        );
        assert!(t.lookup("admin-secret-00002").is_none());
        assert!(Role::Approve.grants(Role::Read));
        assert!(!Role::Approve.grants(Role::Submit));
        assert!(!Role::Submit.grants(Role::Approve));
        assert!(Role::Admin.grants(Role::Approve));
        assert!(matches!(
            Tokens::parse("boss:xxxxxxxxxxxxxxxxxxxx"),
            Err(AuthConfigError::Malformed(1))
        ));
        assert!(matches!(
            Tokens::parse("admin:short"),
            Err(AuthConfigError::TooShort(1))
        ));
        assert!(matches!(
            Tokens::parse("admin:sha256:zz"),
            Err(AuthConfigError::Malformed(1))
        ));
    }
}
