//! Console sign-in and console sessions, as [`Accounts`] methods: email and password through
//! the throttle (per email and per client address) and the lock, a stored hash at older
//! parameters re-hashed, then a session: a 256-bit random token (base64url) of which only the
//! SHA-256 is stored, ended by inactivity or its maximum duration (`[console]`), by sign-out, by
//! its member or an admin, by a password change (the member's other sessions) and by disabling
//! or deleting its member. A session check is one store read by token hash and one of the
//! member: a disabled or deleted member has no session. Activity is written at most once a
//! minute.

use super::members::{MemberError, Principal};
use super::passwords;
use super::throttle::{self, Gate};
use super::{Accounts, WRITE_ATTEMPTS};
use crate::config::ConsoleConfig;
use crate::model::{ConsoleSession, Member, MemberStatus};
use crate::store::{normalize_email, Page, StoreError};

/// The least time between two activity writes of one session.
pub const ACTIVITY_WRITE_SECS: i64 = 60;

/// A sign-in attempt on the console's login form.
pub struct SignInAttempt<'a> {
    pub email: &'a str,
    pub password: &'a str,
    /// The client's IP address (the throttle counts failures per address).
    pub address: &'a str,
    pub user_agent: &'a str,
}

/// A new console session: the token goes in the cookie, once; only its hash is stored.
#[derive(Debug, Clone)]
pub struct ConsoleSignIn {
    pub member: Member,
    pub session: ConsoleSession,
    pub token: String,
}

/// A live console session and its member, as a request's check found them.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub member: Member,
    pub session: ConsoleSession,
}

impl SignedIn {
    /// Who acts through this session.
    pub fn principal(&self) -> Principal {
        Principal::of_member(&self.member)
    }
}

