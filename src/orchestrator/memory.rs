//! Cross-modal memory: everything said and seen, with its time, modality and
//! a sentence embedding, recalled by meaning for the controller's prompt.
//!
//! After "Training-Free Multimodal LLM Orchestration": the user's utterances,
//! the assistant's replies and the vision captions all go into one store; on
//! each turn the controller recalls the top-k items relevant to it and puts
//! them in the prompt ([`format_for_prompt`]) so the frozen LLM can answer from
//! memory ("where did I park?", "what was on the desk?").
//!
//! - [`MemoryStore`]: the SQLite database (one file for all users; WAL mode;
//!   a `schema_version` table; embeddings as little-endian f32 BLOBs). It is a
//!   cheap `Clone` handle over one connection behind a mutex, so the server
//!   opens it once and hands a clone to every session; [`MemoryStore::in_memory`]
//!   gives a private database for tests.
//! - [`Memory`]: one session's view. Memory is per user across sessions: on
//!   [`Memory::new`] it loads all of that user's items (every session) into
//!   RAM and searches them by brute-force cosine (about 0.25 ms over 1000
//!   items on 2 cores: a flat `n x 384` f32 matrix; embedding the query,
//!   ~10-15 ms, dominates a recall). [`Memory::remember`] embeds, persists
//!   and indexes; [`Memory::recall`] embeds the query and returns the best
//!   `k`. Items another session of the same user writes while this
//!   one runs become visible after [`Memory::refresh`].
//!
//! Ranking: [`Recalled::score`] is the plain cosine similarity. [`Memory::recall`]
//! orders by cosine plus a small recency bonus, at most [`RECENCY_BONUS`]
//! (0.02) for an item from `now` and halving every [`RECENCY_HALF_LIFE_MS`]
//! (30 min), so near-equal matches (e.g. the same fact said twice, or two
//! similar observations) come newest first, while a clearly better match
//! always wins. [`Memory::recall_embedding`] has no clock and orders by cosine
//! alone, ties newest first. Typical all-MiniLM-L6-v2 cosines (measured in
//! `tests/memory.rs`): the question about a fact scores 0.5-0.7 against it
//! ("what is my name?" / "My name is Ada." 0.55), paraphrases 0.7-0.8,
//! unrelated chatter -0.05-0.25. No threshold is applied: callers that want
//! one can drop hits below about 0.3.
//!
//! `Memory` is owned by one session's actor (it is `Send`; not shared).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::embed::Embedder;

/// The schema this code writes; a database with a higher version is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// Largest recency bonus added to the cosine for ranking (an item from now).
pub const RECENCY_BONUS: f32 = 0.02;

/// The recency bonus halves every this many ms of an item's age (30 min).
pub const RECENCY_HALF_LIFE_MS: f64 = 30.0 * 60.0 * 1000.0;

/// How long SQLite waits for another connection's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a remembered item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Something the user said.
    User,
    /// Something the assistant said.
    Assistant,
    /// Something the camera saw (a caption).
    Vision,
}

impl Modality {
    /// The lowercase name, as serde and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::User => "user",
            Modality::Assistant => "assistant",
            Modality::Vision => "vision",
        }
    }

    /// The verb phrase [`format_for_prompt`] uses ("user said", "you said",
    /// "seen"): the prompt is read by the assistant, hence "you".
    pub fn prompt_label(self) -> &'static str {
        match self {
            Modality::User => "user said",
            Modality::Assistant => "you said",
            Modality::Vision => "seen",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Modality {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Modality> {
        match s {
            "user" => Ok(Modality::User),
            "assistant" => Ok(Modality::Assistant),
            "vision" => Ok(Modality::Vision),
            other => bail!("unknown modality `{other}` (expected user, assistant or vision)"),
        }
    }
}

/// One remembered thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryItem {
    /// Row id in the database (increasing in insertion order).
    pub id: i64,
    pub user: String,
    pub session: String,
    /// When it was said or seen (Unix ms, the caller's clock).
    pub at_unix_ms: i64,
    pub modality: Modality,
    pub text: String,
}

