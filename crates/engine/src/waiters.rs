//! Wake-ups for waiting acquires: one subscriber connection per `Locker`, shared by all waiters.
//!
//! A v2 release publishes on the lock's channel (see `keys::released_channel`); a waiter in this
//! process subscribed to it retries at once instead of sleeping out its `retryDelay`. Waiting
//! still polls every `retryDelay`, so locks released by v1 processes, or expiring, or released
//! while this subscriber was reconnecting, are still picked up. A channel is subscribed while at
//! least one waiter watches it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::keys;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

struct Channel {
    notify: Arc<Notify>,
    waiters: usize,
}

/// Told the key of every release heard on a watched channel (besides the local wake-ups).
pub type ReleaseListener = Arc<dyn Fn(&str) + Send + Sync>;

struct Inner {
    backend: Arc<Backend>,
    listener: Option<ReleaseListener>,
    connect_timeout: Duration,
    command_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    cancel: CancellationToken,
}

pub(crate) struct Waiters {
    inner: Arc<Inner>,
}

/// Held by a waiting acquire; unsubscribes when the last waiter of the channel drops it.
pub(crate) struct WaitGuard {
    inner: Arc<Inner>,
    channel: String,
    notify: Arc<Notify>,
}

impl WaitGuard {
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut channels = self.inner.lock_channels();
        let last = match channels.get_mut(&self.channel) {
            Some(channel) => {
                channel.waiters -= 1;
                channel.waiters == 0
            }
            None => false,
        };
        if last {
            channels.remove(&self.channel);
            drop(channels);
            self.inner
                .send(Command::Unsubscribe(std::mem::take(&mut self.channel)));
        }
    }
}

impl Waiters {
    /// A lock this process released: its local waiters retry at once, without waiting for the
    /// release's publication to come back from Redis.
    pub(crate) fn released_here(&self, channel: &str) {
        self.inner.wake(channel);
    }

    pub(crate) fn new(
        backend: Arc<Backend>,
        cancel: CancellationToken,
        listener: Option<ReleaseListener>,
    ) -> Self {
        let (connect_timeout, command_timeout) = backend.timeouts();
        Self {
            inner: Arc::new(Inner {
                backend,
                listener,
                connect_timeout,
                command_timeout,
                channels: Mutex::new(HashMap::new()),
                commands: Mutex::new(None),
                cancel,
            }),
        }
    }

    /// Starts watching `channel`. Must run inside the runtime.
    pub(crate) fn watch(&self, channel: &str) -> WaitGuard {
        let mut channels = self.inner.lock_channels();
        let entry = channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                notify: Arc::new(Notify::new()),
                waiters: 0,
            });
        entry.waiters += 1;
        let first = entry.waiters == 1;
        let notify = entry.notify.clone();
        drop(channels);
        if first {
            self.inner.send(Command::Subscribe(channel.to_owned()));
        }
        WaitGuard {
            inner: self.inner.clone(),
            channel: channel.to_owned(),
            notify,
        }
    }
}

impl Inner {
    fn lock_channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(self: &Arc<Self>, command: Command) {
        let mut commands = self
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sender = commands.get_or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(self.clone(), receiver));
            sender
        });
        // The task only stops when the Locker closes; then nobody needs the command.
        let _ = sender.send(command);
    }

    fn wake_all(&self) {
        for channel in self.lock_channels().values() {
            channel.notify.notify_waiters();
        }
    }

    fn wake(&self, channel: &str) {
        if let Some(channel) = self.lock_channels().get(channel) {
            channel.notify.notify_waiters();
        }
    }

    fn watched(&self, channel: &str) -> bool {
        self.lock_channels().contains_key(channel)
    }
}

/// Owns the subscriber connection: (re)connects while anybody waits, follows subscriptions,
/// and wakes the waiters of a channel when a release is published on it.
async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        // Nobody waits: no connection needed until somebody does.
        while inner.lock_channels().is_empty() {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                command = commands.recv() => if command.is_none() { return },
            }
        }
        let connected = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            result = tokio::time::timeout(inner.connect_timeout * 2, subscriber(&inner, attempt)) => result,
        };
        attempt += 1;
        let Ok(Ok(pubsub)) = connected else {
            // Waiters keep polling meanwhile; try again later.
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        let current: Vec<String> = inner.lock_channels().keys().cloned().collect();
        let mut subscribed: HashSet<String> = current.iter().cloned().collect();
        if !current.is_empty()
            && !matches!(
                tokio::time::timeout(inner.command_timeout, sink.subscribe(&current)).await,
                Ok(Ok(()))
            )
        {
            continue;
        }
        // A release may have been published while we were not listening.
        inner.wake_all();
        loop {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                command = commands.recv() => {
                    let outcome = match command {
                        None => return,
                        Some(Command::Subscribe(channel))
                            if inner.watched(&channel) && !subscribed.contains(&channel) =>
                        {
                            let outcome =
                                tokio::time::timeout(inner.command_timeout, sink.subscribe(&channel)).await;
                            // A release between the waiter's failed attempt and now went unheard.
                            inner.wake(&channel);
                            subscribed.insert(channel);
                            outcome
                        }
                        Some(Command::Unsubscribe(channel))
                            if !inner.watched(&channel) && subscribed.contains(&channel) =>
                        {
                            subscribed.remove(&channel);
                            tokio::time::timeout(inner.command_timeout, sink.unsubscribe(channel)).await
                        }
                        Some(_) => Ok(Ok(())), // superseded by a later change of the same channel
                    };
                    if !matches!(outcome, Ok(Ok(()))) {
                        break; // reconnect and resubscribe from the current state
                    }
                }
                message = stream.next() => match message {
                    None => break, // connection lost
                    Some(message) => {
                        let channel = message.get_channel_name();
                        inner.wake(channel);
                        if let (Some(listener), Some(key)) =
                            (&inner.listener, keys::key_of_released_channel(channel))
                        {
                            listener(key);
                        }
                    }
                },
            }
        }
    }
}

/// A pub/sub connection to the server (or, for a cluster or Redlock, to one of its nodes).
async fn subscriber(
    inner: &Inner,
    attempt: usize,
) -> crate::error::EngineResult<redis::aio::PubSub> {
    let client = inner.backend.subscriber_client(attempt).await?;
    client.get_async_pubsub().await.map_err(|e| {
        crate::error::EngineError::from_redis(&e, inner.backend.target(), inner.connect_timeout)
    })
}
