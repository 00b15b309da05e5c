//! The NATS client wire protocol: a strict parser for what the server sends (INFO, MSG, HMSG,
//! PING, PONG, +OK, -ERR) and encoders for what the client sends (CONNECT, PUB, HPUB, SUB,
//! UNSUB, PING, PONG).
//!
//! Pure: no I/O, no clocks. The parser works on a byte buffer and never panics; it enforces a
//! control-line limit and a payload limit and rejects anything malformed. It must never log.

use std::fmt;

use serde::Deserialize;

/// Hard cap on a message payload, whatever the server announces.
pub const HARD_MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Default limit on one control line (the server's own default).
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// A protocol violation by the peer (or an unencodable value on our side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    ControlLineTooLong,
    UnknownOp,
    BadArgs,
    BadSize,
    PayloadTooLarge,
    MissingCrlf,
    BadHeaders,
    BadInfo,
    BadUtf8,
    /// A subject, queue group or header we were asked to send is not valid on the wire.
    InvalidValue(&'static str),
}

impl ProtoError {
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::ControlLineTooLong => "control_line_too_long",
            ProtoError::UnknownOp => "unknown_op",
            ProtoError::BadArgs => "bad_args",
            ProtoError::BadSize => "bad_size",
            ProtoError::PayloadTooLarge => "payload_too_large",
            ProtoError::MissingCrlf => "missing_crlf",
            ProtoError::BadHeaders => "bad_headers",
            ProtoError::BadInfo => "bad_info",
            ProtoError::BadUtf8 => "bad_utf8",
            ProtoError::InvalidValue(_) => "invalid_value",
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::InvalidValue(what) => write!(f, "invalid {what}"),
            other => write!(f, "protocol error: {}", other.code()),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Message headers (the `NATS/1.0` block). Keys are exact, case-sensitive strings; a key may
/// occur more than once. An optional status line (`NATS/1.0 503`) is kept apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
    status: Option<u16>,
    description: Option<String>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }
    /// The first value of `key` (exact match).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Adds a value (keeps earlier values of the same key).
    pub fn append(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.push((key.into(), value.into()));
    }
    /// Replaces every value of `key` with `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, value.into()));
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The status code of the header line (`503` for "no responders"), if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Parses a full header block, `NATS/1.0...\r\n(Key: Value\r\n)*\r\n`.
    pub fn parse(block: &[u8]) -> Result<Headers, ProtoError> {
        let text = std::str::from_utf8(block).map_err(|_| ProtoError::BadHeaders)?;
        let body = text
            .strip_suffix("\r\n\r\n")
            .ok_or(ProtoError::BadHeaders)?;
        let mut lines = body.split("\r\n");
        let first = lines.next().ok_or(ProtoError::BadHeaders)?;
        let rest = first
            .strip_prefix("NATS/1.0")
            .ok_or(ProtoError::BadHeaders)?;
        let mut h = Headers::default();
        if !rest.is_empty() {
            let rest = rest
                .strip_prefix(' ')
                .ok_or(ProtoError::BadHeaders)?
                .trim_start();
            let (code, desc) = match rest.split_once(' ') {
                Some((c, d)) => (c, Some(d.trim())),
                None => (rest, None),
            };
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProtoError::BadHeaders);
            }
            h.status = code.parse().ok();
            h.description = desc.filter(|d| !d.is_empty()).map(str::to_string);
        }
        for line in lines {
            if line.contains('\r') || line.contains('\n') {
                return Err(ProtoError::BadHeaders);
            }
            let (k, v) = line.split_once(':').ok_or(ProtoError::BadHeaders)?;
            if !valid_header_key(k) {
                return Err(ProtoError::BadHeaders);
            }
            h.entries.push((k.to_string(), v.trim().to_string()));
        }
        Ok(h)
    }

    /// Encodes the block for HPUB. Fails on keys or values that cannot travel.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        out.extend_from_slice(b"NATS/1.0\r\n");
        for (k, v) in &self.entries {
            if !valid_header_key(k) {
                return Err(ProtoError::InvalidValue("header key"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(ProtoError::InvalidValue("header value"));
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

fn valid_header_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The server's INFO (the fields this client uses; unknown fields are ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: i32,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub auth_required: bool,
    pub tls_required: bool,
    pub tls_verify: bool,
    pub tls_available: bool,
    pub max_payload: u64,
    pub nonce: Option<String>,
    pub connect_urls: Vec<String>,
    pub ldm: bool,
    pub client_id: u64,
    pub client_ip: String,
    pub connect_info: bool,
    pub remote_account: Option<String>,
}

/// One operation received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(Box<ServerInfo>),
    Msg(Box<RawMsg>),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// A MSG or HMSG as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMsg {
    pub sid: u64,
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_control_line: usize,
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_payload: HARD_MAX_PAYLOAD,
        }
    }
}

