//! Bearer tokens with roles and teams. Tokens come from the environment
//! (`PHASEFLEET_API_TOKENS="admin:<token>,team-a/submit:<token>,team-a/approve:sha256:<hex>,..."`);
//! only their SHA-256 is kept in memory, and a request's token is hashed and compared
//! in constant time. Roles: `read` (list and show), `submit` (read + submit + cancel),
//! `approve` (read + approvals), `admin` (everything). Every token belongs to a team
//! (`TEAM/ROLE:…`; without a team, `default`) and sees that team's runs only, except an
//! admin token without a team, which is fleet-wide. A token may belong to an approver
//! group (`TEAM/approve@GROUP:…`): an approval escalated to a group is decided by that
//! group's tokens (or a fleet-wide admin) only.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use phasefleet::teams::{DEFAULT_TEAM, Scope};
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
        "PHASEFLEET_API_TOKENS entry {0}: expected [TEAM/]ROLE:TOKEN or [TEAM/]ROLE:sha256:HEX with ROLE one of read, submit, approve, admin"
    )]
    Malformed(usize),
    #[error("PHASEFLEET_API_TOKENS entry {0}: a token needs at least 16 characters")]
    TooShort(usize),
}

/// One configured token, hashed.
#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    role: Role,
    /// None: a fleet-wide admin token.
    team: Option<String>,
    /// The approver group, if any.
    group: Option<String>,
    name: String,
}

/// The configured tokens, hashed. Empty means authentication is off (`--no-auth`).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
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
            let (who, secret) = entry.split_once(':').ok_or(AuthConfigError::Malformed(n))?;
            let (who, group) = match who.trim().split_once('@') {
                Some((who, group)) if phasefleet::config::is_name(group) => {
                    (who, Some(group.to_owned()))
                }
                Some(_) => return Err(AuthConfigError::Malformed(n)),
                None => (who, None),
            };
            let (team, role) = match who.trim().split_once('/') {
                Some((team, role)) if phasefleet::config::is_name(team) => {
                    (Some(team.to_owned()), role)
                }
                Some(_) => return Err(AuthConfigError::Malformed(n)),
                None => (None, who.trim()),
            };
            let role = Role::parse(role).ok_or(AuthConfigError::Malformed(n))?;
            // Only an admin token may be fleet-wide; any other names a team (default).
            let team = match (team, role) {
                (None, Role::Admin) => None,
                (team, _) => Some(team.unwrap_or_else(|| DEFAULT_TEAM.to_owned())),
            };
            let digest = if let Some(hex_digest) = secret.strip_prefix("sha256:") {
                let bytes = hex::decode(hex_digest).map_err(|_| AuthConfigError::Malformed(n))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| AuthConfigError::Malformed(n))?
            } else {
                if secret.len() < 16 {
                    return Err(AuthConfigError::TooShort(n));
                }
                hash(secret)
            };
            let name = match &team {
                Some(t) => format!("{t}/{}-token-{n}", role.as_str()),
                None => format!("{}-token-{n}", role.as_str()),
            };
            entries.push(Entry {
                digest,
                role,
                team,
                group,
                name,
            });
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

    fn lookup(&self, token: &str) -> Option<&Entry> {
        let h = hash(token);
        let mut found = None;
        // Compare against every entry, byte by byte, without early exit.
        for entry in &self.entries {
            let diff = entry
                .digest
                .iter()
                .zip(h.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(entry);
            }
        }
        found
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// Whose runs it sees and acts on.
    pub scope: Scope,
    /// Who, for audit fields (`decided_by`, `submitted_by`): the token's label.
    pub name: String,
    /// The approver groups the token belongs to.
    pub groups: Vec<String>,
}

impl Caller {
    /// The team a run this caller submits belongs to: its own, or for a fleet-wide
    /// admin the one it asks for (default `default`).
    ///
    /// # Errors
    /// 403 when a team's token asks for another team.
    pub fn submit_team(&self, asked: Option<&str>) -> Result<String, ApiError> {
        match (&self.scope, asked) {
            (Scope::Fleet, asked) => Ok(asked.unwrap_or(DEFAULT_TEAM).to_owned()),
            (Scope::Team(own), Some(asked)) if asked != own => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token belongs to team {own:?} and cannot submit for {asked:?}"),
            )),
            (Scope::Team(own), _) => Ok(own.clone()),
        }
    }

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
                scope: Scope::Fleet,
                name: "anonymous".into(),
                groups: Vec::new(),
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
        let entry = state
            .tokens
            .lookup(token)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))?;
        Ok(Self {
            role: entry.role,
            scope: entry.team.clone().map_or(Scope::Fleet, Scope::Team),
            name: entry.name.clone(),
            groups: entry.group.iter().cloned().collect(),
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
            "admin:admin-secret-00001, approve:sha256:{hashed}, team-a/submit:team-a-secret-0001"
        ))
        .unwrap();
        let admin = t.lookup("admin-secret-00001").unwrap();
        assert_eq!((admin.role, admin.team.as_deref()), (Role::Admin, None));
        let approver = t.lookup("approver-secret-0001").unwrap();
        assert_eq!(
            (approver.role, approver.team.as_deref()),
            (Role::Approve, Some("default"))
        );
        let team_a = t.lookup("team-a-secret-0001").unwrap();
        assert_eq!(
            (team_a.role, team_a.team.as_deref()),
            (Role::Submit, Some("team-a"))
        );
        assert!(matches!(
            Tokens::parse("bad team/submit:xxxxxxxxxxxxxxxxxxxx"),
            Err(AuthConfigError::Malformed(1))
        ));
        // An approver group after `@`; a group that is not a plain name is refused.
        let grouped = Tokens::parse("team-a/approve@leads:lead-secret-00001").unwrap();
        let lead = grouped.lookup("lead-secret-00001").unwrap();
        assert_eq!(
            (lead.role, lead.team.as_deref(), lead.group.as_deref()),
            (Role::Approve, Some("team-a"), Some("leads"))
        );
        assert!(matches!(
            Tokens::parse("team-a/approve@bad group:lead-secret-00001"),
            Err(AuthConfigError::Malformed(1))
        ));
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
