//! The listeners: connections accepted within a budget, HTTP/1.1 under time limits, JSON
//! for the answers hyper gives by itself, and the stop. See docs/sidecar.md, "Connections".

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tower::Service;

use odoo_session_sidecar::metrics::{ClosedLabels, ListenerLabels, Metrics};

/// From the first byte of a request head (or from the accept, for a new connection) to
/// its last: a client that sends its head slower than this is answered
/// `408 header_timeout` and disconnected (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive connection with no request for this long is closed. The addon keeps one
/// connection per thread for its process's lifetime and reconnects (resending the request)
/// when it finds its idle connection closed, so this only frees what idle clients hold.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An answer the client does not read for this long (the socket buffer full) ends the
/// connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers): hyper answers
/// `431 headers_too_large` beyond it, or beyond 100 headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Connections at once on the health listener (probes and metrics scrapers): its own
/// budget, so a flood of the session listener cannot starve the probes, and the reverse.
pub const HEALTH_CONNECTIONS: usize = 64;

/// Connections at once on the session listener, at most; fewer when the open-file limit
/// leaves less (see `session_budget`).
pub const MAX_CONNECTIONS: usize = 4096;

/// Files kept for everything else: listeners, logs, name look-ups, Sentinel connections.
const RESERVED_FILES: usize = 64;

/// Refused connections being answered `503 too_many_connections` at once; more are closed
/// without an answer.
const REFUSING_AT_ONCE: usize = 64;

/// How often a connection's time limits are checked.
const TICK: Duration = Duration::from_millis(500);

/// Bytes of a request head kept to say what was wrong when hyper refuses it.
const SAMPLE_BYTES: usize = 8 * 1024;

/// Raises the soft open-file limit to the hard one (as Go and nginx do) and returns it.
pub fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur)
}

/// The session listener's budget: `MAX_CONNECTIONS`, or what the open-file limit leaves
/// after the health listener, the refusals in progress, the backend connections and
/// `RESERVED_FILES`; at least 8.
pub fn session_budget(open_files: Option<u64>, backend_connections: usize) -> usize {
    let Some(files) = open_files else {
        return MAX_CONNECTIONS;
    };
    let files = usize::try_from(files).unwrap_or(usize::MAX);
    let others = HEALTH_CONNECTIONS + 2 * REFUSING_AT_ONCE + backend_connections + RESERVED_FILES;
    files.saturating_sub(others).clamp(8, MAX_CONNECTIONS)
}

/// A listener's open connections, its budget, and when the count last changed (the drain
/// waits for a quiet session listener).
pub struct Connections {
    /// `session` or `health`, in logs and metrics.
    pub name: &'static str,
    pub cap: usize,
    open: AtomicUsize,
    last_change: Mutex<Instant>,
    refusing: AtomicUsize,
    refused_since_warning: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(name: &'static str, cap: usize, metrics: Arc<Metrics>) -> Self {
        Connections {
            name,
            cap,
            open: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
            refusing: AtomicUsize::new(0),
            refused_since_warning: AtomicU64::new(0),
            last_warning: Mutex::new(None),
            metrics,
        }
    }

    fn labels(&self) -> ListenerLabels {
        ListenerLabels {
            listener: self.name,
        }
    }

