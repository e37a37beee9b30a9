//! The cache-hit fast path at the byte level: reading a plain query straight from the datagram
//! ([`parse_query`]) and replaying a cached answer kept in wire form ([`Encoded`]) by patching
//! the ID, flags, TTLs and the question's letter case into a copy — no decoding, no allocation
//! once the output buffer has grown.
//!
//! Why: on a cache hit, decoding the query into hickory's types, cloning the cached records and
//! encoding them again cost more than the kernel's work for the two datagrams (see
//! docs/BENCHMARKS.md, dns profile). Anything this module does not recognise as a plain query
//! (pointers in the question, several questions, records other than one OPT, EDNS versions
//! other than 0, opcodes other than QUERY) is left to the general path, which handles it with
//! hickory exactly as before. Pure: no sockets, no clocks, no locks.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use crate::cache::Answer;

/// Largest wire-form name (RFC 1035 §3.1).
pub const MAX_NAME: usize = 255;
/// Largest cache key: a name, type, class and the DO flag.
pub const MAX_KEY: usize = MAX_NAME + 5;
/// Size of an OPT record without options.
const OPT_LEN: usize = 11;
/// EDNS payload size we advertise and cap client payloads at (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The EDNS part of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdnsView {
    pub payload: u16,
    pub dnssec_ok: bool,
}

/// A plain one-question query, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryView<'a> {
    pub id: u16,
    pub rd: bool,
    pub cd: bool,
    /// The question name in wire form as the client sent it (letter case included), with its
    /// terminating zero.
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<EdnsView>,
}

impl QueryView<'_> {
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// Writes the cache key (see [`key_bytes`]) into `buf`; returns its length.
    pub fn key(&self, buf: &mut [u8; MAX_KEY]) -> usize {
        let n = self.qname.len();
        for (d, s) in buf.iter_mut().zip(self.qname) {
            *d = s.to_ascii_lowercase();
        }
        buf[n..n + 2].copy_from_slice(&self.qtype.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&self.qclass.to_be_bytes());
        buf[n + 4] = u8::from(self.dnssec_ok());
        n + 5
    }
}

fn u16_at(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

/// Reads a query the fast path can answer from the cache; `None` for anything else (which the
/// general path then handles, errors included).
pub fn parse_query(p: &[u8]) -> Option<QueryView<'_>> {
    if p.len() < 12 {
        return None;
    }
    let (f0, f1) = (p[2], p[3]);
    // QR = 0, opcode QUERY, TC = 0; one question, no answers or authorities, at most one OPT.
    if f0 & 0xfa != 0 || f1 & 0x0f != 0 {
        return None;
    }
    if u16_at(p, 4)? != 1 || u16_at(p, 6)? != 0 || u16_at(p, 8)? != 0 {
        return None;
    }
    let arcount = u16_at(p, 10)?;
    if arcount > 1 {
        return None;
    }
    // No compression pointers (nothing to point at yet) and no extended label types.
    let mut i = plain_name_end(p, 12)?;
    let qname = &p[12..i];
    let qtype = u16_at(p, i)?;
    let qclass = u16_at(p, i + 2)?;
    i += 4;
    let mut edns = None;
    if arcount == 1 {
        // OPT: root owner, type 41, class = payload, TTL = ext-rcode, version, flags; rdata.
        if *p.get(i)? != 0 || u16_at(p, i + 1)? != 41 {
            return None;
        }
        let payload = u16_at(p, i + 3)?;
        let version = *p.get(i + 6)?;
        let flags = u16_at(p, i + 7)?;
        let rdlen = usize::from(u16_at(p, i + 9)?);
        if version != 0 {
            return None; // BADVERS is the general path's business
        }
        i += OPT_LEN + rdlen;
        edns = Some(EdnsView {
            payload,
            dnssec_ok: flags & 0x8000 != 0,
        });
    }
    if i != p.len() {
        return None;
    }
    Some(QueryView {
        id: u16::from_be_bytes([p[0], p[1]]),
        rd: f0 & 0x01 != 0,
        cd: f1 & 0x10 != 0,
        qname,
        qtype,
        qclass,
        edns,
    })
}

