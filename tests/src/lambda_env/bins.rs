//! Where the harness finds the real binaries it runs (the extension and the function `bootstrap`s).
//!
//! Default: the Cargo workspace's target dir (`$CARGO_TARGET_DIR` or `<workspace>/target`), profile `debug` when
//! the harness itself is a debug build and `release` otherwise, then the other profile. `MAKENAIDE_BIN_PROFILE`
//! pins the profile. `MAKENAIDE_BIN_DIR` replaces the whole search with one directory, so the same tests can run
//! the binaries unpacked from the layer/function zips (the image tree): for a name `X` it accepts
//! `DIR/X`, `DIR/extensions/X`, `DIR/opt/extensions/X`, `DIR/X/bootstrap` and `DIR/functions/X/bootstrap`.

use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

/// Directory holding the binaries to run (overrides the target-dir search). See the module doc for the layouts.
pub const BIN_DIR_ENV: &str = "MAKENAIDE_BIN_DIR";
/// `debug` or `release`: which Cargo profile's binaries to run (default: the harness's own profile first).
pub const BIN_PROFILE_ENV: &str = "MAKENAIDE_BIN_PROFILE";
/// Standard Cargo variable: where the workspace's build output lives.
pub const CARGO_TARGET_DIR_ENV: &str = "CARGO_TARGET_DIR";

/// The workspace root (parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The Cargo target dir the workspace builds into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os(CARGO_TARGET_DIR_ENV) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Candidate paths for binary `name`, in search order.
pub fn candidates(name: &str) -> Vec<PathBuf> {
    if name.contains('/') {
        return vec![PathBuf::from(name)];
    }
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return vec![
            dir.join(name),
            dir.join("extensions").join(name),
            dir.join("opt").join("extensions").join(name),
            dir.join(name).join("bootstrap"),
            dir.join("functions").join(name).join("bootstrap"),
        ];
    }
    let own = if cfg!(debug_assertions) { "debug" } else { "release" };
    let profiles: Vec<String> = match std::env::var(BIN_PROFILE_ENV) {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec![
            own.to_string(),
            if own == "debug" { "release" } else { "debug" }.to_string(),
        ],
    };
    let target = target_dir();
    profiles.iter().map(|p| target.join(p).join(name)).collect()
}

/// Finds binary `name` (an executable regular file), or says where it looked.
pub fn locate(name: &str) -> Result<PathBuf> {
    let tried = candidates(name);
    for path in &tried {
        if is_executable_file(path) {
            return Ok(path.clone());
        }
    }
    Err(HarnessError::BinaryNotFound {
        name: name.to_string(),
        tried,
    })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
