//! What the engine asks of Redis, how each request goes on the wire, and what each reply means.
//! This is the one place where reply shapes are read; errors are classified in `error.rs`.

use redis::Value;

use crate::keys;
use crate::proto::resp::encode;
use crate::scripts::Script;

/// One lease of a batch extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtendItem {
    pub key: String,
    pub token: String,
    pub ttl_ms: u64,
}

/// What a Lock's keys hold, which decides the scripts its requests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// v1's lock: a string key holding the owner's token.
    Lock,
    /// A sorted set of permits.
    Semaphore,
    /// A readers' sorted set, a writer key and a waiting-writer mark.
    ReadWrite,
}

/// A command, before it is encoded (it is encoded when written, and again as EVAL if the
/// server answers NOSCRIPT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `SET key token PX ttl NX`, and with fencing, `INCR` of the fencing counter `fence`.
    Acquire {
        key: String,
        token: String,
        ttl_ms: u64,
        fence: Option<String>,
    },
    /// Compare-and-delete; `publish` tells waiters elsewhere (not when handing the lock to a
    /// waiter whose attempt follows on the same connection).
    Release {
        key: String,
        token: String,
        publish: bool,
    },
    Extend {
        key: String,
        token: String,
        ttl_ms: u64,
    },
    ExtendMany {
        items: Vec<ExtendItem>,
    },
    Exists {
        key: String,
    },
    /// A semaphore's permit (see `scripts`): taken if fewer than `permits` are held.
    SemAcquire {
        key: String,
        token: String,
        ttl_ms: u64,
        permits: u32,
    },
    /// Gives a permit back; `publish` as for `Release`.
    SemRelease {
        key: String,
        token: String,
        publish: bool,
    },
    SemExtend {
        key: String,
        token: String,
        ttl_ms: u64,
    },
    SemExtendMany {
        items: Vec<ExtendItem>,
    },
    /// Live permits held.
    SemCount {
        key: String,
    },
    /// A read-write lock's read side, or with `write` its write side (see `scripts`); `mark_ms`
    /// is how long a refused writer marks itself waiting (0: not at all).
    RwAcquire {
        key: String,
        token: String,
        ttl_ms: u64,
        write: bool,
        mark_ms: u64,
    },
    /// Gives back whichever side the token holds; `publish` as for `Release`.
    RwRelease {
        key: String,
        token: String,
        publish: bool,
    },
    RwExtend {
        key: String,
        token: String,
        ttl_ms: u64,
    },
    RwExtendMany {
        items: Vec<ExtendItem>,
    },
    /// Holders: 1 for a writer, else the live readers.
    RwCount {
        key: String,
    },
    /// Every key of one slot, or none (a lock over several resources).
    AcquireAll {
        keys: Vec<String>,
        token: String,
        ttl_ms: u64,
    },
    /// Deletes each key holding the token; always tells waiters.
    ReleaseAll {
        keys: Vec<String>,
        token: String,
    },
    /// Extends every key if every one holds the token.
    ExtendAll {
        keys: Vec<String>,
        token: String,
        ttl_ms: u64,
    },
    /// `WAIT replicas timeout`.
    Wait {
        replicas: u32,
        timeout_ms: u64,
    },
    Auth {
        username: Option<String>,
        password: String,
    },
    Select {
        db: i64,
    },
    Role,
    LoadScript(Script),
    ClusterSlots,
    Asking,
}

/// A reply, read for the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// An acquire: `Some(fence)` if granted (`Some(None)` without fencing), `None` if held.
    Acquired(Option<Option<i64>>),
    /// A release: `Some(n)` if it deleted the key, `n` being how many subscribers were told
    /// (the releasing process's own included); `None` if the token did not own it.
    Released(Option<i64>),
    Flag(bool),
    Flags(Vec<bool>),
    Count(i64),
    /// ROLE: whether the server is a master.
    Master(bool),
    Slots(Vec<SlotRange>),
    Done,
}