/// The cache key for a question: the lower-cased wire-form name, type, class and whether the
/// client asked for DNSSEC records (answers for DO=1 keep RRSIG/NSEC/NSEC3, those for DO=0 do
/// not, so the two are cached apart).
pub fn key_bytes(name: &Name, qtype: RecordType, qclass: DNSClass, dnssec_ok: bool) -> Vec<u8> {
    let mut out = name_bytes(name);
    out.extend_from_slice(&u16::from(qtype).to_be_bytes());
    out.extend_from_slice(&u16::from(qclass).to_be_bytes());
    out.push(u8::from(dnssec_ok));
    out
}

/// `name` in uncompressed wire form, lower-cased, with its terminating zero.
pub fn name_bytes(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 6);
    for label in name.iter() {
        // A label is at most 63 bytes (hickory enforces it when building names).
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// A cached answer in wire form: a complete response (ID 0, question lower-case, no OPT) and
/// where each record's TTL sits, so a hit only patches bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The response (`wire_len` bytes), then the offset of each record's TTL in it (two bytes
    /// each, native order). Held in one piece, and inside the `Encoded` itself (so inside the
    /// cache's entry, next to its key) when it fits [`INLINE_ANSWER`] bytes: a hit reads both
    /// parts, and every separate heap block is one more cache miss on a path that otherwise
    /// costs well under a microsecond.
    buf: AnswerBytes,
    wire_len: u16,
    qname_len: u16,
}

/// Answers of up to this many bytes (wire form plus two bytes per record) are held inline:
/// one to four A or AAAA records for a name of up to about 40 characters.
pub const INLINE_ANSWER: usize = 126;

#[derive(Debug, Clone, PartialEq, Eq)]
enum AnswerBytes {
    Inline { len: u8, bytes: [u8; INLINE_ANSWER] },
    Heap(Box<[u8]>),
}

impl AnswerBytes {
    fn new(b: Vec<u8>) -> Self {
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_ANSWER => {
                let mut bytes = [0u8; INLINE_ANSWER];
                bytes[..b.len()].copy_from_slice(&b);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(b.into_boxed_slice()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

/// The end of an uncompressed name at `i` (no pointers, labels of at most 63 bytes, at most
/// [`MAX_NAME`] bytes in all).
fn plain_name_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            return Some(i + 1);
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
        if i - start >= MAX_NAME {
            return None;
        }
    }
}

/// Skips a (possibly compressed) name at `i`; returns the offset after it.
fn skip_name(p: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *p.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => {
                p.get(i + 1)?;
                return Some(i + 2);
            }
            l if l > 63 => return None,
            l => i += 1 + usize::from(l),
        }
    }
}

impl Encoded {
    /// Encodes `a` as the response to `name`/`qtype`/`qclass` (lower-case `name`). `None` when
    /// it cannot be encoded or is larger than a DNS message.
    pub fn build(name: &Name, qtype: RecordType, qclass: DNSClass, a: &Answer) -> Option<Self> {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.response_code = a.rcode;
        let mut q = Query::query(name.clone(), qtype);
        q.set_query_class(qclass);
        m.add_query(q);
        m.answers = a.answers.clone();
        m.authorities = a.authorities.clone();
        m.additionals = a.additionals.clone();
        let wire = m.to_vec().ok()?;
        Self::from_wire(wire)
    }

    /// Indexes an encoded response (one question, no OPT expected but tolerated as a record).
    fn from_wire(wire: Vec<u8>) -> Option<Self> {
        // hickory cuts a message that outgrows 64 KiB (TC set, a record short): not cacheable.
        if wire.len() > usize::from(u16::MAX) || u16_at(&wire, 4)? != 1 || wire[2] & 0x02 != 0 {
            return None;
        }
        let records: usize = [6, 8, 10]
            .iter()
            .map(|o| u16_at(&wire, *o).map(usize::from))
            .sum::<Option<usize>>()?;
        // The question must be a plain name: hits overwrite it with the client's spelling.
        let qend = plain_name_end(&wire, 12)?;
        let mut i = qend + 4;
        let wire_len = u16::try_from(wire.len()).ok()?;
        let mut buf = wire;
        buf.reserve_exact(2 * records);
        for _ in 0..records {
            i = skip_name(&buf[..usize::from(wire_len)], i)?;
            let at = u16::try_from(i + 4).ok()?;
            let rdlen = usize::from(u16_at(&buf[..usize::from(wire_len)], i + 8)?);
            i += 10 + rdlen;
            buf.extend_from_slice(&at.to_ne_bytes());
        }
        if i != usize::from(wire_len) {
            return None;
        }
        Some(Self {
            buf: AnswerBytes::new(buf),
            wire_len,
            qname_len: u16::try_from(qend - 12).ok()?,
        })
    }

