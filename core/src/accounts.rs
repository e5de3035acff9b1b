//! TEMPORARY (helper "ports", issue 12): a stand-in with the interface 12-DESIGN.md gives
//! `accounts`, implemented over today's store (`AppUser` records, `Shared::end_sessions_of`)
//! so that the plugin host's directory port builds and is tested. Helper "data" writes the
//! real module (the only writer of people and the only code that ends sessions); at merge it
//! replaces this file whole. Nothing else belongs here.

use crate::model::{AppUser, Session};
use crate::state::Shared;
use crate::store::StoreError;
use std::sync::Arc;

/// A person of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub active: bool,
    pub external_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login: i64,
}

/// A link from an identity provider's subject to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLink {
    pub idp: String,
    pub subject: String,
    pub user_id: String,
    pub created_at: i64,
}

/// Who an identity provider says signed in.
pub struct LoginIdentity<'a> {
    pub idp: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// A person to create.
pub struct NewPerson {
    pub email: String,
    pub name: String,
    pub active: bool,
    pub external_id: Option<String>,
}

/// Changes to a person; `None` keeps a field.
#[derive(Default)]
pub struct PersonPatch {
    pub email: Option<String>,
    pub name: Option<String>,
    pub active: Option<bool>,
    pub external_id: Option<Option<String>>,
}