/// A range of cluster slots and the master that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
}

impl Request {
    /// The script this request runs, if it is one.
    pub(crate) fn script(&self) -> Option<Script> {
        match self {
            Request::Acquire { fence: Some(_), .. } => Some(Script::AcquireFenced),
            Request::Release { .. } => Some(Script::Release),
            Request::Extend { .. } => Some(Script::Extend),
            Request::ExtendMany { .. } => Some(Script::ExtendMany),
            Request::SemAcquire { .. } => Some(Script::SemAcquire),
            Request::SemRelease { .. } => Some(Script::SemRelease),
            Request::SemExtend { .. } => Some(Script::SemExtend),
            Request::SemExtendMany { .. } => Some(Script::SemExtendMany),
            Request::SemCount { .. } => Some(Script::SemCount),
            Request::RwAcquire { .. } => Some(Script::RwAcquire),
            Request::RwRelease { .. } => Some(Script::RwRelease),
            Request::RwExtend { .. } => Some(Script::RwExtend),
            Request::RwExtendMany { .. } => Some(Script::RwExtendMany),
            Request::RwCount { .. } => Some(Script::RwCount),
            Request::AcquireAll { .. } => Some(Script::AcquireAll),
            Request::ReleaseAll { .. } => Some(Script::ReleaseAll),
            Request::ExtendAll { .. } => Some(Script::ExtendAll),
            _ => None,
        }
    }

    /// The key a cluster routes this request by.
    pub(crate) fn routing_key(&self) -> Option<&str> {
        match self {
            Request::Acquire { key, .. }
            | Request::Release { key, .. }
            | Request::Extend { key, .. }
            | Request::Exists { key }
            | Request::SemAcquire { key, .. }
            | Request::SemRelease { key, .. }
            | Request::SemExtend { key, .. }
            | Request::SemCount { key }
            | Request::RwAcquire { key, .. }
            | Request::RwRelease { key, .. }
            | Request::RwExtend { key, .. }
            | Request::RwCount { key } => Some(key),
            Request::AcquireAll { keys, .. }
            | Request::ReleaseAll { keys, .. }
            | Request::ExtendAll { keys, .. } => keys.first().map(String::as_str),
            Request::ExtendMany { items }
            | Request::SemExtendMany { items }
            | Request::RwExtendMany { items } => items.first().map(|i| i.key.as_str()),
            _ => None,
        }
    }

    /// For an acquire: the release that gives back what it may have taken, and its ttl ms
    /// (past which there is nothing left to give back).
    pub(crate) fn undo(&self) -> Option<(Request, u64)> {
        match self {
            Request::Acquire {
                key, token, ttl_ms, ..
            }
            | Request::SemAcquire {
                key, token, ttl_ms, ..
            }
            | Request::RwAcquire {
                key, token, ttl_ms, ..
            } => Some((
                Request::give_back(self.family(), key.clone(), token.clone()),
                *ttl_ms,
            )),
            Request::AcquireAll {
                keys,
                token,
                ttl_ms,
            } => Some((
                Request::ReleaseAll {
                    keys: keys.clone(),
                    token: token.clone(),
                },
                *ttl_ms,
            )),
            _ => None,
        }
    }

    /// What kind of keys this request is about (its give-backs and releases are of that kind).
    pub(crate) fn family(&self) -> Family {
        match self {
            Request::SemAcquire { .. }
            | Request::SemRelease { .. }
            | Request::SemExtend { .. }
            | Request::SemExtendMany { .. }
            | Request::SemCount { .. } => Family::Semaphore,
            Request::RwAcquire { .. }
            | Request::RwRelease { .. }
            | Request::RwExtend { .. }
            | Request::RwExtendMany { .. }
            | Request::RwCount { .. } => Family::ReadWrite,
            _ => Family::Lock,
        }
    }