    /// The response in wire form (ID 0, question lower-case, no OPT).
    fn wire(&self) -> &[u8] {
        &self.buf.as_slice()[..usize::from(self.wire_len)]
    }

    /// Where each record's TTL sits in [`Self::wire`].
    fn ttl_at(&self) -> impl Iterator<Item = usize> + '_ {
        self.buf.as_slice()[usize::from(self.wire_len)..]
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_ne_bytes([c[0], c[1]])))
    }

    /// Bytes this answer holds on the heap (a wire form and TTL index too large to be held
    /// inline; inline ones are part of `size_of::<Encoded>()`).
    pub fn heap_bytes(&self) -> usize {
        match &self.buf {
            AnswerBytes::Inline { .. } => 0,
            AnswerBytes::Heap(b) => b.len(),
        }
    }

    /// Length of the wire form plus its TTL index, wherever they are held.
    pub fn len(&self) -> usize {
        self.buf.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records back (for the general path: TCP, stale answers), every TTL lowered by
    /// `elapsed` seconds; `ttl` instead replaces every TTL.
    pub fn answer(&self, elapsed: u32, ttl: Option<u32>) -> Option<Answer> {
        let m = Message::from_vec(self.wire()).ok()?;
        let age = |rs: Vec<hickory_proto::rr::Record>| {
            rs.into_iter()
                .map(|mut r| {
                    r.ttl = ttl.unwrap_or_else(|| r.ttl.saturating_sub(elapsed));
                    r
                })
                .collect()
        };
        Some(Answer {
            rcode: m.metadata.response_code,
            answers: age(m.answers),
            authorities: age(m.authorities),
            additionals: age(m.additionals),
        })
    }

    /// Writes the response to `q` into `out`: the client's ID, RD and CD bits and question
    /// spelling (0x20 case randomisation survives), TTLs lowered by `elapsed`, an OPT record
    /// when the query had one (echoing DO), and — when that does not fit the client's payload
    /// size (512 without EDNS, at most [`EDNS_PAYLOAD`]) — an empty answer with TC set, so the
    /// client retries over TCP. `false` when `q` is not a query for this answer's name.
    pub fn write_response(&self, q: &QueryView<'_>, elapsed: u32, out: &mut Vec<u8>) -> bool {
        let qlen = usize::from(self.qname_len);
        if q.qname.len() != qlen {
            return false;
        }
        let limit = match q.edns {
            Some(e) => usize::from(e.payload.clamp(512, EDNS_PAYLOAD)),
            None => 512,
        };
        let opt = if q.edns.is_some() { OPT_LEN } else { 0 };
        out.clear();
        let wire = self.wire();
        let truncated = wire.len() + opt > limit;
        if truncated {
            out.extend_from_slice(&wire[..12 + qlen + 4]);
            out[6..12].fill(0);
        } else {
            out.extend_from_slice(wire);
            if elapsed > 0 {
                for at in self.ttl_at() {
                    let Some(b) = out.get_mut(at..at + 4) else {
                        continue;
                    };
                    let ttl = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).saturating_sub(elapsed);
                    b.copy_from_slice(&ttl.to_be_bytes());
                }
            }
        }
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        // QR, opcode QUERY, TC when cut, RD as asked; RA, CD as asked, the cached RCODE. AA
        // and AD stay clear: we neither own the zone nor validate.
        out[2] = 0x80 | if truncated { 0x02 } else { 0 } | u8::from(q.rd);
        out[3] = 0x80 | if q.cd { 0x10 } else { 0 } | (wire[3] & 0x0f);
        out[12..12 + qlen].copy_from_slice(q.qname);
        if let Some(e) = q.edns {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
            let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
        true
    }
}