    /// Takes a place in the budget, or says it is full.
    fn open(self: &Arc<Self>) -> Option<Slot> {
        let mut t = self.last_change.lock();
        if self.open.load(Ordering::Acquire) >= self.cap {
            return None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        *t = Instant::now();
        drop(t);
        self.metrics.connections.get_or_create(&self.labels()).inc();
        Some(Slot(self.clone()))
    }

    fn closed(&self) {
        let mut t = self.last_change.lock();
        self.open.fetch_sub(1, Ordering::AcqRel);
        *t = Instant::now();
        drop(t);
        self.metrics.connections.get_or_create(&self.labels()).dec();
    }

    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Open connections, and how long none has been open (zero while some are).
    pub fn quiet_for(&self, not_before: Instant) -> (usize, Duration) {
        let t = self.last_change.lock();
        let open = self.open.load(Ordering::Acquire);
        if open > 0 {
            return (open, Duration::ZERO);
        }
        (0, Instant::now().duration_since((*t).max(not_before)))
    }

    /// Waits until every connection has closed, at most `limit`; false if some remain.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while self.open_now() > 0 {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn count_closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&ClosedLabels {
                listener: self.name,
                reason,
            })
            .inc();
    }

    /// One warning per 10 s at most while connections are refused.
    fn note_refused(&self) {
        self.metrics
            .connections_refused
            .get_or_create(&self.labels())
            .inc();
        let refused = self.refused_since_warning.fetch_add(1, Ordering::AcqRel) + 1;
        let mut last = self.last_warning.lock();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        *last = Some(Instant::now());
        self.refused_since_warning.store(0, Ordering::Release);
        tracing::warn!(
            listener = self.name,
            max_connections = self.cap,
            refused,
            "connection refused with 503 too_many_connections: the {} listener already holds its {} connections (at most one warning per 10 s)",
            self.name,
            self.cap
        );
    }
}

/// A place in a listener's budget, given back when the connection is dropped.
struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.closed();
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Requests and answers are single writes: no Nagle delay.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// A write that never waits (for the last words of a connection being dropped).
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(bytes),
            Stream::Unix(s) => s.try_write(bytes),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Serves `listener` until `stop` turns true, then tells every connection to finish its
/// request and close. Returns once the listener is closed; the caller waits for the
/// connections with `Connections::wait_closed`.
pub async fn serve(
    listener: Listener,
    app: Router,
    conns: Arc<Connections>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(stop.clone()) => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // A connection that failed before it was accepted concerns that client only;
                // anything else (out of files) is retried after a pause.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tracing::warn!(listener = conns.name, error = %e, "cannot accept a connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        match conns.open() {
            Some(slot) => {
                tokio::spawn(connection(stream, slot, app.clone(), stop.clone()));
            }
            None => refuse(stream, &conns),
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: stop too.
    let _ = rx.wait_for(|s| *s).await;
}