/// Parses one operation from the front of `buf`: `Ok(Some((op, consumed)))`, `Ok(None)` when more
/// bytes are needed, or an error for anything malformed or over a limit.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(ServerOp, usize)>, ProtoError> {
    let max_payload = limits.max_payload.min(HARD_MAX_PAYLOAD);
    // The line (without CRLF) may be at most max_control_line bytes.
    let window = &buf[..buf.len().min(limits.max_control_line + 2)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_control_line + 1 {
            return Err(ProtoError::ControlLineTooLong);
        }
        return Ok(None);
    };
    if nl == 0 || window[nl - 1] != b'\r' {
        return Err(ProtoError::MissingCrlf);
    }
    let line = &buf[..nl - 1];
    if line.len() > limits.max_control_line {
        return Err(ProtoError::ControlLineTooLong);
    }
    let line_end = nl + 1;
    let (op, args) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let simple = |o: ServerOp| {
        if args.iter().all(|b| *b == b' ' || *b == b'\t') {
            Ok(Some((o, line_end)))
        } else {
            Err(ProtoError::BadArgs)
        }
    };
    if op.eq_ignore_ascii_case(b"PING") {
        simple(ServerOp::Ping)
    } else if op.eq_ignore_ascii_case(b"PONG") {
        simple(ServerOp::Pong)
    } else if op.eq_ignore_ascii_case(b"+OK") {
        simple(ServerOp::Ok)
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        let text = std::str::from_utf8(args).map_err(|_| ProtoError::BadUtf8)?;
        let text = text.trim();
        let text = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(text);
        Ok(Some((ServerOp::Err(text.to_string()), line_end)))
    } else if op.eq_ignore_ascii_case(b"INFO") {
        let info: ServerInfo = serde_json::from_slice(args).map_err(|_| ProtoError::BadInfo)?;
        Ok(Some((ServerOp::Info(Box::new(info)), line_end)))
    } else if op.eq_ignore_ascii_case(b"MSG") || op.eq_ignore_ascii_case(b"HMSG") {
        let with_headers = op.len() == 4;
        let args = std::str::from_utf8(args).map_err(|_| ProtoError::BadUtf8)?;
        let parts: Vec<&str> = args.split_ascii_whitespace().collect();
        let (subject, sid, reply, hdr_len, total) = match (with_headers, parts.as_slice()) {
            (false, [s, id, n]) => (*s, *id, None, "0", *n),
            (false, [s, id, r, n]) => (*s, *id, Some(*r), "0", *n),
            (true, [s, id, h, n]) => (*s, *id, None, *h, *n),
            (true, [s, id, r, h, n]) => (*s, *id, Some(*r), *h, *n),
            _ => return Err(ProtoError::BadArgs),
        };
        let sid = parse_size(sid).ok_or(ProtoError::BadArgs)? as u64;
        let hdr_len = parse_size(hdr_len).ok_or(ProtoError::BadSize)?;
        let total = parse_size(total).ok_or(ProtoError::BadSize)?;
        if hdr_len > total {
            return Err(ProtoError::BadSize);
        }
        if total > max_payload {
            return Err(ProtoError::PayloadTooLarge);
        }
        if with_headers && hdr_len == 0 {
            return Err(ProtoError::BadHeaders);
        }
        let need = line_end + total + 2;
        if buf.len() < need {
            return Ok(None);
        }
        if &buf[line_end + total..need] != b"\r\n" {
            return Err(ProtoError::MissingCrlf);
        }
        let headers = if with_headers {
            Some(Headers::parse(&buf[line_end..line_end + hdr_len])?)
        } else {
            None
        };
        let msg = RawMsg {
            sid,
            subject: subject.to_string(),
            reply: reply.map(str::to_string),
            headers,
            payload: buf[line_end + hdr_len..line_end + total].to_vec(),
        };
        Ok(Some((ServerOp::Msg(Box::new(msg)), need)))
    } else {
        Err(ProtoError::UnknownOp)
    }
}

