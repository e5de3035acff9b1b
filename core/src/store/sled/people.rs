//! Users, identity links and the email index in sled: the index trees are written in the same
//! transaction as the user or link they index.

use super::{abort, codec, committed, decode_in, pair_key, Abort, SledStore};
use crate::model::{IdentityLink, User};
use crate::store::{normalize_email, Change, Conflict, Directory, Page, StoreError};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

/// `user_id \0 idp \0 subject`: the key of a link under its user.
fn user_link_key(link: &IdentityLink) -> Vec<u8> {
    let mut key = pair_key(&link.user_id, &link.idp);
    key.push(0);
    key.extend_from_slice(link.subject.as_bytes());
    key
}

/// The part of a user's write that touches the user and email trees: checks `expected` and the
/// email's owner, moves the email index entry.
fn write_user(
    users: &TransactionalTree,
    emails: &TransactionalTree,
    expected: Option<&User>,
    user: &User,
    encoded: &[u8],
) -> Result<(), ConflictableTransactionError<Abort>> {
    let current: Option<User> = match users.get(user.id.as_bytes())? {
        Some(bytes) => Some(decode_in(&bytes)?),
        None => None,
    };
    match (expected, &current) {
        (None, None) => {}
        (Some(e), Some(c)) if e == c => {}
        (Some(_), None) => return abort(Abort::Conflict(Conflict::Missing)),
        _ => return abort(Abort::Conflict(Conflict::Changed)),
    }
    let email = normalize_email(&user.email);
    if !email.is_empty() {
        if let Some(owner) = emails.get(email.as_bytes())? {
            if owner.as_ref() != user.id.as_bytes() {
                return abort(Abort::Conflict(Conflict::EmailTaken {
                    email: user.email.clone(),
                    user_id: String::from_utf8_lossy(&owner).into_owned(),
                }));
            }
        }
    }
    if let Some(old) = &current {
        let old_email = normalize_email(&old.email);
        if !old_email.is_empty() && old_email != email {
            emails.remove(old_email.as_bytes())?;
        }
    }
    if !email.is_empty() {
        emails.insert(email.as_bytes(), user.id.as_bytes())?;
    }
    users.insert(user.id.as_bytes(), encoded)?;
    Ok(())
}

impl SledStore {
    fn user_now(&self, id: &[u8]) -> Result<Option<User>, StoreError> {
        self.users.find(&String::from_utf8_lossy(id))
    }
}

#[async_trait]
impl Directory for SledStore {
    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.users.find(id)
    }

    async fn user_by_email(&self, normalized_email: &str) -> Result<Option<User>, StoreError> {
        match self.user_emails.get(normalized_email.as_bytes())? {
            Some(id) => self.user_now(&id),
            None => Ok(None),
        }
    }

    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .users
            .all()?
            .into_iter()
            .find(|u| u.external_id.as_deref() == Some(external_id)))
    }

    async fn users_after(&self, after_id: Option<&str>, limit: usize) -> Result<(Vec<User>, bool), StoreError> {
        let iter = match after_id {
            Some(after) => self
                .users
                .tree
                .range::<&[u8], _>((std::ops::Bound::Excluded(after.as_bytes()), std::ops::Bound::Unbounded)),
            None => self.users.tree.iter(),
        };
        let mut out = Vec::with_capacity(limit.min(100));
        for item in iter {
            let (_, bytes) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(codec::decode(&bytes)?);
        }
        Ok((out, false))
    }

    async fn users_page(&self, before_id: Option<&str>, limit: usize) -> Result<Page<User>, StoreError> {
        self.users.page(before_id, limit)
    }

    async fn user_by_link(&self, idp: &str, subject: &str) -> Result<Option<User>, StoreError> {
        match self.identity_links.get(pair_key(idp, subject))? {
            Some(bytes) => {
                let link: IdentityLink = codec::decode(&bytes)?;
                self.users.find(&link.user_id)
            }
            None => Ok(None),
        }
    }

    async fn links_of(&self, user_id: &str) -> Result<Vec<IdentityLink>, StoreError> {
        let mut prefix = user_id.as_bytes().to_vec();
        prefix.push(0);
        let mut links = self
            .user_links
            .scan_prefix(prefix)
            .map(|item| Ok(codec::decode::<IdentityLink>(&item?.1)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        links.sort_by(|a, b| (a.created_at, &a.idp, &a.subject).cmp(&(b.created_at, &b.idp, &b.subject)));
        Ok(links)
    }

    async fn put_user(&self, expected: Option<&User>, user: &User) -> Result<(), StoreError> {
        let encoded = codec::encode(user)?;
        committed(
            (&self.users.tree, &self.user_emails)
                .transaction(|(users, emails)| write_user(users, emails, expected, user, &encoded)),
        )?;
        self.feed.publish(Change::People {
            user_id: user.id.clone(),
        });
        self.flush().await?;
        Ok(())
    }

    async fn put_user_with_link(
        &self,
        expected: Option<&User>,
        user: &User,
        link: &IdentityLink,
    ) -> Result<(), StoreError> {
        let encoded = codec::encode(user)?;
        let encoded_link = codec::encode(link)?;
        let link_key = pair_key(&link.idp, &link.subject);
        committed(
            (
                &self.users.tree,
                &self.user_emails,
                &self.identity_links,
                &self.user_links,
            )
                .transaction(|(users, emails, links, user_links)| {
                    if let Some(bytes) = links.get(&link_key)? {
                        let held: IdentityLink = decode_in(&bytes)?;
                        // A link left to a deleted user is free again.
                        if held.user_id != link.user_id && users.get(held.user_id.as_bytes())?.is_some() {
                            return abort(Abort::Conflict(Conflict::LinkTaken {
                                idp: link.idp.clone(),
                                subject: link.subject.clone(),
                                user_id: held.user_id,
                            }));
                        }
                        user_links.remove(user_link_key(&held))?;
                    }
                    write_user(users, emails, expected, user, &encoded)?;
                    links.insert(link_key.as_slice(), encoded_link.as_slice())?;
                    user_links.insert(user_link_key(link), encoded_link.as_slice())?;
                    Ok(())
                }),
        )?;
        self.feed.publish(Change::People {
            user_id: user.id.clone(),
        });
        self.flush().await?;
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let links = self.links_of(id).await?;
        let deleted = committed(
            (
                &self.users.tree,
                &self.user_emails,
                &self.identity_links,
                &self.user_links,
            )
                .transaction(|(users, emails, identity_links, user_links)| {
                    let Some(bytes) = users.remove(id.as_bytes())? else {
                        return Ok(None);
                    };
                    let user: User = decode_in(&bytes)?;
                    let email = normalize_email(&user.email);
                    if !email.is_empty()
                        && emails
                            .get(email.as_bytes())?
                            .is_some_and(|owner| owner.as_ref() == id.as_bytes())
                    {
                        emails.remove(email.as_bytes())?;
                    }
                    for link in &links {
                        identity_links.remove(pair_key(&link.idp, &link.subject))?;
                        user_links.remove(user_link_key(link))?;
                    }
                    Ok(Some(user))
                }),
        )?;
        if deleted.is_some() {
            self.feed.publish(Change::People {
                user_id: id.to_string(),
            });
            self.flush().await?;
        }
        Ok(deleted)
    }
}