fn json_answer(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers `503 too_many_connections` and closes, within 1 s; beyond `REFUSING_AT_ONCE`
/// refusals at once, closes without an answer.
fn refuse(stream: Stream, conns: &Arc<Connections>) {
    conns.note_refused();
    if conns.refusing.fetch_add(1, Ordering::AcqRel) >= REFUSING_AT_ONCE {
        conns.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let conns = conns.clone();
    let answer = json_answer(
        503,
        "Service Unavailable",
        "too_many_connections",
        &format!(
            "the sidecar's {} listener already holds its {} connections: retry later, or close idle connections",
            conns.name, conns.cap
        ),
    );
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut buf = [0u8; 4096];
            // Let the request arrive first, so that the close is not a reset that loses
            // the answer.
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            while stream.read(&mut buf).await? > 0 {}
            Ok::<(), io::Error>(())
        })
        .await;
        conns.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

const NONE: u64 = u64::MAX;

/// One connection's state, shared by its I/O, its service and its watchdog. Times are
/// milliseconds since the accept.
struct ConnState {
    epoch: Instant,
    /// A request is with the app (its head was read, its answer not yet handed over).
    in_request: AtomicBool,
    /// Requests handed to the app so far.
    calls: AtomicU64,
    /// When the head being read began (the accept for the first one); `NONE` when no head
    /// is being read.
    head_started: AtomicU64,
    /// Bytes of the head being read have arrived.
    head_bytes: AtomicBool,
    /// When the last answer was handed over (the idle time counts from there).
    idle_since: AtomicU64,
    /// Since when a write waits for the client to read; `NONE` when none waits.
    write_blocked: AtomicU64,
    /// The head timed out: the connection's last words are a 408.
    timed_out: AtomicBool,
}

enum Verdict {
    Fine,
    Idle,
    HeadTimeout,
    WriteTimeout,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            in_request: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            head_bytes: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(NONE),
            timed_out: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        ms(self.epoch.elapsed())
    }

    fn request_began(&self) {
        self.head_started.store(NONE, Ordering::Release);
        self.head_bytes.store(false, Ordering::Release);
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.in_request.store(true, Ordering::Release);
    }

    fn request_answered(&self) {
        self.idle_since.store(self.now(), Ordering::Release);
        self.in_request.store(false, Ordering::Release);
    }

    fn read_head_bytes(&self) {
        if self.in_request.load(Ordering::Acquire) {
            return;
        }
        if self.head_started.load(Ordering::Acquire) == NONE {
            self.head_started.store(self.now(), Ordering::Release);
        }
        self.head_bytes.store(true, Ordering::Release);
    }

    fn verdict(&self) -> Verdict {
        let now = self.now();
        let blocked = self.write_blocked.load(Ordering::Acquire);
        if blocked != NONE && now.saturating_sub(blocked) > ms(WRITE_TIMEOUT) {
            return Verdict::WriteTimeout;
        }
        if self.in_request.load(Ordering::Acquire) {
            return Verdict::Fine;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != NONE {
            if now.saturating_sub(head) > ms(HEADER_TIMEOUT) {
                return Verdict::HeadTimeout;
            }
            return Verdict::Fine;
        }
        if now.saturating_sub(self.idle_since.load(Ordering::Acquire)) > ms(IDLE_TIMEOUT) {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// Serves one connection: hyper's HTTP/1.1 with the app behind it, and a watchdog for the
/// time limits.
async fn connection(stream: Stream, slot: Slot, app: Router, stop: watch::Receiver<bool>) {
    let state = Arc::new(ConnState::new());
    let conns = slot.0.clone();
    let io = ConnIo {
        stream,
        state: state.clone(),
        _slot: slot,
        seen_calls: 0,
        sample: Vec::new(),
        sample_calls: 0,
        replaced: None,
    };
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let state = service_state.clone();
        state.request_began();
        let mut app = app.clone();
        async move {
            let answer = app.call(req).await;
            state.request_answered();
            answer
        }
    });
    let mut builder = http1::Builder::new();
    // A head is refused past MAX_HEAD_BYTES once parsed, or once the read buffer holds
    // more than that and a little more without a complete head.
    builder
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES + 16 * 1024)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = conns.name, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped(stop.clone()), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => match state.verdict() {
                Verdict::Fine => {}
                Verdict::Idle => {
                    if !closing {
                        closing = true;
                        conns.count_closed("idle");
                        // Closes at once when idle; a request that has just arrived is
                        // answered first.
                        served.as_mut().graceful_shutdown();
                    }
                }
                Verdict::HeadTimeout => {
                    conns.count_closed("header_timeout");
                    state.timed_out.store(true, Ordering::Release);
                    tracing::debug!(listener = conns.name, "request head not received within {} s: connection closed", HEADER_TIMEOUT.as_secs());
                    return;
                }
                Verdict::WriteTimeout => {
                    conns.count_closed("write_timeout");
                    tracing::debug!(listener = conns.name, "answer not read by the client within {} s: connection closed", WRITE_TIMEOUT.as_secs());
                    return;
                }
            }
        }
    }
}

/// The connection's I/O: counts it in its listener's budget, feeds the watchdog, and
/// turns hyper's own bodiless error answers (400, 414, 431) into JSON ones.
struct ConnIo {
    stream: Stream,
    state: Arc<ConnState>,
    _slot: Slot,
    /// `state.calls` when the current answer began.
    seen_calls: u64,
    /// The first bytes of the head being read, to say what hyper refused.
    sample: Vec<u8>,
    sample_calls: u64,
    /// Hyper's error answer was replaced by this one (bytes, how many are written); every
    /// later write of hyper's is swallowed.
    replaced: Option<(Vec<u8>, usize)>,
}

