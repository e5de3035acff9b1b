//! Members (the people who run the gateway) and the rules over them, as [`Accounts`] methods:
//! bootstrap on the server, invitations and their one-time sign-in links, redeeming a link
//! (setting the password), role and status changes, deletion, unlocking. Whoever acts is a
//! [`Principal`]; every change but the command line's bootstrap needs an admin. Disabling or
//! deleting a member ends every console session of theirs and every edge session whose email is
//! theirs; a disabled member's email is refused at edge sign-in too ([`Accounts::start_session`]).
//! The last active admin is kept by the store itself (`Conflict::LastActiveAdmin`).

use super::passwords::{self, PasswordError};
use super::{throttle, Accounts, WRITE_ATTEMPTS};
use crate::model::{Actor, Member, MemberOrigin, MemberRole, MemberStatus, SignInLink, SignInLinkPurpose};
use crate::store::{normalize_email, Conflict, Page, StoreError};

/// How long a sign-in link works.
pub const SIGN_IN_LINK_SECS: i64 = 24 * 3600;
/// The longest member name accepted.
pub const MAX_MEMBER_NAME: usize = 255;

/// Who is acting, for authorization and the audit log: a member in the console, an API key (its
/// owner's role; a key without an owner, made on the server, acts as an admin), or the server's
/// own command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub actor: Actor,
    pub role: MemberRole,
}

impl Principal {
    /// A member acting in the console with their current role.
    pub fn of_member(member: &Member) -> Principal {
        Principal {
            actor: Actor::Member {
                id: member.id.clone(),
                email: member.email.clone(),
            },
            role: member.role,
        }
    }

    /// The command line on the server (it opened the data dir, or spoke on the admin socket).
    pub fn system() -> Principal {
        Principal {
            actor: Actor::System,
            role: MemberRole::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == MemberRole::Admin
    }

    /// The member acting: the console's member, or the owner of the API key.
    pub fn member_id(&self) -> Option<&str> {
        match &self.actor {
            Actor::Member { id, .. } => Some(id),
            Actor::ApiKey { owner_id, .. } => owner_id.as_deref(),
            _ => None,
        }
    }
}

/// Why a member operation failed; each is a distinct answer in the console and the API.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("member `{id}` was not found")]
    NotFound { id: String },
    #[error("the email `{email}` belongs to another member")]
    EmailTaken { email: String },
    #[error("invalid `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("member `{id}` is the last active admin: make another member an active admin first")]
    LastActiveAdmin { id: String },
    #[error("the member's role does not allow this: only an admin may do it")]
    NotAllowed,
    #[error("this sign-in link is not valid: it was used, replaced by a newer one, or has expired")]
    InvalidLink,
    #[error("wrong email or password")]
    WrongCredentials,
    #[error("this account is locked after too many failed sign-ins: try again later, or ask an admin to unlock it")]
    Locked,
    #[error("too many failed sign-ins from this address: try again later")]
    RateLimited,
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("this member may not sign in")]
    Disabled,
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<PasswordError> for MemberError {
    fn from(e: PasswordError) -> MemberError {
        match e {
            PasswordError::Hashing(message) => MemberError::Internal(message),
            refused => MemberError::Invalid {
                field: "password",
                message: refused.to_string(),
            },
        }
    }
}

/// A member to invite (or bootstrap).
#[derive(Debug, Clone)]
pub struct NewMember {
    pub email: String,
    pub name: String,
    pub role: MemberRole,
}

/// The fields of a member an admin changes; `None` leaves a field as it is. `status` may be
/// `Active` (re-enabling: a member who never set a password is `invited` again) or `Disabled`.
#[derive(Debug, Clone, Default)]
pub struct MemberPatch {
    pub name: Option<String>,
    pub role: Option<MemberRole>,
    pub status: Option<MemberStatus>,
}

/// A member with a one-time sign-in link: the token is shown once (in the URL
/// `<console>/sign-in/<token>`) and stored only as its hash.
#[derive(Debug, Clone)]
pub struct Invitation {
    pub member: Member,
    pub token: String,
    pub expires_at: i64,
}

