//! The node's secrets: files the operator keeps outside the bundle (a µmbox's
//! credentials), mounted read-only into the containers whose manifests name them
//! (`secret NAME at PATH`; `docs/runtime.md`, "Secrets").
//!
//! This module finds a secret's file and checks it is fit to be mounted; it never opens
//! it, so no secret's content can reach a message, a log, a command line or an
//! environment. A secret that cannot be used is an error: the µmbox is not started and
//! its device fails closed, like any µmbox that cannot start.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Where the node keeps its secrets unless `--secrets-dir` says otherwise.
pub const DEFAULT_DIR: &str = "/etc/kalki/secrets";

/// Where every secret is mounted in a container (the compiler refuses other paths, K115).
const MOUNT_ROOT: &str = "/run/secrets/";

/// A secret's file on the node and where the container sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The file on the node: `DIR/DEVICE/NAME` or `DIR/NAME`.
    pub source: PathBuf,
    /// The path in the container.
    pub target: String,
}

/// Why a secret cannot be mounted. Every message names the secret and the device and
/// says what to do; none holds anything read from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret `{name}` of device `{device}` has a name that is not a plain file name (no `/`, no `..`): rebuild the bundle with a valid name"
    )]
    BadName { device: String, name: String },
    #[error(
        "secret `{name}` of device `{device}` is to be mounted at `{path}`, which is not a path under `/run/secrets/`: rebuild the bundle with `kalkic`, which refuses it"
    )]
    BadPath {
        device: String,
        name: String,
        path: String,
    },
    #[error(
        "secret `{name}` of device `{device}` is missing: neither `{}` nor `{}` exists (create one, owned by root, `chmod 600`; or give the right directory with --secrets-dir)",
        .per_device.display(), .shared.display()
    )]
    Missing {
        device: String,
        name: String,
        per_device: PathBuf,
        shared: PathBuf,
    },
    #[error(
        "secret `{name}` of device `{device}`: `{}` is not a regular file (a symbolic link, a directory, ...): put the secret itself there, `chmod 600`",
        .file.display()
    )]
    NotAFile {
        device: String,
        name: String,
        file: PathBuf,
    },
    #[error(
        "secret `{name}` of device `{device}`: `{}` is open to group or others (mode {mode:04o}): `chmod 600 {}`",
        .file.display(), .file.display()
    )]
    Exposed {
        device: String,
        name: String,
        file: PathBuf,
        mode: u32,
    },
    #[error(
        "secret `{name}` of device `{device}`: `{}` is empty: write the secret into it",
        .file.display()
    )]
    Empty {
        device: String,
        name: String,
        file: PathBuf,
    },
    #[error(
        "secret `{name}` of device `{device}`: `{}` cannot be looked at ({detail}): check the secrets directory and its permissions",
        .file.display()
    )]
    Unreadable {
        device: String,
        name: String,
        file: PathBuf,
        detail: String,
    },
}

/// Whether `name` can be a file name under the secrets directory: not empty, no `/`, no
/// `..`, no NUL.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && !name.contains('/')
        && !name.contains("..")
        && !name.contains('\0')
}

/// Whether `path` is where a secret may go: an absolute path under `/run/secrets/`
/// without empty, `.` or `..` components (as the compiler checks).
fn mount_path_ok(path: &str) -> bool {
    path.strip_prefix(MOUNT_ROOT).is_some_and(|rest| {
        !rest.is_empty()
            && !rest.contains('\0')
            && rest
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    })
}

