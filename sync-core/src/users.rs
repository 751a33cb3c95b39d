//! The people who use a node: their roles, passwords (argon2) and signing keys
//! (Ed25519), and the sign-in tokens the API hands out.
//!
//! Users are kept per node, in a table of the node's store file that never syncs. A
//! password is kept only as an argon2id hash (PHC string). A user's signing key is kept
//! sealed (XChaCha20-Poly1305) under a key derived from the password with argon2id, so
//! a copy of the store (a backup, say) lets nobody sign in nor sign in anyone's name.
//! Signing in opens the key; the node holds it, with the token, in memory only, so a
//! restart signs everyone out. A forgotten password cannot be reset: the user gets a new
//! account and key, and what the old key signed stays verifiable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
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
    public_key TEXT NOT NULL,
    key_salt BLOB NOT NULL,
    sealed_key BLOB NOT NULL,
    created_at TEXT NOT NULL
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
    #[error("the user's signing key cannot be opened with this password; the store is damaged")]
    Sealed,
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

/// What signing in needs of a stored user: the password hash and the sealed key.
pub struct Credentials {
    phc: String,
    salt: Vec<u8>,
    sealed: Vec<u8>,
}

/// The users of one node, over its own connection to the store file (so signing in
/// never waits for sync), and the tokens of those signed in.
pub struct Directory {
    conn: Connection,
    /// BLAKE3 of each token → the user, their opened key and when the token expires.
    tokens: HashMap<String, (String, SigningKey, i64)>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn now_secs() -> i64 {
    (determinism::now_micros() / 1_000_000) as i64
}

fn hash_err(e: impl std::fmt::Display) -> UserError {
    UserError::Hash(e.to_string())
}

/// The key that seals a user's signing key: argon2id of the password with its own salt.
fn sealing_key(password: &str, salt: &[u8]) -> Result<XChaCha20Poly1305, UserError> {
    let mut key = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), salt, &mut key)
        .map_err(hash_err)?;
    Ok(XChaCha20Poly1305::new(&key.into()))
}

