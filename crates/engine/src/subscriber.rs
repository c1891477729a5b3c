//! Hearing releases: one subscriber connection per `Locker`, on the runtime, opened only while
//! some waiter watches a key.
//!
//! A v2 release publishes on the lock's channel (see `keys::released_channel`); what is heard
//! goes to the core, whose first waiter for the key then tries at once instead of sleeping out
//! its `retryDelay`. Waiting still polls every `retryDelay`, so locks released by v1 processes,
//! or expiring, or released while this subscriber was reconnecting, are still picked up. After
//! each (re)subscription every waiter tries once, since a release may have gone unheard.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Endpoint;
use crate::error::EngineResult;
use crate::keys;
use crate::net::link::{self as net_link, Link};

/// What the subscriber tells its owner.
pub(crate) enum Heard<'a> {
    /// A release of this lock key.
    Released(&'a str),
    /// (Re)subscribed: releases may have been missed meanwhile.
    Subscribed,
}

pub(crate) type Listener = Arc<dyn Fn(Heard<'_>) + Send + Sync>;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

struct Inner {
    sources: Vec<Endpoint>,
    listener: Listener,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Channel -> how many waiters watch it.
    channels: Mutex<HashMap<String, usize>>,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    runtime: Handle,
    cancel: CancellationToken,
}

pub(crate) struct Subscriber {
    inner: Arc<Inner>,
}

impl Subscriber {
    /// `sources`: the servers to subscribe on, tried in turn (cluster PUBLISH reaches every
    /// node; a Redlock release publishes on every master).
    pub(crate) fn new(
        sources: Vec<Endpoint>,
        runtime: Handle,
        cancel: CancellationToken,
        listener: Listener,
        timeouts: (Duration, Duration),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sources,
                listener,
                connect_timeout: timeouts.0,
                command_timeout: timeouts.1,
                channels: Mutex::new(HashMap::new()),
                commands: Mutex::new(None),
                runtime,
                cancel,
            }),
        }
    }

    /// A subscriber of its own (with its own connection) that tries `first` before this one's
    /// sources, and tells the same listener; it closes with this one.
    pub(crate) fn sibling(&self, first: Endpoint) -> Self {
        let inner = &self.inner;
        let mut sources = vec![first];
        sources.extend(inner.sources.iter().cloned());
        Self::new(
            sources,
            inner.runtime.clone(),
            inner.cancel.clone(),
            inner.listener.clone(),
            (inner.connect_timeout, inner.command_timeout),
        )
    }

    /// One more waiter watches `key`.
    pub(crate) fn watch(&self, key: &str) {
        let channel = keys::released_channel(key);
        let first = {
            let mut channels = self.inner.lock_channels();
            let count = channels.entry(channel.clone()).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            self.inner.send(Command::Subscribe(channel));
        }
    }

    /// One waiter of `key` stopped watching.
    pub(crate) fn unwatch(&self, key: &str) {
        let channel = keys::released_channel(key);
        let last = {
            let mut channels = self.inner.lock_channels();
            match channels.get_mut(&channel) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    channels.remove(&channel);
                    true
                }
                None => false,
            }
        };
        if last {
            self.inner.send(Command::Unsubscribe(channel));
        }
    }
}

impl Inner {
    fn lock_channels(&self) -> MutexGuard<'_, HashMap<String, usize>> {
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
            self.runtime.spawn(run(self.clone(), receiver));
            sender
        });
        // The task only stops when the Locker closes; then nobody needs the command.
        let _ = sender.send(command);
    }

    fn watched(&self, channel: &str) -> bool {
        self.lock_channels().contains_key(channel)
    }
}

/// Owns the subscriber connection: (re)connects while anybody watches, follows subscriptions,
/// and reports what it hears.
async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        // Nobody watches: no connection needed until somebody does.
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
        let Ok(Ok(link)) = connected else {
            // Waiters keep polling meanwhile; try again later.
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(100);
        let mut link = link;
        let current: Vec<String> = inner.lock_channels().keys().cloned().collect();
        let mut subscribed: HashSet<String> = current.iter().cloned().collect();
        if !current.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(current.iter().map(|c| c.as_bytes()));
            if !matches!(
                tokio::time::timeout(inner.command_timeout, link.send(&args)).await,
                Ok(Ok(()))
            ) {
                continue;
            }
        }
        (inner.listener)(Heard::Subscribed);
        loop {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                command = commands.recv() => {
                    let sent = match command {
                        None => return,
                        Some(Command::Subscribe(channel))
                            if inner.watched(&channel) && !subscribed.contains(&channel) =>
                        {
                            let sent = tokio::time::timeout(
                                inner.command_timeout,
                                link.send(&[b"SUBSCRIBE", channel.as_bytes()]),
                            )
                            .await;
                            subscribed.insert(channel);
                            sent
                        }
                        Some(Command::Unsubscribe(channel))
                            if !inner.watched(&channel) && subscribed.contains(&channel) =>
                        {
                            subscribed.remove(&channel);
                            tokio::time::timeout(
                                inner.command_timeout,
                                link.send(&[b"UNSUBSCRIBE", channel.as_bytes()]),
                            )
                            .await
                        }
                        Some(_) => Ok(Ok(())), // superseded by a later change of the same channel
                    };
                    if !matches!(sent, Ok(Ok(()))) {
                        break; // reconnect and resubscribe from the current state
                    }
                }
                value = link.next() => match value {
                    Err(_) => break, // connection lost
                    Ok(value) => {
                        let key = net_link::message(&value)
                            .and_then(|(channel, _)| std::str::from_utf8(channel).ok())
                            .and_then(keys::key_of_released_channel);
                        if let Some(key) = key {
                            (inner.listener)(Heard::Released(key));
                        }
                    }
                },
            }
        }
    }
}

/// A pub/sub connection to one of the sources, in turn.
async fn subscriber(inner: &Inner, attempt: usize) -> EngineResult<Link> {
    let source = &inner.sources[attempt % inner.sources.len()];
    match source {
        Endpoint::Server(config) => Link::open(config).await,
        Endpoint::Sentinel(sentinel) => Link::open(&sentinel.locate_master().await?).await,
    }
}