    /// The release of `token`'s hold on `key`, for keys of `family`.
    pub(crate) fn release_of(family: Family, key: String, token: String, publish: bool) -> Request {
        match family {
            Family::Lock => Request::Release {
                key,
                token,
                publish,
            },
            Family::Semaphore => Request::SemRelease {
                key,
                token,
                publish,
            },
            Family::ReadWrite => Request::RwRelease {
                key,
                token,
                publish,
            },
        }
    }

    /// For a release: the same release, telling waiters (a hand-over's waiter attempt was lost
    /// with it), to send again when its outcome is unknown.
    pub(crate) fn resent_release(&self) -> Option<Request> {
        match self {
            Request::Release { key, token, .. }
            | Request::SemRelease { key, token, .. }
            | Request::RwRelease { key, token, .. } => Some(Request::give_back(
                self.family(),
                key.clone(),
                token.clone(),
            )),
            Request::ReleaseAll { .. } => Some(self.clone()),
            _ => None,
        }
    }

    /// The release of one key's hold, telling waiters.
    pub(crate) fn give_back(family: Family, key: String, token: String) -> Request {
        Request::release_of(family, key, token, true)
    }

    /// Whether this is a release (of any family).
    pub(crate) fn is_release(&self) -> bool {
        matches!(
            self,
            Request::Release { .. }
                | Request::SemRelease { .. }
                | Request::RwRelease { .. }
                | Request::ReleaseAll { .. }
        )
    }

    /// The release's `publish` flag, for a release of any family.
    pub(crate) fn publish_flag(&mut self) -> Option<&mut bool> {
        match self {
            Request::Release { publish, .. }
            | Request::SemRelease { publish, .. }
            | Request::RwRelease { publish, .. } => Some(publish),
            _ => None,
        }
    }