fn seal(password: &str, key: &SigningKey, salt: &[u8]) -> Result<Vec<u8>, UserError> {
    let nonce: [u8; 24] = determinism::random_bytes();
    let sealed = sealing_key(password, salt)?
        .encrypt(&XNonce::from(nonce), key.to_bytes().as_slice())
        .map_err(hash_err)?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn unseal(password: &str, c: &Credentials) -> Result<SigningKey, UserError> {
    let damaged = || UserError::Sealed;
    let (nonce, sealed) = c.sealed.split_at_checked(24).ok_or_else(damaged)?;
    let nonce: [u8; 24] = nonce.try_into().map_err(|_| damaged())?;
    let bytes = sealing_key(password, &c.salt)?
        .decrypt(&XNonce::from(nonce), sealed)
        .map_err(|_| damaged())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| damaged())?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Does `password` match the stored hash? An unknown user (`None`) is checked against
/// a hash made once, so both cost one argon2 run and timing does not tell which names
/// exist.
pub fn check_password(stored: Option<&str>, password: &str) -> Result<bool, UserError> {
    static NOBODY: OnceLock<String> = OnceLock::new();
    let nobody = match NOBODY.get() {
        Some(h) => h,
        None => {
            let h = argon2::Argon2::default()
                .hash_password(b"not a password of anyone")
                .map_err(hash_err)?
                .to_string();
            NOBODY.get_or_init(|| h)
        }
    };
    let phc = stored.unwrap_or(nobody);
    let parsed = PasswordHash::new(phc).map_err(hash_err)?;
    let ok = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    Ok(ok && stored.is_some())
}

/// Checks a password against stored credentials (`None` for an unknown user) and opens
/// the signing key with it: the slow part of signing in, which needs no directory.
pub fn open_key(
    credentials: Option<&Credentials>,
    password: &str,
) -> Result<Option<SigningKey>, UserError> {
    if !check_password(credentials.map(|c| c.phc.as_str()), password)? {
        return Ok(None);
    }
    let Some(c) = credentials else {
        return Ok(None);
    };
    unseal(password, c).map(Some)
}

impl Directory {
    /// Opens the user table of the store at `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<Directory, UserError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Directory {
            conn,
            tokens: HashMap::new(),
        })
    }

    /// A directory in memory, for tests.
    pub fn in_memory() -> Result<Directory, UserError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Directory {
            conn,
            tokens: HashMap::new(),
        })
    }

    /// Whether any user exists; until one does the node is in setup mode.
    pub fn is_empty(&self) -> Result<bool, UserError> {
        Ok(!self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users)")?
            .query_row([], |r| r.get::<_, bool>(0))?)
    }

    /// Creates a user with a fresh signing key, sealed under the password.
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
            .map_err(hash_err)?
            .to_string();
        let key = SigningKey::from_bytes(&determinism::random_bytes::<32>());
        let salt: [u8; 16] = determinism::random_bytes();
        let sealed = seal(password, &key, &salt)?;
        let full_name = if full_name.trim().is_empty() {
            name
        } else {
            full_name.trim()
        };
        let inserted = self.conn.execute(
            "INSERT OR IGNORE INTO users (name, role, full_name, title, password, public_key,
               key_salt, sealed_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                name,
                role.as_str(),
                full_name,
                title.trim(),
                hash,
                hex::encode(key.verifying_key().to_bytes()),
                salt.to_vec(),
                sealed,
                crate::model::now_vietnam()
            ],
        )?;
        if inserted == 0 {
            return Err(UserError::Exists(name.to_string()));
        }
        self.user(name)
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<User>, UserError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM users ORDER BY name")?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        names.iter().map(|n| self.user(n)).collect()
    }

    /// A user as others may see them.
    pub fn user(&self, name: &str) -> Result<User, UserError> {
        let row: Option<(String, String, String, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT role, full_name, title, public_key, created_at FROM users
                 WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let (role, full_name, title, public_key, created_at) =
            row.ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
        Ok(User {
            name: name.to_string(),
            role: UserRole::parse(&role)
                .map_err(|_| UserError::Damaged(name.to_string(), "role".into()))?,
            full_name,
            title,
            public_key,
            created_at,
        })
    }

    /// Checks a password and hands out a token for it.
    pub fn login(&mut self, name: &str, password: &str) -> Result<(String, Actor), UserError> {
        let credentials = self.credentials(name)?;
        match open_key(credentials.as_ref(), password)? {
            Some(key) => self.issue_token(name, key),
            None => Err(UserError::WrongPassword),
        }
    }

    /// What checking a user's password needs (`None` for an unknown user). With
    /// [`open_key`] and [`Directory::issue_token`] it splits signing in, so the slow
    /// hashing runs without holding the directory.
    pub fn credentials(&self, name: &str) -> Result<Option<Credentials>, UserError> {
        Ok(self
            .conn
            .prepare_cached("SELECT password, key_salt, sealed_key FROM users WHERE name = ?1")?
            .query_row([name], |r| {
                Ok(Credentials {
                    phc: r.get(0)?,
                    salt: r.get(1)?,
                    sealed: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// A new token for a user whose key was opened with their password.
    pub fn issue_token(
        &mut self,
        name: &str,
        key: SigningKey,
    ) -> Result<(String, Actor), UserError> {
        let user = self.user(name)?;
        let now = now_secs();
        self.tokens.retain(|_, (_, _, expires)| *expires >= now);
        let token = hex::encode(determinism::random_bytes::<32>());
        let expires = now + TOKEN_LIFETIME.as_secs() as i64;
        self.tokens
            .insert(token_hash(&token), (name.to_string(), key.clone(), expires));
        Ok((token, Actor { user, key }))
    }

    /// The user a token stands for, if it is valid and not expired and the user still
    /// exists.
    pub fn authenticate(&self, token: &str) -> Result<Option<Actor>, UserError> {
        let Some((name, key, expires)) = self.tokens.get(&token_hash(token)) else {
            return Ok(None);
        };
        if *expires < now_secs() {
            return Ok(None);
        }
        match self.user(name) {
            Ok(user) => Ok(Some(Actor {
                user,
                key: key.clone(),
            })),
            Err(UserError::NoSuchUser(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends a token's validity (sign-out).
    pub fn logout(&mut self, token: &str) {
        self.tokens.remove(&token_hash(token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_signs_in_with_the_password_and_only_with_it() {
        let mut dir = Directory::in_memory().unwrap();
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
        dir.logout(&token);
        assert!(dir.authenticate(&token).unwrap().is_none());
        // The stored password is an argon2id hash, and the stored key is sealed: the
        // store alone holds neither.
        let (stored, sealed): (String, Vec<u8>) = dir
            .conn
            .query_row("SELECT password, sealed_key FROM users", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("mật khẩu"));
        let key = actor.key.to_bytes();
        assert!(!sealed.windows(32).any(|w| w == key));
        assert_eq!(sealed.len(), 24 + 32 + 16);
        // Signing in again opens the same key.
        let (_, again) = dir.login("chutich", "mật khẩu dài").unwrap();
        assert_eq!(again.key.to_bytes(), key);
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
