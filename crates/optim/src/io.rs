//! Atomic file writes: a checkpoint is either the old file or the complete new one.

use std::io::Write;
use std::path::Path;

use crate::{OptimError, Result};

/// Write `bytes` to `path` through a temporary file in the same directory, fsync, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| OptimError::Io { path: path.display().to_string(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
