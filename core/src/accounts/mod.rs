//! People and the ends of sessions: the only writer of users and identity links, of members
//! (with their sign-in links and console sessions: `members.rs`, `console_sessions.rs`, over
//! `passwords.rs` and the sign-in `throttle.rs`), and the only code that ends sessions, edge and
//! console. Sign-in completion resolves the user a login names here
//! ([`Accounts::resolve_login`]); the management API, the plugin host's directory and later the
//! console and SCIM read and write people here; logout, revocation, re-check denials, identity
//! provider logouts and expiry end sessions here. Every people write and every ending is an
//! audit line (`target: "portcullis::audit"`).
//!
//! Ending sessions is a store write: the store's feed says they ended, the follower
//! (`derived.rs`) drops them from the session index, and the ending returns once the follower
//! has applied it, so the very next request is refused.

mod console_sessions;
mod members;
pub mod passwords;
pub mod throttle;

pub use console_sessions::{ConsoleSignIn, SignInAttempt, SignedIn, ACTIVITY_WRITE_SECS};
pub use members::{Invitation, MemberError, MemberPatch, NewMember, Principal, MAX_MEMBER_NAME, SIGN_IN_LINK_SECS};

use crate::clock::Clock;
use crate::derived::Derived;
use crate::model::{IdentityLink, Session, User};
use crate::sessions::{SessionEntry, Sessions};
use crate::store::{normalize_email, Conflict, Storage, StoreError};
use std::sync::Arc;

/// How often a write that found its record changed under it reads again before giving up.
pub(crate) const WRITE_ATTEMPTS: usize = 8;

/// People and sessions, over the store, the session index (read only) and the follower.
pub struct Accounts {
    store: Arc<dyn Storage>,
    sessions: Arc<Sessions>,
    derived: Arc<Derived>,
    clock: Arc<dyn Clock>,
}

/// Who an identity provider says signed in.
pub struct LoginIdentity<'a> {
    /// The plugin (identity provider) that identified the user.
    pub idp: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    /// Whether the provider vouches for `email`: an unverified address neither finds a person
    /// nor is written to one (a provider that lets people type any address must not sign them
    /// in as whoever has it).
    pub email_verified: bool,
    pub name: Option<&'a str>,
}

/// A person to create (provisioning).
pub struct NewPerson {
    pub email: String,
    pub name: String,
    pub active: bool,
    pub external_id: Option<String>,
}

/// The fields of a person to change; `None` leaves a field as it is.
#[derive(Default)]
pub struct PersonPatch {
    pub email: Option<String>,
    pub name: Option<String>,
    pub active: Option<bool>,
    pub external_id: Option<Option<String>>,
}

