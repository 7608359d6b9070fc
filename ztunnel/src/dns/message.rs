//! DNS messages at the proxy's edge: what arrived ([`classify`]) and the responses the proxy
//! builds itself (answers from the mesh state, `FORMERR`, `SERVFAIL`, truncation). Forwarded
//! queries and their answers are never re-encoded: they are relayed as bytes.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// The UDP payload size the proxy advertises in its own EDNS responses (the DNS flag day 2020
/// value, safe from fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// What arrived from a client.
#[derive(Debug)]
pub enum Incoming {
    /// Not something to answer: shorter than a header, or a response (answering those could
    /// loop between two resolvers). Dropped.
    Drop,
    /// A header, but not a well-formed standard query: answered with this `FORMERR`.
    Malformed(Vec<u8>),
    /// A standard query (opcode `QUERY`) with exactly one question.
    Query(Box<Message>),
    /// Another opcode (`NOTIFY`, `UPDATE`, `STATUS`, …): relayed to upstream unchanged.
    Passthrough {
        /// The record type of its first question/zone entry, when it parses (for metrics).
        query_type: Option<RecordType>,
    },
}

/// Classifies the bytes of one client message.
pub fn classify(bytes: &[u8]) -> Incoming {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Incoming::Drop;
    };
    if header.metadata.message_type == MessageType::Response {
        return Incoming::Drop;
    }
    if header.metadata.op_code != OpCode::Query {
        let query_type = Message::from_vec(bytes)
            .ok()
            .and_then(|m| m.queries.first().map(|q| q.query_type));
        return Incoming::Passthrough { query_type };
    }
    match Message::from_vec(bytes) {
        Ok(message) if message.queries.len() == 1 => Incoming::Query(Box::new(message)),
        _ => Incoming::Malformed(header_only(&header, ResponseCode::FormErr)),
    }
}

/// The `FORMERR` answer to a message too large to read whole: header-only when the part read
/// holds a query header, `None` otherwise (then it is dropped).
pub fn oversize_reply(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    (header.metadata.message_type == MessageType::Query)
        .then(|| header_only(&header, ResponseCode::FormErr))
}

/// The id of a message, if it has a header.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Whether `bytes` is a response to the query with `id`: a complete header, the QR bit set and
/// the same id.
pub fn is_response_to(bytes: &[u8], id: u16) -> bool {
    bytes.len() >= HEADER_LEN && message_id(bytes) == Some(id) && bytes[2] & 0x80 != 0
}

/// A response to `header` carrying only a header with `rcode` (no sections): id and opcode
/// copied, RD copied, RA set. Built by hand, so it cannot fail.
pub fn header_only(header: &Header, rcode: ResponseCode) -> Vec<u8> {
    let m = &header.metadata;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&m.id.to_be_bytes());
    out.push(0x80 | ((u8::from(m.op_code) & 0x0f) << 3) | u8::from(m.recursion_desired));
    out.push(0x80 | (rcode.low() & 0x0f));
    out.extend_from_slice(&[0; 8]);
    out
}

/// The header of a query as a [`Header`] (for [`header_only`]).
fn header_of(query: &Message) -> Header {
    Header {
        metadata: query.metadata,
        counts: Default::default(),
    }
}

/// A response to `query` with `rcode`, the question echoed and no records.
pub fn error_reply(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut reply = response_to(query);
    reply.metadata.response_code = rcode;
    reply
        .to_vec()
        .unwrap_or_else(|_| header_only(&header_of(query), rcode))
}

/// The proxy's authoritative answer to `query` with `answers` (empty for NODATA). When
/// `udp_limit` is set and the response would exceed what the client accepts over UDP (512
/// bytes, or its EDNS payload size, at most `udp_limit`), the answers are left out and TC is set
/// so that the client retries over TCP.
pub fn answer_reply(query: &Message, answers: Vec<Record>, udp_limit: Option<usize>) -> Vec<u8> {
    let mut reply = response_to(query);
    reply.metadata.authoritative = true;
    reply.answers = answers;
    let Ok(bytes) = reply.to_vec() else {
        return error_reply(query, ResponseCode::ServFail);
    };
    let limit = udp_limit.map(|max| usize::from(query.max_payload()).min(max));
    match limit {
        Some(limit) if bytes.len() > limit => {
            reply.answers.clear();
            reply.metadata.truncation = true;
            reply
                .to_vec()
                .unwrap_or_else(|_| error_reply(query, ResponseCode::ServFail))
        }
        _ => bytes,
    }
}

/// An empty response to `query`: id, opcode, RD and CD copied, RA set, question echoed, and an
/// OPT record when the query had one.
fn response_to(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.edns = Some(edns);
    }
    reply
}

/// A truncated response (TC set, question only) to the query in `bytes`, for an upstream UDP
/// answer too large to relay; `None` when the query does not parse.
pub fn truncated_reply(bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    let mut reply = response_to(&query);
    reply.metadata.truncation = true;
    reply.to_vec().ok()
}

/// A `SERVFAIL` response to the query in `bytes`: with the question echoed when it parses,
/// header-only otherwise; `None` without a header.
pub fn servfail(bytes: &[u8]) -> Option<Vec<u8>> {
    match Message::from_vec(bytes) {
        Ok(query) => Some(error_reply(&query, ResponseCode::ServFail)),
        Err(_) => {
            let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
            Some(header_only(&header, ResponseCode::ServFail))
        }
    }
}

/// The first question of a query.
pub fn question(query: &Message) -> Option<&Query> {
    query.queries.first()
}
