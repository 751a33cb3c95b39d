//! The people who use a node: their roles, passwords (argon2) and signing keys
//! (Ed25519), and the sign-in tokens the API hands out.
//!
//! Users are kept per node, in tables of the node's store file that never sync. A
//! password is kept only as an argon2id hash (PHC string); a token only as its BLAKE3
//! hash, so a copy of the store lets nobody sign in.

use std::path::Path;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::determinism;

/// How long a sign-in token stays valid: a working day with margin.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    full_name TEXT NOT NULL,
    title TEXT NOT NULL,
    password TEXT NOT NULL,
    signing_key BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    expires INTEGER NOT NULL
);
";

/// What a user may do in the lifecycle of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Văn thư: registers, numbers, applies the organisation's signature, dispatches.
    Clerk,
    /// Lãnh đạo (chairman, vice-chairman): returns, approves and signs, assigns.
    Leader,
    /// Chuyên viên: drafts, submits and handles assigned documents.
    Member,
}

impl UserRole {
    pub const ALL: [UserRole; 3] = [UserRole::Clerk, UserRole::Leader, UserRole::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Clerk => "clerk",
            UserRole::Leader => "leader",
            UserRole::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Result<UserRole, UserError> {
        UserRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UserError::BadRole(s.chars().take(40).collect()))
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    #[error("{0:?} is not a role: use clerk, leader or member")]
    BadRole(String),
    #[error(
        "{0:?} is not a user name: use 1 to 64 letters, digits, '.', '_' or '-' (such as \
         nguyen.van.a)"
    )]
    BadName(String),
    #[error("the password must have at least 8 characters")]
    WeakPassword,
    #[error("a user named {0:?} already exists on this node")]
    Exists(String),
    #[error("no user named {0:?} on this node")]
    NoSuchUser(String),
    #[error("the user name or password is wrong")]
    WrongPassword,
    #[error("the stored user {0:?} is damaged: {1}")]
    Damaged(String, String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A user as others may see them (never the password or the secret key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: UserRole,
    pub full_name: String,
    /// The position printed in a signature block (such as "Chủ tịch").
    pub title: String,
    /// The user's Ed25519 public key, hex.
    pub public_key: String,
    pub created_at: String,
}

/// A signed-in user acting on this node, with the key that signs in their name.
#[derive(Clone)]
pub struct Actor {
    pub user: User,
    pub key: SigningKey,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor").field("user", &self.user).finish()
    }
}