/// A store refusal of a member write, as this module's error.
fn member_error(e: StoreError) -> MemberError {
    match e {
        StoreError::Conflict(Conflict::EmailTaken { email, .. }) => MemberError::EmailTaken { email },
        StoreError::Conflict(Conflict::LastActiveAdmin { member_id }) => MemberError::LastActiveAdmin { id: member_id },
        other => MemberError::Store(other),
    }
}

fn checked_name(name: &str) -> Result<String, MemberError> {
    let name = name.trim();
    if name.len() > MAX_MEMBER_NAME || name.chars().any(char::is_control) {
        return Err(MemberError::Invalid {
            field: "name",
            message: format!("a name has at most {MAX_MEMBER_NAME} bytes and no control characters"),
        });
    }
    Ok(name.to_string())
}

fn require_admin(by: &Principal) -> Result<(), MemberError> {
    if by.is_admin() {
        Ok(())
    } else {
        Err(MemberError::NotAllowed)
    }
}

impl Accounts {
    pub async fn member(&self, id: &str) -> Result<Option<Member>, MemberError> {
        Ok(self.store.member(id).await?)
    }

    pub async fn member_by_email(&self, email: &str) -> Result<Option<Member>, MemberError> {
        let normalized = normalize_email(email);
        if normalized.is_empty() {
            return Ok(None);
        }
        Ok(self.store.member_by_email(&normalized).await?)
    }

