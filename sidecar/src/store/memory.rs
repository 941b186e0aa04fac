//! The embedded driver: one process, nothing shared, for trying the product and for tests.
//! Expired entries are invisible at once and swept in the background.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{StoreError, StoreResult, StoreSettings, MAX_SESSION_KEYS};
use crate::model::{
    Condition, Fields, Identifier, Patch, RotateSource, Rotation, Session, Sid, Written,
};

enum Slot {
    Live {
        version: u64,
        fields: Fields,
        /// Set by a soft rotation: the sid the session moved to.
        next: Option<String>,
    },
    Tombstone,
}

struct Entry {
    slot: Slot,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    by_identifier: HashMap<String, HashSet<String>>,
}

enum State {
    Missing,
    Live(u64),
    Tombstone,
}

impl Inner {
    fn state(&self, sid: &str, now: Instant) -> State {
        match self.sessions.get(sid) {
            Some(e) if e.expires > now => match e.slot {
                Slot::Live { version, .. } => State::Live(version),
                Slot::Tombstone => State::Tombstone,
            },
            _ => State::Missing,
        }
    }

    fn live_mut(
        &mut self,
        sid: &str,
        now: Instant,
    ) -> Option<(&mut u64, &mut Fields, &mut Instant)> {
        match self.sessions.get_mut(sid) {
            Some(Entry {
                slot: Slot::Live {
                    version, fields, ..
                },
                expires,
            }) if *expires > now => Some((version, fields, expires)),
            _ => None,
        }
    }

    fn insert_live(&mut self, sid: &Sid, version: u64, fields: Fields, expires: Instant) {
        if let Some(ident) = sid.identifier() {
            self.by_identifier
                .entry(ident.to_owned())
                .or_default()
                .insert(sid.as_str().to_owned());
        }
        self.sessions.insert(
            sid.as_str().to_owned(),
            Entry {
                slot: Slot::Live {
                    version,
                    fields,
                    next: None,
                },
                expires,
            },
        );
    }

    /// The sid a soft rotation moved this live session to, if any.
    fn next_sid(&self, sid: &str, now: Instant) -> Option<String> {
        match self.sessions.get(sid) {
            Some(Entry {
                slot: Slot::Live { next, .. },
                expires,
            }) if *expires > now => next.clone(),
            _ => None,
        }
    }

    fn tombstone(&mut self, sid: &str, until: Instant, now: Instant) -> bool {
        let was_live = matches!(self.state(sid, now), State::Live(_));
        self.sessions.insert(
            sid.to_owned(),
            Entry {
                slot: Slot::Tombstone,
                expires: until,
            },
        );
        if let Ok(parsed) = Sid::parse(sid) {
            if let Some(ident) = parsed.identifier() {
                if let Some(set) = self.by_identifier.get_mut(ident) {
                    set.remove(sid);
                    if set.is_empty() {
                        self.by_identifier.remove(ident);
                    }
                }
            }
        }
        was_live
    }

    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, e| e.expires > now);
        let sessions = &self.sessions;
        self.by_identifier.retain(|_, sids| {
            sids.retain(|s| sessions.contains_key(s));
            !sids.is_empty()
        });
    }
}