    /// Appends the request to `out`: a script by its SHA (EVALSHA), or with its source (EVAL).
    pub(crate) fn encode(&self, out: &mut Vec<u8>, with_source: bool) {
        let mut numbers: Vec<String> = Vec::new();
        let args: Vec<&[u8]> = match self {
            Request::Acquire {
                key,
                token,
                ttl_ms,
                fence: None,
            } => {
                numbers.push(ttl_ms.to_string());
                vec![
                    b"SET",
                    key.as_bytes(),
                    token.as_bytes(),
                    b"PX",
                    numbers[0].as_bytes(),
                    b"NX",
                ]
            }
            Request::Acquire {
                key,
                token,
                ttl_ms,
                fence: Some(fence),
            } => {
                let ttl = ttl_ms.to_string();
                return script_call(
                    out,
                    Script::AcquireFenced,
                    with_source,
                    &[key.as_bytes(), fence.as_bytes()],
                    &[token.as_bytes(), ttl.as_bytes()],
                );
            }
            Request::Release {
                key,
                token,
                publish,
            }
            | Request::SemRelease {
                key,
                token,
                publish,
            } => {
                let channel = if *publish {
                    keys::released_channel(key)
                } else {
                    String::new()
                };
                let script = self.script().unwrap_or(Script::Release);
                return script_call(
                    out,
                    script,
                    with_source,
                    &[key.as_bytes()],
                    &[token.as_bytes(), channel.as_bytes()],
                );
            }
            Request::Extend { key, token, ttl_ms } | Request::SemExtend { key, token, ttl_ms } => {
                let ttl = ttl_ms.to_string();
                let script = self.script().unwrap_or(Script::Extend);
                return script_call(
                    out,
                    script,
                    with_source,
                    &[key.as_bytes()],
                    &[token.as_bytes(), ttl.as_bytes()],
                );
            }
            Request::ExtendMany { items } | Request::SemExtendMany { items } => {
                let ttls: Vec<String> = items.iter().map(|i| i.ttl_ms.to_string()).collect();
                let keys: Vec<&[u8]> = items.iter().map(|i| i.key.as_bytes()).collect();
                let args = token_ttl_args(items, &ttls);
                let script = self.script().unwrap_or(Script::ExtendMany);
                return script_call(out, script, with_source, &keys, &args);
            }
            Request::SemAcquire {
                key,
                token,
                ttl_ms,
                permits,
            } => {
                let (ttl, permits) = (ttl_ms.to_string(), permits.to_string());
                return script_call(
                    out,
                    Script::SemAcquire,
                    with_source,
                    &[key.as_bytes()],
                    &[token.as_bytes(), ttl.as_bytes(), permits.as_bytes()],
                );
            }
            Request::SemCount { key } => {
                return script_call(out, Script::SemCount, with_source, &[key.as_bytes()], &[]);
            }
            Request::RwAcquire {
                key,
                token,
                ttl_ms,
                write,
                mark_ms,
            } => {
                let (writer, mark) = (keys::rw_writer_key(key), keys::rw_mark_key(key));
                let (ttl, mark_ms) = (ttl_ms.to_string(), mark_ms.to_string());
                let side: &[u8] = if *write { b"1" } else { b"0" };
                return script_call(
                    out,
                    Script::RwAcquire,
                    with_source,
                    &[key.as_bytes(), writer.as_bytes(), mark.as_bytes()],
                    &[token.as_bytes(), ttl.as_bytes(), side, mark_ms.as_bytes()],
                );
            }
            Request::RwRelease {
                key,
                token,
                publish,
            } => {
                let channel = if *publish {
                    keys::released_channel(key)
                } else {
                    String::new()
                };
                let writer = keys::rw_writer_key(key);
                return script_call(
                    out,
                    Script::RwRelease,
                    with_source,
                    &[key.as_bytes(), writer.as_bytes()],
                    &[token.as_bytes(), channel.as_bytes()],
                );
            }
            Request::RwExtend { key, token, ttl_ms } => {
                let (writer, ttl) = (keys::rw_writer_key(key), ttl_ms.to_string());
                return script_call(
                    out,
                    Script::RwExtend,
                    with_source,
                    &[key.as_bytes(), writer.as_bytes()],
                    &[token.as_bytes(), ttl.as_bytes()],
                );
            }
            Request::RwExtendMany { items } => {
                let writers: Vec<String> =
                    items.iter().map(|i| keys::rw_writer_key(&i.key)).collect();
                let ttls: Vec<String> = items.iter().map(|i| i.ttl_ms.to_string()).collect();
                let keys: Vec<&[u8]> = items
                    .iter()
                    .zip(&writers)
                    .flat_map(|(i, writer)| [i.key.as_bytes(), writer.as_bytes()])
                    .collect();
                let args = token_ttl_args(items, &ttls);
                return script_call(out, Script::RwExtendMany, with_source, &keys, &args);
            }
            Request::AcquireAll {
                keys,
                token,
                ttl_ms,
            }
            | Request::ExtendAll {
                keys,
                token,
                ttl_ms,
            } => {
                let ttl = ttl_ms.to_string();
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                let script = self.script().unwrap_or(Script::AcquireAll);
                return script_call(
                    out,
                    script,
                    with_source,
                    &keys,
                    &[token.as_bytes(), ttl.as_bytes()],
                );
            }
            Request::ReleaseAll { keys, token } => {
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                return script_call(
                    out,
                    Script::ReleaseAll,
                    with_source,
                    &keys,
                    &[token.as_bytes(), keys::RELEASED_PREFIX.as_bytes()],
                );
            }
            Request::RwCount { key } => {
                let writer = keys::rw_writer_key(key);
                return script_call(
                    out,
                    Script::RwCount,
                    with_source,
                    &[key.as_bytes(), writer.as_bytes()],
                    &[],
                );
            }
            Request::Exists { key } => vec![b"EXISTS", key.as_bytes()],
            Request::Wait {
                replicas,
                timeout_ms,
            } => {
                numbers.push(replicas.to_string());
                numbers.push(timeout_ms.to_string());
                vec![b"WAIT", numbers[0].as_bytes(), numbers[1].as_bytes()]
            }
            Request::Auth {
                username: Some(user),
                password,
            } => vec![b"AUTH", user.as_bytes(), password.as_bytes()],
            Request::Auth {
                username: None,
                password,
            } => vec![b"AUTH", password.as_bytes()],
            Request::Select { db } => {
                numbers.push(db.to_string());
                vec![b"SELECT", numbers[0].as_bytes()]
            }
            Request::Role => vec![b"ROLE"],
            Request::LoadScript(script) => vec![b"SCRIPT", b"LOAD", script.source().as_bytes()],
            Request::ClusterSlots => vec![b"CLUSTER", b"SLOTS"],
            Request::Asking => vec![b"ASKING"],
        };
        encode(out, &args);
    }