/// The file for secret `name` of `device` under `dir`: `dir/device/name` if it exists,
/// else `dir/name`; checked to be a regular file (not a symbolic link), not empty, and
/// neither readable nor writable by group or others. A per-device file that exists but
/// fails a check is refused; the shared one is not tried instead.
pub fn resolve(
    dir: &Path,
    device: &str,
    name: &str,
    target: &str,
) -> Result<SecretFile, SecretError> {
    let (d, n) = (device.to_string(), name.to_string());
    if !plain_name(name) || !plain_name(device) {
        return Err(SecretError::BadName { device: d, name: n });
    }
    if !mount_path_ok(target) {
        return Err(SecretError::BadPath {
            device: d,
            name: n,
            path: target.to_string(),
        });
    }
    let per_device = dir.join(device).join(name);
    let shared = dir.join(name);
    if dir.to_str().is_none() {
        // The container engine takes the source as text; never a lossy version of it.
        return Err(SecretError::Unreadable {
            device: d,
            name: n,
            file: shared,
            detail: "the secrets directory's path is not UTF-8".into(),
        });
    }
    for file in [&per_device, &shared] {
        // `symlink_metadata`: a link is not followed, and is refused below.
        let meta = match std::fs::symlink_metadata(file) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SecretError::Unreadable {
                    device: d,
                    name: n,
                    file: file.clone(),
                    detail: e.to_string(),
                })
            }
        };
        if !meta.file_type().is_file() {
            return Err(SecretError::NotAFile {
                device: d,
                name: n,
                file: file.clone(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                device: d,
                name: n,
                file: file.clone(),
                mode,
            });
        }
        if meta.len() == 0 {
            return Err(SecretError::Empty {
                device: d,
                name: n,
                file: file.clone(),
            });
        }
        return Ok(SecretFile {
            source: file.clone(),
            target: target.to_string(),
        });
    }
    Err(SecretError::Missing {
        device: d,
        name: n,
        per_device,
        shared,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::fs;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "kalki-secrets-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn write(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const AT: &str = "/run/secrets/proxy-credentials";

    #[test]
    fn the_device_s_own_file_comes_first_then_the_shared_one() {
        let dir = Dir::new("order");
        let shared = dir.write("credentials", "admin:one\n", 0o600);
        let got = resolve(&dir.0, "cam", "credentials", AT).unwrap();
        assert_eq!(got.source, shared);
        assert_eq!(got.target, AT);
        let own = dir.write("cam/credentials", "admin:two\n", 0o400);
        assert_eq!(
            resolve(&dir.0, "cam", "credentials", AT).unwrap().source,
            own
        );
        // Another device still gets the shared one.
        assert_eq!(
            resolve(&dir.0, "thermo", "credentials", AT).unwrap().source,
            shared
        );
    }

    #[test]
    fn a_missing_secret_says_where_it_was_looked_for_and_what_to_do() {
        let dir = Dir::new("missing");
        let e = resolve(&dir.0, "cam", "credentials", AT).unwrap_err();
        assert!(matches!(e, SecretError::Missing { .. }), "{e:?}");
        let text = e.to_string();
        for part in [
            "secret `credentials`",
            "device `cam`",
            "cam/credentials",
            "chmod 600",
            "--secrets-dir",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }

    #[test]
    fn files_others_may_read_or_write_are_refused_without_showing_them() {
        let dir = Dir::new("mode");
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666] {
            let file = dir.write("credentials", "admin:hunter2\n", mode);
            let e = resolve(&dir.0, "cam", "credentials", AT).unwrap_err();
            assert!(matches!(e, SecretError::Exposed { .. }), "{mode:o}: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", file.display())),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
        dir.write("credentials", "admin:hunter2\n", 0o600);
        assert!(resolve(&dir.0, "cam", "credentials", AT).is_ok());
    }

    #[test]
    fn a_bad_per_device_file_is_refused_not_skipped() {
        let dir = Dir::new("no-fallback");
        dir.write("credentials", "admin:shared\n", 0o600);
        dir.write("cam/credentials", "admin:own\n", 0o644);
        assert!(matches!(
            resolve(&dir.0, "cam", "credentials", AT),
            Err(SecretError::Exposed { .. })
        ));
    }

    #[test]
    fn only_regular_non_empty_files_are_secrets() {
        let dir = Dir::new("kinds");
        fs::create_dir_all(dir.0.join("credentials")).unwrap();
        assert!(matches!(
            resolve(&dir.0, "cam", "credentials", AT),
            Err(SecretError::NotAFile { .. })
        ));
        fs::remove_dir(dir.0.join("credentials")).unwrap();
        let target = dir.write("real", "admin:x\n", 0o600);
        std::os::unix::fs::symlink(&target, dir.0.join("credentials")).unwrap();
        assert!(matches!(
            resolve(&dir.0, "cam", "credentials", AT),
            Err(SecretError::NotAFile { .. })
        ));
        fs::remove_file(dir.0.join("credentials")).unwrap();
        dir.write("credentials", "", 0o600);
        assert!(matches!(
            resolve(&dir.0, "cam", "credentials", AT),
            Err(SecretError::Empty { .. })
        ));
    }

    #[test]
    fn names_and_mount_paths_stay_where_they_belong() {
        let dir = Dir::new("names");
        dir.write("credentials", "admin:x\n", 0o600);
        for name in [
            "",
            ".",
            "..",
            "../credentials",
            "a/b",
            "x..y",
            "/etc/shadow",
        ] {
            assert!(
                matches!(
                    resolve(&dir.0, "cam", name, AT),
                    Err(SecretError::BadName { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            resolve(&dir.0, "../cam", "credentials", AT),
            Err(SecretError::BadName { .. })
        ));
        for path in [
            "/etc/passwd",
            "/run/secrets/",
            "/run/secrets/../../etc/x",
            "/run/secrets//x",
            "run/secrets/x",
        ] {
            assert!(
                matches!(
                    resolve(&dir.0, "cam", "credentials", path),
                    Err(SecretError::BadPath { .. })
                ),
                "{path:?}"
            );
        }
        assert!(resolve(&dir.0, "cam", "credentials", "/run/secrets/a/b").is_ok());
    }
}