/// A recalled item and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recalled {
    pub item: MemoryItem,
    /// Cosine similarity in [-1, 1] (the recency bonus is not included).
    pub score: f32,
}

struct StoreInner {
    conn: Connection,
    /// For messages: the file, or `:memory:`.
    path: PathBuf,
}

/// The memory database. A cheap `Clone` handle (`Send + Sync`) over one
/// SQLite connection behind a mutex; see the module docs.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreInner>>,
    path: PathBuf,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT    NOT NULL,
    session     TEXT    NOT NULL,
    at_unix_ms  INTEGER NOT NULL,
    modality    TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    -- little-endian f32 x dim, L2-normalised
    embedding   BLOB    NOT NULL,
    -- the embedding model, e.g. all-MiniLM-L6-v2
    model       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_items_user_id ON memory_items (user, id);
";

impl MemoryStore {
    /// Opens (creating if missing, with its parent folder) the database at
    /// `path`: WAL journal, schema created if missing, schema version checked.
    /// Errors name the file.
    pub fn open(path: &Path) -> Result<MemoryStore> {
        let what = || format!("memory database {}", path.display());
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: creating folder {}", what(), parent.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("{}: cannot open", what()))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .with_context(|| format!("{}: not a usable SQLite database", what()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "memory database is not in WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .with_context(what)?;
        Self::init(conn, path.to_path_buf()).with_context(what)
    }

    /// A fresh private database in RAM (gone when the last clone drops).
    pub fn in_memory() -> Result<MemoryStore> {
        let conn = Connection::open_in_memory().context("in-memory memory database")?;
        Self::init(conn, PathBuf::from(":memory:")).context("in-memory memory database")
    }