/// The first label of `qname` (wire form, any case) when `qname` is exactly one label under
/// `domain` (wire form, lower-case, with its terminating zero): `server5` for
/// `server5.berth.internal.` under `berth.internal.`. Label lengths are below 64, so a
/// case-insensitive compare of the wire bytes compares the labels and their boundaries alike.
pub fn single_label_under<'a>(qname: &'a [u8], domain: &[u8]) -> Option<&'a [u8]> {
    let first = usize::from(*qname.first()?);
    if first == 0 || first > 63 || 1 + first + domain.len() != qname.len() {
        return None;
    }
    qname[1 + first..]
        .eq_ignore_ascii_case(domain)
        .then(|| &qname[1..1 + first])
}

/// Writes an authoritative answer to `q` (an A or AAAA question) holding one record per
/// address of the asked family in `addrs`, each with `ttl`: the client's ID, RD and CD bits
/// and question as sent, every owner a pointer to the question, an OPT when the query had one
/// (echoing DO). `false` (`out` then holds nothing to send) when no address is of the asked
/// family or the answer would not fit the client's payload size: the general path answers
/// those (NODATA with the zone's SOA, or a truncated answer).
pub fn write_addrs(q: &QueryView<'_>, addrs: &[IpAddr], ttl: u32, out: &mut Vec<u8>) -> bool {
    let v4 = match q.qtype {
        1 => true,
        28 => false,
        _ => return false,
    };
    let fits = |a: &&IpAddr| a.is_ipv4() == v4;
    let n = addrs.iter().filter(fits).count();
    let rdlen = if v4 { 4 } else { 16 };
    let opt = if q.edns.is_some() { OPT_LEN } else { 0 };
    let size = 12 + q.qname.len() + 4 + n * (12 + rdlen) + opt;
    let limit = match q.edns {
        Some(e) => usize::from(e.payload.clamp(512, EDNS_PAYLOAD)),
        None => 512,
    };
    let Ok(ancount) = u16::try_from(n) else {
        return false;
    };
    if n == 0 || size > limit {
        return false;
    }
    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, opcode QUERY, AA (the local zone is ours), RD as asked; RA, CD as asked, NOERROR.
    out.push(0x80 | 0x04 | u8::from(q.rd));
    out.push(0x80 | if q.cd { 0x10 } else { 0 });
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(q.edns.is_some())]);
    out.extend_from_slice(q.qname);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    for a in addrs.iter().filter(fits) {
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&q.qclass.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        match a {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    if let Some(e) = q.edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    true
}

/// Writes REFUSED for `q` into `out`: the client's ID, RD and CD bits and question as sent
/// (stub resolvers ignore an answer whose question does not match theirs), no records but an
/// OPT when the query had one. What a rate-limited client gets, written on the UDP worker.
pub fn write_refused(q: &QueryView<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x80 | u8::from(q.rd));
    out.push(0x80 | if q.cd { 0x10 } else { 0 } | 5);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    out.extend_from_slice(q.qname);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some(e) = q.edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA, TXT};
    use hickory_proto::rr::{RData, Record};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(qname: &str, qtype: RecordType, id: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn a_answer(owner: &str, ttl: u32, n: usize) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers: (0..n)
                .map(|i| {
                    Record::from_rdata(
                        name(owner),
                        ttl + u32::try_from(i).unwrap(),
                        RData::A(A::new(192, 0, 2, u8::try_from(i % 250).unwrap())),
                    )
                })
                .collect(),
            authorities: vec![],
            additionals: vec![],
        }
    }

    fn cached(owner: &str, a: &Answer) -> Encoded {
        Encoded::build(&name(owner), RecordType::A, DNSClass::IN, a).unwrap()
    }

    #[test]
    fn parses_plain_queries_and_declines_the_rest() {
        let q = query("WwW.Example.", RecordType::A, 7, Some((4096, true)));
        let v = parse_query(&q).unwrap();
        assert_eq!((v.id, v.rd, v.qtype, v.qclass), (7, true, 1, 1));
        assert_eq!(v.qname, b"\x03WwW\x07Example\x00");
        assert_eq!(
            v.edns,
            Some(EdnsView {
                payload: 4096,
                dnssec_ok: true
            })
        );
        let mut k = [0u8; MAX_KEY];
        let n = v.key(&mut k);
        assert_eq!(
            &k[..n],
            &key_bytes(&name("www.example."), RecordType::A, DNSClass::IN, true)[..]
        );
        assert!(parse_query(&query("a.b.", RecordType::A, 1, None)).is_some());

        let mut response = q.clone();
        response[2] |= 0x80;
        let mut notify = q.clone();
        notify[2] |= 4 << 3;
        let mut two_questions = q.clone();
        two_questions[5] = 2;
        let mut trailing = q.clone();
        trailing.push(0);
        let mut badvers = q.clone();
        let len = badvers.len();
        badvers[len - 5] = 1; // OPT version
        let mut pointer = query("a.b.", RecordType::A, 1, None);
        pointer[12] = 0xc0;
        for (what, p) in [
            ("response", &response[..]),
            ("notify", &notify[..]),
            ("two questions", &two_questions[..]),
            ("trailing byte", &trailing[..]),
            ("edns version 1", &badvers[..]),
            ("pointer in question", &pointer[..]),
            ("short", &q[..11]),
            ("cut question", &q[..20]),
        ] {
            assert_eq!(parse_query(p), None, "{what}");
        }
    }

    #[test]
    fn hit_patches_id_flags_case_and_ttls() {
        let e = cached("www.example.", &a_answer("www.example.", 300, 2));
        let raw = query("wWw.ExAmPle.", RecordType::A, 0xbeef, None);
        let q = parse_query(&raw).unwrap();
        let mut out = Vec::new();
        assert!(e.write_response(&q, 100, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert!(!m.metadata.truncation && !m.metadata.authoritative);
        assert_eq!(m.queries[0].name().to_ascii(), "wWw.ExAmPle.");
        let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![200, 201]);
        assert!(m.edns.is_none());
        // Past expiry the TTL floors at 0; the cached bytes are untouched by earlier hits.
        assert!(e.write_response(&q, 1000, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers[0].ttl, 0);
        assert!(e.write_response(&q, 0, &mut out));
        assert_eq!(Message::from_vec(&out).unwrap().answers[1].ttl, 301);
        // RD and CD are the client's.
        let mut raw2 = raw.clone();
        raw2[2] &= !0x01;
        raw2[3] |= 0x10;
        assert!(e.write_response(&parse_query(&raw2).unwrap(), 0, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert!(!m.metadata.recursion_desired && m.metadata.checking_disabled);
    }

    #[test]
    fn ttl_index_covers_every_section_and_shares_the_wire_buffer() {
        let mut a = a_answer("m.example.", 100, 3);
        a.authorities = a_answer("ns.example.", 200, 2).answers;
        a.additionals = a_answer("x.example.", 300, 1).answers;
        let e = cached("m.example.", &a);
        // One buffer: the response, then two bytes per record's TTL offset; this one is too
        // large to be held inline, a one-record answer is not.
        assert_eq!(e.len(), e.wire().len() + 2 * 6);
        assert_eq!(e.heap_bytes(), e.len());
        let small = cached("a.example.", &a_answer("a.example.", 60, 1));
        assert_eq!(
            (small.len(), small.heap_bytes()),
            (small.wire().len() + 2, 0)
        );
        let raw = query("M.example.", RecordType::A, 9, None);
        let q = parse_query(&raw).unwrap();
        let mut out = Vec::new();
        assert!(e.write_response(&q, 0, &mut out));
        let qend = 12 + q.qname.len();
        assert_eq!(&out[4..12], &e.wire()[4..12]);
        assert_eq!(&out[qend..], &e.wire()[qend..], "age 0: TTLs as stored");
        assert!(e.write_response(&q, 40, &mut out));
        let m = Message::from_vec(&out).unwrap();
        let ttls = |rs: &[Record]| rs.iter().map(|r| r.ttl).collect::<Vec<_>>();
        assert_eq!(ttls(&m.answers), vec![60, 61, 62]);
        assert_eq!(ttls(&m.authorities), vec![160, 161]);
        assert_eq!(ttls(&m.additionals), vec![260]);
        assert_eq!(m.queries[0].name().to_ascii(), "M.example.");
    }

    #[test]
    fn hit_echoes_edns_and_do() {
        let e = cached("a.example.", &a_answer("a.example.", 60, 1));
        for dnssec_ok in [false, true] {
            let raw = query("a.example.", RecordType::A, 1, Some((4096, dnssec_ok)));
            let mut out = Vec::new();
            assert!(e.write_response(&parse_query(&raw).unwrap(), 0, &mut out));
            let m = Message::from_vec(&out).unwrap();
            let edns = m.edns.as_ref().unwrap();
            assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
            assert_eq!(m.answers.len(), 1);
        }
    }

    #[test]
    fn hit_truncates_to_the_clients_payload_size() {
        // 40 A records: 16 bytes each after the first name, about 660 bytes in all.
        let e = cached("big.example.", &a_answer("big.example.", 60, 40));
        let mut out = Vec::new();
        let cases = [
            (None, true), // no EDNS: 512
            (Some((512, false)), true),
            (Some((100, false)), true), // below 512 counts as 512
            (Some((1232, false)), false),
            (Some((65000, false)), false), // capped at ours, still fits
        ];
        for (edns, cut) in cases {
            let raw = query("big.example.", RecordType::A, 9, edns);
            assert!(e.write_response(&parse_query(&raw).unwrap(), 0, &mut out));
            let limit = edns.map_or(512, |(p, _)| usize::from(p.clamp(512, EDNS_PAYLOAD)));
            assert!(out.len() <= limit, "{edns:?}: {} > {limit}", out.len());
            let m = Message::from_vec(&out).unwrap();
            assert_eq!(m.metadata.truncation, cut, "{edns:?}");
            assert_eq!(m.answers.len(), if cut { 0 } else { 40 }, "{edns:?}");
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.edns.is_some(), edns.is_some());
        }
        // An answer larger than any payload: always truncated.
        let txt = Answer {
            rcode: ResponseCode::NoError,
            answers: (0..8)
                .map(|i| {
                    Record::from_rdata(
                        name("t.example."),
                        60,
                        RData::TXT(TXT::new(vec![format!("{i:0200}")])),
                    )
                })
                .collect(),
            authorities: vec![],
            additionals: vec![],
        };
        let e = Encoded::build(&name("t.example."), RecordType::TXT, DNSClass::IN, &txt).unwrap();
        let raw = query("t.example.", RecordType::TXT, 9, Some((4096, false)));
        assert!(e.write_response(&parse_query(&raw).unwrap(), 0, &mut out));
        assert!(Message::from_vec(&out).unwrap().metadata.truncation);
    }

    #[test]
    fn negative_answers_keep_rcode_and_soa_ttl_counts_down() {
        let soa = Record::from_rdata(
            name("example."),
            50,
            RData::SOA(SOA::new(
                name("ns.example."),
                name("h.example."),
                1,
                2,
                3,
                4,
                50,
            )),
        );
        let nx = Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![soa],
            additionals: vec![],
        };
        let e = Encoded::build(&name("nope.example."), RecordType::A, DNSClass::IN, &nx).unwrap();
        let raw = query("NOPE.example.", RecordType::A, 3, None);
        let mut out = Vec::new();
        assert!(e.write_response(&parse_query(&raw).unwrap(), 20, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].ttl, 30);
        // And the records decode back for the general path.
        let back = e.answer(20, None).unwrap();
        assert_eq!(back.rcode, ResponseCode::NXDomain);
        assert_eq!(back.authorities[0].ttl, 30);
        assert_eq!(e.answer(0, Some(7)).unwrap().authorities[0].ttl, 7);
    }

    #[test]
    fn a_different_name_length_is_refused() {
        let e = cached("a.example.", &a_answer("a.example.", 60, 1));
        let raw = query("ab.example.", RecordType::A, 1, None);
        assert!(!e.write_response(&parse_query(&raw).unwrap(), 0, &mut Vec::new()));
    }

    proptest::proptest! {
        #[test]
        fn parse_query_never_panics(p in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Some(q) = parse_query(&p) {
                let mut k = [0u8; MAX_KEY];
                let n = q.key(&mut k);
                proptest::prop_assert!(n <= MAX_KEY);
            }
        }
    }

    #[test]
    fn one_label_under_the_domain_only() {
        let d = b"\x05berth\x08internal\x00";
        let cases: [(&[u8], Option<&[u8]>); 8] = [
            (b"\x07server5\x05berth\x08internal\x00", Some(b"server5")),
            (b"\x07SERVER5\x05Berth\x08INTERNAL\x00", Some(b"SERVER5")),
            (b"\x05berth\x08internal\x00", None),
            (b"\x01x\x07server5\x05berth\x08internal\x00", None),
            (b"\x07server5\x05berth\x08internax\x00", None),
            (b"\x07server5\x05berth\x08internal", None),
            (b"\x00", None),
            // A label length that points past the domain's first byte: lengths must line up.
            (b"\x06server\x355berth\x08internal\x00", None),
        ];
        for (qname, want) in cases {
            assert_eq!(single_label_under(qname, d), want, "{qname:?}");
        }
    }

    proptest::proptest! {
        /// Whatever arrives, a tenant-name answer the worker writes is a well-formed response
        /// to it: the client's ID and question, within the client's payload size.
        #[test]
        fn local_answers_to_arbitrary_queries_are_well_formed(
            p in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            name in "[a-zA-Z0-9]{1,20}",
            n4 in 0usize..40,
            n6 in 0usize..20,
            v6 in proptest::bool::ANY,
            dnssec_ok in proptest::bool::ANY,
            payload in 0u16..2000,
            id in proptest::num::u16::ANY,
        ) {
            let v4s = (0..n4).map(|i| IpAddr::from([10, 0, 0, u8::try_from(i).unwrap()]));
            let v6s = (0..n6).map(|i| {
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::try_from(i).unwrap()])
            });
            let addrs: Vec<IpAddr> = v4s.chain(v6s).collect();
            let edns = match payload {
                0 => None,
                p => Some((p, dnssec_ok)),
            };
            let qtype = if v6 { RecordType::AAAA } else { RecordType::A };
            let raw = query(&format!("{name}.berth.internal."), qtype, id, edns);
            for cand in [p, raw] {
                let Some(q) = parse_query(&cand) else { continue };
                let _ = single_label_under(q.qname, b"\x05berth\x08internal\x00");
                let mut out = Vec::new();
                if write_addrs(&q, &addrs, 5, &mut out) {
                    let limit = q
                        .edns
                        .map_or(512, |e| usize::from(e.payload.clamp(512, EDNS_PAYLOAD)));
                    proptest::prop_assert!(out.len() <= limit);
                    let m = Message::from_vec(&out)
                        .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
                    proptest::prop_assert_eq!(m.metadata.id, q.id);
                    proptest::prop_assert_eq!(m.queries.len(), 1);
                    proptest::prop_assert_eq!(&out[12..12 + q.qname.len()], q.qname);
                    proptest::prop_assert_eq!(m.edns.is_some(), q.edns.is_some());
                    proptest::prop_assert!(!m.answers.is_empty());
                    let want = RecordType::from(q.qtype);
                    proptest::prop_assert!(m.answers.iter().all(|r| r.ttl == 5));
                    proptest::prop_assert!(m.answers.iter().all(|r| r.record_type() == want));
                }
            }
        }
    }

    #[test]
    fn refused_echoes_id_flags_question_and_edns() {
        for edns in [None, Some((4096, true)), Some((512, false))] {
            let wire = query("Some.Example.", RecordType::AAAA, 0xbeef, edns);
            let q = parse_query(&wire).unwrap();
            let mut out = Vec::new();
            write_refused(&q, &mut out);
            let m = Message::from_vec(&out).unwrap();
            assert_eq!(m.metadata.id, 0xbeef);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused);
            assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.queries[0].name().to_ascii(), "Some.Example.");
            assert_eq!(m.queries[0].query_type(), RecordType::AAAA);
            assert!(m.answers.is_empty() && m.authorities.is_empty());
            assert_eq!(m.edns.is_some(), edns.is_some());
            if let (Some(e), Some((_, dnssec_ok))) = (m.edns.as_ref(), edns) {
                assert_eq!(e.flags().dnssec_ok, dnssec_ok);
            }
        }
    }
}