/// A decimal size: digits only, at most 10 of them (no sign, no overflow).
fn parse_size(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A subject (or reply subject) we can put on the wire: non-empty, no whitespace or control
/// characters.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

fn check(s: &str, what: &'static str) -> Result<(), ProtoError> {
    if valid_subject(s) {
        Ok(())
    } else {
        Err(ProtoError::InvalidValue(what))
    }
}

/// Appends `PUB` (or `HPUB` when `headers` is given) with its payload. Returns the message
/// size the server counts against `max_payload` (header block plus payload).
pub fn encode_pub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    headers: Option<&Headers>,
    payload: &[u8],
) -> Result<usize, ProtoError> {
    check(subject, "subject")?;
    if let Some(r) = reply {
        check(r, "reply subject")?;
    }
    let mut hdr = Vec::new();
    if let Some(h) = headers {
        h.encode(&mut hdr)?;
    }
    let line = match (headers.is_some(), reply) {
        (false, None) => format!("PUB {subject} {}\r\n", payload.len()),
        (false, Some(r)) => format!("PUB {subject} {r} {}\r\n", payload.len()),
        (true, None) => format!(
            "HPUB {subject} {} {}\r\n",
            hdr.len(),
            hdr.len() + payload.len()
        ),
        (true, Some(r)) => format!(
            "HPUB {subject} {r} {} {}\r\n",
            hdr.len(),
            hdr.len() + payload.len()
        ),
    };
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(hdr.len() + payload.len())
}

/// Appends `SUB subject [queue] sid`.
pub fn encode_sub(
    out: &mut Vec<u8>,
    subject: &str,
    queue: Option<&str>,
    sid: u64,
) -> Result<(), ProtoError> {
    check(subject, "subject")?;
    let line = match queue {
        Some(q) => {
            check(q, "queue group")?;
            format!("SUB {subject} {q} {sid}\r\n")
        }
        None => format!("SUB {subject} {sid}\r\n"),
    };
    out.extend_from_slice(line.as_bytes());
    Ok(())
}

/// Appends `UNSUB sid`.
pub fn encode_unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