    /// Up to `limit` members with ids below `before_id`, newest first.
    pub async fn members_newest_first(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Page<Member>, MemberError> {
        Ok(self.store.members_page(before_id, limit).await?)
    }

    /// Whether any member exists (a data dir without one cannot be signed into).
    pub async fn has_members(&self) -> Result<bool, MemberError> {
        Ok(!self.store.members_page(None, 1).await?.items.is_empty())
    }

    /// Whether the member's email is locked by failed sign-ins now.
    pub async fn is_member_locked(&self, member: &Member) -> Result<bool, MemberError> {
        Ok(throttle::is_locked(&*self.store, &normalize_email(&member.email), self.clock.now()).await?)
    }

    /// A member made by the command line on the server (`portcullis members add`), with a
    /// one-time link to set a password: no password is ever given on the command line.
    pub async fn bootstrap_member(&self, new: NewMember) -> Result<Invitation, MemberError> {
        self.create_member(new, MemberOrigin::Bootstrap, SignInLinkPurpose::Bootstrap)
            .await
    }

    /// An admin invites a member: the member (`invited`) and its one-time link.
    pub async fn invite_member(&self, by: &Principal, new: NewMember) -> Result<Invitation, MemberError> {
        require_admin(by)?;
        self.create_member(new, MemberOrigin::Invite, SignInLinkPurpose::Invite)
            .await
    }

    async fn create_member(
        &self,
        new: NewMember,
        origin: MemberOrigin,
        purpose: SignInLinkPurpose,
    ) -> Result<Invitation, MemberError> {
        let email = super::checked_email(&new.email).map_err(|_| MemberError::Invalid {
            field: "email",
            message: format!("`{}` is not an email address", new.email.trim().escape_debug()),
        })?;
        let name = checked_name(&new.name)?;
        let now = self.clock.now();
        let member = Member {
            id: crate::ids::new_id(crate::ids::MEMBER, now),
            email: normalize_email(&email),
            name,
            role: new.role,
            status: MemberStatus::Invited,
            origin,
            password_hash: None,
            created_at: now,
            updated_at: now,
            last_sign_in_at: None,
        };
        self.store.create_member(&member).await.map_err(member_error)?;
        let (token, expires_at) = self.new_sign_in_link(&member.id, purpose).await?;
        tracing::info!(target: "portcullis::audit", event = "member_created", member = %member.id, role = ?member.role, origin = ?member.origin, "member created with a sign-in link");
        Ok(Invitation {
            member,
            token,
            expires_at,
        })
    }

    async fn new_sign_in_link(
        &self,
        member_id: &str,
        purpose: SignInLinkPurpose,
    ) -> Result<(String, i64), MemberError> {
        let now = self.clock.now();
        let (token, token_hash) = crate::sessions::new_token();
        let expires_at = now + SIGN_IN_LINK_SECS;
        self.store
            .create_sign_in_link(&SignInLink {
                token_hash,
                member_id: member_id.to_string(),
                purpose,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok((token, expires_at))
    }

    /// A new one-time link for a member (the old one stops working): for an invitee whose link
    /// was lost or expired, or a member who forgot the password. Not for a disabled member.
    pub async fn issue_sign_in_link(&self, by: &Principal, id: &str) -> Result<Invitation, MemberError> {
        require_admin(by)?;
        let member = self
            .store
            .member(id)
            .await?
            .ok_or_else(|| MemberError::NotFound { id: id.to_string() })?;
        if member.status == MemberStatus::Disabled {
            return Err(MemberError::Invalid {
                field: "status",
                message: "the member is disabled: enable it first".into(),
            });
        }
        let (token, expires_at) = self.new_sign_in_link(&member.id, SignInLinkPurpose::Invite).await?;
        tracing::info!(target: "portcullis::audit", event = "member_sign_in_link", member = %member.id, "new sign-in link");
        Ok(Invitation {
            member,
            token,
            expires_at,
        })
    }

    /// The live link a token names and its member, without using it up (the page that shows
    /// the password form). `None` for an unknown, used, replaced or expired link, or one whose
    /// member is gone or disabled.
    pub async fn sign_in_link(&self, token: &str) -> Result<Option<(SignInLink, Member)>, MemberError> {
        let hash = crate::sessions::hash_token(token);
        let Some(link) = self.store.sign_in_link(&hash, self.clock.now()).await? else {
            return Ok(None);
        };
        match self.store.member(&link.member_id).await? {
            Some(member) if member.status != MemberStatus::Disabled => Ok(Some((link, member))),
            _ => Ok(None),
        }
    }

    /// Uses a link once: sets the member's password (checked first, so a refused password
    /// does not use up the link), makes the member `active`, ends any console session of
    /// theirs (a link is also how a forgotten password is replaced) and lifts a lock.
    /// `InvalidLink` for an unknown, used, replaced or expired link.
    pub async fn redeem_sign_in_link(&self, token: &str, password: &str) -> Result<Member, MemberError> {
        passwords::check_new_password(password)?;
        if self.sign_in_link(token).await?.is_none() {
            return Err(MemberError::InvalidLink);
        }
        let hash = passwords::hash_password(password).await?;
        let now = self.clock.now();
        let Some(link) = self
            .store
            .take_sign_in_link(&crate::sessions::hash_token(token), now)
            .await?
        else {
            return Err(MemberError::InvalidLink);
        };
        for _ in 0..WRITE_ATTEMPTS {
            let Some(member) = self.store.member(&link.member_id).await? else {
                return Err(MemberError::InvalidLink);
            };
            if member.status == MemberStatus::Disabled {
                return Err(MemberError::InvalidLink);
            }
            let updated = Member {
                password_hash: Some(hash.clone()),
                status: MemberStatus::Active,
                updated_at: now,
                ..member.clone()
            };
            match self.store.update_member(&member, &updated).await {
                Ok(()) => {
                    self.store.delete_console_sessions_of(&member.id).await?;
                    throttle::clear(&*self.store, &normalize_email(&member.email)).await?;
                    tracing::info!(target: "portcullis::audit", event = "member_password_set", member = %member.id, "password set through a sign-in link");
                    return Ok(updated);
                }
                Err(e) if e.is_changed() => continue,
                Err(e) => return Err(member_error(e)),
            }
        }
        Err(StoreError::Conflict(Conflict::Changed).into())
    }

    /// An admin changes a member's name, role or status. Demoting or disabling the last active
    /// admin is refused (`LastActiveAdmin`). Disabling ends every console session of theirs
    /// and every edge session whose email is theirs before it returns.
    pub async fn change_member(&self, by: &Principal, id: &str, patch: MemberPatch) -> Result<Member, MemberError> {
        require_admin(by)?;
        let name = patch.name.as_deref().map(checked_name).transpose()?;
        if patch.status == Some(MemberStatus::Invited) {
            return Err(MemberError::Invalid {
                field: "status",
                message: "a member becomes `invited` only by invitation: set `active` or `disabled`".into(),
            });
        }
        for _ in 0..WRITE_ATTEMPTS {
            let Some(member) = self.store.member(id).await? else {
                return Err(MemberError::NotFound { id: id.to_string() });
            };
            let mut updated = member.clone();
            if let Some(name) = &name {
                updated.name = name.clone();
            }
            if let Some(role) = patch.role {
                updated.role = role;
            }
            match patch.status {
                Some(MemberStatus::Disabled) => updated.status = MemberStatus::Disabled,
                Some(_) if member.status == MemberStatus::Disabled => {
                    updated.status = if member.password_hash.is_some() {
                        MemberStatus::Active
                    } else {
                        MemberStatus::Invited
                    };
                }
                // Active stays active; an invitee becomes active by setting a password.
                _ => {}
            }
            if updated == member {
                return Ok(member);
            }
            updated.updated_at = self.clock.now();
            match self.store.update_member(&member, &updated).await {
                Ok(()) => {
                    tracing::info!(target: "portcullis::audit", event = "member_updated", member = %id, role = ?updated.role, status = ?updated.status, "member updated");
                    if updated.status == MemberStatus::Disabled {
                        // Again if it was disabled already: a session made in between must not
                        // outlive the disabling.
                        self.end_everything_of(&updated).await?;
                    }
                    return Ok(updated);
                }
                Err(e) if e.is_changed() => continue,
                Err(e) => return Err(member_error(e)),
            }
        }
        Err(StoreError::Conflict(Conflict::Changed).into())
    }

    /// An admin deletes a member (refused for the last active admin), with their console
    /// sessions, sign-in link and edge sessions.
    pub async fn remove_member(&self, by: &Principal, id: &str) -> Result<Member, MemberError> {
        require_admin(by)?;
        let deleted = self
            .store
            .delete_member(id)
            .await
            .map_err(member_error)?
            .ok_or_else(|| MemberError::NotFound { id: id.to_string() })?;
        self.end_everything_of(&deleted).await?;
        tracing::info!(target: "portcullis::audit", event = "member_deleted", member = %id, "member deleted");
        Ok(deleted)
    }

    /// An admin lifts the lock failed sign-ins put on a member's email.
    pub async fn unlock_member(&self, by: &Principal, id: &str) -> Result<Member, MemberError> {
        require_admin(by)?;
        let member = self
            .store
            .member(id)
            .await?
            .ok_or_else(|| MemberError::NotFound { id: id.to_string() })?;
        throttle::clear(&*self.store, &normalize_email(&member.email)).await?;
        tracing::info!(target: "portcullis::audit", event = "member_unlocked", member = %id, "member unlocked");
        Ok(member)
    }

    /// Ends every console session of a member and every edge session whose email (or whose
    /// user's email) is theirs; waits until the session index shows it.
    async fn end_everything_of(&self, member: &Member) -> Result<(), MemberError> {
        self.store.delete_console_sessions_of(&member.id).await?;
        let email = normalize_email(&member.email);
        let user_id = self.store.user_by_email(&email).await?.map(|u| u.id);
        self.end_sessions_where(|s| normalize_email(&s.email) == email || user_id.as_deref() == Some(&*s.user_id))
            .await
            .map_err(|e| match e {
                super::AccountsError::Store(e) => MemberError::Store(e),
                other => MemberError::Internal(other.to_string()),
            })?;
        Ok(())
    }

    /// Whether an email belongs to a disabled member (refused at edge sign-in: one directory
    /// of people).
    pub(super) async fn is_disabled_member(&self, email: &str) -> Result<bool, StoreError> {
        let normalized = normalize_email(email);
        if normalized.is_empty() {
            return Ok(false);
        }
        Ok(self
            .store
            .member_by_email(&normalized)
            .await?
            .is_some_and(|m| m.status == MemberStatus::Disabled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{ConsoleSignIn, SignInAttempt};
    use crate::clock::ManualClock;
    use crate::config::ConsoleConfig;
    use std::sync::Arc;

    /// Accounts over a fresh store in `dir` with a clock the test moves.
    async fn accounts(dir: &tempfile::TempDir) -> (Accounts, ManualClock, crate::derived::Follower) {
        let clock = ManualClock::new();
        let followed = crate::derived::followed_in(dir.path(), Arc::new(clock.clone()));
        let (store, sessions) = (followed.store.clone(), followed.sessions.clone());
        let (derived, follower) = crate::derived::start(followed).await.unwrap();
        (
            Accounts::new(store, sessions, derived, Arc::new(clock.clone())),
            clock,
            follower,
        )
    }

    fn new(email: &str, role: MemberRole) -> NewMember {
        NewMember {
            email: email.into(),
            name: String::new(),
            role,
        }
    }

    async fn sign_in(accounts: &Accounts, email: &str, password: &str) -> Result<ConsoleSignIn, MemberError> {
        let attempt = SignInAttempt {
            email,
            password,
            address: "192.0.2.1",
            user_agent: "test",
        };
        accounts.sign_in(attempt, &ConsoleConfig::default()).await
    }

    const PASSWORD: &str = "a long enough password";

    /// Bootstrap -> link -> password -> sign-in; the link works once; an admin's invitation;
    /// a member may not invite; an expired link is refused.
    #[tokio::test]
    async fn a_link_sets_the_password_once_and_the_member_signs_in() {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, clock, _follower) = accounts(&dir).await;
        assert!(!accounts.has_members().await.unwrap());
        let boot = accounts
            .bootstrap_member(new(" Root@Example.COM ", MemberRole::Admin))
            .await
            .unwrap();
        assert_eq!(
            (boot.member.email.as_str(), boot.member.status, boot.member.origin),
            ("root@example.com", MemberStatus::Invited, MemberOrigin::Bootstrap)
        );
        assert!(accounts.has_members().await.unwrap());
        // An invitee cannot sign in (and the answer is the one for a wrong password).
        assert!(matches!(
            sign_in(&accounts, "root@example.com", PASSWORD).await,
            Err(MemberError::WrongCredentials)
        ));
        // A too-short password is refused without using the link up.
        assert!(matches!(
            accounts.redeem_sign_in_link(&boot.token, "short").await,
            Err(MemberError::Invalid { field: "password", .. })
        ));
        assert!(accounts.sign_in_link(&boot.token).await.unwrap().is_some());
        let root = accounts.redeem_sign_in_link(&boot.token, PASSWORD).await.unwrap();
        assert_eq!(root.status, MemberStatus::Active);
        assert!(root
            .password_hash
            .as_deref()
            .is_some_and(|h| h.starts_with("$argon2id$")));
        // Used once.
        assert!(accounts.sign_in_link(&boot.token).await.unwrap().is_none());
        assert!(matches!(
            accounts.redeem_sign_in_link(&boot.token, "another long password").await,
            Err(MemberError::InvalidLink)
        ));
        let signed = sign_in(&accounts, "ROOT@example.com", PASSWORD).await.unwrap();
        assert_eq!(signed.member.id, root.id);
        assert!(signed.member.last_sign_in_at.is_some());
        let live = accounts.console_session(&signed.token).await.unwrap().unwrap();
        assert_eq!(live.member.id, root.id);
        assert!(live.principal().is_admin());

        // An admin invites; the invitee is a plain member, who may not invite.
        let invited = accounts
            .invite_member(&live.principal(), new("kim@example.com", MemberRole::Member))
            .await
            .unwrap();
        let kim = Principal::of_member(&invited.member);
        assert!(matches!(
            accounts
                .invite_member(&kim, new("lee@example.com", MemberRole::Admin))
                .await,
            Err(MemberError::NotAllowed)
        ));
        assert!(matches!(
            accounts
                .invite_member(&live.principal(), new("KIM@example.com", MemberRole::Member))
                .await,
            Err(MemberError::EmailTaken { .. })
        ));
        // Expired after 24 h: not shown, not redeemed.
        clock.advance(SIGN_IN_LINK_SECS);
        assert!(accounts.sign_in_link(&invited.token).await.unwrap().is_none());
        assert!(matches!(
            accounts.redeem_sign_in_link(&invited.token, PASSWORD).await,
            Err(MemberError::InvalidLink)
        ));
        // A new link replaces it.
        let again = accounts
            .issue_sign_in_link(&live.principal(), &invited.member.id)
            .await
            .unwrap();
        assert!(accounts.sign_in_link(&again.token).await.unwrap().is_some());
    }

    /// Five wrong passwords lock the email (the right one is then refused too) until an admin
    /// unlocks it; an unknown email gets the same answers; disabling ends console sessions.
    #[tokio::test]
    async fn failures_lock_an_account_until_unlocked_and_disabling_ends_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, _clock, _follower) = accounts(&dir).await;
        let boot = accounts
            .bootstrap_member(new("root@example.com", MemberRole::Admin))
            .await
            .unwrap();
        let root = accounts.redeem_sign_in_link(&boot.token, PASSWORD).await.unwrap();
        let admin = Principal::of_member(&root);
        let kim_link = accounts
            .invite_member(&admin, new("kim@example.com", MemberRole::Member))
            .await
            .unwrap();
        let kim = accounts.redeem_sign_in_link(&kim_link.token, PASSWORD).await.unwrap();
        let session = sign_in(&accounts, "kim@example.com", PASSWORD).await.unwrap();
        for _ in 0..throttle::FAILURES_PER_EMAIL {
            assert!(matches!(
                sign_in(&accounts, "kim@example.com", "not the password").await,
                Err(MemberError::WrongCredentials)
            ));
        }
        assert!(matches!(
            sign_in(&accounts, "kim@example.com", PASSWORD).await,
            Err(MemberError::Locked)
        ));
        assert!(accounts.is_member_locked(&kim).await.unwrap());
        assert!(matches!(
            accounts.unlock_member(&Principal::of_member(&kim), &kim.id).await,
            Err(MemberError::NotAllowed)
        ));
        accounts.unlock_member(&admin, &kim.id).await.unwrap();
        let second = sign_in(&accounts, "kim@example.com", PASSWORD).await.unwrap();

        // Disabling ends both sessions at once; the member cannot sign in.
        let patch = MemberPatch {
            status: Some(MemberStatus::Disabled),
            ..Default::default()
        };
        accounts.change_member(&admin, &kim.id, patch).await.unwrap();
        for token in [&session.token, &second.token] {
            assert!(accounts.console_session(token).await.unwrap().is_none());
        }
        assert!(accounts.store.console_sessions_of(&kim.id).await.unwrap().is_empty());
        assert!(matches!(
            sign_in(&accounts, "kim@example.com", PASSWORD).await,
            Err(MemberError::WrongCredentials)
        ));
        // Re-enabled, it signs in again.
        let patch = MemberPatch {
            status: Some(MemberStatus::Active),
            ..Default::default()
        };
        let back = accounts.change_member(&admin, &kim.id, patch).await.unwrap();
        assert_eq!(back.status, MemberStatus::Active);
        sign_in(&accounts, "kim@example.com", PASSWORD).await.unwrap();
    }

    /// The last active admin can be neither disabled, demoted nor deleted, by anyone.
    #[tokio::test]
    async fn the_last_active_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, _clock, _follower) = accounts(&dir).await;
        let boot = accounts
            .bootstrap_member(new("root@example.com", MemberRole::Admin))
            .await
            .unwrap();
        let root = accounts.redeem_sign_in_link(&boot.token, PASSWORD).await.unwrap();
        let admin = Principal::of_member(&root);
        for patch in [
            MemberPatch {
                status: Some(MemberStatus::Disabled),
                ..Default::default()
            },
            MemberPatch {
                role: Some(MemberRole::Member),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                accounts.change_member(&admin, &root.id, patch).await,
                Err(MemberError::LastActiveAdmin { .. })
            ));
        }
        assert!(matches!(
            accounts.remove_member(&Principal::system(), &root.id).await,
            Err(MemberError::LastActiveAdmin { .. })
        ));
        assert_eq!(
            accounts.member(&root.id).await.unwrap().map(|m| (m.role, m.status)),
            Some((MemberRole::Admin, MemberStatus::Active))
        );
    }
}