    /// What a (non-error) reply to this request means; `Err` says what was wrong with its shape.
    pub(crate) fn interpret(&self, value: Value) -> Result<Reply, String> {
        let unexpected = |value: &Value| Err(format!("unexpected reply {}", brief(value)));
        match self {
            Request::Acquire { fence: Some(_), .. } => match value {
                Value::Int(0) => Ok(Reply::Acquired(None)),
                Value::Int(fence) if fence > 0 => Ok(Reply::Acquired(Some(Some(fence)))),
                other => unexpected(&other),
            },
            Request::Acquire { .. } => match value {
                Value::Okay => Ok(Reply::Acquired(Some(None))),
                Value::Nil => Ok(Reply::Acquired(None)),
                other => unexpected(&other),
            },
            Request::SemAcquire { .. } | Request::RwAcquire { .. } | Request::AcquireAll { .. } => {
                match value {
                    Value::Int(1) => Ok(Reply::Acquired(Some(None))),
                    Value::Int(0) => Ok(Reply::Acquired(None)),
                    other => unexpected(&other),
                }
            }
            Request::ReleaseAll { keys, .. } => match value {
                Value::Int(n) if n >= 0 && n <= keys.len() as i64 => Ok(Reply::Count(n)),
                other => unexpected(&other),
            },
            Request::ExtendAll { .. } => match value {
                Value::Int(n @ (0 | 1)) => Ok(Reply::Flag(n == 1)),
                other => unexpected(&other),
            },
            Request::SemCount { .. } | Request::RwCount { .. } => match value {
                Value::Int(n) if n >= 0 => Ok(Reply::Count(n)),
                other => unexpected(&other),
            },
            Request::Release { .. } | Request::SemRelease { .. } | Request::RwRelease { .. } => {
                match value {
                    Value::Int(0) => Ok(Reply::Released(None)),
                    Value::Int(n) if n >= 1 => Ok(Reply::Released(Some(n - 1))),
                    other => unexpected(&other),
                }
            }
            Request::Extend { .. }
            | Request::Exists { .. }
            | Request::SemExtend { .. }
            | Request::RwExtend { .. } => match value {
                Value::Int(n @ (0 | 1)) => Ok(Reply::Flag(n == 1)),
                other => unexpected(&other),
            },
            Request::ExtendMany { items }
            | Request::SemExtendMany { items }
            | Request::RwExtendMany { items } => match value {
                Value::Array(values) if values.len() == items.len() => values
                    .iter()
                    .map(|v| match v {
                        Value::Int(n @ (0 | 1)) => Ok(*n == 1),
                        other => Err(format!("unexpected reply {}", brief(other))),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Reply::Flags),
                other => unexpected(&other),
            },
            Request::Wait { .. } => match value {
                Value::Int(n) if n >= 0 => Ok(Reply::Count(n)),
                other => unexpected(&other),
            },
            Request::Auth { .. } | Request::Select { .. } | Request::Asking => match value {
                Value::Okay => Ok(Reply::Done),
                other => unexpected(&other),
            },
            Request::Role => match &value {
                Value::Array(items) => match items.first() {
                    Some(Value::BulkString(role)) => Ok(Reply::Master(role == b"master")),
                    Some(Value::SimpleString(role)) => Ok(Reply::Master(role == "master")),
                    _ => unexpected(&value),
                },
                _ => unexpected(&value),
            },
            Request::LoadScript(_) => match value {
                Value::BulkString(sha) if sha.len() == 40 => Ok(Reply::Done),
                other => unexpected(&other),
            },
            Request::ClusterSlots => slot_ranges(&value).map(Reply::Slots),
        }
    }
}

/// ARGV of a batch extend: token 1, ttl 1, ..., token n, ttl n (`ttls`: the items' ttls, as text).
fn token_ttl_args<'a>(items: &'a [ExtendItem], ttls: &'a [String]) -> Vec<&'a [u8]> {
    items
        .iter()
        .zip(ttls)
        .flat_map(|(i, ttl)| [i.token.as_bytes(), ttl.as_bytes()])
        .collect()
}

/// `EVALSHA sha numkeys keys... args...`, or `EVAL source ...`.
fn script_call(
    out: &mut Vec<u8>,
    script: Script,
    with_source: bool,
    keys: &[&[u8]],
    args: &[&[u8]],
) {
    let numkeys = keys.len().to_string();
    let mut all: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
    if with_source {
        all.extend([&b"EVAL"[..], script.source().as_bytes()]);
    } else {
        all.extend([&b"EVALSHA"[..], script.sha().as_bytes()]);
    }
    all.push(numkeys.as_bytes());
    all.extend_from_slice(keys);
    all.extend_from_slice(args);
    encode(out, &all);
}

/// CLUSTER SLOTS: `[[start, end, [host, port, id...], replicas...], ...]`.
fn slot_ranges(value: &Value) -> Result<Vec<SlotRange>, String> {
    let bad = || format!("unexpected CLUSTER SLOTS reply {}", brief(value));
    let Value::Array(ranges) = value else {
        return Err(bad());
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(parts) = range else {
                return Err(bad());
            };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (Some(start), Some(end)) = (int(parts.first()), int(parts.get(1))) else {
                return Err(bad());
            };
            let Some(Value::Array(master)) = parts.get(2) else {
                return Err(bad());
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => return Err(bad()),
            };
            let port = int(master.get(1)).ok_or_else(bad)?;
            if start > end || end >= 16384 {
                return Err(bad());
            }
            Ok(SlotRange {
                start,
                end,
                host,
                port,
            })
        })
        .collect()
}