/// Refuses a patch that would leave more than [`MAX_SESSION_KEYS`] keys.
fn check_keys(fields: &Fields, patch: &Patch) -> StoreResult<()> {
    if fields.len() + patch.set.len() <= MAX_SESSION_KEYS {
        return Ok(());
    }
    let added = patch
        .set
        .keys()
        .filter(|k| !fields.contains_key(*k))
        .count();
    let removed = patch
        .remove
        .iter()
        .filter(|k| fields.contains_key(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let would = fields.len() + added - removed;
    if would > MAX_SESSION_KEYS {
        return Err(StoreError::TooManyKeys {
            would: would as u64,
        });
    }
    Ok(())
}

#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    settings: StoreSettings,
}

impl MemoryStore {
    /// Creates the store and its sweeper, which ends when the store is dropped.
    pub fn new(settings: StoreSettings) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => inner.lock().sweep(Instant::now()),
                    None => break,
                }
            }
        });
        MemoryStore { inner, settings }
    }

    pub async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    pub async fn get(&self, sid: &Sid) -> StoreResult<Option<Session>> {
        let now = Instant::now();
        let inner = self.inner.lock();
        Ok(match inner.sessions.get(sid.as_str()) {
            Some(Entry {
                slot: Slot::Live {
                    version, fields, ..
                },
                expires,
            }) if *expires > now => Some(Session {
                version: *version,
                fields: fields.clone(),
                ttl: *expires - now,
            }),
            _ => None,
        })
    }

    pub async fn put(
        &self,
        sid: &Sid,
        fields: Fields,
        ttl: Duration,
        cond: Condition,
    ) -> StoreResult<Written> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let current = match inner.state(sid.as_str(), now) {
            State::Tombstone => return Err(StoreError::Gone),
            State::Live(v) => Some(v),
            State::Missing => None,
        };
        match (cond, current) {
            (Condition::CreateOnly, Some(v)) => {
                return Err(StoreError::Precondition { current: Some(v) })
            }
            (Condition::IfMatch(want), cur) if cur != Some(want) => {
                return Err(StoreError::Precondition { current: cur })
            }
            _ => {}
        }
        let version = current.map_or(1, |v| v + 1);
        inner.insert_live(sid, version, fields, now + ttl);
        Ok(Written {
            version,
            created: current.is_none(),
        })
    }

    pub async fn patch(
        &self,
        sid: &Sid,
        patch: Patch,
        ttl: Duration,
        if_match: Option<u64>,
    ) -> StoreResult<u64> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.state(sid.as_str(), now) {
            State::Tombstone => return Err(StoreError::Gone),
            State::Missing => return Err(StoreError::NotFound),
            State::Live(v) if if_match.is_some_and(|want| want != v) => {
                return Err(StoreError::Precondition { current: Some(v) })
            }
            State::Live(_) => {}
        }
        let (version, fields, expires) = inner
            .live_mut(sid.as_str(), now)
            .ok_or(StoreError::NotFound)?;
        let conflicts = patch.conflicts(fields);
        if !conflicts.is_empty() {
            return Err(StoreError::Conflict {
                keys: conflicts,
                current: *version,
            });
        }
        check_keys(fields, &patch)?;
        if patch.apply(fields) {
            *version += 1;
        }
        *expires = now + ttl;
        Ok(*version)
    }

    pub async fn delete(&self, sid: &Sid, if_match: Option<u64>) -> StoreResult<bool> {
        let now = Instant::now();
        let until = now + self.settings.tombstone_ttl;
        let mut inner = self.inner.lock();
        if let Some(want) = if_match {
            match inner.state(sid.as_str(), now) {
                State::Tombstone => return Err(StoreError::Gone),
                State::Missing => return Err(StoreError::Precondition { current: None }),
                State::Live(v) if v != want => {
                    return Err(StoreError::Precondition { current: Some(v) })
                }
                State::Live(_) => {}
            }
        }
        Ok(inner.tombstone(sid.as_str(), until, now))
    }

    pub async fn rotate(
        &self,
        old: &Sid,
        rotation: Rotation,
        if_match: Option<u64>,
    ) -> StoreResult<Written> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let old_state = inner.state(old.as_str(), now);
        match (&old_state, if_match) {
            (State::Tombstone, _) => return Err(StoreError::Gone),
            _ if rotation.keep_old.is_some() => {
                if let Some(new_sid) = inner.next_sid(old.as_str(), now) {
                    return Err(StoreError::AlreadyRotated { new_sid });
                }
            }
            _ => {}
        }
        match (&old_state, if_match) {
            (State::Missing, Some(_)) => return Err(StoreError::Precondition { current: None }),
            (State::Live(v), Some(want)) if *v != want => {
                return Err(StoreError::Precondition { current: Some(*v) })
            }
            _ => {}
        }
        match inner.state(rotation.new_sid.as_str(), now) {
            State::Missing => {}
            State::Live(v) => return Err(StoreError::Precondition { current: Some(v) }),
            State::Tombstone => return Err(StoreError::Precondition { current: None }),
        }
        let fields = match &rotation.source {
            RotateSource::Given(fields) => fields.clone(),
            RotateSource::Stored(patch) => {
                let (_, stored, _) = inner
                    .live_mut(old.as_str(), now)
                    .ok_or(StoreError::NotFound)?;
                check_keys(stored, patch)?;
                let mut fields = stored.clone();
                patch.apply(&mut fields);
                fields
            }
        };
        inner.insert_live(&rotation.new_sid, 1, fields, now + rotation.ttl);
        let old_entry = inner.sessions.get_mut(old.as_str());
        match (&rotation.keep_old, old_entry) {
            (
                Some(keep),
                Some(Entry {
                    slot:
                        Slot::Live {
                            version,
                            fields,
                            next,
                        },
                    expires,
                }),
            ) if *expires > now => {
                let keep_patch = Patch {
                    set: keep.set.clone(),
                    ..Patch::default()
                };
                if keep_patch.apply(fields) {
                    *version += 1;
                }
                *expires = now + keep.ttl;
                *next = Some(rotation.new_sid.as_str().to_owned());
            }
            (Some(_), _) => {}
            (None, _) => {
                inner.tombstone(old.as_str(), now + self.settings.tombstone_ttl, now);
            }
        }
        Ok(Written {
            version: 1,
            created: true,
        })
    }

    pub async fn delete_identifiers(&self, ids: &[Identifier]) -> StoreResult<u64> {
        let now = Instant::now();
        let until = now + self.settings.tombstone_ttl;
        let mut inner = self.inner.lock();
        let mut deleted = 0;
        for id in ids {
            let sids: Vec<String> = inner
                .by_identifier
                .get(id.as_str())
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for sid in sids {
                if inner.tombstone(&sid, until, now) {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    pub async fn missing_identifiers(&self, ids: &[Identifier]) -> StoreResult<Vec<Identifier>> {
        let now = Instant::now();
        let inner = self.inner.lock();
        Ok(ids
            .iter()
            .filter(|id| {
                !inner.by_identifier.get(id.as_str()).is_some_and(|sids| {
                    sids.iter()
                        .any(|s| matches!(inner.state(s, now), State::Live(_)))
                })
            })
            .cloned()
            .collect())
    }
}
