//! The answer cache: keyed by (name, type, class), O(1) lookup, insert and eviction, least
//! recently used entries evicted first (approximately: second chance, see [`Cache::insert`]).
//!
//! This is the part dnsmasq gets wrong at scale (every insert into a full cache scans the table;
//! 81 QPS at 100 000 entries): here an insert into a full cache drops an old entry in constant
//! time. Entries outlive their TTL by `stale_max` so they can be served stale
//! when every upstream fails (RFC 8767); nothing here talks to the network, and time is passed in.
//!
//! Bounded twice: in entries and in estimated bytes ([`entry_cost`]), because a zone an attacker
//! controls can answer with 64 KiB per name — 100 000 such entries would be 6 GiB. Answers above
//! a per-entry cap are served but never cached.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

pub use crate::wire::Encoded;

/// Cache key: the question in wire form, lower-cased, plus the DO flag
/// ([`crate::wire::key_bytes`]). Kept as bytes so the UDP fast path looks entries up with a
/// key built on the stack from the datagram, without allocating. Keys of up to
/// [`INLINE_KEY`] bytes (names of up to about 40 characters) are held inside the map's node,
/// so comparing one on a hit reads memory the lookup already fetched; longer ones live in a
/// heap block of their own. Hash and equality are those of the bytes (as `[u8]`'s), so a
/// `&[u8]` finds its key whichever way it is held.
#[derive(Clone)]
pub struct Key(KeyBytes);

/// Longest key held inline (the enum is then 48 bytes: tag, length, bytes).
pub const INLINE_KEY: usize = 46;

#[derive(Clone)]
enum KeyBytes {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    /// The key for a question; `name` in any case.
    pub fn new(name: &Name, qtype: RecordType, qclass: DNSClass, dnssec_ok: bool) -> Self {
        Self::from_bytes(&crate::wire::key_bytes(name, qtype, qclass, dnssec_ok))
    }

    /// A key holding `b` (inline when short enough).
    pub fn from_bytes(b: &[u8]) -> Self {
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_KEY => {
                let mut bytes = [0u8; INLINE_KEY];
                bytes[..b.len()].copy_from_slice(b);
                Self(KeyBytes::Inline { len, bytes })
            }
            _ => Self(KeyBytes::Heap(b.into())),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyBytes::Heap(b) => b,
        }
    }

    /// Whether the bytes live in a heap block of their own (for the byte estimate).
    fn on_heap(&self) -> bool {
        matches!(self.0, KeyBytes::Heap(_))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// An upstream answer as records (OPT and TSIG removed): what [`TtlPolicy`] and the rebind
/// filter work on before it is encoded into an [`Encoded`] entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// TTL policy applied when an answer enters the cache.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub negative_max: u32,
}

impl TtlPolicy {
    /// Clamps record TTLs in place and returns how long the answer may be cached, or `None` when
    /// it must not be (SERVFAIL & co., negative answers without SOA, TTL 0).
    pub fn apply(&self, a: &mut Answer) -> Option<u32> {
        let ttl = match a.rcode {
            ResponseCode::NoError if !a.answers.is_empty() => {
                for r in a
                    .answers
                    .iter_mut()
                    .chain(a.authorities.iter_mut())
                    .chain(a.additionals.iter_mut())
                {
                    r.ttl = r.ttl.clamp(self.min_ttl, self.max_ttl);
                }
                a.answers.iter().map(|r| r.ttl).min()?
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308: negative TTL = min(SOA TTL, SOA MINIMUM).
                let soa = a.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                    _ => None,
                })?;
                let ttl = soa.min(self.negative_max);
                for r in a.authorities.iter_mut() {
                    r.ttl = r.ttl.min(ttl);
                }
                ttl
            }
            _ => return None,
        };
        (ttl > 0).then_some(ttl)
    }
}

#[derive(Debug)]
struct Entry {
    /// Held in the entry itself, not behind an `Arc`: a hit follows one pointer less.
    answer: Encoded,
    stored: Instant,
    ttl: u32,
    /// What this entry is charged against the byte budget (see [`entry_cost`]).
    cost: usize,
    /// Read since it last reached the front of the eviction order (see [`Cache::insert`]).
    used: bool,
}

