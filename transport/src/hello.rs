//! The application hello, as pure encode/decode functions.
//!
//! TLS proves the peer holds a certificate from the cluster CA, but rustls
//! lets a client without one see a successful connect (the server's refusal
//! arrives later). So a connection counts only once the server has answered
//! the client's hello with an accept: the first frame each way on the control
//! stream.
//!
//! Hello:  `b"BATN"`, version u32 LE, name length u16 LE, name (UTF-8).
//! Reply:  `b"BATN"`, status u8 (0 accept, 1 reject), version u32 LE,
//!         text length u16 LE, text (the server's name, or why it refused).

use crate::{Error, Result};

/// The version of baton's wire protocol; both ends must speak the same.
pub const PROTOCOL_VERSION: u32 = 1;

/// Every hello and reply starts with these bytes.
pub const MAGIC: &[u8; 4] = b"BATN";

/// The largest hello or reply frame we accept.
pub(crate) const MAX_HELLO_BYTES: usize = 4096;

/// What a connecting node says first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u32,
    pub name: String,
}

/// The server's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Accepted; the server's node name.
    Accept { version: u32, name: String },
    /// Refused, and why (sent as text so old and new versions can read it).
    Reject { version: u32, reason: String },
}

pub(crate) fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&hello.version.to_le_bytes());
    put_text(&mut out, &hello.name);
    out
}

pub(crate) fn decode_hello(bytes: &[u8]) -> Result<Hello> {
    let mut r = Reader::new(bytes, "hello")?;
    let version = r.u32()?;
    let name = r.text()?;
    r.end()?;
    Ok(Hello { version, name })
}

pub(crate) fn encode_reply(reply: &Reply) -> Vec<u8> {
    let (status, version, text) = match reply {
        Reply::Accept { version, name } => (0u8, version, name),
        Reply::Reject { version, reason } => (1u8, version, reason),
    };
    let mut out = MAGIC.to_vec();
    out.push(status);
    out.extend_from_slice(&version.to_le_bytes());
    put_text(&mut out, text);
    out
}

pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply> {
    let mut r = Reader::new(bytes, "hello reply")?;
    let status = r.take(1)?[0];
    let version = r.u32()?;
    let text = r.text()?;
    r.end()?;
    match status {
        0 => Ok(Reply::Accept { version, name: text }),
        1 => Ok(Reply::Reject { version, reason: text }),
        other => Err(Error::Protocol(format!("hello reply has unknown status {other}"))),
    }
}

/// Text is truncated at a char boundary so that it fits a u16 length.
fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_HELLO_BYTES / 2);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self> {
        let mut r = Reader { rest: bytes, what };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(Error::Protocol(format!("{what} does not start with {MAGIC:?}: the peer is not a baton node")));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Error::Protocol(format!("{} is cut short", self.what)));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self) -> Result<String> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Protocol(format!("{} text is not UTF-8", self.what)))
    }

    fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Protocol(format!("{} has {} trailing bytes", self.what, self.rest.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_replies_round_trip() {
        let hello = Hello { version: PROTOCOL_VERSION, name: "worker-0".into() };
        assert_eq!(decode_hello(&encode_hello(&hello)).unwrap(), hello);
        for reply in [
            Reply::Accept { version: 1, name: "coordinator".into() },
            Reply::Reject { version: 7, reason: "nope".into() },
        ] {
            assert_eq!(decode_reply(&encode_reply(&reply)).unwrap(), reply);
        }
    }

    #[test]
    fn garbage_hellos_are_protocol_errors() {
        let good = encode_hello(&Hello { version: 1, name: "n".into() });
        for bad in [&b""[..], &b"HTTP/1.1 200"[..], &good[..good.len() - 1], &[good.as_slice(), b"x"].concat()[..]] {
            let err = decode_hello(bad).unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err}");
        }
        let mut bad_status = encode_reply(&Reply::Accept { version: 1, name: "n".into() });
        bad_status[4] = 9;
        assert!(decode_reply(&bad_status).is_err());
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(MAX_HELLO_BYTES);
        let bytes = encode_reply(&Reply::Reject { version: 1, reason });
        assert!(bytes.len() <= MAX_HELLO_BYTES);
        assert!(decode_reply(&bytes).is_ok());
    }
}
