//! The connection: connect (bounded by `connect_timeout`), one reader thread per connection that
//! also keeps the link alive (PING/PONG) and reconnects for ever, a locked writer that writes
//! every operation immediately, and subscriptions delivering into bounded channels.
//!
//! Must never block the reader on a subscriber, never queue publishes while disconnected, and
//! never log a credential.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustls::ClientConnection;

use super::proto::{self, Headers, Limits, ServerInfo, ServerOp};
use super::{auth, tls, Error, Options, ServerAddr};
use crate::backoff::{jitter, Backoff};
use crate::metrics::Counter;

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

/// The write half of a live link (plain socket, or socket plus TLS session).
struct Link {
    tcp: TcpStream,
    tls: Option<ClientConnection>,
}

impl Link {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => self.tcp.write_all(data),
            Some(t) => {
                t.writer().write_all(data)?;
                while t.wants_write() {
                    t.write_tls(&mut self.tcp)?;
                }
                Ok(())
            }
        }
    }

    /// Decrypts raw bytes read from the socket into `out` (TLS only).
    fn absorb(&mut self, mut raw: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let Some(t) = &mut self.tls else {
            out.extend_from_slice(raw);
            return Ok(());
        };
        while !raw.is_empty() {
            t.read_tls(&mut raw)?;
            let st = t
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let n = st.plaintext_bytes_to_read();
            if n > 0 {
                let start = out.len();
                out.resize(start + n, 0);
                t.reader().read_exact(&mut out[start..])?;
            }
        }
        while t.wants_write() {
            t.write_tls(&mut self.tcp)?;
        }
        Ok(())
    }

    fn shutdown(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

struct Writer {
    link: Option<Link>,
    /// One entry per PING in flight, in order: `Some` for a flush waiting for its PONG.
    pongs: VecDeque<Option<Sender<()>>>,
    pings_out: u32,
}

struct SubEntry {
    subject: String,
    queue: Option<String>,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    dropped: Arc<AtomicU64>,
}

struct Pool {
    servers: Vec<ServerAddr>,
    current: usize,
}

struct Inner {
    opts: Options,
    writer: Mutex<Writer>,
    subs: Mutex<HashMap<u64, SubEntry>>,
    pool: Mutex<Pool>,
    info: Mutex<Option<ServerInfo>>,
    next_sid: AtomicU64,
    connected: AtomicBool,
    closed: AtomicBool,
    draining: AtomicBool,
    /// Count of `-ERR`s received, the count already reported by a flush, and the last text.
    err_seq: AtomicU64,
    err_reported: AtomicU64,
    last_error: Mutex<Option<String>>,
    wake: (Mutex<()>, Condvar),
    reader: Mutex<Option<JoinHandle<()>>>,
    dropped_total: Arc<Counter>,
    reconnects_total: Arc<Counter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes the connection when the last user handle goes away (the reader thread keeps only
/// `Inner`).
struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A NATS connection. Cheap to clone; `Send + Sync`. Closed when the last clone (including
/// those held by subscriptions) is dropped, or by [`Connection::close`].
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

/// A subscription: messages arrive on a bounded channel. Dropping it unsubscribes.
pub struct Subscription {
    conn: Connection,
    sid: u64,
    rx: Receiver<Message>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The channel of messages. It reports disconnected once the subscription is unsubscribed,
    /// drained or closed and every buffered message has been taken.
    pub fn receiver(&self) -> &Receiver<Message> {
        &self.rx
    }
    /// Messages dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub fn sid(&self) -> u64 {
        self.sid
    }
    /// Stops delivery at once (UNSUB); messages already in the channel stay readable, then the
    /// channel reports disconnected. Messages still in flight from the server are discarded.
    pub fn unsubscribe(&self) {
        self.conn.inner().unsubscribe(self.sid);
    }

    /// Graceful stop: UNSUB, wait (up to `timeout`) for the server to confirm with a PONG while
    /// still delivering what it sent before, then close the channel (readable until empty).
    /// The subscription is closed in every case.
    pub fn drain(&self, timeout: Duration) -> Result<(), Error> {
        self.conn.inner().drain_sids(&[self.sid], timeout)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// A freshly established link: writer half, reader half, the server's INFO and any bytes read
/// past the first PONG.
struct Established {
    link: Link,
    reader: TcpStream,
    info: ServerInfo,
    leftover: Vec<u8>,
}

/// Reads more plaintext into `buf`. `Ok(false)` on a read timeout.
fn fill(
    reader: &mut TcpStream,
    raw: &mut [u8],
    buf: &mut Vec<u8>,
    absorb: impl FnOnce(&[u8], &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<bool> {
    match reader.read(raw) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => absorb(&raw[..n], buf).map(|_| true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn limits(opts: &Options, info: Option<&ServerInfo>) -> Limits {
    let max_payload = match info.map(|i| i.max_payload) {
        Some(n) if n > 0 => (n as usize).min(proto::HARD_MAX_PAYLOAD),
        _ => proto::HARD_MAX_PAYLOAD,
    };
    Limits {
        max_control_line: opts.max_control_line,
        max_payload,
    }
}

fn remaining(deadline: Instant) -> Result<Duration, Error> {
    let r = deadline.saturating_duration_since(Instant::now());
    if r < Duration::from_millis(1) {
        Err(Error::Timeout)
    } else {
        Ok(r)
    }
}

/// One connect attempt to `addr`, all of it bounded by `opts.connect_timeout`.
fn establish(opts: &Options, addr: &ServerAddr) -> Result<Established, Error> {
    let deadline = Instant::now() + opts.connect_timeout;
    let mut last = Error::Io(io::Error::new(
        io::ErrorKind::NotFound,
        "server address did not resolve",
    ));
    let mut tcp = None;
    for sa in (addr.host.as_str(), addr.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, remaining(deadline)?) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e.into(),
        }
    }
    let tcp = tcp.ok_or(last)?;
    tcp.set_nodelay(true)?;
    let mut reader = tcp.try_clone()?;
    let set_deadline = |s: &TcpStream| -> Result<(), Error> {
        let r = remaining(deadline)?;
        s.set_read_timeout(Some(r))?;
        s.set_write_timeout(Some(r))?;
        Ok(())
    };
    set_deadline(&tcp)?;

    // INFO comes first, in plain text.
    let mut raw = vec![0u8; 16 * 1024];
    let mut buf = Vec::new();
    let lim = limits(opts, None);
    let mut info = loop {
        if let Some((op, n)) = proto::parse(&buf, &lim)? {
            buf.drain(..n);
            match op {
                ServerOp::Info(i) => break *i,
                ServerOp::Err(t) => return Err(Error::Server(t)),
                _ => return Err(Error::Protocol(proto::ProtoError::UnknownOp)),
            }
        }
        set_deadline(&reader)?;
        if !fill(&mut reader, &mut raw, &mut buf, |r, b| {
            b.extend_from_slice(r);
            Ok(())
        })? {
            return Err(Error::Timeout);
        }
    };

    let use_tls = addr.tls || opts.tls.required || info.tls_required;
    let mut link = Link { tcp, tls: None };
    if use_tls {
        let config = tls::client_config(&opts.tls)?;
        let mut session = tls::session(config, &addr.host)?;
        while session.is_handshaking() {
            set_deadline(&link.tcp)?;
            session
                .complete_io(&mut link.tcp)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
                    _ => Error::Tls(e.to_string()),
                })?;
        }
        link.tls = Some(session);
    }

    let connect = auth::connect_json(&opts.auth, info.nonce.as_deref(), &opts.name, use_tls)?;
    let mut out = Vec::with_capacity(512);
    proto::encode_connect(&mut out, &connect);
    out.extend_from_slice(proto::PING);
    set_deadline(&link.tcp)?;
    link.write_all(&out)?;

    let lim = limits(opts, Some(&info));
    loop {
        while let Some((op, n)) = proto::parse(&buf, &lim)? {
            buf.drain(..n);
            match op {
                ServerOp::Pong => {
                    return Ok(Established {
                        link,
                        reader,
                        info,
                        leftover: buf,
                    })
                }
                ServerOp::Ping => link.write_all(proto::PONG)?,
                ServerOp::Err(t) => return Err(Error::Server(t)),
                ServerOp::Info(i) => info = *i,
                ServerOp::Ok | ServerOp::Msg(_) => {}
            }
        }
        set_deadline(&reader)?;
        let got = fill(&mut reader, &mut raw, &mut buf, |r, b| link.absorb(r, b));
        match got {
            Ok(true) => {}
            Ok(false) => return Err(Error::Timeout),
            Err(e) if link.tls.is_some() && e.kind() == io::ErrorKind::InvalidData => {
                return Err(Error::Tls(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Connection {
    /// Connects to the first server that accepts us, trying each once in order (each attempt
    /// bounded by `connect_timeout`), and starts the reader thread. Returns the last error if
    /// none does.
    pub fn connect(opts: Options) -> Result<Connection, Error> {
        if opts.servers.is_empty() {
            return Err(Error::Config("no NATS server URL".into()));
        }
        let servers = opts
            .servers
            .iter()
            .map(|u| ServerAddr::parse(u, opts.tls.required))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = crate::metrics::global();
        let inner = Arc::new(Inner {
            writer: Mutex::new(Writer {
                link: None,
                pongs: VecDeque::new(),
                pings_out: 0,
            }),
            subs: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool {
                servers: servers.clone(),
                current: 0,
            }),
            info: Mutex::new(None),
            next_sid: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            err_seq: AtomicU64::new(0),
            err_reported: AtomicU64::new(0),
            last_error: Mutex::new(None),
            wake: (Mutex::new(()), Condvar::new()),
            reader: Mutex::new(None),
            dropped_total: metrics.counter(
                super::METRIC_DROPPED,
                "NATS messages dropped because a subscription queue was full.",
                &[],
            ),
            reconnects_total: metrics.counter(
                super::METRIC_RECONNECTS,
                "NATS reconnects that succeeded.",
                &[],
            ),
            opts,
        });
        let mut last = Error::NotConnected;
        for (i, addr) in servers.iter().enumerate() {
            match establish(&inner.opts, addr) {
                Ok(est) => {
                    lock(&inner.pool).current = i;
                    log::info!(server = addr.to_string().as_str(); "NATS connected");
                    let (reader, leftover) = inner.install(est)?;
                    let thread_inner = inner.clone();
                    let h = std::thread::Builder::new()
                        .name("nats-reader".into())
                        .spawn(move || thread_inner.run(reader, leftover))?;
                    *lock(&inner.reader) = Some(h);
                    return Ok(Connection {
                        handle: Arc::new(Handle(inner)),
                    });
                }
                Err(e) => {
                    log::warn!(server = addr.to_string().as_str(), reason = e.code(); "NATS connect failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.0
    }

    /// Subscribes; messages go into a channel of `capacity` (at least 1). When the channel is
    /// full, messages are dropped and counted, never waited for. While disconnected the
    /// subscription is registered and sent on reconnect.
    pub fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
        capacity: usize,
    ) -> Result<Subscription, Error> {
        let inner = self.inner();
        if inner.closed.load(Ordering::SeqCst) || inner.draining.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let sid = inner.next_sid.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        proto::encode_sub(&mut out, subject, queue, sid)?;
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut w = lock(&inner.writer);
        lock(&inner.subs).insert(
            sid,
            SubEntry {
                subject: subject.to_string(),
                queue: queue.map(str::to_string),
                tx,
                rx: rx.clone(),
                dropped: dropped.clone(),
            },
        );
        if let Some(link) = &mut w.link {
            if let Err(e) = link.write_all(&out) {
                // The reader will notice and resubscribe after reconnecting.
                link.shutdown();
                log::warn!(reason = "write_failed"; "NATS write failed: {e}");
            }
        }
        drop(w);
        Ok(Subscription {
            conn: self.clone(),
            sid,
            rx,
            dropped,
        })
    }

    /// Publishes (written to the socket before returning). Fails while disconnected.
    pub fn publish(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> Result<(), Error> {
        self.publish_inner(subject, reply, None, payload)
    }

    /// Publishes with a header block (HPUB).
    pub fn publish_with_headers(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &Headers,
        payload: &[u8],
    ) -> Result<(), Error> {
        self.publish_inner(subject, reply, Some(headers), payload)
    }

    fn publish_inner(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Headers>,
        payload: &[u8],
    ) -> Result<(), Error> {
        let inner = self.inner();
        let max = limits(&inner.opts, lock(&inner.info).as_ref()).max_payload;
        let mut out = Vec::with_capacity(payload.len() + 64);
        let size = proto::encode_pub(&mut out, subject, reply, headers, payload)?;
        if size > max {
            return Err(Error::PayloadTooLarge);
        }
        inner.write(&out)
    }

    /// Round trip PING→PONG: every operation written before has been processed by the server.
    /// Returns the server's `-ERR` (e.g. a permissions violation) if one arrived since the
    /// previous flush returned (the server sends it before the PONG, so an error caused by an
    /// earlier publish is never missed; with concurrent flushes only one of them reports it).
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.inner().flush(timeout)
    }

    pub fn is_connected(&self) -> bool {
        self.inner().connected.load(Ordering::SeqCst)
    }

    /// The latest INFO of the current server.
    pub fn server_info(&self) -> Option<ServerInfo> {
        lock(&self.inner().info).clone()
    }

    /// The text of the last `-ERR` the server sent, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.inner().last_error).clone()
    }

    /// The server currently (or last) connected to, as a URL.
    pub fn current_server(&self) -> String {
        let p = lock(&self.inner().pool);
        p.servers[p.current].to_string()
    }

    /// First half of a drain: UNSUB every subscription, wait (up to `timeout`) for the server to
    /// confirm, then close the subscription channels (they stay readable until empty, then
    /// report disconnected). The connection stays open so replies can still be published.
    pub fn drain_subscriptions(&self, timeout: Duration) -> Result<(), Error> {
        let inner = self.inner();
        inner.draining.store(true, Ordering::SeqCst);
        let sids: Vec<u64> = lock(&inner.subs).keys().copied().collect();
        inner.drain_sids(&sids, timeout)
    }

    /// Graceful shutdown: [`Connection::drain_subscriptions`], wait until every subscription
    /// channel has been emptied by its owner, flush what the owner published, close. All of it
    /// bounded by `timeout`; the connection is closed in every case.
    pub fn drain(&self, timeout: Duration) -> Result<(), Error> {
        let inner = self.inner();
        let deadline = Instant::now() + timeout;
        let receivers: Vec<Receiver<Message>> =
            lock(&inner.subs).values().map(|s| s.rx.clone()).collect();
        let mut result = self.drain_subscriptions(timeout);
        while receivers.iter().any(|r| !r.is_empty()) {
            if Instant::now() >= deadline {
                result = result.and(Err(Error::Timeout));
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Ok(left) = remaining(deadline) {
            if let Err(e) = inner.flush(left) {
                if !matches!(e, Error::Server(_)) {
                    result = result.and(Err(e));
                }
            }
        }
        inner.close();
        result
    }

    /// Closes at once: no more messages, publishes fail, the reader thread ends.
    pub fn close(&self) {
        self.inner().close();
    }
}

impl Inner {
    /// Makes `est` the live link: resubscribes every registered subscription (same sids) and
    /// installs the writer. Returns the reader half.
    fn install(&self, est: Established) -> Result<(TcpStream, Vec<u8>), Error> {
        let Established {
            mut link,
            reader,
            info,
            leftover,
        } = est;
        let tick = self
            .opts
            .ping_interval
            .min(Duration::from_millis(250))
            .max(Duration::from_millis(10));
        reader.set_read_timeout(Some(tick))?;
        link.tcp.set_write_timeout(Some(self.opts.write_timeout))?;
        self.merge_connect_urls(&info);
        *lock(&self.info) = Some(info);
        let mut w = lock(&self.writer);
        if self.closed.load(Ordering::SeqCst) {
            link.shutdown();
            return Err(Error::Closed);
        }
        let mut out = Vec::new();
        for (sid, s) in lock(&self.subs).iter() {
            proto::encode_sub(&mut out, &s.subject, s.queue.as_deref(), *sid)?;
        }
        if !out.is_empty() {
            link.write_all(&out)?;
        }
        w.link = Some(link);
        w.pongs.clear();
        w.pings_out = 0;
        self.connected.store(true, Ordering::SeqCst);
        Ok((reader, leftover))
    }

    fn merge_connect_urls(&self, info: &ServerInfo) {
        let mut pool = lock(&self.pool);
        let tls = pool.servers.get(pool.current).is_some_and(|s| s.tls);
        for u in &info.connect_urls {
            if let Ok(a) = ServerAddr::parse(u, tls || self.opts.tls.required) {
                if !pool
                    .servers
                    .iter()
                    .any(|s| s.host == a.host && s.port == a.port)
                {
                    log::info!(server = a.to_string().as_str(); "NATS server added from INFO");
                    pool.servers.push(a);
                }
            }
        }
    }

    fn write(&self, data: &[u8]) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let mut w = lock(&self.writer);
        let link = w.link.as_mut().ok_or(Error::NotConnected)?;
        if let Err(e) = link.write_all(data) {
            link.shutdown();
            w.link = None;
            self.connected.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let mut w = lock(&self.writer);
            let link = w.link.as_mut().ok_or(Error::NotConnected)?;
            if let Err(e) = link.write_all(proto::PING) {
                link.shutdown();
                return Err(e.into());
            }
            w.pongs.push_back(Some(tx));
        }
        match rx.recv_timeout(timeout) {
            Ok(()) => {
                let seq = self.err_seq.load(Ordering::SeqCst);
                if self.err_reported.swap(seq, Ordering::SeqCst) != seq {
                    let text = lock(&self.last_error).clone().unwrap_or_default();
                    return Err(Error::Server(text));
                }
                Ok(())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::NotConnected),
        }
    }

    /// UNSUB `sids`, wait (up to `timeout`) for the PONG that confirms it, then close their
    /// channels (readable until empty). A server `-ERR` meanwhile is not a drain failure.
    fn drain_sids(&self, sids: &[u64], timeout: Duration) -> Result<(), Error> {
        let mut out = Vec::new();
        for sid in sids {
            proto::encode_unsub(&mut out, *sid);
        }
        let sent = if out.is_empty() {
            Ok(())
        } else {
            self.write(&out)
        };
        let flushed = sent.and_then(|_| self.flush(timeout));
        // No new message can arrive for these sids once the PONG came back.
        let mut subs = lock(&self.subs);
        for sid in sids {
            subs.remove(sid);
        }
        drop(subs);
        match flushed {
            Err(Error::Server(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn unsubscribe(&self, sid: u64) {
        let mut w = lock(&self.writer);
        if lock(&self.subs).remove(&sid).is_none() {
            return;
        }
        if let Some(link) = &mut w.link {
            let mut out = Vec::new();
            proto::encode_unsub(&mut out, sid);
            if link.write_all(&out).is_err() {
                link.shutdown();
            }
        }
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut w = lock(&self.writer);
            if let Some(link) = w.link.take() {
                link.shutdown();
            }
            w.pongs.clear();
        }
        self.connected.store(false, Ordering::SeqCst);
        lock(&self.subs).clear();
        self.wake.1.notify_all();
        // Wait briefly for the reader to finish; one stuck in a connect attempt is left to end
        // on its own (it sees `closed` and drops what it connected), so close never blocks long.
        let h = lock(&self.reader).take();
        if let Some(h) = h {
            if h.thread().id() != std::thread::current().id() {
                let deadline = Instant::now() + Duration::from_secs(1);
                while !h.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if h.is_finished() {
                    let _ = h.join();
                }
            }
        }
    }

    /// Sleeps up to `d`, waking early on close. Returns false if closed.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.wake.0);
        while !self.closed.load(Ordering::SeqCst) {
            let Ok(left) = remaining(deadline) else {
                return true;
            };
            g = self
                .wake
                .1
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        false
    }

    /// The reader thread: read and dispatch until the link dies, then reconnect; until closed.
    fn run(self: Arc<Self>, mut reader: TcpStream, mut buf: Vec<u8>) {
        loop {
            let outcome = self.read_loop(&mut reader, &mut buf);
            {
                let mut w = lock(&self.writer);
                if let Some(link) = w.link.take() {
                    link.shutdown();
                }
                w.pongs.clear();
            }
            self.connected.store(false, Ordering::SeqCst);
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let lame_duck = matches!(outcome, Err(Error::Server(ref s)) if s == "lame duck mode");
            match &outcome {
                Err(e) => {
                    log::warn!(reason = e.code(); "NATS link lost: {e}")
                }
                Ok(()) => log::warn!(reason = "eof"; "NATS link lost"),
            }
            match self.reconnect(lame_duck) {
                Some((r, b)) => {
                    reader = r;
                    buf = b;
                }
                None => return,
            }
        }
    }

    fn reconnect(&self, lame_duck: bool) -> Option<(TcpStream, Vec<u8>)> {
        let mut backoff = Backoff::new(
            self.opts.reconnect_initial,
            self.opts.reconnect_max,
            Duration::from_secs(60),
        );
        if !lame_duck && !self.sleep(jitter(self.opts.reconnect_initial)) {
            return None;
        }
        let mut failures = 0usize;
        let mut idx = {
            let p = lock(&self.pool);
            (p.current + 1) % p.servers.len()
        };
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            let (addr, n) = {
                let p = lock(&self.pool);
                idx %= p.servers.len();
                (p.servers[idx].clone(), p.servers.len())
            };
            match establish(&self.opts, &addr) {
                Ok(est) => {
                    lock(&self.pool).current = idx;
                    match self.install(est) {
                        Ok(r) => {
                            self.reconnects_total.inc();
                            log::info!(server = addr.to_string().as_str(); "NATS reconnected");
                            return Some(r);
                        }
                        Err(Error::Closed) => return None,
                        Err(e) => log::warn!(reason = e.code(); "NATS resubscribe failed: {e}"),
                    }
                }
                Err(e) => {
                    // One warning per server per outage (and a reminder now and then), not one
                    // per attempt.
                    let level = if failures < n || failures % (n * 50) == 0 {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    log::log!(level, server = addr.to_string().as_str(), reason = e.code(), attempt = failures + 1; "NATS reconnect failed: {e}")
                }
            }
            idx += 1;
            failures += 1;
            if failures % n == 0 && !self.sleep(backoff.next_delay()) {
                return None;
            }
        }
    }

    /// Reads and dispatches until the link dies (`Err`) or closes cleanly (`Ok`).
    fn read_loop(&self, reader: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Error> {
        let mut raw = vec![0u8; 64 * 1024];
        let mut last_ping = Instant::now();
        let is_tls = lock(&self.writer)
            .link
            .as_ref()
            .is_some_and(|l| l.tls.is_some());
        loop {
            let lim = limits(&self.opts, lock(&self.info).as_ref());
            let mut start = 0;
            while let Some((op, n)) = proto::parse(&buf[start..], &lim)? {
                start += n;
                self.handle(op)?;
            }
            buf.drain(..start);
            if self.closed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let got = if is_tls {
                fill(reader, &mut raw, buf, |r, b| {
                    let mut w = lock(&self.writer);
                    match &mut w.link {
                        Some(l) => l.absorb(r, b),
                        None => Err(io::ErrorKind::NotConnected.into()),
                    }
                })?
            } else {
                fill(reader, &mut raw, buf, |r, b| {
                    b.extend_from_slice(r);
                    Ok(())
                })?
            };
            if !got && last_ping.elapsed() >= self.opts.ping_interval {
                last_ping = Instant::now();
                let mut w = lock(&self.writer);
                if w.pings_out >= self.opts.max_pings_out {
                    return Err(Error::Timeout);
                }
                let link = w.link.as_mut().ok_or(Error::NotConnected)?;
                link.write_all(proto::PING)?;
                w.pongs.push_back(None);
                w.pings_out += 1;
            }
        }
    }

    fn handle(&self, op: ServerOp) -> Result<(), Error> {
        match op {
            ServerOp::Msg(m) => {
                let subs = lock(&self.subs);
                if let Some(s) = subs.get(&m.sid) {
                    let msg = Message {
                        subject: m.subject,
                        reply: m.reply,
                        headers: m.headers,
                        payload: m.payload,
                    };
                    match s.tx.try_send(msg) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                            self.dropped_total.inc();
                        }
                        Err(TrySendError::Disconnected(_)) => {}
                    }
                }
            }
            ServerOp::Ping => {
                let mut w = lock(&self.writer);
                if let Some(link) = &mut w.link {
                    link.write_all(proto::PONG)?;
                }
            }
            ServerOp::Pong => {
                let mut w = lock(&self.writer);
                w.pings_out = 0;
                if let Some(Some(tx)) = w.pongs.pop_front() {
                    let _ = tx.send(());
                }
            }
            ServerOp::Ok => {}
            ServerOp::Err(text) => {
                log::warn!(reason = super::server_error_code(&text); "NATS server error: {text}");
                *lock(&self.last_error) = Some(text);
                self.err_seq.fetch_add(1, Ordering::SeqCst);
            }
            ServerOp::Info(info) => {
                self.merge_connect_urls(&info);
                let ldm = info.ldm;
                let mut info = *info;
                let mut cur = lock(&self.info);
                // A later INFO (connect_info, cluster changes) carries no nonce; keep the one
                // this connection was authenticated with.
                if info.nonce.is_none() {
                    info.nonce = cur.as_ref().and_then(|i| i.nonce.clone());
                }
                *cur = Some(info);
                drop(cur);
                if ldm {
                    log::warn!(reason = "lame_duck"; "NATS server entered lame duck mode, moving");
                    return Err(Error::Server("lame duck mode".into()));
                }
            }
        }
        Ok(())
    }
}