/// Result of a lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Within TTL: the answer and the seconds since it was stored (to count TTLs down).
    Fresh(Encoded, u32),
    /// Expired but within the stale window.
    Stale(Encoded),
    Miss,
}

#[derive(Debug)]
struct Inner {
    /// Entries in eviction order, oldest first: insertion order, with a second chance for
    /// those read since (see [`Cache::insert`]).
    lru: LinkedHashMap<Key, Entry>,
    bytes: usize,
}

/// Default byte budget: 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// Default per-entry cap: answers estimated above 16 KiB are served but not cached.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 16 << 10;

/// Bookkeeping per entry besides what it holds on the heap: the key's and the entry's structs
/// (the [`Encoded`], with a small answer's bytes, is inside the entry; a short key's bytes are
/// inside the key), the map's node and table slot (hashlink: two links, the hash, the slot) and
/// the allocator's rounding of up to three heap blocks (the node, a long key's, a large
/// answer's).
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Key>()
    + std::mem::size_of::<Entry>()
    + 2 * std::mem::size_of::<usize>()
    + 4 * std::mem::size_of::<usize>()
    + 3 * 16;

/// How many entries read since they last reached the front one insert may pass over (each
/// moves to the back, its mark cleared) before it evicts the front entry anyway: eviction
/// stays O(1) per insert even when every entry was read.
const SECOND_CHANCES: usize = 8;

/// What an entry costs: [`ENTRY_OVERHEAD`] plus a long key's bytes and a large answer's wire form and TTL
/// index (what its heap parts hold).
pub fn entry_cost(key: &Key, a: &Encoded) -> usize {
    let key_heap = if key.on_heap() {
        key.as_bytes().len()
    } else {
        0
    };
    ENTRY_OVERHEAD + key_heap + a.heap_bytes()
}

/// The answer cache, bounded in entries and in (estimated) bytes.
#[derive(Debug)]
pub struct Cache {
    inner: Option<Mutex<Inner>>,
    capacity: usize,
    max_bytes: usize,
    max_entry_bytes: usize,
    stale_max: Duration,
    evictions: AtomicU64,
    oversized: AtomicU64,
    generation: AtomicU64,
}

impl Cache {
    /// `capacity == 0` disables caching. Byte limits are the defaults
    /// ([`DEFAULT_MAX_BYTES`], [`DEFAULT_MAX_ENTRY_BYTES`]); see [`Self::with_byte_limits`].
    pub fn new(capacity: usize, stale_max: Duration) -> Self {
        Self {
            inner: (capacity > 0).then(|| {
                Mutex::new(Inner {
                    lru: LinkedHashMap::new(),
                    bytes: 0,
                })
            }),
            capacity,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            stale_max,
            evictions: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Bounds the estimated bytes of all entries (`max_bytes`) and of one entry
    /// (`max_entry_bytes`; larger answers are not cached). 0 disables caching.
    pub fn with_byte_limits(mut self, max_bytes: usize, max_entry_bytes: usize) -> Self {
        if max_bytes == 0 || max_entry_bytes == 0 {
            self.inner = None;
        }
        self.max_bytes = max_bytes;
        self.max_entry_bytes = max_entry_bytes.min(max_bytes);
        self
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        let m = self.inner.as_ref()?;
        Some(match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        })
    }

    /// Looks `key` up; an entry past its stale window is dropped.
    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        let (answer, stored, ttl) = {
            let Some(mut inner) = self.lock() else {
                return Lookup::Miss;
            };
            let Some(e) = inner.lru.get_mut(key) else {
                return Lookup::Miss;
            };
            e.used = true;
            (e.answer.clone(), e.stored, e.ttl)
        };
        let age = now.saturating_duration_since(stored);
        let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        if elapsed < ttl {
            return Lookup::Fresh(answer, elapsed);
        }
        if age < Duration::from_secs(u64::from(ttl)) + self.stale_max {
            return Lookup::Stale(answer);
        }
        if let Some(mut inner) = self.lock()
            && let Some(e) = inner.lru.remove(key)
        {
            inner.bytes -= e.cost;
        }
        Lookup::Miss
    }

