//! Where day and month usage outlives the process: behind [`UsageStore`], an embedded
//! database file ([`RedbStore`], `usage.redb` under `[state] dir`) or memory
//! ([`MemoryStore`]). Only settled usage is stored (reservations in flight are not), one
//! row per subject, window and period, each batch in one transaction: after `kill -9`
//! what the last committed batch held is there, and the ledger writes one a second.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{ReadableDatabase as _, TableDefinition};

use super::{Scope, Window};

/// One window's settled usage in one calendar period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUsage {
    pub scope: Scope,
    /// The team's name or the identity's id.
    pub name: String,
    pub window: Window,
    /// `YYYYMMDD` or `YYYYMM` (see [`super::clock::Calendar::period`]).
    pub period: i64,
    pub used: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Persistent usage: everything stored, and batches of new values to keep.
pub trait UsageStore: Send + Sync {
    fn load(&self) -> Result<Vec<StoredUsage>, StoreError>;
    /// Stores every row of `batch` (replacing the row of the same subject, window and
    /// period), all or none.
    fn write(&self, batch: &[StoredUsage]) -> Result<(), StoreError>;
}

/// A store that keeps nothing past the process (tests, and `[state] dir = ""`).
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Vec<StoredUsage>>);

impl UsageStore for MemoryStore {
    fn load(&self) -> Result<Vec<StoredUsage>, StoreError> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn write(&self, batch: &[StoredUsage]) -> Result<(), StoreError> {
        let mut rows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for row in batch {
            let same = |r: &StoredUsage| {
                (r.scope, &r.name, r.window, r.period)
                    == (row.scope, &row.name, row.window, row.period)
            };
            match rows.iter_mut().find(|r| same(r)) {
                Some(r) => r.used = row.used,
                None => rows.push(row.clone()),
            }
        }
        Ok(())
    }
}

/// (scope, name, window field, period) → tokens used.
const USAGE: TableDefinition<(&str, &str, &str, i64), u64> = TableDefinition::new("usage");

/// The store's file name under `[state] dir`.
pub const FILE_NAME: &str = "usage.redb";

/// The usage database, a redb file.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn scope_of(word: &str) -> Option<Scope> {
    match word {
        "team" => Some(Scope::Team),
        "key" => Some(Scope::Key),
        _ => None,
    }
}

fn rows<T: redb::ReadableTable<(&'static str, &'static str, &'static str, i64), u64>>(
    table: &T,
) -> Result<Vec<StoredUsage>, redb::StorageError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let (scope, name, window, period) = k.value();
        let (Some(scope), Some(window)) = (scope_of(scope), Window::from_field(window)) else {
            continue;
        };
        out.push(StoredUsage {
            scope,
            name: name.to_string(),
            window,
            period,
            used: v.value(),
        });
    }
    Ok(out)
}

impl RedbStore {
    /// Opens (or creates) `usage.redb` in `dir`, creating the directory. Fails if another
    /// process has it open: two gateways on one state directory would overwrite each
    /// other's usage.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError(format!(
                "cannot create the state directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = redb::Database::create(&path).map_err(|e| {
            StoreError(format!(
                "cannot open the usage store {}: {e}",
                path.display()
            ))
        })?;
        let store = Self { db, path };
        // The table exists from the start, so that reads never meet a store without it.
        store.write(&[])?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a store file holds, read without a writer's lock (`ollama-gateway usage` when
    /// the gateway is stopped). A missing file holds nothing.
    pub fn read_file(path: &Path) -> Result<Vec<StoredUsage>, StoreError> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "cannot read the usage store {}: {e}",
                path.display()
            ))
        };
        let db = redb::ReadOnlyDatabase::open(path).map_err(|e| fail(&e))?;
        let txn = db.begin_read().map_err(|e| fail(&e))?;
        match txn.open_table(USAGE) {
            Ok(table) => rows(&table).map_err(|e| fail(&e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(fail(&e)),
        }
    }
}

impl UsageStore for RedbStore {
    fn load(&self) -> Result<Vec<StoredUsage>, StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "cannot read the usage store {}: {e}",
                self.path.display()
            ))
        };
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = txn.open_table(USAGE).map_err(|e| fail(&e))?;
        rows(&table).map_err(|e| fail(&e))
    }

    fn write(&self, batch: &[StoredUsage]) -> Result<(), StoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            StoreError(format!(
                "cannot write the usage store {}: {e}",
                self.path.display()
            ))
        };
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut table = txn.open_table(USAGE).map_err(|e| fail(&e))?;
            for row in batch {
                table
                    .insert(
                        (
                            row.scope.word(),
                            row.name.as_str(),
                            row.window.field(),
                            row.period,
                        ),
                        row.used,
                    )
                    .map_err(|e| fail(&e))?;
            }
        }
        txn.commit().map_err(|e| fail(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, window: Window, period: i64, used: u64) -> StoredUsage {
        StoredUsage {
            scope: Scope::Team,
            name: name.into(),
            window,
            period,
            used,
        }
    }

    #[test]
    fn rows_replace_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("ogw-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = RedbStore::open(&dir).unwrap();
            assert!(s.load().unwrap().is_empty());
            s.write(&[
                row("a", Window::Day, 20261202, 5),
                row("a", Window::Month, 202612, 5),
            ])
            .unwrap();
            s.write(&[row("a", Window::Day, 20261202, 9)]).unwrap();
            assert!(
                RedbStore::open(&dir).is_err(),
                "a second writer on the same directory is refused"
            );
        }
        let s = RedbStore::open(&dir).unwrap();
        let mut got = s.load().unwrap();
        got.sort_by_key(|r| r.window);
        assert_eq!(
            got,
            [
                row("a", Window::Day, 20261202, 9),
                row("a", Window::Month, 202612, 5)
            ]
        );
        drop(s);
        let read = RedbStore::read_file(&dir.join(FILE_NAME)).unwrap();
        assert_eq!(read.len(), 2);
        assert!(RedbStore::read_file(&dir.join("none.redb"))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