/// Appends `CONNECT {json}`.
pub fn encode_connect(out: &mut Vec<u8>, json: &serde_json::Value) {
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(json.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn one(buf: &[u8]) -> Result<Option<(ServerOp, usize)>, ProtoError> {
        parse(buf, &lim())
    }

    /// Feeds `input` one byte at a time and returns all parsed ops.
    fn parse_all_split(input: &[u8], chunk: usize) -> Result<Vec<ServerOp>, ProtoError> {
        let mut buf = Vec::new();
        let mut ops = Vec::new();
        for c in input.chunks(chunk) {
            buf.extend_from_slice(c);
            while let Some((op, n)) = parse(&buf, &lim())? {
                ops.push(op);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(ops)
    }

    #[test]
    fn simple_ops() {
        assert_eq!(one(b"PING\r\n").unwrap(), Some((ServerOp::Ping, 6)));
        assert_eq!(one(b"pong\r\nPING").unwrap(), Some((ServerOp::Pong, 6)));
        assert_eq!(one(b"+OK\r\n").unwrap(), Some((ServerOp::Ok, 5)));
        assert_eq!(
            one(b"-ERR 'Authorization Violation'\r\n").unwrap(),
            Some((ServerOp::Err("Authorization Violation".into()), 32))
        );
        assert_eq!(one(b"PIN").unwrap(), None);
        assert_eq!(one(b"").unwrap(), None);
    }

    #[test]
    fn info_fields() {
        let line = br#"INFO {"server_id":"S","version":"2.15.1","max_payload":1048576,"headers":true,"nonce":"abc","connect_urls":["127.0.0.1:4223"],"ldm":true,"extra":{"x":1}}"#;
        let mut b = line.to_vec();
        b.extend_from_slice(b"\r\n");
        let Some((ServerOp::Info(i), n)) = one(&b).unwrap() else {
            panic!("not info")
        };
        assert_eq!(n, b.len());
        assert_eq!(i.version, "2.15.1");
        assert_eq!(i.max_payload, 1048576);
        assert_eq!(i.nonce.as_deref(), Some("abc"));
        assert_eq!(i.connect_urls, vec!["127.0.0.1:4223"]);
        assert!(i.ldm && i.headers);
        assert_eq!(one(b"INFO {not json}\r\n"), Err(ProtoError::BadInfo));
        assert_eq!(one(b"INFO\r\n"), Err(ProtoError::BadInfo));
    }

    #[test]
    fn msg_and_hmsg() {
        let (op, n) = one(b"MSG a.b 7 5\r\nhello\r\n").unwrap().unwrap();
        assert_eq!(n, 20);
        let ServerOp::Msg(m) = op else { panic!() };
        assert_eq!(
            (
                m.sid,
                m.subject.as_str(),
                m.reply.as_deref(),
                &m.payload[..]
            ),
            (7, "a.b", None, &b"hello"[..])
        );
        let ServerOp::Msg(m) = one(b"MSG a 1 _INBOX.x 0\r\n\r\n").unwrap().unwrap().0 else {
            panic!()
        };
        assert_eq!(m.reply.as_deref(), Some("_INBOX.x"));
        assert!(m.payload.is_empty());

        let hdr = b"NATS/1.0\r\nNats-Server-Xkey: XABC\r\nk: v1\r\nk: v2\r\n\r\n";
        let mut b = format!("HMSG s 3 r {} {}\r\n", hdr.len(), hdr.len() + 2).into_bytes();
        b.extend_from_slice(hdr);
        b.extend_from_slice(b"hi\r\n");
        let ServerOp::Msg(m) = one(&b).unwrap().unwrap().0 else {
            panic!()
        };
        let h = m.headers.unwrap();
        assert_eq!(h.get("Nats-Server-Xkey"), Some("XABC"));
        assert_eq!(h.get("nats-server-xkey"), None);
        assert_eq!(h.get_all("k").collect::<Vec<_>>(), vec!["v1", "v2"]);
        assert_eq!(m.payload, b"hi");
    }

    #[test]
    fn status_headers() {
        let h = Headers::parse(b"NATS/1.0 503\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(503));
        assert!(h.is_empty());
        let h = Headers::parse(b"NATS/1.0 408 Request Timeout\r\n\r\n").unwrap();
        assert_eq!(
            (h.status(), h.description()),
            (Some(408), Some("Request Timeout"))
        );
    }

    #[test]
    fn bad_header_blocks() {
        for bad in [
            &b"NATS/1.1\r\n\r\n"[..],
            b"NATS/1.0\r\nno-colon\r\n\r\n",
            b"NATS/1.0\r\n: empty key\r\n\r\n",
            b"NATS/1.0\r\nsp ace: v\r\n\r\n",
            b"NATS/1.0\r\nk: v\r\n",
            b"NATS/1.0 5x3\r\n\r\n",
            b"NATS/1.0\xff\r\n\r\n",
            b"HTTP/1.0\r\n\r\n",
            b"",
        ] {
            assert_eq!(Headers::parse(bad), Err(ProtoError::BadHeaders), "{bad:?}");
        }
        // inside an HMSG
        let hdr = b"NATS/1.0\r\nbroken\r\n\r\n";
        let mut b = format!("HMSG s 1 {} {}\r\n", hdr.len(), hdr.len()).into_bytes();
        b.extend_from_slice(hdr);
        b.extend_from_slice(b"\r\n");
        assert_eq!(one(&b), Err(ProtoError::BadHeaders));
        assert_eq!(one(b"HMSG s 1 0 0\r\n\r\n"), Err(ProtoError::BadHeaders));
    }

    #[test]
    fn bad_sizes_and_args() {
        assert_eq!(one(b"MSG a 1 -5\r\n"), Err(ProtoError::BadSize));
        assert_eq!(one(b"MSG a 1 +5\r\n"), Err(ProtoError::BadSize));
        assert_eq!(one(b"MSG a 1 5x\r\n"), Err(ProtoError::BadSize));
        assert_eq!(one(b"MSG a 1 99999999999\r\n"), Err(ProtoError::BadSize));
        assert_eq!(one(b"MSG a x 5\r\n"), Err(ProtoError::BadArgs));
        assert_eq!(one(b"MSG a 1\r\n"), Err(ProtoError::BadArgs));
        assert_eq!(one(b"MSG a 1 b c 5\r\n"), Err(ProtoError::BadArgs));
        assert_eq!(one(b"HMSG a 1 10 5\r\n"), Err(ProtoError::BadSize));
        assert_eq!(
            one(b"MSG a 1 9000000\r\n"),
            Err(ProtoError::PayloadTooLarge)
        );
        let small = Limits {
            max_payload: 4,
            ..lim()
        };
        assert_eq!(
            parse(b"MSG a 1 5\r\nhello\r\n", &small),
            Err(ProtoError::PayloadTooLarge)
        );
        // payload not followed by CRLF
        assert_eq!(one(b"MSG a 1 2\r\nhello\r\n"), Err(ProtoError::MissingCrlf));
        assert_eq!(one(b"PING x\r\n"), Err(ProtoError::BadArgs));
        assert_eq!(one(b"FOO\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"PING\n"), Err(ProtoError::MissingCrlf));
        assert_eq!(one(b"\r\n"), Err(ProtoError::UnknownOp));
        assert_eq!(one(b"MSG \xff 1 0\r\n\r\n"), Err(ProtoError::BadUtf8));
    }

    #[test]
    fn control_line_limit() {
        let l = Limits {
            max_control_line: 16,
            ..lim()
        };
        // exactly at the limit is fine
        let ok = b"-ERR 0123456789a\r\n";
        assert_eq!(ok.len() - 2, 16);
        assert!(parse(ok, &l).unwrap().is_some());
        // one more byte is refused, with or without the CRLF in the buffer
        assert_eq!(
            parse(b"-ERR 0123456789ab\r\n", &l),
            Err(ProtoError::ControlLineTooLong)
        );
        assert_eq!(parse(&[b'X'; 100], &l), Err(ProtoError::ControlLineTooLong));
        // an incomplete line below the limit waits for more
        assert_eq!(parse(b"-ERR 0123456789a", &l), Ok(None));
        assert_eq!(parse(b"-ERR 0123456789a\r", &l), Ok(None));
        // a huge line never makes us scan past the window
        let big = vec![b'A'; 1 << 20];
        assert_eq!(one(&big), Err(ProtoError::ControlLineTooLong));
    }

    #[test]
    fn split_reads_at_every_boundary() {
        let hdr = b"NATS/1.0\r\nA: 1\r\n\r\n";
        let mut input =
            b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 1 r.x 3\r\nabc\r\n".to_vec();
        input.extend_from_slice(format!("HMSG h 2 {} {}\r\n", hdr.len(), hdr.len() + 4).as_bytes());
        input.extend_from_slice(hdr);
        input.extend_from_slice(b"\r\n\r\n\r\n-ERR 'x y'\r\n+OK\r\nPONG\r\n");
        let whole = parse_all_split(&input, input.len()).unwrap();
        assert_eq!(whole.len(), 7);
        // payload may contain CRLF itself
        let ServerOp::Msg(m) = &whole[3] else {
            panic!()
        };
        assert_eq!(m.payload, b"\r\n\r\n");
        for chunk in 1..input.len() {
            assert_eq!(
                parse_all_split(&input, chunk).unwrap(),
                whole,
                "chunk {chunk}"
            );
        }
        // and every prefix is either incomplete or a complete op, never an error
        for cut in 0..input.len() {
            let _ = parse(&input[..cut], &lim()).unwrap();
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let alphabet = b"MSG HMSG INFO PING PONG +OK -ERR 0123456789 \r\n{}\":NATS/1.0abc\xff";
        for _ in 0..20_000 {
            let len = (seed % 64) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            if let Ok(Some((_, n))) = parse(&v, &lim()) {
                assert!(n <= v.len());
            }
        }
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        encode_pub(&mut out, "a.b", Some("r"), None, b"xy").unwrap();
        assert_eq!(out, b"PUB a.b r 2\r\nxy\r\n");
        out.clear();
        let mut h = Headers::new();
        h.insert("K", "v");
        encode_pub(&mut out, "a", None, Some(&h), b"p").unwrap();
        assert_eq!(out, b"HPUB a 18 19\r\nNATS/1.0\r\nK: v\r\n\r\np\r\n");
        out.clear();
        encode_sub(&mut out, "a.>", Some("q"), 9).unwrap();
        encode_unsub(&mut out, 9);
        assert_eq!(out, b"SUB a.> q 9\r\nUNSUB 9\r\n");
        for bad in ["", "a b", "a\r\nPUB x 1", "a\tb"] {
            assert!(encode_pub(&mut out, bad, None, None, b"").is_err());
            assert!(encode_sub(&mut out, "ok", Some(bad), 1).is_err());
        }
        let mut h = Headers::new();
        h.insert("K", "v\r\nInjected: 1");
        assert!(encode_pub(&mut out, "a", None, Some(&h), b"").is_err());
        let mut h = Headers::new();
        h.insert("K:", "v");
        assert!(encode_pub(&mut out, "a", None, Some(&h), b"").is_err());
    }

    #[test]
    fn headers_round_trip() {
        let mut h = Headers::new();
        h.append("Nats-Server-Xkey", "XKEY");
        h.append("multi", "1");
        h.append("multi", "2");
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        assert_eq!(Headers::parse(&out).unwrap(), h);
    }
}
