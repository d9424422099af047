//! The raw log of `collect live`: what it stored, as the lines `import` reads back.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;

use chrono::Utc;

use crate::error::Error;

/// The raw log: a directory of `kalshi-live-<UTC hour>.jsonl.zst` files, each commit's lines one zstd frame
/// appended, so a file cut by a crash loses at most its last frame and `import` reads the rest.
#[derive(Debug)]
pub(super) struct RawLog {
    dir: PathBuf,
    open: Option<(String, File)>,
}

impl RawLog {
    pub(super) fn new(dir: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir, open: None })
    }

    pub(super) fn append<'l>(&mut self, lines: impl Iterator<Item = &'l str>) -> Result<(), Error> {
        let name = format!("kalshi-live-{}.jsonl.zst", Utc::now().format("%Y-%m-%dT%H"));
        if self.open.as_ref().is_none_or(|(open, _)| *open != name) {
            let path = self.dir.join(&name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
            self.open = Some((name, file));
        }
        let (name, file) = self.open.as_mut().expect("opened above");
        let failed = |e| Error::io(format!("write {}", name), e);
        let mut frame = zstd::Encoder::new(Vec::new(), 3).map_err(failed)?;
        for line in lines {
            frame.write_all(line.as_bytes()).map_err(failed)?;
            frame.write_all(b"\n").map_err(failed)?;
        }
        let frame = frame.finish().map_err(failed)?;
        file.write_all(&frame).map_err(failed)?;
        Ok(())
    }

    pub(super) fn close(self) -> Result<(), Error> {
        if let Some((name, file)) = self.open {
            file.sync_all().map_err(|e| Error::io(format!("sync {name}"), e))?;
        }
        Ok(())
    }
}