/// Why an accounts operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("the email `{email}` belongs to another user")]
    EmailTaken { email: String },
    #[error("user `{id}` was not found")]
    NotFound { id: String },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("this account may not sign in")]
    Disabled,
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Storage>,
        sessions: Arc<Sessions>,
        derived: Arc<Derived>,
        clock: Arc<dyn Clock>,
    ) -> Accounts {
        Accounts {
            store,
            sessions,
            derived,
            clock,
        }
    }

    /// The user an identity provider's login names: by link (idp, subject); else the user with
    /// that (normalised) email, linked now; else a new user, linked. `Disabled` for an inactive
    /// user. Updates email/name/last_login as today's login completion does. Only a verified
    /// email finds a user or is written to one: without one, the user keeps its email.
    pub async fn resolve_login(&self, login: LoginIdentity<'_>) -> Result<User, AccountsError> {
        let now = self.clock.now();
        let verified_email = login
            .email
            .map(str::trim)
            .filter(|email| login.email_verified && !email.is_empty());
        let email = verified_email.unwrap_or_default();
        let name = login.name.unwrap_or_default();
        let link_to = |user_id: &str| IdentityLink {
            idp: login.idp.to_string(),
            subject: login.subject.to_string(),
            user_id: user_id.to_string(),
            created_at: now,
        };
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(user) = self.store.user_by_link(login.idp, login.subject).await? {
                if !user.active {
                    return Err(AccountsError::Disabled);
                }
                let mut signed_in = User {
                    email: verified_email.map_or_else(|| user.email.clone(), str::to_string),
                    name: name.to_string(),
                    last_login: now,
                    updated_at: now,
                    ..user.clone()
                };
                match self.store.put_user(Some(&user), &signed_in).await {
                    Ok(()) => return Ok(signed_in),
                    Err(StoreError::Conflict(Conflict::EmailTaken { user_id, .. })) => {
                        // Another user holds the email the provider now sends: keep ours.
                        tracing::warn!(user = %user.id, other = %user_id, idp = login.idp, "the identity provider's email belongs to another user; the user keeps its email");
                        signed_in.email = user.email.clone();
                        match self.store.put_user(Some(&user), &signed_in).await {
                            Ok(()) => return Ok(signed_in),
                            Err(e) if retry(&e) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) if retry(&e) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let normalized = normalize_email(email);
            if verified_email.is_some() {
                if let Some(user) = self.store.user_by_email(&normalized).await? {
                    if !user.active {
                        return Err(AccountsError::Disabled);
                    }
                    let signed_in = User {
                        email: email.to_string(),
                        name: if name.is_empty() {
                            user.name.clone()
                        } else {
                            name.to_string()
                        },
                        last_login: now,
                        updated_at: now,
                        ..user.clone()
                    };
                    match self
                        .store
                        .put_user_with_link(Some(&user), &signed_in, &link_to(&user.id))
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(target: "portcullis::audit", event = "identity_linked", user = %user.id, idp = login.idp, "an identity provider's login was linked to the user with its email");
                            return Ok(signed_in);
                        }
                        Err(e) if retry(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let user = User {
                id: crate::ids::new_id(crate::ids::APP_USER, now),
                email: email.to_string(),
                name: name.to_string(),
                active: true,
                external_id: None,
                created_at: now,
                updated_at: now,
                last_login: now,
            };
            match self.store.put_user_with_link(None, &user, &link_to(&user.id)).await {
                Ok(()) => {
                    tracing::info!(target: "portcullis::audit", event = "user_created", user = %user.id, idp = login.idp, "user created at sign-in");
                    return Ok(user);
                }
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(Conflict::Changed).into())
    }

    pub async fn person(&self, id: &str) -> Result<Option<User>, AccountsError> {
        Ok(self.store.user(id).await?)
    }

    pub async fn person_by_email(&self, email: &str) -> Result<Option<User>, AccountsError> {
        let normalized = normalize_email(email);
        if normalized.is_empty() {
            return Ok(None);
        }
        Ok(self.store.user_by_email(&normalized).await?)
    }

    pub async fn person_by_external_id(&self, external_id: &str) -> Result<Option<User>, AccountsError> {
        Ok(self.store.user_by_external_id(external_id).await?)
    }

    /// Ascending id order (stable paging for SCIM): up to `limit` after `after_id`, and whether more remain.
    pub async fn people(&self, after_id: Option<&str>, limit: usize) -> Result<(Vec<User>, bool), AccountsError> {
        Ok(self.store.users_after(after_id, limit).await?)
    }

    /// Up to `limit` people with ids below `before_id`, newest first (the management API's paging).
    pub async fn people_newest_first(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page<User>, AccountsError> {
        Ok(self.store.users_page(before_id, limit).await?)
    }

    pub async fn create_person(&self, new: NewPerson) -> Result<User, AccountsError> {
        let email = checked_email(&new.email)?;
        let now = self.clock.now();
        let user = User {
            id: crate::ids::new_id(crate::ids::APP_USER, now),
            email,
            name: new.name,
            active: new.active,
            external_id: new.external_id,
            created_at: now,
            updated_at: now,
            last_login: 0,
        };
        self.store.put_user(None, &user).await.map_err(people_error)?;
        tracing::info!(target: "portcullis::audit", event = "user_created", user = %user.id, active = user.active, "user provisioned");
        Ok(user)
    }

    /// Deactivation (active: Some(false)) ends every session of the user before it returns.
    pub async fn update_person(&self, id: &str, patch: PersonPatch) -> Result<User, AccountsError> {
        let email = patch.email.as_deref().map(checked_email).transpose()?;
        for _ in 0..WRITE_ATTEMPTS {
            let Some(user) = self.store.user(id).await? else {
                return Err(AccountsError::NotFound { id: id.to_string() });
            };
            let mut updated = user.clone();
            if let Some(email) = &email {
                updated.email = email.clone();
            }
            if let Some(name) = &patch.name {
                updated.name = name.clone();
            }
            if let Some(active) = patch.active {
                updated.active = active;
            }
            if let Some(external_id) = &patch.external_id {
                updated.external_id = external_id.clone();
            }
            updated.updated_at = self.clock.now();
            match self.store.put_user(Some(&user), &updated).await {
                Ok(()) => {
                    tracing::info!(target: "portcullis::audit", event = "user_updated", user = %id, active = updated.active, "user updated");
                    if !updated.active {
                        // A deactivated user's sessions end at once (again, if it was inactive:
                        // a session made in between must not outlive the deactivation).
                        let ended = self.end_sessions_of(id).await?;
                        tracing::info!(target: "portcullis::audit", event = "user_deactivated", user = %id, sessions_ended = ended, "user deactivated");
                    }
                    return Ok(updated);
                }
                Err(e) if e.is_changed() => continue,
                Err(e) => return Err(people_error(e)),
            }
        }
        Err(StoreError::Conflict(Conflict::Changed).into())
    }

    /// Ends the user's sessions, then deletes the user and its links.
    pub async fn delete_person(&self, id: &str) -> Result<Option<User>, AccountsError> {
        let mut ended = self.end_sessions_of(id).await?;
        let deleted = self.store.delete_user(id).await?;
        // A sign-in that read the user before the delete and stored its session after the
        // ending above: ended here (see `start_session` for the other order).
        ended += self.end_sessions_of(id).await?;
        if deleted.is_some() {
            tracing::info!(target: "portcullis::audit", event = "user_deleted", user = %id, sessions_ended = ended, "user deleted");
        }
        Ok(deleted)
    }

    /// Stores the session of a sign-in `resolve_login` allowed and makes it live, then reads
    /// its user again: a deactivation or deletion that ran in between (after `resolve_login`
    /// saw the user active, before this session was stored, so its ending did not see it) is
    /// seen here, and the session ends at once (`Disabled`). Either the ending sees the session
    /// or this read sees the ending: no session outlives its person.
    ///
    /// A session whose email (or whose user's email) is a disabled member's is refused the
    /// same way: one directory of people, so disabling a member ends their edge sign-ins too.
    pub async fn start_session(&self, session: Session) -> Result<Arc<SessionEntry>, AccountsError> {
        let entry = self.sessions.insert(&*self.store, session).await?;
        let user = self.store.user(&entry.session.user_id).await?;
        let member_disabled = self.is_disabled_member(&entry.session.email).await?
            || match &user {
                Some(user) => self.is_disabled_member(&user.email).await?,
                None => false,
            };
        match user {
            Some(user) if user.active && !member_disabled => Ok(entry),
            _ => {
                self.end_sessions(std::slice::from_ref(&entry.session.id)).await?;
                Err(AccountsError::Disabled)
            }
        }
    }

    pub async fn links_of(&self, user_id: &str) -> Result<Vec<IdentityLink>, AccountsError> {
        Ok(self.store.links_of(user_id).await?)
    }

    /// Ends every session of `user_id`, live or only stored, durably; when it returns the
    /// session index has dropped them, so the very next request is refused. Returns how many
    /// were live.
    pub async fn end_sessions_of(&self, user_id: &str) -> Result<usize, AccountsError> {
        self.end_sessions_where(|s| s.user_id == user_id).await
    }

    /// Ends every session `which` selects, live and stored; answers how many were live.
    pub async fn end_sessions_where(&self, which: impl Fn(&Session) -> bool + Send) -> Result<usize, AccountsError> {
        let live = self.sessions.count_where(&which);
        let stored: Vec<String> = self
            .store
            .all_sessions()
            .await?
            .into_iter()
            .filter(|s| which(s))
            .map(|s| s.id)
            .collect();
        self.store.delete_sessions(&stored).await?;
        self.index_caught_up().await?;
        Ok(live)
    }

    /// Ends the sessions with these ids (logout, revocation). Answers the sessions that were
    /// stored.
    pub async fn end_sessions(&self, ids: &[String]) -> Result<Vec<Session>, AccountsError> {
        let ended = self.store.delete_sessions(ids).await?;
        self.index_caught_up().await?;
        Ok(ended)
    }

    /// Ends the sessions that have expired by `now`; answers how many were live.
    pub async fn end_expired_sessions(&self, now: i64) -> Result<usize, AccountsError> {
        let expired = self.sessions.expired_ids(now);
        self.store.delete_sessions(&expired).await?;
        self.index_caught_up().await?;
        Ok(expired.len())
    }

    /// Waits until the session index shows every ending written so far.
    async fn index_caught_up(&self) -> Result<(), AccountsError> {
        self.derived
            .caught_up_to_store()
            .await
            .map_err(|e| AccountsError::Store(StoreError::Unavailable(e.to_string())))
    }
}

/// Whether a sign-in's write met another writer and should read again.
fn retry(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict(
            Conflict::Changed | Conflict::Missing | Conflict::EmailTaken { .. } | Conflict::LinkTaken { .. }
        )
    )
}

/// A store refusal of a people write, as this module's error.
fn people_error(e: StoreError) -> AccountsError {
    match e {
        StoreError::Conflict(Conflict::EmailTaken { email, .. }) => AccountsError::EmailTaken { email },
        other => AccountsError::Store(other),
    }
}

/// An email a person may be given: trimmed, not empty, one `@` with text either side.
fn checked_email(email: &str) -> Result<String, AccountsError> {
    let email = email.trim();
    let valid = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if !valid || email.chars().any(char::is_control) {
        return Err(AccountsError::Invalid {
            field: "email",
            message: format!("`{}` is not an email address", email.escape_debug()),
        });
    }
    Ok(email.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// Accounts over a fresh store in `dir`, with the follower it waits on.
    async fn accounts(dir: &tempfile::TempDir) -> (Accounts, crate::derived::Follower) {
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(ManualClock::new());
        let followed = crate::derived::followed_in(dir.path(), clock.clone());
        let (store, sessions) = (followed.store.clone(), followed.sessions.clone());
        let (derived, follower) = crate::derived::start(followed).await.unwrap();
        (Accounts::new(store, sessions, derived, clock), follower)
    }

    fn login<'a>(subject: &'a str, email: Option<&'a str>, email_verified: bool) -> LoginIdentity<'a> {
        LoginIdentity {
            idp: "oidc",
            subject,
            email,
            email_verified,
            name: Some("Someone"),
        }
    }

    #[tokio::test]
    async fn a_linked_user_keeps_its_email_when_the_provider_sends_an_unverified_one_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, _follower) = accounts(&dir).await;
        let user = accounts
            .resolve_login(login("s1", Some("Alice@Example.com"), true))
            .await
            .unwrap();
        assert_eq!(user.email, "Alice@Example.com");
        for (email, verified) in [(Some("victim@example.com"), false), (None, false), (None, true)] {
            let again = accounts.resolve_login(login("s1", email, verified)).await.unwrap();
            assert_eq!(
                (again.id.as_str(), again.email.as_str()),
                (user.id.as_str(), "Alice@Example.com")
            );
        }
        // The address was neither dropped from the index nor given to the unverified one.
        assert_eq!(
            accounts
                .person_by_email(" alice@example.COM ")
                .await
                .unwrap()
                .map(|u| u.id),
            Some(user.id.clone())
        );
        assert!(accounts.person_by_email("victim@example.com").await.unwrap().is_none());
        // So a person provisioned with the unverified address is created, not refused as taken.
        let victim = accounts
            .create_person(NewPerson {
                email: "victim@example.com".into(),
                name: "Victim".into(),
                active: true,
                external_id: None,
            })
            .await
            .unwrap();
        // And another provider's unverified claim to it is a user of its own.
        let other = accounts
            .resolve_login(login("s2", Some("VICTIM@example.com"), false))
            .await
            .unwrap();
        assert_ne!(other.id, victim.id);
        assert_eq!(other.email, "");
        // A verified one finds the person.
        let verified = accounts
            .resolve_login(login("s3", Some("victim@example.com "), true))
            .await
            .unwrap();
        assert_eq!(verified.id, victim.id);
    }

    /// A deactivation (or deletion) that lands between a sign-in's `resolve_login` and its
    /// session: the ending did not see the session, so `start_session` must.
    #[tokio::test]
    async fn a_session_started_after_its_person_was_deactivated_or_deleted_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, _follower) = accounts(&dir).await;
        for (n, delete) in [(1u8, false), (2, true)] {
            let subject = format!("s{n}");
            let user = accounts.resolve_login(login(&subject, None, false)).await.unwrap();
            if delete {
                accounts.delete_person(&user.id).await.unwrap();
            } else {
                let patch = PersonPatch {
                    active: Some(false),
                    ..Default::default()
                };
                accounts.update_person(&user.id, patch).await.unwrap();
            }
            let session = crate::store::conformance::session(&format!("aps_{n}"), &user.id, n);
            let hash = session.token_hash;
            assert!(
                matches!(accounts.start_session(session).await, Err(AccountsError::Disabled)),
                "delete: {delete}"
            );
            assert!(accounts.store.session_by_token_hash(&hash).await.unwrap().is_none());
            let id = format!("aps_{n}");
            assert_eq!(accounts.sessions.count_where(|s| s.id == id), 0, "delete: {delete}");
        }
    }
}