    fn init(conn: Connection, path: PathBuf) -> Result<MemoryStore> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        let version: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()?
            .flatten();
        match version {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v > SCHEMA_VERSION => bail!(
                "schema version {v} was written by a newer duplex (this one knows up to {SCHEMA_VERSION})"
            ),
            Some(_) => {}
        }
        Ok(MemoryStore {
            inner: Arc::new(Mutex::new(StoreInner {
                conn,
                path: path.clone(),
            })),
            path,
        })
    }

    /// The database file (`:memory:` for [`MemoryStore::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner> {
        // A panic elsewhere while holding the lock leaves the connection
        // usable (every write is one statement or one transaction).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of items of `user` (all sessions).
    pub fn count(&self, user: &str) -> Result<usize> {
        let inner = self.lock();
        let n: i64 = inner
            .conn
            .query_row(
                "SELECT COUNT(*) FROM memory_items WHERE user = ?1",
                [user],
                |r| r.get(0),
            )
            .with_context(|| format!("memory database {}", inner.path.display()))?;
        Ok(n as usize)
    }

    /// Deletes every item of `user` (e.g. on a "forget me" request); returns
    /// how many went. Open [`Memory`]s of that user keep their RAM copy.
    pub fn forget_user(&self, user: &str) -> Result<usize> {
        let inner = self.lock();
        inner
            .conn
            .execute("DELETE FROM memory_items WHERE user = ?1", [user])
            .with_context(|| format!("memory database {}", inner.path.display()))
    }

    /// Inserts rows in one transaction; returns their ids.
    fn insert(&self, rows: &[NewRow<'_>]) -> Result<Vec<i64>> {
        let mut inner = self.lock();
        let path = inner.path.clone();
        let what = || format!("memory database {}: writing", path.display());
        let tx = inner.conn.transaction().with_context(what)?;
        let mut ids = Vec::with_capacity(rows.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO memory_items (user, session, at_unix_ms, modality, text, embedding, model)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .with_context(what)?;
            for row in rows {
                stmt.execute(params![
                    row.user,
                    row.session,
                    row.at_unix_ms,
                    row.modality.as_str(),
                    row.text,
                    encode_embedding(row.embedding),
                    super::embed::MODEL_NAME,
                ])
                .with_context(what)?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().with_context(what)?;
        Ok(ids)
    }

    /// Items of `user` with id > `after_id`, in id order, with their vectors
    /// (each checked to be `dim` floats).
    fn load(&self, user: &str, after_id: i64, dim: usize) -> Result<Vec<(MemoryItem, Vec<f32>)>> {
        let inner = self.lock();
        let path = &inner.path;
        let what = || format!("memory database {}: reading", path.display());
        let mut stmt = inner
            .conn
            .prepare_cached(
                "SELECT id, session, at_unix_ms, modality, text, embedding FROM memory_items
                 WHERE user = ?1 AND id > ?2 ORDER BY id",
            )
            .with_context(what)?;
        let rows = stmt
            .query_map(params![user, after_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .with_context(what)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, session, at_unix_ms, modality, text, blob) = row.with_context(what)?;
            let bad = |detail: String| {
                anyhow!(
                    "memory database {}: item {id} is damaged: {detail}",
                    path.display()
                )
            };
            let modality = Modality::from_str(&modality).map_err(|e| bad(e.to_string()))?;
            let embedding = decode_embedding(&blob).map_err(bad)?;
            if embedding.len() != dim {
                return Err(bad(format!(
                    "embedding has {} floats, the embedder makes {dim}",
                    embedding.len()
                )));
            }
            out.push((
                MemoryItem {
                    id,
                    user: user.to_string(),
                    session,
                    at_unix_ms,
                    modality,
                    text,
                },
                embedding,
            ));
        }
        Ok(out)
    }
}

struct NewRow<'a> {
    user: &'a str,
    session: &'a str,
    at_unix_ms: i64,
    modality: Modality,
    text: &'a str,
    embedding: &'a [f32],
}

/// An embedding as a BLOB: little-endian f32s.
pub fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`encode_embedding`]; errors when the length is not a
/// multiple of 4.
pub fn decode_embedding(blob: &[u8]) -> std::result::Result<Vec<f32>, String> {
    if !blob.len().is_multiple_of(4) {
        return Err(format!(
            "embedding BLOB of {} bytes is not whole f32s",
            blob.len()
        ));
    }
    Ok(blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// One session's cross-modal memory of one user (see the module docs).
pub struct Memory {
    store: MemoryStore,
    embedder: Arc<Embedder>,
    user: String,
    session: String,
    items: Vec<MemoryItem>,
    /// `items.len() x dim`, row-major, unit vectors.
    vectors: Vec<f32>,
    dim: usize,
    last_id: i64,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("store", &self.store)
            .field("user", &self.user)
            .field("session", &self.session)
            .field("items", &self.items.len())
            .finish()
    }
}

impl Memory {
    /// The memory of `user` in `session`: loads all of the user's items (all
    /// sessions) from `store` into RAM.
    pub fn new(
        store: MemoryStore,
        embedder: Arc<Embedder>,
        user: &str,
        session: &str,
    ) -> Result<Memory> {
        let dim = embedder.dim();
        let mut memory = Memory {
            store,
            embedder,
            user: user.to_string(),
            session: session.to_string(),
            items: Vec::new(),
            vectors: Vec::new(),
            dim,
            last_id: 0,
        };
        memory.refresh()?;
        tracing::debug!(user, session, items = memory.items.len(), "memory loaded");
        Ok(memory)
    }

    /// Loads the items of this user that other sessions stored since this
    /// memory last looked; returns how many were new.
    pub fn refresh(&mut self) -> Result<usize> {
        let rows = self.store.load(&self.user, self.last_id, self.dim)?;
        let n = rows.len();
        for (item, vector) in rows {
            self.index(item, &vector);
        }
        Ok(n)
    }

    fn index(&mut self, item: MemoryItem, vector: &[f32]) {
        self.last_id = self.last_id.max(item.id);
        self.vectors.extend_from_slice(vector);
        self.items.push(item);
    }

    /// Remembers one thing said or seen at `at_unix_ms`: embeds, persists,
    /// indexes. Returns its id. Text is trimmed; empty text is an error.
    pub fn remember(&mut self, modality: Modality, text: &str, at_unix_ms: i64) -> Result<i64> {
        let ids = self.remember_many(&[(modality, text, at_unix_ms)])?;
        ids.into_iter()
            .next()
            .context("the memory database returned no id")
    }

    /// [`Memory::remember`] for many items: one embedding batch, one
    /// transaction. Returns the ids in order.
    pub fn remember_many(&mut self, items: &[(Modality, &str, i64)]) -> Result<Vec<i64>> {
        let texts: Vec<&str> = items.iter().map(|(_, t, _)| t.trim()).collect();
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            bail!("refusing to remember an empty text (item {i})");
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.embedder.embed(&texts)?;
        if vectors.len() != texts.len() || vectors.iter().any(|v| v.len() != self.dim) {
            bail!("the embedder returned vectors of the wrong shape");
        }
        let rows: Vec<NewRow<'_>> = items
            .iter()
            .zip(&texts)
            .zip(&vectors)
            .map(|(((modality, _, at), text), v)| NewRow {
                user: &self.user,
                session: &self.session,
                at_unix_ms: *at,
                modality: *modality,
                text,
                embedding: v,
            })
            .collect();
        let ids = self.store.insert(&rows)?;
        drop(rows);
        for (((modality, _, at), text), (v, &id)) in
            items.iter().zip(&texts).zip(vectors.iter().zip(&ids))
        {
            let item = MemoryItem {
                id,
                user: self.user.clone(),
                session: self.session.clone(),
                at_unix_ms: *at,
                modality: *modality,
                text: text.to_string(),
            };
            self.index(item, v);
        }
        Ok(ids)
    }

    /// The `k` items most relevant to `query` (cosine, descending, with the
    /// small recency bonus of the module docs relative to `now_unix_ms`).
    pub fn recall(&self, query: &str, k: usize, now_unix_ms: i64) -> Result<Vec<Recalled>> {
        if k == 0 || self.items.is_empty() {
            return Ok(Vec::new());
        }
        let q = self.embedder.embed_one(query)?;
        self.rank(&q, k, Some(now_unix_ms))
    }

    /// The `k` items nearest to an embedding of [`Embedder::dim`] floats
    /// (cosine descending, exact ties newest first). `query` need not be
    /// normalised.
    pub fn recall_embedding(&self, query: &[f32], k: usize) -> Result<Vec<Recalled>> {
        self.rank(query, k, None)
    }

    fn rank(&self, query: &[f32], k: usize, now: Option<i64>) -> Result<Vec<Recalled>> {
        if query.len() != self.dim {
            bail!(
                "query embedding has {} floats, the memory holds {}-d vectors",
                query.len(),
                self.dim
            );
        }
        let n = self.items.len();
        if k == 0 || n == 0 {
            return Ok(Vec::new());
        }
        let qnorm = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !qnorm.is_finite() || qnorm == 0.0 {
            bail!("query embedding is zero or not finite");
        }
        // (rank key, cosine, index)
        let mut scored: Vec<(f32, f32, usize)> = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, v)| {
                let cos = v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>() / qnorm;
                let bonus = match now {
                    Some(now) => recency_bonus(now - self.items[i].at_unix_ms),
                    None => 0.0,
                };
                (cos + bonus, cos, i)
            })
            .collect();
        let by_rank = |a: &(f32, f32, usize), b: &(f32, f32, usize)| {
            b.0.total_cmp(&a.0)
                .then_with(|| self.items[b.2].at_unix_ms.cmp(&self.items[a.2].at_unix_ms))
                .then_with(|| self.items[b.2].id.cmp(&self.items[a.2].id))
        };
        let k = k.min(n);
        if k < n {
            scored.select_nth_unstable_by(k - 1, by_rank);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_rank);
        Ok(scored
            .into_iter()
            .map(|(_, score, i)| Recalled {
                item: self.items[i].clone(),
                score,
            })
            .collect())
    }

    /// Number of items held (this user, all sessions).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All items held, oldest (by id) first.
    pub fn items(&self) -> &[MemoryItem] {
        &self.items
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// The store this memory writes to.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// The shared embedder (e.g. to embed a query once for several uses).
    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }
}