impl ConnIo {
    fn poll_replaced(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, done)) = &mut self.replaced {
            while *done < bytes.len() {
                let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*done..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *done += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.state.timed_out.load(Ordering::Acquire)
            && self.state.head_bytes.load(Ordering::Acquire)
        {
            let answer = json_answer(
                408,
                "Request Timeout",
                "header_timeout",
                &format!(
                    "the request head did not arrive within {} s",
                    HEADER_TIMEOUT.as_secs()
                ),
            );
            let _ = self.stream.try_write(&answer);
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if matches!(r, Poll::Ready(Ok(()))) && !got.is_empty() {
            let calls = this.state.calls.load(Ordering::Acquire);
            if calls != this.sample_calls {
                this.sample.clear();
                this.sample_calls = calls;
            }
            if !this.state.in_request.load(Ordering::Acquire) {
                this.state.read_head_bytes();
                let room = SAMPLE_BYTES.saturating_sub(this.sample.len());
                this.sample.extend_from_slice(&got[..got.len().min(room)]);
            }
        }
        r
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced.is_some() {
            ready!(this.poll_replaced(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let calls = this.state.calls.load(Ordering::Acquire);
        if calls == this.seen_calls {
            // No request reached the app since the last answer began, yet hyper answers:
            // its own answer to a head it could not parse.
            if let Some(status) = automatic_status(buf) {
                this.replaced = Some((refusal(status, &this.sample), 0));
                // What is not written now is written by the flush or the shutdown.
                if let Poll::Ready(Err(e)) = this.poll_replaced(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(buf.len()));
            }
        }
        this.seen_calls = calls;
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        let blocked = if r.is_pending() {
            match this.state.write_blocked.load(Ordering::Acquire) {
                NONE => this.state.now(),
                since => since,
            }
        } else {
            NONE
        };
        this.state.write_blocked.store(blocked, Ordering::Release);
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replaced(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replaced(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// The status of hyper's automatic answer to a head it refused: `HTTP/1.1 400`, `414` or
/// `431` with `content-length: 0` (an answer of the app always has a JSON body, and a
/// body never holds a raw CR LF).
fn automatic_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = match rest.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let empty = buf
        .windows(EMPTY.len())
        .any(|w| w.eq_ignore_ascii_case(EMPTY));
    empty.then_some(status)
}

/// The JSON answer for a head hyper refused, saying what was wrong as far as the head's
/// first bytes tell.
fn refusal(status: u16, head: &[u8]) -> Vec<u8> {
    match status {
        431 => json_answer(
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            &format!(
                "the request head (request line and headers) is larger than {MAX_HEAD_BYTES} bytes or has more than 100 headers"
            ),
        ),
        414 => json_answer(
            414,
            "URI Too Long",
            "uri_too_long",
            "the request target is too long",
        ),
        _ => json_answer(
            400,
            "Bad Request",
            "bad_request",
            &format!("malformed HTTP/1.1 request: {}", what_is_wrong(head)),
        ),
    }
}

fn what_is_wrong(mut head: &[u8]) -> &'static str {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        return match req.parse(head) {
            Err(httparse::Error::Token) => {
                "the request line is invalid (expected METHOD /path HTTP/1.1, the method a token)"
            }
            Err(httparse::Error::Version) => {
                "the HTTP version is invalid (HTTP/1.1 or HTTP/1.0 expected)"
            }
            Err(httparse::Error::HeaderName) => "a header name is invalid",
            Err(httparse::Error::HeaderValue) => "a header value is invalid",
            Err(httparse::Error::NewLine) => "a line does not end with CR LF",
            Err(httparse::Error::TooManyHeaders) => "more than 100 headers",
            Err(_) => "the request line or a header is invalid",
            // Pipelined heads read at once: the refused one is further on.
            Ok(httparse::Status::Complete(n)) if n < head.len() => {
                head = &head[n..];
                continue;
            }
            Ok(_) => {
                "the request target, or a framing header (Content-Length, Transfer-Encoding), is invalid"
            }
        };
    }
}
