//! The node key: an Ed25519 secret key in `DIR/node.key`, whose public half is the node
//! id that rosters, logs and the status page name.

use std::io::Write;
use std::path::Path;

use iroh::SecretKey;

/// The file name of the secret key inside a data directory.
pub const KEY_FILE: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("cannot write {path}: {reason}")]
    Write {
        path: String,
        reason: std::io::Error,
    },
    #[error("{path} does not hold a node key (64 hex characters expected)")]
    Malformed { path: String },
}

/// Loads the key in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<SecretKey>, IdentityError> {
    let path = dir.join(KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(reason) => {
            return Err(IdentityError::Read {
                path: path.display().to_string(),
                reason,
            });
        }
    };
    let malformed = || IdentityError::Malformed {
        path: path.display().to_string(),
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|_| malformed())?
        .try_into()
        .map_err(|_| malformed())?;
    Ok(Some(SecretKey::from_bytes(&bytes)))
}

/// Loads the key in `dir`, creating one (readable by its owner only) if there is none.
pub fn load_or_create(dir: &Path) -> Result<SecretKey, IdentityError> {
    if let Some(key) = load(dir)? {
        return Ok(key);
    }
    let path = dir.join(KEY_FILE);
    let write_err = |reason| IdentityError::Write {
        path: path.display().to_string(),
        reason,
    };
    let key = SecretKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(write_err)?;
    file.write_all(hex::encode(key.to_bytes()).as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(write_err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