/// The ranking bonus for an item `age_ms` old (future items count as now).
fn recency_bonus(age_ms: i64) -> f32 {
    let age = age_ms.max(0) as f64;
    (RECENCY_BONUS as f64 * (-age / RECENCY_HALF_LIFE_MS * std::f64::consts::LN_2).exp()) as f32
}

/// How long ago `at_unix_ms` was, in words: "just now" (under a minute, or in
/// the future), "5 min ago", "3 h ago", "yesterday", "4 days ago".
pub fn relative_time(at_unix_ms: i64, now_unix_ms: i64) -> String {
    let secs = now_unix_ms.saturating_sub(at_unix_ms) / 1000;
    let mins = secs / 60;
    let hours = mins / 60;
    let days = hours / 24;
    if mins < 1 {
        "just now".to_string()
    } else if hours < 1 {
        format!("{mins} min ago")
    } else if days < 1 {
        format!("{hours} h ago")
    } else if days == 1 {
        "yesterday".to_string()
    } else {
        format!("{days} days ago")
    }
}

/// Recalled items as compact prompt lines, in the order given, e.g.
///
/// ```text
/// - (5 min ago, user said) I parked on level 3
/// - (just now, seen) a cat on the desk
/// ```
///
/// Whitespace in a text (newlines included) collapses to single spaces so
/// each item is one line. Empty input gives an empty string.
pub fn format_for_prompt(items: &[Recalled], now_unix_ms: i64) -> String {
    let mut out = String::new();
    for r in items {
        let text = r.item.text.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "- ({}, {}) {}\n",
            relative_time(r.item.at_unix_ms, now_unix_ms),
            r.item.modality.prompt_label(),
            text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, at: i64, modality: Modality, text: &str) -> MemoryItem {
        MemoryItem {
            id,
            user: "u".into(),
            session: "s".into(),
            at_unix_ms: at,
            modality,
            text: text.into(),
        }
    }

    #[test]
    fn thread_safety() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Memory>();
        send_sync::<MemoryStore>();
    }

    #[test]
    fn modality_serde_is_lowercase() -> Result<()> {
        assert_eq!(serde_json::to_string(&Modality::Vision)?, "\"vision\"");
        assert_eq!(
            serde_json::from_str::<Modality>("\"assistant\"")?,
            Modality::Assistant
        );
        for m in [Modality::User, Modality::Assistant, Modality::Vision] {
            assert_eq!(m.as_str().parse::<Modality>()?, m);
        }
        assert!("robot".parse::<Modality>().is_err());
        Ok(())
    }

    #[test]
    fn embedding_blob_round_trip() {
        let v = vec![0.5f32, -1.25, 3.0e-8, f32::MAX];
        let blob = encode_embedding(&v);
        assert_eq!(blob.len(), 16);
        assert_eq!(&blob[..4], &0.5f32.to_le_bytes());
        assert_eq!(decode_embedding(&blob), Ok(v));
        assert!(decode_embedding(&[0, 1, 2]).is_err());
    }

    #[test]
    fn relative_times() {
        let now = 1_700_000_000_000;
        assert_eq!(relative_time(now, now), "just now");
        assert_eq!(relative_time(now + 5_000, now), "just now");
        assert_eq!(relative_time(now - 59_000, now), "just now");
        assert_eq!(relative_time(now - 5 * 60_000, now), "5 min ago");
        assert_eq!(relative_time(now - 3 * 3_600_000 - 1, now), "3 h ago");
        assert_eq!(relative_time(now - 30 * 3_600_000, now), "yesterday");
        assert_eq!(relative_time(now - 4 * 86_400_000, now), "4 days ago");
    }

    #[test]
    fn prompt_format() {
        let now = 1_700_000_000_000;
        let items = vec![
            Recalled {
                item: item(1, now - 5 * 60_000, Modality::User, "I parked\non level 3 "),
                score: 0.7,
            },
            Recalled {
                item: item(2, now, Modality::Vision, "a cat on the desk"),
                score: 0.5,
            },
            Recalled {
                item: item(3, now - 2 * 86_400_000, Modality::Assistant, "Hello Ada."),
                score: 0.1,
            },
        ];
        assert_eq!(
            format_for_prompt(&items, now),
            "- (5 min ago, user said) I parked on level 3\n\
             - (just now, seen) a cat on the desk\n\
             - (2 days ago, you said) Hello Ada.\n"
        );
        assert_eq!(format_for_prompt(&[], now), "");
    }

    #[test]
    fn recency_bonus_is_small_and_decays() {
        assert!((recency_bonus(0) - RECENCY_BONUS).abs() < 1e-7);
        assert!((recency_bonus(-10_000) - RECENCY_BONUS).abs() < 1e-7);
        let half = recency_bonus(RECENCY_HALF_LIFE_MS as i64);
        assert!((half - RECENCY_BONUS / 2.0).abs() < 1e-6, "{half}");
        assert!(recency_bonus(86_400_000) < 1e-6);
    }

    #[test]
    fn store_round_trip_and_schema() -> Result<()> {
        let store = MemoryStore::in_memory()?;
        let v1 = vec![1.0f32, 0.0, 0.0];
        let v2 = vec![0.0f32, 1.0, 0.0];
        let ids = store.insert(&[
            NewRow {
                user: "ada",
                session: "s1",
                at_unix_ms: 10,
                modality: Modality::User,
                text: "hello",
                embedding: &v1,
            },
            NewRow {
                user: "bob",
                session: "s2",
                at_unix_ms: 20,
                modality: Modality::Vision,
                text: "a mug",
                embedding: &v2,
            },
        ])?;
        assert_eq!(ids.len(), 2);
        assert!(ids[1] > ids[0]);
        let ada = store.load("ada", 0, 3)?;
        assert_eq!(ada.len(), 1);
        assert_eq!(ada[0].0.text, "hello");
        assert_eq!(ada[0].0.session, "s1");
        assert_eq!(ada[0].1, v1);
        assert!(store.load("ada", ids[0], 3)?.is_empty());
        assert_eq!(store.count("bob")?, 1);
        let err = store.load("bob", 0, 384).err().map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("damaged")));
        assert_eq!(store.forget_user("bob")?, 1);
        assert_eq!(store.count("bob")?, 0);
        Ok(())
    }

    #[test]
    fn open_file_wal_and_version_checks() -> Result<()> {
        let dir = std::env::temp_dir().join(format!(
            "duplex-memory-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("memory.sqlite");
        {
            let store = MemoryStore::open(&path)?;
            let inner = store.lock();
            let mode: String = inner
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            assert_eq!(mode.to_lowercase(), "wal");
            inner
                .conn
                .execute("INSERT INTO schema_version (version) VALUES (99)", [])?;
        }
        let err = MemoryStore::open(&path).err().map(|e| format!("{e:#}"));
        let err = err.unwrap_or_default();
        assert!(err.contains("newer duplex"), "{err}");
        assert!(err.contains("memory.sqlite"), "{err}");

        // Not a database: the error names the file.
        let junk = dir.join("junk.sqlite");
        std::fs::write(&junk, vec![b'x'; 4096])?;
        let err = MemoryStore::open(&junk).err().map(|e| format!("{e:#}"));
        let err = err.unwrap_or_default();
        assert!(err.contains("junk.sqlite"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
