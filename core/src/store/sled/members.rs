//! Members, their sign-in links and their console sessions in sled. Every member write goes
//! through [`SledStore::write_member`]: read the members generation, scan the members, check the
//! last-active-admin rule over the scan, then commit only if the generation is unchanged
//! (bumping it), else scan again; the email index is written in the same transaction. A sign-in
//! link is indexed by its member (one live link each) and a console session by its token hash,
//! each in its record's transaction.

use super::{abort, codec, committed, decode_in, transaction_error, Abort, SledStore};
use crate::model::{ConsoleSession, Member, MemberRole, MemberStatus, SignInLink};
use crate::store::{normalize_email, Conflict, Members, Page, StoreError};
use async_trait::async_trait;
use sled::transaction::Transactional;

const MEMBERS_GENERATION: &[u8] = b"members_generation";

/// One member write.
enum MemberWrite<'a> {
    Create(&'a Member),
    Update { expected: &'a Member, new: &'a Member },
    Delete(&'a str),
}

impl MemberWrite<'_> {
    fn id(&self) -> &str {
        match self {
            MemberWrite::Create(m) => &m.id,
            MemberWrite::Update { new, .. } => &new.id,
            MemberWrite::Delete(id) => id,
        }
    }
}

fn is_active_admin(member: &Member) -> bool {
    member.role == MemberRole::Admin && member.status == MemberStatus::Active
}

