//! Whether a file we are about to load as code (a plugin) could have been written or
//! replaced by another user: the checks sshd's StrictModes makes, path component by path
//! component.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Symlinks followed in one path before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Refuses a plugin that another user could have written or replaced, as sshd's
/// StrictModes does: the path is resolved one component at a time, following symlinks, and
/// every folder on the way (the folders of each symlink, the symlink targets' folders, up
/// to the root) and the real file itself must be owned by us or root and not writable by
/// group or others. A sticky folder that others can write (like /tmp) is accepted for an
/// entry owned by us or root, since nobody else may rename or remove it there. Returns the
/// real path of the file.
pub fn check_trust(path: &Path) -> Result<PathBuf, String> {
    let me = rustix::process::geteuid().as_raw();
    let absolute = std::path::absolute(path).map_err(|e| format!("plugin file {}: {e}", path.display()))?;
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = components(&absolute).collect();
    let mut real = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            real.pop();
            continue;
        }
        let next = real.join(&part);
        let entry = fs::symlink_metadata(&next)
            .map_err(|e| format!("plugin file {}: {}: {e}", path.display(), next.display()))?;
        check_folder(&real, &entry, me)?;
        if entry.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(format!("plugin file {}: more than {MAX_SYMLINKS} symlinks", path.display()));
            }
            let target = fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                real = PathBuf::from("/");
            }
            for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(c);
            }
            continue;
        }
        real = next;
    }
    let meta = fs::metadata(&real).map_err(|e| format!("plugin file {}: {e}", real.display()))?;
    let shown = if real == absolute {
        real.display().to_string()
    } else {
        format!("{} (at {})", real.display(), path.display())
    };
    if !meta.is_file() {
        return Err(format!("plugin file {shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "plugin file {shown} is writable by group or others (mode {mode:04o}): refusing to load it (chmod go-w)"
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "plugin file {shown} is owned by uid {}, not by recd (uid {me}) or root: refusing to load it",
            meta.uid()
        ));
    }
    Ok(real)
}

/// The path's parts after the root, `.` dropped (`..` is resolved by the walk).
fn components(path: &Path) -> impl Iterator<Item = std::ffi::OsString> + '_ {
    use std::path::Component;
    path.components().filter_map(|c| match c {
        Component::Normal(part) => Some(part.to_os_string()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Whether `dir` lets no one but us or root replace its entry `entry`.
fn check_folder(dir: &Path, entry: &fs::Metadata, me: u32) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("plugin folder {}: {e}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "plugin folder {} is owned by uid {}, not by recd (uid {me}) or root: refusing to load from it",
            dir.display(),
            meta.uid()
        ));
    }
    let sticky_and_ours = mode & 0o1000 != 0 && (entry.uid() == me || entry.uid() == 0);
    if mode & 0o022 != 0 && !sticky_and_ours {
        return Err(format!(
            "plugin folder {} is writable by group or others (mode {mode:04o}): refusing to load it (chmod go-w)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_writable_plugins_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("librecd_x.so");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_trust(&file), Ok(file.clone()));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check_trust(&file).unwrap_err();
        assert!(err.contains("is writable by group or others (mode 0664)"), "{err}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_trust(&file).unwrap_err();
        assert!(err.starts_with("plugin folder"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_trust(&file), Ok(file.clone()), "a sticky folder like /tmp is fine");
    }

    /// The adversarial run's bypass: a symlink in a safe folder to a library in a folder
    /// others can write, and a world-writable folder above the plugin's own.
    #[test]
    fn symlinks_are_resolved_and_every_folder_up_to_the_root_is_checked() {
        let root = tempfile::tempdir().unwrap();
        let safe = root.path().join("safe");
        let open = root.path().join("open");
        fs::create_dir(&safe).unwrap();
        fs::create_dir(&open).unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&safe, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o775)).unwrap();
        let real = open.join("librecd_x.so");
        fs::write(&real, b"x").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
        let link = safe.join("librecd_x.so");
        std::os::unix::fs::symlink("../open/librecd_x.so", &link).unwrap();
        let err = check_trust(&link).unwrap_err();
        assert!(
            err.contains(&format!("plugin folder {} is writable by group or others (mode 0775)", open.display())),
            "{err}"
        );
        // Made safe, the link resolves to the real file.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_trust(&link), Ok(real.clone()));
        // A world-writable grandparent (not sticky) lets others swap the whole folder.
        let deep = safe.join("a/b");
        fs::create_dir_all(&deep).unwrap();
        fs::set_permissions(safe.join("a"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o755)).unwrap();
        let file = deep.join("librecd_y.so");
        fs::write(&file, b"y").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_trust(&file).unwrap_err();
        assert!(err.contains(&format!("plugin folder {} is writable", safe.join("a").display())), "{err}");
        // A symlink loop ends with an error.
        let looped = safe.join("loop.so");
        std::os::unix::fs::symlink("loop.so", &looped).unwrap();
        assert!(check_trust(&looped).unwrap_err().contains("more than 40 symlinks"));
    }
}