/// Why a people operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("another person has the email address {email}")]
    EmailTaken { email: String },
    #[error("no person has the id {id}")]
    NotFound { id: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the account is disabled")]
    Disabled,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The people of the directory and the ending of their sessions.
pub struct Accounts {
    shared: Arc<Shared>,
}

fn user_of(user: AppUser) -> User {
    User {
        id: user.id,
        email: user.email,
        name: user.name,
        active: user.active,
        external_id: None,
        created_at: user.created_at,
        updated_at: user.created_at,
        last_login: user.last_login,
    }
}

fn checked_email(email: &str) -> Result<String, AccountsError> {
    let email = email.trim().to_lowercase();
    if email.is_empty() || !email.contains('@') || email.chars().any(char::is_whitespace) {
        return Err(AccountsError::Invalid {
            field: "email",
            message: format!("`{email}` is not an email address"),
        });
    }
    Ok(email)
}

fn no_external_id() -> AccountsError {
    AccountsError::Invalid {
        field: "external_id",
        message: "external ids are kept from schema 4 on".into(),
    }
}

impl Accounts {
    /// Temporary: over the shared state's store and session index.
    pub fn new(shared: Arc<Shared>) -> Accounts {
        Accounts { shared }
    }

    pub async fn resolve_login(&self, login: LoginIdentity<'_>) -> Result<User, AccountsError> {
        let store = &self.shared.store;
        let now = self.shared.clock.now();
        let mut user = match store.find_app_user_by_subject(login.idp, login.subject)? {
            Some(user) => user,
            None => AppUser {
                id: crate::ids::new_id(crate::ids::APP_USER),
                provider: login.idp.to_string(),
                subject: login.subject.to_string(),
                email: String::new(),
                name: String::new(),
                active: true,
                created_at: now,
                last_login: now,
            },
        };
        if !user.active {
            return Err(AccountsError::Disabled);
        }
        user.email = login.email.unwrap_or_default().to_string();
        user.name = login.name.unwrap_or_default().to_string();
        user.last_login = now;
        store.put_app_user(&user)?;
        Ok(user_of(user))
    }

    pub async fn person(&self, id: &str) -> Result<Option<User>, AccountsError> {
        Ok(self.shared.store.find_app_user(id)?.map(user_of))
    }

    pub async fn person_by_email(&self, email: &str) -> Result<Option<User>, AccountsError> {
        Ok(self.shared.store.find_app_user_by_email(email.trim())?.map(user_of))
    }

    pub async fn person_by_external_id(&self, _external_id: &str) -> Result<Option<User>, AccountsError> {
        Ok(None)
    }

    pub async fn people(&self, after_id: Option<&str>, limit: usize) -> Result<(Vec<User>, bool), AccountsError> {
        let mut all: Vec<AppUser> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = self.shared.store.list_app_users(before.as_deref(), 100)?;
            before = page.items.last().map(|u| u.id.clone());
            all.extend(page.items);
            if !page.has_more {
                break;
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let mut after: Vec<User> = all
            .into_iter()
            .filter(|u| after_id.is_none_or(|after| u.id.as_str() > after))
            .map(user_of)
            .collect();
        let more = after.len() > limit;
        after.truncate(limit);
        Ok((after, more))
    }

    pub async fn create_person(&self, new: NewPerson) -> Result<User, AccountsError> {
        let email = checked_email(&new.email)?;
        if new.external_id.is_some() {
            return Err(no_external_id());
        }
        let store = &self.shared.store;
        if store.find_app_user_by_email(&email)?.is_some() {
            return Err(AccountsError::EmailTaken { email });
        }
        let id = crate::ids::new_id(crate::ids::APP_USER);
        let user = AppUser {
            provider: "directory".into(),
            subject: id.clone(),
            id,
            email,
            name: new.name,
            active: new.active,
            created_at: self.shared.clock.now(),
            last_login: 0,
        };
        store.put_app_user(&user)?;
        store.flush().await?;
        tracing::info!(target: "portcullis::audit", event = "user_created", user = %user.id, "user created");
        Ok(user_of(user))
    }

    pub async fn update_person(&self, id: &str, patch: PersonPatch) -> Result<User, AccountsError> {
        let store = &self.shared.store;
        let mut user = store
            .find_app_user(id)?
            .ok_or_else(|| AccountsError::NotFound { id: id.to_string() })?;
        if patch.external_id.as_ref().is_some_and(Option::is_some) {
            return Err(no_external_id());
        }
        if let Some(email) = patch.email {
            let email = checked_email(&email)?;
            if store
                .find_app_user_by_email(&email)?
                .is_some_and(|other| other.id != user.id)
            {
                return Err(AccountsError::EmailTaken { email });
            }
            user.email = email;
        }
        if let Some(name) = patch.name {
            user.name = name;
        }
        if let Some(active) = patch.active {
            user.active = active;
        }
        store.put_app_user(&user)?;
        store.flush().await?;
        tracing::info!(target: "portcullis::audit", event = "user_updated", user = %user.id, active = user.active, "user updated");
        if !user.active {
            let ended = self.end_sessions_of(&user.id).await?;
            tracing::info!(target: "portcullis::audit", event = "user_deactivated", user = %user.id, sessions_ended = ended, "user deactivated");
        }
        Ok(user_of(user))
    }

    pub async fn delete_person(&self, id: &str) -> Result<Option<User>, AccountsError> {
        if self.shared.store.find_app_user(id)?.is_none() {
            return Ok(None);
        }
        let ended = self.end_sessions_of(id).await?;
        let deleted = self.shared.store.delete_app_user(id).await?;
        tracing::info!(target: "portcullis::audit", event = "user_deleted", user = %id, sessions_ended = ended, "user deleted");
        Ok(deleted.map(user_of))
    }

    pub async fn links_of(&self, user_id: &str) -> Result<Vec<IdentityLink>, AccountsError> {
        Ok(self
            .shared
            .store
            .find_app_user(user_id)?
            .map(|u| IdentityLink {
                idp: u.provider,
                subject: u.subject,
                user_id: u.id,
                created_at: u.created_at,
            })
            .into_iter()
            .collect())
    }

    pub async fn end_sessions_of(&self, user_id: &str) -> Result<usize, AccountsError> {
        Ok(self.shared.end_sessions_of(user_id).await?)
    }

    pub async fn end_sessions_where(&self, which: impl Fn(&Session) -> bool + Send) -> Result<usize, AccountsError> {
        Ok(self.shared.end_sessions_where(which).await?)
    }
}