/// The users and sign-in tokens of one node, over its own connection to the store file
/// (so signing in never waits for sync).
pub struct Directory {
    conn: Connection,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Does `password` match the stored hash? An unknown user (`None`) is checked against
/// a hash made once, so both cost one argon2 run and timing does not tell which names
/// exist.
pub fn check_password(stored: Option<&str>, password: &str) -> Result<bool, UserError> {
    static NOBODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let nobody = match NOBODY.get() {
        Some(h) => h,
        None => {
            let h = argon2::Argon2::default()
                .hash_password(b"not a password of anyone")
                .map_err(|e| UserError::Hash(e.to_string()))?
                .to_string();
            NOBODY.get_or_init(|| h)
        }
    };
    let phc = stored.unwrap_or(nobody);
    let parsed = PasswordHash::new(phc).map_err(|e| UserError::Hash(e.to_string()))?;
    let ok = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    Ok(ok && stored.is_some())
}

fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn now_secs() -> i64 {
    (determinism::now_micros() / 1_000_000) as i64
}

impl Directory {
    /// Opens the user tables of the store at `path`, creating them if needed.
    pub fn open(path: &Path) -> Result<Directory, UserError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Directory { conn })
    }

    /// A directory in memory, for tests.
    pub fn in_memory() -> Result<Directory, UserError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Directory { conn })
    }

    /// Whether any user exists; until one does the node is in setup mode.
    pub fn is_empty(&self) -> Result<bool, UserError> {
        Ok(!self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users)")?
            .query_row([], |r| r.get::<_, bool>(0))?)
    }

    /// Creates a user with a fresh signing key.
    pub fn add(
        &self,
        name: &str,
        role: UserRole,
        full_name: &str,
        title: &str,
        password: &str,
    ) -> Result<User, UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName(name.chars().take(80).collect()));
        }
        if password.chars().count() < 8 {
            return Err(UserError::WeakPassword);
        }
        let hash = argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| UserError::Hash(e.to_string()))?
            .to_string();
        let key = SigningKey::from_bytes(&determinism::random_bytes::<32>());
        let created_at = crate::model::now_vietnam();
        let full_name = if full_name.trim().is_empty() {
            name
        } else {
            full_name.trim()
        };
        let inserted = self.conn.execute(
            "INSERT OR IGNORE INTO users (name, role, full_name, title, password, signing_key,
               created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                role.as_str(),
                full_name,
                title.trim(),
                hash,
                key.to_bytes().to_vec(),
                created_at
            ],
        )?;
        if inserted == 0 {
            return Err(UserError::Exists(name.to_string()));
        }
        Ok(self.actor(name)?.user)
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<User>, UserError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM users ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names
            .iter()
            .map(|n| self.actor(n).map(|a| a.user))
            .collect()
    }

    fn actor(&self, name: &str) -> Result<Actor, UserError> {
        let row: Option<(String, String, String, Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT role, full_name, title, signing_key, created_at FROM users
                 WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let (role, full_name, title, key, created_at) =
            row.ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
        let damaged = |what: &str| UserError::Damaged(name.to_string(), what.to_string());
        let key: [u8; 32] = key.try_into().map_err(|_| damaged("signing key"))?;
        let key = SigningKey::from_bytes(&key);
        Ok(Actor {
            user: User {
                name: name.to_string(),
                role: UserRole::parse(&role).map_err(|_| damaged("role"))?,
                full_name,
                title,
                public_key: hex::encode(key.verifying_key().to_bytes()),
                created_at,
            },
            key,
        })
    }

    /// Checks a password and hands out a token for it.
    pub fn login(&self, name: &str, password: &str) -> Result<(String, Actor), UserError> {
        let stored = self.password_hash(name)?;
        if !check_password(stored.as_deref(), password)? {
            return Err(UserError::WrongPassword);
        }
        self.issue_token(name)
    }

    /// The stored argon2 hash of a user's password, if the user exists. With
    /// [`check_password`] and [`Directory::issue_token`] it splits sign-in so the slow
    /// hash runs without holding the directory.
    pub fn password_hash(&self, name: &str) -> Result<Option<String>, UserError> {
        Ok(self
            .conn
            .prepare_cached("SELECT password FROM users WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    /// A new token for a user whose password was checked.
    pub fn issue_token(&self, name: &str) -> Result<(String, Actor), UserError> {
        let actor = self.actor(name)?;
        let token = hex::encode(determinism::random_bytes::<32>());
        self.conn.execute(
            "DELETE FROM sessions WHERE expires < ?1",
            params![now_secs()],
        )?;
        self.conn.execute(
            "INSERT INTO sessions (token, user, expires) VALUES (?1, ?2, ?3)",
            params![
                token_hash(&token),
                name,
                now_secs() + TOKEN_LIFETIME.as_secs() as i64
            ],
        )?;
        Ok((token, actor))
    }

    /// The user a token stands for, if it is valid and not expired.
    pub fn authenticate(&self, token: &str) -> Result<Option<Actor>, UserError> {
        let user: Option<String> = self
            .conn
            .prepare_cached("SELECT user FROM sessions WHERE token = ?1 AND expires >= ?2")?
            .query_row(params![token_hash(token), now_secs()], |r| r.get(0))
            .optional()?;
        match user {
            Some(name) => match self.actor(&name) {
                Ok(a) => Ok(Some(a)),
                Err(UserError::NoSuchUser(_)) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Ends a token's validity (sign-out).
    pub fn logout(&self, token: &str) -> Result<(), UserError> {
        self.conn
            .execute("DELETE FROM sessions WHERE token = ?1", [token_hash(token)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_signs_in_with_the_password_and_only_with_it() {
        let dir = Directory::in_memory().unwrap();
        assert!(dir.is_empty().unwrap());
        let user = dir
            .add(
                "chutich",
                UserRole::Leader,
                "Nguyễn Văn A",
                "Chủ tịch",
                "mật khẩu dài",
            )
            .unwrap();
        assert!(!dir.is_empty().unwrap());
        assert_eq!(user.public_key.len(), 64);
        assert!(matches!(
            dir.login("chutich", "sai mật khẩu"),
            Err(UserError::WrongPassword)
        ));
        assert!(matches!(
            dir.login("nobody", "mật khẩu dài"),
            Err(UserError::WrongPassword)
        ));
        let (token, actor) = dir.login("chutich", "mật khẩu dài").unwrap();
        assert_eq!(actor.user, user);
        assert_eq!(
            dir.authenticate(&token).unwrap().unwrap().user.name,
            "chutich"
        );
        assert!(dir.authenticate("forged").unwrap().is_none());
        dir.logout(&token).unwrap();
        assert!(dir.authenticate(&token).unwrap().is_none());
        // The stored password is an argon2id hash, not the password.
        let stored: String = dir
            .conn
            .query_row("SELECT password FROM users", [], |r| r.get(0))
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("mật khẩu"));
    }

    #[test]
    fn bad_names_roles_and_passwords_are_refused() {
        let dir = Directory::in_memory().unwrap();
        assert!(matches!(
            dir.add("a b", UserRole::Clerk, "", "", "12345678"),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            dir.add("vanthu", UserRole::Clerk, "", "", "short"),
            Err(UserError::WeakPassword)
        ));
        dir.add("vanthu", UserRole::Clerk, "", "", "12345678")
            .unwrap();
        assert!(matches!(
            dir.add("vanthu", UserRole::Leader, "", "", "12345678"),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            UserRole::parse("admin"),
            Err(UserError::BadRole(_))
        ));
        assert!(dir.is_empty().is_ok());
    }
}