/// What a reply is, for a message: its type and size, never its text (a peer that echoes would
/// send back what was written: a token, or AUTH's password).
pub(crate) fn brief(value: &Value) -> String {
    match value {
        Value::Nil => "nil".into(),
        Value::Int(n) => format!("integer {n}"),
        Value::BulkString(bytes) => format!("a string of {} bytes", bytes.len()),
        Value::SimpleString(text) => format!("a status of {} bytes", text.len()),
        Value::Okay => "OK".into(),
        Value::Array(items) | Value::Set(items) => format!("an array of {} items", items.len()),
        Value::Map(items) => format!("a map of {} items", items.len()),
        Value::Double(_) => "a double".into(),
        Value::Boolean(_) => "a boolean".into(),
        other => format!("a reply of RESP3 type {}", resp3_name(other)),
    }
}

fn resp3_name(value: &Value) -> &'static str {
    match value {
        Value::Attribute { .. } => "attribute",
        Value::VerbatimString { .. } => "verbatim string",
        Value::Push { .. } => "push",
        Value::ServerError(_) => "error",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(request: &Request, with_source: bool) -> String {
        let mut out = Vec::new();
        request.encode(&mut out, with_source);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_release_goes_by_sha_or_with_its_source_and_names_its_channel() {
        let release = Request::Release {
            key: "lock:a".into(),
            token: "tok".into(),
            publish: true,
        };
        let by_sha = wire(&release, false);
        assert!(
            by_sha.starts_with("*6\r\n$7\r\nEVALSHA\r\n$40\r\n"),
            "{by_sha}"
        );
        let eval = wire(&release, true);
        assert!(eval.starts_with("*6\r\n$4\r\nEVAL\r\n"), "{eval}");
        assert!(
            eval.ends_with(
                "$1\r\n1\r\n$6\r\nlock:a\r\n$3\r\ntok\r\n$19\r\nsdl:released:lock:a\r\n"
            ),
            "{eval}"
        );
        let quiet = Request::Release {
            key: "lock:a".into(),
            token: "tok".into(),
            publish: false,
        };
        assert!(wire(&quiet, false).ends_with("$3\r\ntok\r\n$0\r\n\r\n"));
    }

    #[test]
    fn an_unfenced_acquire_is_v1s_set_nx_px() {
        let acquire = Request::Acquire {
            key: "lock:a".into(),
            token: "t".into(),
            ttl_ms: 5000,
            fence: None,
        };
        assert_eq!(acquire.script(), None);
        assert_eq!(
            wire(&acquire, true),
            "*6\r\n$3\r\nSET\r\n$6\r\nlock:a\r\n$1\r\nt\r\n$2\r\nPX\r\n$4\r\n5000\r\n$2\r\nNX\r\n"
        );
        assert_eq!(
            acquire.interpret(Value::Okay),
            Ok(Reply::Acquired(Some(None)))
        );
        assert_eq!(acquire.interpret(Value::Nil), Ok(Reply::Acquired(None)));
        assert!(acquire.interpret(Value::Int(1)).is_err());
    }

    #[test]
    fn replies_mean_what_the_scripts_return() {
        let fenced = Request::Acquire {
            key: "k".into(),
            token: "t".into(),
            ttl_ms: 1,
            fence: Some("{x}:fence:".into()),
        };
        assert_eq!(
            fenced.interpret(Value::Int(7)),
            Ok(Reply::Acquired(Some(Some(7))))
        );
        assert_eq!(fenced.interpret(Value::Int(0)), Ok(Reply::Acquired(None)));
        assert!(fenced.interpret(Value::Int(-1)).is_err());
        let release = Request::Release {
            key: "k".into(),
            token: "t".into(),
            publish: true,
        };
        assert_eq!(
            release.interpret(Value::Int(3)),
            Ok(Reply::Released(Some(2)))
        );
        assert_eq!(release.interpret(Value::Int(0)), Ok(Reply::Released(None)));
        let many = Request::ExtendMany {
            items: vec![
                ExtendItem {
                    key: "a".into(),
                    token: "1".into(),
                    ttl_ms: 10,
                };
                2
            ],
        };
        assert_eq!(
            many.interpret(Value::Array(vec![Value::Int(1), Value::Int(0)])),
            Ok(Reply::Flags(vec![true, false]))
        );
        assert!(many.interpret(Value::Array(vec![Value::Int(1)])).is_err());
        let huge = Value::Array(vec![Value::Int(1); 10_000]);
        let err = Request::Exists { key: "k".into() }
            .interpret(huge)
            .unwrap_err();
        assert!(err.len() < 120, "{err}");
    }

    #[test]
    fn cluster_slots_are_read_into_ranges() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
                Value::BulkString(b"id".to_vec()),
            ]),
        ])]);
        assert_eq!(
            Request::ClusterSlots.interpret(reply),
            Ok(Reply::Slots(vec![SlotRange {
                start: 0,
                end: 5460,
                host: "127.0.0.1".into(),
                port: 7000
            }]))
        );
        assert!(Request::ClusterSlots.interpret(Value::Int(1)).is_err());
    }
}
