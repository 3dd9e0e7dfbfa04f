//! The store's config file: fixed at `init`, read at every open.
//!
//! It lives beside the index as a small text file (not in SQLite) because the
//! index must be rebuildable from the packs, and the chunker sizes must
//! survive that: changing them would silently break dedup forever.

use homesync_protocol::{ChunkerParams, StoreConfig, StoreError};
use std::path::Path;

pub const FORMAT: u32 = 1;

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// The file's text (also stored as the `config` object of a bucket).
pub fn render(config: &StoreConfig) -> String {
    format!(
        "# homesync store config: written once by `homesync init`, never edited.\n\
         format = {FORMAT}\nid = {}\nchunker_min = {}\nchunker_avg = {}\nchunker_max = {}\nzstd_level = {}\n",
        config.id, config.chunker.min, config.chunker.avg, config.chunker.max, config.zstd_level
    )
}

/// Writes a new config file durably (temp file, fsync, rename).
pub fn write(path: &Path, config: &StoreConfig) -> Result<(), StoreError> {
    crate::backend::write_durably(path, render(config).as_bytes())
}

/// Reads and validates the config file at `path`.
pub fn read(path: &Path) -> Result<StoreConfig, StoreError> {
    let text = std::fs::read_to_string(path)
        .map_err(io(format!("reading store config {}", path.display())))?;
    parse(text.as_bytes())
        .map_err(|why| StoreError::Refused(format!("store config {}: {why}", path.display())))
}

/// Parses a config's bytes (a file's, or a bucket's `config` object).
pub fn parse(bytes: &[u8]) -> Result<StoreConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut fields = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key = value`", n + 1))?;
        fields.insert(k.trim().to_string(), v.trim().to_string());
    }
    let get = |k: &str| fields.get(k).ok_or_else(|| format!("missing `{k}`"));
    let num = |k: &str| -> Result<i64, String> {
        get(k)?.parse::<i64>().map_err(|e| format!("`{k}`: {e}"))
    };
    let format = num("format")?;
    if format != FORMAT as i64 {
        return Err(format!(
            "unsupported store format {format} (this homesync reads {FORMAT})"
        ));
    }
    let to_u32 = |k: &str| -> Result<u32, String> {
        u32::try_from(num(k)?).map_err(|e| format!("`{k}`: {e}"))
    };
    let chunker = ChunkerParams {
        min: to_u32("chunker_min")?,
        avg: to_u32("chunker_avg")?,
        max: to_u32("chunker_max")?,
    };
    chunker.validate().map_err(|e| e.to_string())?;
    let zstd_level = num("zstd_level")? as i32;
    if !(1..=19).contains(&zstd_level) {
        return Err(format!("zstd_level {zstd_level} out of range 1..19"));
    }
    Ok(StoreConfig {
        id: get("id")?.clone(),
        chunker,
        zstd_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        let c = StoreConfig {
            id: "abc".into(),
            chunker: ChunkerParams::default(),
            zstd_level: 3,
        };
        write(&p, &c).unwrap();
        assert_eq!(read(&p).unwrap(), c);
        let err = parse(
            b"format = 1\nid = x\nchunker_min = 1\nchunker_avg = 2\nchunker_max = 3\nzstd_level = 3",
        )
        .unwrap_err();
        assert!(err.contains("min"), "{err}");
        assert!(parse(b"format = 9").unwrap_err().contains("format 9"));
    }
}
