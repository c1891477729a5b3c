//! A connection opened on first use and replaced when it breaks: the slot behind every kind of
//! connection the engine keeps (one server, a Sentinel-found master, a cluster).
//!
//! Every wait is bounded by the connect function's own timeout. A failed attempt leaves the slot
//! empty so the next call tries afresh (a wrong password fixed on the server, a server back up);
//! a broken connection is replaced in the background, before the next call needs it.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::error::{EngineError, EngineResult};

type Attempt<C> = Shared<BoxFuture<'static, EngineResult<C>>>;
pub(crate) type Connect<C> = Arc<dyn Fn() -> BoxFuture<'static, EngineResult<C>> + Send + Sync>;

enum Slot<C> {
    Idle,
    Connecting {
        generation: u64,
        attempt: Attempt<C>,
    },
    Ready {
        generation: u64,
        conn: C,
    },
    Closed,
}

struct State<C> {
    slot: Slot<C>,
    next_generation: u64,
}

pub(crate) struct Lazy<C> {
    connect: Connect<C>,
    state: Mutex<State<C>>,
}

impl<C: Clone + Send + Sync + 'static> Lazy<C> {
    pub(crate) fn new(connect: Connect<C>) -> Self {
        Self {
            connect,
            state: Mutex::new(State {
                slot: Slot::Idle,
                next_generation: 1,
            }),
        }
    }

    /// The current connection and its generation (for `replace`), connecting if needed.
    pub(crate) async fn get(&self) -> EngineResult<(u64, C)> {
        let (generation, attempt) = {
            let mut state = self.lock();
            match &state.slot {
                Slot::Ready { generation, conn } => return Ok((*generation, conn.clone())),
                // An attempt that already failed is stale news: the server may be back.
                Slot::Connecting { attempt, .. } if matches!(attempt.peek(), Some(Err(_))) => {
                    self.start(&mut state)
                }
                Slot::Connecting {
                    generation,
                    attempt,
                } => (*generation, attempt.clone()),
                Slot::Closed => return Err(EngineError::closed()),
                Slot::Idle => self.start(&mut state),
            }
        };
        let outcome = attempt.await;
        let mut state = self.lock();
        let current =
            matches!(&state.slot, Slot::Connecting { generation: g, .. } if *g == generation);
        match outcome {
            Ok(conn) => {
                if current {
                    state.slot = Slot::Ready {
                        generation,
                        conn: conn.clone(),
                    };
                }
                Ok((generation, conn))
            }
            Err(err) => {
                if current {
                    state.slot = Slot::Idle;
                }
                Err(err)
            }
        }
    }

    /// Replaces the connection of `generation`, if it is still the current one, in the
    /// background.
    pub(crate) fn replace(&self, generation: u64) {
        let mut state = self.lock();
        if matches!(&state.slot, Slot::Ready { generation: g, .. } if *g == generation) {
            // Driven in the background; nobody needs to await it here.
            let _ = self.start(&mut state);
        }
    }

    /// Replaces whatever connection is current or being opened (a failover was announced:
    /// an attempt under way may have asked for the old master).
    pub(crate) fn replace_current(&self) {
        let mut state = self.lock();
        if matches!(state.slot, Slot::Ready { .. } | Slot::Connecting { .. }) {
            let _ = self.start(&mut state);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.lock().slot, Slot::Closed)
    }

    /// Drops the connection for good; later calls fail with a closed error.
    pub(crate) fn close(&self) {
        self.lock().slot = Slot::Closed;
    }

    /// Starts a connection attempt (it runs even if nobody awaits it) and records it.
    fn start(&self, state: &mut State<C>) -> (u64, Attempt<C>) {
        let generation = state.next_generation;
        state.next_generation += 1;
        let attempt: Attempt<C> = (self.connect)().shared();
        tokio::spawn(attempt.clone().map(|_| ()));
        state.slot = Slot::Connecting {
            generation,
            attempt: attempt.clone(),
        };
        (generation, attempt)
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // The critical sections cannot panic; recover the guard anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