/// A `u64` of seconds from the config as the `i64` times are.
fn secs(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Accounts {
    /// Signs a member in with email and password. Refused with `RateLimited` when the client
    /// address failed too often, `Locked` when the email did (whatever the password, and
    /// whether or not a member has that email), else `WrongCredentials` for an unknown email, a
    /// wrong password, or a member who is invited or disabled: the same answer, after the same
    /// work (an unknown email is verified against a dummy hash).
    pub async fn sign_in(
        &self,
        attempt: SignInAttempt<'_>,
        limits: &ConsoleConfig,
    ) -> Result<ConsoleSignIn, MemberError> {
        let email = normalize_email(attempt.email);
        let now = self.clock.now();
        match throttle::check(&*self.store, &email, attempt.address, now).await? {
            Gate::Open => {}
            Gate::EmailLocked => return Err(MemberError::Locked),
            Gate::AddressLimited => return Err(MemberError::RateLimited),
        }
        let member = if email.is_empty() {
            None
        } else {
            self.store.member_by_email(&email).await?
        };
        let verified = passwords::verify_password(
            attempt.password,
            member.as_ref().and_then(|m| m.password_hash.as_deref()),
        )
        .await;
        let member = match member {
            Some(member) if verified.matches && member.status == MemberStatus::Active => member,
            _ => {
                throttle::record_failure(&*self.store, &email, attempt.address, now).await?;
                tracing::info!(target: "portcullis::audit", event = "console_sign_in_failed", address = attempt.address, "console sign-in failed");
                return Err(MemberError::WrongCredentials);
            }
        };
        throttle::clear(&*self.store, &email).await?;
        let rehashed = if verified.needs_rehash {
            Some(passwords::hash_password(attempt.password).await?)
        } else {
            None
        };
        let member = self.record_sign_in(&member, rehashed).await?;
        let started = self
            .start_console_session(&member, attempt.address, attempt.user_agent, limits)
            .await?;
        tracing::info!(target: "portcullis::audit", event = "console_sign_in", member = %member.id, session = %started.session.id, "console sign-in");
        Ok(started)
    }

    /// Writes the sign-in time (and a re-made hash) on the member; answers it as stored.
    async fn record_sign_in(&self, member: &Member, mut rehashed: Option<String>) -> Result<Member, MemberError> {
        let mut current = member.clone();
        for _ in 0..WRITE_ATTEMPTS {
            let updated = Member {
                last_sign_in_at: Some(self.clock.now()),
                password_hash: rehashed.clone().or_else(|| current.password_hash.clone()),
                ..current.clone()
            };
            match self.store.update_member(&current, &updated).await {
                Ok(()) => return Ok(updated),
                Err(e) if e.is_changed() => match self.store.member(&member.id).await? {
                    Some(again) if again.status == MemberStatus::Active => {
                        if again.password_hash != member.password_hash {
                            // Set meanwhile: keep that one, not a re-hash of the old.
                            rehashed = None;
                        }
                        current = again;
                    }
                    _ => return Err(MemberError::Disabled),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(crate::store::Conflict::Changed).into())
    }

    /// Starts a console session for a member who has just proved who they are (a password, or
    /// a redeemed sign-in link), then reads the member again: if a disabling or deletion came
    /// in between, the session ends at once (`Disabled`).
    pub async fn start_console_session(
        &self,
        member: &Member,
        address: &str,
        user_agent: &str,
        limits: &ConsoleConfig,
    ) -> Result<ConsoleSignIn, MemberError> {
        let now = self.clock.now();
        let (token, token_hash) = crate::sessions::new_token();
        let session = ConsoleSession {
            id: crate::ids::new_id(crate::ids::CONSOLE_SESSION, now),
            token_hash,
            member_id: member.id.clone(),
            created_at: now,
            last_active: now,
            expires_at: now.saturating_add(secs(limits.session_maximum_duration_secs)),
            inactivity_timeout: secs(limits.session_inactivity_timeout_secs),
            ip: address.to_string(),
            user_agent: user_agent.chars().take(512).collect(),
        };
        self.store.put_console_session(&session).await?;
        match self.store.member(&member.id).await? {
            Some(now_stored) if now_stored.status == MemberStatus::Active => Ok(ConsoleSignIn {
                member: now_stored,
                session,
                token,
            }),
            _ => {
                self.store
                    .delete_console_sessions(std::slice::from_ref(&session.id))
                    .await?;
                Err(MemberError::Disabled)
            }
        }
    }

    /// The live session a console cookie's token names, with its member: `None` for an unknown,
    /// ended or expired token (an expired one is deleted) and for a member who is no longer
    /// active. Records activity at most once a minute.
    pub async fn console_session(&self, token: &str) -> Result<Option<SignedIn>, MemberError> {
        let now = self.clock.now();
        let Some(mut session) = self
            .store
            .console_session_by_token_hash(&crate::sessions::hash_token(token))
            .await?
        else {
            return Ok(None);
        };
        if session.is_expired(now) {
            self.store
                .delete_console_sessions(std::slice::from_ref(&session.id))
                .await?;
            return Ok(None);
        }
        let member = match self.store.member(&session.member_id).await? {
            Some(member) if member.status == MemberStatus::Active => member,
            _ => return Ok(None),
        };
        if now - session.last_active >= ACTIVITY_WRITE_SECS {
            if !self.store.touch_console_session(&session.id, now).await? {
                return Ok(None);
            }
            session.last_active = now;
        }
        Ok(Some(SignedIn { member, session }))
    }

    /// Signs out: ends the session a console cookie's token names; answers it if it was live.
    pub async fn end_console_session(&self, token: &str) -> Result<Option<ConsoleSession>, MemberError> {
        let Some(session) = self
            .store
            .console_session_by_token_hash(&crate::sessions::hash_token(token))
            .await?
        else {
            return Ok(None);
        };
        let ended = self.store.delete_console_sessions(&[session.id]).await?;
        if let Some(session) = ended.first() {
            tracing::info!(target: "portcullis::audit", event = "console_sign_out", member = %session.member_id, session = %session.id, "console sign-out");
        }
        Ok(ended.into_iter().next())
    }

    /// A member's console sessions, newest first: their own, or anyone's for an admin.
    pub async fn console_sessions_of(
        &self,
        by: &Principal,
        member_id: &str,
    ) -> Result<Vec<ConsoleSession>, MemberError> {
        if !by.is_admin() && by.member_id() != Some(member_id) {
            return Err(MemberError::NotAllowed);
        }
        Ok(self.store.console_sessions_of(member_id).await?)
    }

    /// Every member's console sessions, newest first, a page at a time (admins only).
    pub async fn console_sessions_newest_first(
        &self,
        by: &Principal,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConsoleSession>, MemberError> {
        if !by.is_admin() {
            return Err(MemberError::NotAllowed);
        }
        Ok(self.store.console_sessions_page(before_id, limit).await?)
    }

    /// Ends console sessions by id: a member ends their own, an admin anyone's (`NotAllowed`
    /// for a member naming another member's session, and nothing is ended). Answers the
    /// sessions that were live.
    pub async fn end_console_sessions(
        &self,
        by: &Principal,
        ids: &[String],
    ) -> Result<Vec<ConsoleSession>, MemberError> {
        if !by.is_admin() {
            for id in ids {
                if let Some(session) = self.store.console_session(id).await? {
                    if by.member_id() != Some(session.member_id.as_str()) {
                        return Err(MemberError::NotAllowed);
                    }
                }
            }
        }
        let ended = self.store.delete_console_sessions(ids).await?;
        for session in &ended {
            tracing::info!(target: "portcullis::audit", event = "console_session_ended", member = %session.member_id, session = %session.id, "console session ended");
        }
        Ok(ended)
    }

    /// A signed-in member changes their password: the current one must be right (a wrong one
    /// counts as a failed sign-in); every other console session of theirs ends.
    pub async fn change_password(
        &self,
        signed_in: &SignedIn,
        current_password: &str,
        new_password: &str,
        address: &str,
    ) -> Result<Member, MemberError> {
        passwords::check_new_password(new_password)?;
        let email = normalize_email(&signed_in.member.email);
        let now = self.clock.now();
        match throttle::check(&*self.store, &email, address, now).await? {
            Gate::Open => {}
            Gate::EmailLocked => return Err(MemberError::Locked),
            Gate::AddressLimited => return Err(MemberError::RateLimited),
        }
        let Some(member) = self.store.member(&signed_in.member.id).await? else {
            return Err(MemberError::Disabled);
        };
        if !passwords::verify_password(current_password, member.password_hash.as_deref())
            .await
            .matches
        {
            throttle::record_failure(&*self.store, &email, address, now).await?;
            return Err(MemberError::WrongPassword);
        }
        let hash = passwords::hash_password(new_password).await?;
        let updated = Member {
            password_hash: Some(hash),
            updated_at: now,
            ..member.clone()
        };
        // A change between the read and the write (an admin's, another password change) wins:
        // the member tries again.
        self.store.update_member(&member, &updated).await?;
        let others: Vec<String> = self
            .store
            .console_sessions_of(&member.id)
            .await?
            .into_iter()
            .filter(|s| s.id != signed_in.session.id)
            .map(|s| s.id)
            .collect();
        self.store.delete_console_sessions(&others).await?;
        tracing::info!(target: "portcullis::audit", event = "member_password_changed", member = %member.id, sessions_ended = others.len(), "password changed");
        Ok(updated)
    }

    /// Removes the console sessions and sign-in links expired by now (the upkeep); answers how
    /// many sessions ended.
    pub async fn end_expired_console_sessions(&self) -> Result<usize, MemberError> {
        let now = self.clock.now();
        self.store.purge_expired_sign_in_links(now).await?;
        Ok(self.store.purge_expired_console_sessions(now).await?)
    }
}
