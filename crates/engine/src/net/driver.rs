//! The runtime transport: one tokio task drives a `Core` and owns its sockets.
//!
//! Calls are submitted to the core synchronously by whoever makes them (so their order is the
//! order they were made), then the task is woken; it opens the sockets the core wants, writes
//! what the core has for each, reads what arrives, and tells the core the time when it asks.
//! Before telling the core that time passed, it reads whatever the sockets already hold, so a
//! reply that arrived is never declared late. Events go to `on_events`, outside the core's lock.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Event};
use crate::net::io::SocketIo;
use crate::net::open::{self, Opened, Stream};

pub(crate) type EventSink = Box<dyn Fn(Vec<Event>) + Send + Sync>;

pub(crate) struct Driver {
    shared: Arc<Shared>,
}

struct Shared {
    core: Arc<Mutex<Core>>,
    wake: Notify,
    stop: CancellationToken,
    on_events: EventSink,
}

impl Driver {
    /// Starts driving `core` on `runtime`; it runs until `stop` is cancelled.
    pub(crate) fn start(
        runtime: &Handle,
        core: Arc<Mutex<Core>>,
        stop: CancellationToken,
        on_events: EventSink,
    ) -> Self {
        let shared = Arc::new(Shared {
            core,
            wake: Notify::new(),
            stop,
            on_events,
        });
        runtime.spawn(guarded(shared.clone()));
        Self { shared }
    }

    /// Something was submitted to the core: write it, open what it needs.
    pub(crate) fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

pub(crate) fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A panic while the core was locked is a bug; the state is still the best there is.
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Socket {
    epoch: u64,
    stream: Stream,
    io: SocketIo,
    want_write: bool,
}

impl Socket {
    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> (bool, bool) {
        let readable = self.stream.poll_read_ready(cx).is_ready();
        let writable = self.want_write && self.stream.poll_write_ready(cx).is_ready();
        (readable, writable)
    }

    /// Reads what the socket holds now: plaintext for the core, or why the socket is done.
    fn drain(&mut self, buf: &mut [u8]) -> (Vec<u8>, Option<String>) {
        let Socket { stream, io, .. } = self;
        io.read(|into| stream.try_read(into), buf)
    }

    /// Writes what `core` has for this socket; `Err` says why the socket is done.
    fn flush(&mut self, core: &mut Core, conn: usize) -> Result<(), String> {
        let Socket { stream, io, .. } = self;
        self.want_write = io.write(core, conn, |bytes| stream.try_write(bytes))?;
        Ok(())
    }
}

type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = (usize, u64, crate::error::EngineResult<Opened>)> + Send>,
>;

/// Runs the driver; a panic (a bug) fails what was pending instead of leaving it hanging, and
/// the driver starts again.
async fn guarded(shared: Arc<Shared>) {
    use futures_util::FutureExt;
    while std::panic::AssertUnwindSafe(run(shared.clone()))
        .catch_unwind()
        .await
        .is_err()
    {
        let err = crate::error::EngineError::new(
            crate::error::ErrorKind::Connection,
            "internal error in the lock engine (a bug: please report it)",
        );
        let events = {
            let mut core = lock(&shared.core);
            core.fail_all(err, Instant::now());
            core.take_events()
        };
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (shared.on_events)(events)));
        if shared.stop.is_cancelled() {
            return;
        }
    }
}

async fn run(shared: Arc<Shared>) {
    let mut sockets: Vec<Option<Socket>> = Vec::new();
    let mut opening: FuturesUnordered<Opening> = FuturesUnordered::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let timer = step(&shared, &mut sockets, &mut opening);
        let far = Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(timer.unwrap_or(far).into());
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return,
            // Time before sockets: a busy socket must not starve deadlines and retries.
            _ = sleep => {
                // Whatever the sockets hold counts before any deadline.
                for conn in 0..sockets.len() {
                    read(&shared, &mut sockets, conn, &mut buf);
                }
                lock(&shared.core).on_timer(Instant::now());
            }
            Some((conn, epoch, result)) = opening.next(), if !opening.is_empty() => {
                let mut core = lock(&shared.core);
                let now = Instant::now();
                match result {
                    Ok(opened) => {
                        if core.opened(conn, epoch, now) {
                            sockets[conn] = Some(Socket {
                                epoch,
                                stream: opened.stream,
                                io: SocketIo::new(opened.tls),
                                want_write: false,
                            });
                        }
                    }
                    Err(err) => core.open_failed(conn, epoch, err, now),
                }
            }
            ready = poll_fn(|cx| {
                let ready: Vec<(usize, bool, bool)> = sockets
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.poll_ready(cx))))
                    .filter(|(_, (r, w))| *r || *w)
                    .map(|(i, (r, w))| (i, r, w))
                    .collect();
                if ready.is_empty() { Poll::Pending } else { Poll::Ready(ready) }
            }) => {
                for (conn, readable, _) in ready {
                    if readable {
                        read(&shared, &mut sockets, conn, &mut buf);
                    }
                }
            }
            _ = shared.wake.notified() => {}
        }
    }
}

fn read(shared: &Shared, sockets: &mut [Option<Socket>], conn: usize, buf: &mut [u8]) {
    let Some(socket) = sockets[conn].as_mut() else {
        return;
    };
    let (bytes, done) = socket.drain(buf);
    let epoch = socket.epoch;
    let mut core = lock(&shared.core);
    let now = Instant::now();
    if !bytes.is_empty() {
        core.feed(conn, epoch, &bytes, now);
    }
    if let Some(why) = done {
        core.socket_closed(conn, epoch, &why, now);
        sockets[conn] = None;
    }
}

/// Brings the sockets in line with the core, writes, and hands the events on. Returns when the
/// core next needs the clock.
fn step(
    shared: &Shared,
    sockets: &mut Vec<Option<Socket>>,
    opening: &mut FuturesUnordered<Opening>,
) -> Option<Instant> {
    let (events, timer) = {
        let mut core = lock(&shared.core);
        let now = Instant::now();
        if sockets.len() < core.conn_count() {
            sockets.resize_with(core.conn_count(), || None);
        }
        for (conn, slot) in sockets.iter_mut().enumerate() {
            if slot
                .as_ref()
                .is_some_and(|socket| core.live_epoch(conn) != Some(socket.epoch))
            {
                *slot = None; // dropped by the core (timeout, protocol error, close)
            }
            if slot.is_none() && core.wants_socket(conn, now) {
                let epoch = core.opening(conn, now);
                let endpoint = core.endpoint(conn).clone();
                opening.push(Box::pin(async move {
                    (conn, epoch, open::open(&endpoint).await)
                }));
            }
            if let Some(socket) = slot.as_mut()
                && core.is_open(conn, socket.epoch)
                && let Err(why) = socket.flush(&mut core, conn)
            {
                let epoch = socket.epoch;
                core.socket_closed(conn, epoch, &why, now);
                *slot = None;
            }
        }
        (core.take_events(), core.next_timer())
    };
    if !events.is_empty() {
        (shared.on_events)(events);
    }
    timer
}
