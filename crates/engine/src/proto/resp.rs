//! RESP on the wire: commands encoded into a buffer, replies decoded incrementally.
//!
//! Decoding is the redis crate's own parser (its tokio codec, which keeps a partial state, so a
//! reply split anywhere costs nothing extra), with limits of our own around it: the crate
//! already refuses nesting deeper than 100 and never preallocates more than 4096 elements for an
//! announced length, and here a reply may take at most `MAX_REPLY_BYTES` of input. That bound
//! is far below Redis's own 512 MB: the engine never asks for anything larger than the slot map
//! of a big cluster, and a partially decoded reply of tiny elements costs up to ~15× its size in
//! memory. A server announcing more is answered with a protocol error, never an allocation.

use bytes::BytesMut;
use redis::Value;
use tokio_util::codec::Decoder as _;

/// Most input bytes one reply may take (see the module comment).
pub(crate) const MAX_REPLY_BYTES: usize = 4 << 20;

/// Appends a command (an array of bulk strings) to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Decodes replies from bytes as they arrive.
pub(crate) struct Decoder {
    codec: redis::ValueCodec,
    buf: BytesMut,
    /// Input already consumed by the reply being decoded (the codec keeps its partial state).
    partial: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            codec: redis::ValueCodec::default(),
            buf: BytesMut::with_capacity(16 * 1024),
            partial: 0,
        }
    }
}

impl Decoder {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, `None` if more bytes are needed, or why the stream is not RESP
    /// (the connection must then be dropped).
    pub(crate) fn next_reply(&mut self) -> Result<Option<Value>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let before = self.buf.len();
        let decoded = self.codec.decode(&mut self.buf);
        let consumed = before - self.buf.len();
        match decoded {
            Ok(Some(value)) => {
                self.partial = 0;
                Ok(Some(value))
            }
            Ok(None) => {
                self.partial += consumed;
                if self.partial + self.buf.len() > MAX_REPLY_BYTES {
                    Err(format!("a reply larger than {} MiB", MAX_REPLY_BYTES >> 20))
                } else {
                    Ok(None)
                }
            }
            Err(err) => Err(describe(&err.to_string())),
        }
    }
}

/// The parser's complaint on one short line: it quotes positions and bytes of the input.
fn describe(text: &str) -> String {
    let line: String = text
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut short: String = line.chars().take(160).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    format!("malformed reply ({short})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(decoder: &mut Decoder) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        while let Some(v) = decoder.next_reply()? {
            out.push(v);
        }
        Ok(out)
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"", &[b'x'; 12]]);
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$12\r\nxxxxxxxxxxxx\r\n"
        );
    }

    #[test]
    fn decodes_replies_split_at_every_byte() {
        let bytes: &[u8] =
            b"+OK\r\n:17\r\n$-1\r\n$3\r\nabc\r\n-ERR no\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n";
        let mut whole = Decoder::default();
        whole.feed(bytes);
        let expected = all(&mut whole).unwrap();
        assert_eq!(expected.len(), 6);
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::default();
            decoder.feed(&bytes[..split]);
            let mut got = all(&mut decoder).unwrap();
            decoder.feed(&bytes[split..]);
            got.extend(all(&mut decoder).unwrap());
            assert_eq!(got, expected, "split at {split}");
        }
        // And one byte at a time.
        let mut decoder = Decoder::default();
        let mut got = Vec::new();
        for b in bytes {
            decoder.feed(&[*b]);
            got.extend(all(&mut decoder).unwrap());
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn hostile_lengths_and_nesting_are_errors_or_waits_never_allocations() {
        for huge in [
            &b"*9223372036854775807\r\n"[..],
            b"*2000000000\r\n",
            b"$2000000000\r\n",
            b"$9223372036854775807\r\n",
        ] {
            let mut decoder = Decoder::default();
            decoder.feed(huge);
            assert_eq!(decoder.next_reply(), Ok(None), "{huge:?} waits for more");
        }
        let mut deep = Decoder::default();
        deep.feed(&b"*1\r\n".repeat(200_000));
        assert!(deep.next_reply().is_err());
        let mut garbage = Decoder::default();
        garbage.feed(b"?hello\r\n");
        let err = garbage.next_reply().unwrap_err();
        assert!(err.starts_with("malformed reply"), "{err}");
        let mut bad_int = Decoder::default();
        bad_int.feed(b":12x\r\n");
        assert!(bad_int.next_reply().is_err());
    }

    #[test]
    fn a_reply_may_not_grow_past_the_bound() {
        // An endless array of small integers: each chunk is consumed into the partial state.
        let mut decoder = Decoder::default();
        decoder.feed(b"*2000000000\r\n");
        let chunk = b":1\r\n".repeat(16 * 1024);
        let mut fed = 0;
        let outcome = loop {
            decoder.feed(&chunk);
            fed += chunk.len();
            match decoder.next_reply() {
                Ok(None) if fed < 2 * MAX_REPLY_BYTES => continue,
                other => break other,
            }
        };
        assert!(outcome.unwrap_err().contains("larger than"));
        // An endless bulk string: kept in the buffer until complete.
        let mut decoder = Decoder::default();
        decoder.feed(b"$2000000000\r\n");
        let chunk = vec![b'a'; 64 * 1024];
        let mut fed = 0;
        let outcome = loop {
            decoder.feed(&chunk);
            fed += chunk.len();
            match decoder.next_reply() {
                Ok(None) if fed < 2 * MAX_REPLY_BYTES => continue,
                other => break other,
            }
        };
        assert!(outcome.unwrap_err().contains("larger than"));
    }

    #[test]
    fn negative_lengths_are_nil() {
        let mut decoder = Decoder::default();
        decoder.feed(b"*-5\r\n$-7\r\n");
        assert_eq!(all(&mut decoder).unwrap(), vec![Value::Nil, Value::Nil]);
    }
}