impl SledStore {
    /// Commits one member write over a consistent scan of the members; answers the member a
    /// delete removed.
    async fn write_member(&self, write: MemberWrite<'_>) -> Result<Option<Member>, StoreError> {
        let id = write.id().to_string();
        let encoded = match &write {
            MemberWrite::Create(m) => Some(codec::encode(*m)?),
            MemberWrite::Update { expected, new } => {
                if expected.id != new.id {
                    return Err(StoreError::Conflict(Conflict::Changed));
                }
                Some(codec::encode(*new)?)
            }
            MemberWrite::Delete(_) => None,
        };
        let expected_bytes = match &write {
            MemberWrite::Update { expected, .. } => Some(codec::encode(*expected)?),
            _ => None,
        };
        loop {
            let generation = self.meta().get(MEMBERS_GENERATION)?;
            let members = self.members.all()?;
            let current = members.iter().find(|m| m.id == id);
            let after = match &write {
                MemberWrite::Create(m) => Some(*m),
                MemberWrite::Update { new, .. } => Some(*new),
                MemberWrite::Delete(_) => None,
            };
            if matches!(write, MemberWrite::Create(_)) && current.is_some() {
                return Err(StoreError::Conflict(Conflict::Changed));
            }
            let loses_an_active_admin = current.is_some_and(is_active_admin) && !after.is_some_and(is_active_admin);
            if loses_an_active_admin && !members.iter().any(|m| m.id != id && is_active_admin(m)) {
                return Err(StoreError::Conflict(Conflict::LastActiveAdmin { member_id: id }));
            }
            let sessions: Vec<ConsoleSession> = match &write {
                MemberWrite::Delete(_) => self
                    .console_sessions
                    .all()?
                    .into_iter()
                    .filter(|s| s.member_id == id)
                    .collect(),
                _ => Vec::new(),
            };
            let next = generation
                .as_ref()
                .and_then(|g| <[u8; 8]>::try_from(g.as_ref()).ok())
                .map_or(0, u64::from_be_bytes)
                .wrapping_add(1);
            let result = (
                self.meta(),
                &self.members.tree,
                &self.member_emails,
                &self.console_sessions.tree,
                &self.console_session_hashes,
                &self.sign_in_links,
                &self.member_sign_in_links,
            )
                .transaction(|(meta, members, emails, sessions_tree, hashes, links, member_links)| {
                    if meta.get(MEMBERS_GENERATION)? != generation {
                        return abort(Abort::Retry);
                    }
                    let stored = members.get(id.as_bytes())?;
                    let old: Option<Member> = match &stored {
                        Some(bytes) => Some(decode_in(bytes)?),
                        None => None,
                    };
                    match (&write, &stored) {
                        (MemberWrite::Create(_), None) => {}
                        (MemberWrite::Create(_), Some(_)) => return abort(Abort::Conflict(Conflict::Changed)),
                        (MemberWrite::Update { .. }, None) => return abort(Abort::Conflict(Conflict::Missing)),
                        (MemberWrite::Update { .. }, Some(bytes)) => {
                            if Some(bytes.as_ref()) != expected_bytes.as_deref() {
                                return abort(Abort::Conflict(Conflict::Changed));
                            }
                        }
                        (MemberWrite::Delete(_), None) => return Ok(None),
                        (MemberWrite::Delete(_), Some(_)) => {}
                    }
                    if let Some(old) = &old {
                        let old_email = normalize_email(&old.email);
                        if emails
                            .get(old_email.as_bytes())?
                            .is_some_and(|owner| owner.as_ref() == id.as_bytes())
                        {
                            emails.remove(old_email.as_bytes())?;
                        }
                    }
                    if let (Some(new), Some(bytes)) = (after, &encoded) {
                        let email = normalize_email(&new.email);
                        if let Some(owner) = emails.get(email.as_bytes())? {
                            if owner.as_ref() != id.as_bytes() {
                                return abort(Abort::Conflict(Conflict::EmailTaken {
                                    email: new.email.clone(),
                                    user_id: String::from_utf8_lossy(&owner).into_owned(),
                                }));
                            }
                        }
                        emails.insert(email.as_bytes(), id.as_bytes())?;
                        members.insert(id.as_bytes(), bytes.as_slice())?;
                    } else {
                        members.remove(id.as_bytes())?;
                        for session in &sessions {
                            sessions_tree.remove(session.id.as_bytes())?;
                            hashes.remove(&session.token_hash)?;
                        }
                        if let Some(hash) = member_links.remove(id.as_bytes())? {
                            links.remove(hash)?;
                        }
                    }
                    meta.insert(MEMBERS_GENERATION, &next.to_be_bytes())?;
                    Ok(old)
                });
            match result {
                Ok(old) => {
                    self.flush().await?;
                    return Ok(old);
                }
                Err(e) => {
                    if let Some(error) = transaction_error(e) {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Deletes the console sessions among `ids` that `still` holds for when the delete commits;
    /// answers them.
    async fn delete_console_sessions_where(
        &self,
        ids: &[String],
        still: impl Fn(&ConsoleSession) -> bool,
    ) -> Result<Vec<ConsoleSession>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ended = committed((&self.console_sessions.tree, &self.console_session_hashes).transaction(
            |(sessions, hashes)| {
                let mut ended = Vec::new();
                for id in ids {
                    if let Some(bytes) = sessions.get(id.as_bytes())? {
                        let session: ConsoleSession = decode_in(&bytes)?;
                        if still(&session) {
                            sessions.remove(id.as_bytes())?;
                            hashes.remove(&session.token_hash)?;
                            ended.push(session);
                        }
                    }
                }
                Ok(ended)
            },
        ))?;
        if !ended.is_empty() {
            self.flush().await?;
        }
        Ok(ended)
    }

    /// Removes a sign-in link and its member index entry (if it still points at it); answers
    /// the link that was stored.
    fn remove_sign_in_link(&self, token_hash: &[u8; 32]) -> Result<Option<SignInLink>, StoreError> {
        committed(
            (&self.sign_in_links, &self.member_sign_in_links).transaction(|(links, member_links)| {
                let Some(bytes) = links.remove(token_hash.as_slice())? else {
                    return Ok(None);
                };
                let link: SignInLink = decode_in(&bytes)?;
                if member_links
                    .get(link.member_id.as_bytes())?
                    .is_some_and(|held| held.as_ref() == token_hash.as_slice())
                {
                    member_links.remove(link.member_id.as_bytes())?;
                }
                Ok(Some(link))
            }),
        )
    }
}

#[async_trait]
impl Members for SledStore {
    async fn member(&self, id: &str) -> Result<Option<Member>, StoreError> {
        self.members.find(id)
    }

    async fn member_by_email(&self, normalized_email: &str) -> Result<Option<Member>, StoreError> {
        match self.member_emails.get(normalized_email.as_bytes())? {
            Some(id) => self.members.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn members_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<Member>, StoreError> {
        self.members.page(before_id, limit)
    }

    async fn all_members(&self) -> Result<Vec<Member>, StoreError> {
        self.members.all()
    }

    async fn create_member(&self, member: &Member) -> Result<(), StoreError> {
        self.write_member(MemberWrite::Create(member)).await.map(drop)
    }

    async fn update_member(&self, expected: &Member, new: &Member) -> Result<(), StoreError> {
        self.write_member(MemberWrite::Update { expected, new }).await.map(drop)
    }

    async fn delete_member(&self, id: &str) -> Result<Option<Member>, StoreError> {
        self.write_member(MemberWrite::Delete(id)).await
    }

    async fn create_sign_in_link(&self, link: &SignInLink) -> Result<(), StoreError> {
        let encoded = codec::encode(link)?;
        committed(
            (&self.sign_in_links, &self.member_sign_in_links).transaction(|(links, member_links)| {
                if let Some(old) = member_links.insert(link.member_id.as_bytes(), link.token_hash.as_slice())? {
                    links.remove(old)?;
                }
                links.insert(link.token_hash.as_slice(), encoded.as_slice())?;
                Ok(())
            }),
        )?;
        self.flush().await
    }

    async fn sign_in_link(&self, token_hash: &[u8; 32], now: i64) -> Result<Option<SignInLink>, StoreError> {
        match self.sign_in_links.get(token_hash)? {
            Some(bytes) => {
                let link: SignInLink = codec::decode(&bytes)?;
                Ok((link.expires_at > now).then_some(link))
            }
            None => Ok(None),
        }
    }

    async fn take_sign_in_link(&self, token_hash: &[u8; 32], now: i64) -> Result<Option<SignInLink>, StoreError> {
        let taken = self.remove_sign_in_link(token_hash)?;
        if taken.is_some() {
            self.flush().await?;
        }
        Ok(taken.filter(|link| link.expires_at > now))
    }

    async fn purge_expired_sign_in_links(&self, now: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.sign_in_links.iter() {
            let link: SignInLink = codec::decode(&item?.1)?;
            if link.expires_at <= now && self.remove_sign_in_link(&link.token_hash)?.is_some() {
                removed += 1;
            }
        }
        if removed > 0 {
            self.flush().await?;
        }
        Ok(removed)
    }

    async fn console_session(&self, id: &str) -> Result<Option<ConsoleSession>, StoreError> {
        self.console_sessions.find(id)
    }

    async fn console_session_by_token_hash(&self, hash: &[u8; 32]) -> Result<Option<ConsoleSession>, StoreError> {
        match self.console_session_hashes.get(hash)? {
            Some(id) => self.console_sessions.find(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    async fn console_sessions_of(&self, member_id: &str) -> Result<Vec<ConsoleSession>, StoreError> {
        let mut sessions: Vec<ConsoleSession> = self
            .console_sessions
            .all()?
            .into_iter()
            .filter(|s| s.member_id == member_id)
            .collect();
        sessions.reverse();
        Ok(sessions)
    }

    async fn console_sessions_page(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Page<ConsoleSession>, StoreError> {
        self.console_sessions.page(before_id, limit)
    }

    async fn put_console_session(&self, session: &ConsoleSession) -> Result<(), StoreError> {
        let encoded = codec::encode(session)?;
        committed(
            (&self.console_sessions.tree, &self.console_session_hashes).transaction(|(sessions, hashes)| {
                sessions.insert(session.id.as_bytes(), encoded.as_slice())?;
                hashes.insert(&session.token_hash, session.id.as_bytes())?;
                Ok(())
            }),
        )?;
        self.flush().await
    }

    async fn touch_console_session(&self, id: &str, last_active: i64) -> Result<bool, StoreError> {
        loop {
            let Some(current) = self.console_sessions.tree.get(id.as_bytes())? else {
                return Ok(false);
            };
            let mut session: ConsoleSession = codec::decode(&current)?;
            session.last_active = session.last_active.max(last_active);
            let swapped = self.console_sessions.tree.compare_and_swap(
                id.as_bytes(),
                Some(current),
                Some(codec::encode(&session)?),
            )?;
            if swapped.is_ok() {
                self.flush().await?;
                return Ok(true);
            }
        }
    }

    async fn delete_console_sessions(&self, ids: &[String]) -> Result<Vec<ConsoleSession>, StoreError> {
        self.delete_console_sessions_where(ids, |_| true).await
    }

    async fn delete_console_sessions_of(&self, member_id: &str) -> Result<usize, StoreError> {
        let ids: Vec<String> = self
            .console_sessions
            .all()?
            .into_iter()
            .filter(|s| s.member_id == member_id)
            .map(|s| s.id)
            .collect();
        Ok(self.delete_console_sessions(&ids).await?.len())
    }

    async fn purge_expired_console_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let ids: Vec<String> = self
            .console_sessions
            .all()?
            .into_iter()
            .filter(|s| s.is_expired(now))
            .map(|s| s.id)
            .collect();
        // Only those still expired when deleted: a request may have renewed one meanwhile.
        Ok(self
            .delete_console_sessions_where(&ids, |s| s.is_expired(now))
            .await?
            .len())
    }
}