    /// The fast path's lookup: calls `f` with a fresh entry and its age in seconds while the
    /// cache is locked (so the hit copies bytes out without touching a reference count);
    /// `None` when there is no fresh entry (the general path then deals with stale and missing
    /// ones). A read marks the entry instead of moving it in the eviction order (see
    /// [`Self::insert`]): the moves wrote to three other entries' links per hit, cache lines
    /// the hit had no other reason to touch.
    pub fn with_fresh<R>(
        &self,
        key: &[u8],
        now: Instant,
        f: impl FnOnce(&Encoded, u32) -> R,
    ) -> Option<R> {
        let mut inner = self.lock()?;
        let e = inner.lru.get_mut(key)?;
        if !e.used {
            e.used = true;
        }
        let elapsed = u32::try_from(now.saturating_duration_since(e.stored).as_secs()).ok()?;
        (elapsed < e.ttl).then(|| f(&e.answer, elapsed))
    }

    /// The generation [`Self::insert`] compares against: take it before asking upstream.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops every entry (the blocklist changed: names cached before must be decided again).
    /// Answers still in flight from before are not stored when they arrive.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(mut inner) = self.lock() {
            inner.lru.clear();
            inner.bytes = 0;
        }
    }

    /// Stores an answer for `ttl` seconds (see [`TtlPolicy::apply`]), evicting entries until
    /// both the entry count and the byte budget hold. An answer above the per-entry cap is not
    /// stored (and drops an older entry for the same key); nor is one asked for before the last
    /// [`Self::clear`] (`generation` older than the cache's).
    ///
    /// Eviction is second-chance (CLOCK) over insertion order, an approximation of least
    /// recently used: the oldest entry goes, unless it was read since it was stored or last
    /// given a chance — then it moves to the back unmarked and the next oldest is considered,
    /// at most [`SECOND_CHANCES`] times per insert. An entry read between two passes survives
    /// as under LRU; reads cost no writes to the order.
    pub fn insert(&self, key: Key, answer: Encoded, ttl: u32, now: Instant, generation: u64) {
        let cost = entry_cost(&key, &answer);
        let Some(mut inner) = self.lock() else {
            return;
        };
        if generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        if let Some(old) = inner.lru.remove(&key) {
            inner.bytes -= old.cost;
        }
        if cost > self.max_entry_bytes {
            self.oversized.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut chances = SECOND_CHANCES;
        while inner.lru.len() >= self.capacity || inner.bytes + cost > self.max_bytes {
            let Some((k, mut e)) = inner.lru.pop_front() else {
                break;
            };
            if e.used && chances > 0 {
                chances -= 1;
                e.used = false;
                inner.lru.insert(k, e);
                continue;
            }
            inner.bytes -= e.cost;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        inner.bytes += cost;
        inner.lru.insert(
            key,
            Entry {
                answer,
                stored: now,
                ttl,
                cost,
                used: false,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.lock().map_or(0, |i| i.lru.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (the sum of [`entry_cost`] over entries).
    pub fn bytes(&self) -> usize {
        self.lock().map_or(0, |i| i.bytes)
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Answers not cached because they were above the per-entry cap.
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};

    fn key(s: &str) -> Key {
        Key::new(
            &Name::from_ascii(s).unwrap(),
            RecordType::A,
            DNSClass::IN,
            false,
        )
    }

    fn enc(a: Answer) -> Encoded {
        let n = Name::from_ascii("a.example.").unwrap();
        Encoded::build(&n, RecordType::A, DNSClass::IN, &a).unwrap()
    }

    fn cost(k: &Key, a: &Answer) -> usize {
        entry_cost(k, &enc(a.clone()))
    }

    fn a_answer(ttl: u32) -> Answer {
        let n = Name::from_ascii("a.example.").unwrap();
        Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                n,
                ttl,
                RData::A(A("192.0.2.1".parse().unwrap())),
            )],
            authorities: vec![],
            additionals: vec![],
        }
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 2, 3, 4, minimum)),
        )
    }

    const P: TtlPolicy = TtlPolicy {
        min_ttl: 10,
        max_ttl: 100,
        negative_max: 50,
    };

    #[test]
    fn ttl_clamps_and_negative_from_soa() {
        let mut a = a_answer(5);
        assert_eq!(P.apply(&mut a), Some(10));
        let mut a = a_answer(1000);
        assert_eq!(P.apply(&mut a), Some(100));
        assert_eq!(a.answers[0].ttl, 100);
        let mut nx = Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![soa(300, 20)],
            additionals: vec![],
        };
        assert_eq!(P.apply(&mut nx), Some(20));
        let mut nx = Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![soa(300, 900)],
            additionals: vec![],
        };
        assert_eq!(P.apply(&mut nx), Some(50));
        let mut nosoa = Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
        };
        assert_eq!(P.apply(&mut nosoa), None);
        let mut sf = Answer {
            rcode: ResponseCode::ServFail,
            ..nosoa
        };
        assert_eq!(P.apply(&mut sf), None);
        let zero = TtlPolicy {
            min_ttl: 0,
            max_ttl: 100,
            negative_max: 50,
        };
        assert_eq!(zero.apply(&mut a_answer(0)), None);
    }

    #[test]
    fn fresh_counts_down_then_stale_then_gone() {
        let c = Cache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        c.insert(key("a.example."), enc(a_answer(30)), 30, t0, 0);
        match c.lookup(key("A.EXAMPLE.").as_bytes(), t0 + Duration::from_secs(12)) {
            Lookup::Fresh(a, el) => assert_eq!(a.answer(el, None).unwrap().answers[0].ttl, 18),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.lookup(key("a.example.").as_bytes(), t0 + Duration::from_secs(31)),
            Lookup::Stale(_)
        ));
        assert_eq!(
            c.lookup(key("a.example.").as_bytes(), t0 + Duration::from_secs(91)),
            Lookup::Miss
        );
        assert!(c.is_empty());
    }

    #[test]
    fn lru_evicts_least_recently_used_in_constant_time() {
        let c = Cache::new(3, Duration::ZERO);
        let t0 = Instant::now();
        for s in ["a.", "b.", "c."] {
            c.insert(key(s), enc(a_answer(60)), 60, t0, 0);
        }
        assert!(matches!(
            c.lookup(key("a.").as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        c.insert(key("d."), enc(a_answer(60)), 60, t0, 0);
        assert_eq!(c.lookup(key("b.").as_bytes(), t0), Lookup::Miss);
        assert!(matches!(
            c.lookup(key("a.").as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        assert_eq!(c.evictions(), 1);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn short_and_long_keys_find_their_entries_by_bytes() {
        let c = Cache::new(10, Duration::ZERO);
        let t0 = Instant::now();
        let short = "a.example.";
        let long = format!("{}.example.", "x".repeat(60));
        for n in [short, long.as_str()] {
            let k = key(n);
            let bytes = k.as_bytes().to_vec();
            assert_eq!(k.on_heap(), bytes.len() > INLINE_KEY, "{n}");
            assert_eq!(Key::from_bytes(&bytes), k);
            c.insert(k, enc(a_answer(60)), 60, t0, 0);
            // Looked up by the bytes alone (the fast path's stack key), any case.
            assert!(matches!(c.lookup(&bytes, t0), Lookup::Fresh(..)), "{n}");
            let upper = key(&n.to_uppercase());
            assert_eq!(
                c.with_fresh(upper.as_bytes(), t0, |_, el| el),
                Some(0),
                "{n}"
            );
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn read_entries_get_a_second_chance_and_eviction_stays_bounded() {
        let c = Cache::new(20, Duration::ZERO);
        let t0 = Instant::now();
        let name = |i: usize| format!("n{i}.");
        for i in 0..20 {
            c.insert(key(&name(i)), enc(a_answer(60)), 60, t0, 0);
        }
        // Every entry read (the fast path's lookup marks them too): the next insert moves the
        // eight oldest to the back, unmarked, and evicts the ninth although it was read.
        for i in 0..20 {
            assert_eq!(
                c.with_fresh(key(&name(i)).as_bytes(), t0, |_, el| el),
                Some(0)
            );
        }
        c.insert(key("new."), enc(a_answer(60)), 60, t0, 0);
        assert_eq!((c.len(), c.evictions()), (20, 1));
        assert_eq!(
            c.lookup(key(&name(SECOND_CHANCES)).as_bytes(), t0),
            Lookup::Miss
        );
        // Order now: 9..=19 (read), 0..=7 (passed over, unmarked), new. Read 1 again.
        assert!(matches!(
            c.lookup(key(&name(1)).as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        // The next insert passes over 9..=16 and evicts 17; the one after passes over 18 and
        // 19 and evicts 0, the oldest unmarked; the next passes over 1 (read again) and
        // evicts 2.
        c.insert(key("new2."), enc(a_answer(60)), 60, t0, 0);
        assert_eq!(c.lookup(key(&name(17)).as_bytes(), t0), Lookup::Miss);
        c.insert(key("new3."), enc(a_answer(60)), 60, t0, 0);
        assert_eq!(c.lookup(key(&name(0)).as_bytes(), t0), Lookup::Miss);
        c.insert(key("new4."), enc(a_answer(60)), 60, t0, 0);
        assert_eq!(c.lookup(key(&name(2)).as_bytes(), t0), Lookup::Miss);
        assert!(matches!(
            c.lookup(key(&name(1)).as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        assert_eq!((c.len(), c.evictions()), (20, 4));
    }

    #[test]
    fn full_large_cache_inserts_stay_fast() {
        // The dnsmasq cliff: inserts into a full 100 000-entry cache. 200 000 inserts must take
        // well under a second even unoptimised (dnsmasq manages ~81/s).
        let c = Cache::new(100_000, Duration::ZERO);
        let t0 = Instant::now();
        let ans = enc(a_answer(60));
        let start = Instant::now();
        for i in 0..200_000u32 {
            c.insert(key(&format!("n{i}.example.")), ans.clone(), 60, t0, 0);
        }
        assert_eq!(c.len(), 100_000);
        assert_eq!(c.evictions(), 100_000);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    fn txt_answer(name: &str, records: usize, len: usize) -> Answer {
        use hickory_proto::rr::rdata::TXT;
        let n = Name::from_ascii(name).unwrap();
        Answer {
            rcode: ResponseCode::NoError,
            answers: (0..records)
                .map(|i| {
                    Record::from_rdata(
                        n.clone(),
                        60,
                        // Character-strings hold at most 255 bytes each.
                        RData::TXT(TXT::new(
                            format!("{i:0len$}")
                                .as_bytes()
                                .chunks(255)
                                .map(|c| String::from_utf8_lossy(c).into_owned())
                                .collect(),
                        )),
                    )
                })
                .collect(),
            authorities: vec![],
            additionals: vec![],
        }
    }

    #[test]
    fn entry_cost_of_a_typical_answer() {
        // One A record for a short name: the figure docs/SECURITY.md quotes.
        let one = cost(&key("a.example."), &a_answer(60));
        assert!((150..=600).contains(&one), "{one}");
        // A 64 KiB answer (an attacker's zone over TCP) costs at least its wire size.
        let big = txt_answer("big.example.", 280, 210);
        assert!(cost(&key("big.example."), &big) > 64_000);
    }

    #[test]
    fn oversized_answers_are_not_cached() {
        let c = Cache::new(100, Duration::ZERO).with_byte_limits(1 << 20, 16 << 10);
        let t0 = Instant::now();
        c.insert(key("a."), enc(a_answer(60)), 60, t0, 0);
        let big = enc(txt_answer("big.example.", 280, 210));
        c.insert(key("big.example."), big.clone(), 60, t0, 0);
        assert_eq!(c.lookup(key("big.example.").as_bytes(), t0), Lookup::Miss);
        assert_eq!(c.oversized(), 1);
        // A key whose new answer is too big loses its old (smaller) one too.
        c.insert(key("a."), big, 60, t0, 0);
        assert_eq!(c.lookup(key("a.").as_bytes(), t0), Lookup::Miss);
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn byte_budget_evicts_least_recently_used_until_under() {
        let small = enc(a_answer(60));
        let unit = entry_cost(&key("a."), &small);
        let c = Cache::new(1000, Duration::ZERO).with_byte_limits(3 * unit, 3 * unit);
        let t0 = Instant::now();
        for s in ["a.", "b.", "c."] {
            c.insert(key(s), small.clone(), 60, t0, 0);
        }
        assert_eq!(c.bytes(), 3 * unit);
        assert!(matches!(
            c.lookup(key("a.").as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        c.insert(key("d."), small.clone(), 60, t0, 0);
        assert_eq!(
            c.lookup(key("b.").as_bytes(), t0),
            Lookup::Miss,
            "b was least recently used"
        );
        assert_eq!((c.len(), c.bytes(), c.evictions()), (3, 3 * unit, 1));
        // An entry worth about two small ones pushes out the two oldest (c, then a).
        let medium = (1..2 * unit)
            .rev()
            .map(|len| txt_answer("m.", 1, len))
            .find(|a| cost(&key("m."), a) <= 2 * unit)
            .map(enc)
            .unwrap();
        let mcost = entry_cost(&key("m."), &medium);
        assert!(mcost > unit && mcost <= 2 * unit, "{mcost} vs {unit}");
        c.insert(key("m."), medium, 60, t0, 0);
        assert_eq!(c.lookup(key("c.").as_bytes(), t0), Lookup::Miss);
        assert_eq!(c.lookup(key("a.").as_bytes(), t0), Lookup::Miss);
        assert!(matches!(
            c.lookup(key("d.").as_bytes(), t0),
            Lookup::Fresh(..)
        ));
        assert_eq!(c.bytes(), unit + mcost);
        // Replacing an entry does not count it twice; expiry gives its bytes back.
        c.insert(key("d."), small.clone(), 1, t0, 0);
        assert_eq!(c.bytes(), unit + mcost);
        assert_eq!(
            c.lookup(key("d.").as_bytes(), t0 + Duration::from_secs(2)),
            Lookup::Miss
        );
        assert_eq!(c.bytes(), mcost);
    }

    proptest::proptest! {
        #[test]
        fn bytes_stay_under_budget_and_add_up(ops in proptest::collection::vec((0u8..40, 0usize..12, 1usize..400), 1..200)) {
            let c = Cache::new(25, Duration::ZERO).with_byte_limits(8_000, 3_000);
            let t0 = Instant::now();
            let mut expect_costs = std::collections::HashMap::new();
            for (k, n, len) in ops {
                let name = format!("n{k}.");
                let a = txt_answer(&name, n, len);
                let c_one = cost(&key(&name), &a);
                c.insert(key(&name), enc(a), 60, t0, 0);
                expect_costs.insert(name, c_one);
                proptest::prop_assert!(c.bytes() <= 8_000);
                proptest::prop_assert!(c.len() <= 25);
            }
            // The byte count is the sum of what is actually held.
            let held: usize = expect_costs
                .iter()
                .filter(|(name, _)| matches!(c.lookup(key(name).as_bytes(), t0), Lookup::Fresh(..)))
                .map(|(_, cost)| cost)
                .sum();
            proptest::prop_assert_eq!(held, c.bytes());
        }
    }

    #[test]
    fn disabled_cache_misses() {
        let c = Cache::new(0, Duration::ZERO);
        c.insert(key("a."), enc(a_answer(60)), 60, Instant::now(), 0);
        assert_eq!(c.lookup(key("a.").as_bytes(), Instant::now()), Lookup::Miss);
    }
}
