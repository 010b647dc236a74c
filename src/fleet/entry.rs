//! What one proxy leaves in Redis for the others: the end of a flight it held the lease for,
//! as one binary value. Either the response (head, body, trailers, when it arrived, and the
//! holder's values for the headers it varies on) or a release (fetch for yourselves).
//!
//! Every value carries the lease token of the flight that wrote it and the whole key it
//! answers, so a waiter takes only its holder's verdict, and never a response for another
//! request: two keys whose digests collide, or a value someone wrote by hand, are refused.
//! Anything that does not decode is refused too: Redis is another program's memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// The first bytes of every value: a format version, so that a proxy of a later format
/// refuses this one's values rather than misreading them.
const MAGIC: &[u8; 4] = b"CPF1";

/// What a flight's holder decided.
#[derive(Debug)]
pub enum Verdict {
    /// Its response was not shareable, too large, or an error: each waiter fetches alone.
    Release,
    Response(Box<SharedResponse>),
}

/// A response as the holder received it, for every proxy of the fleet.
#[derive(Debug, Clone)]
pub struct SharedResponse {
    /// The key (namespace and request) it answers.
    pub key: Vec<u8>,
    /// When its head arrived at the holder: how long it has been resident in the fleet.
    pub received_at: SystemTime,
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The holder's request values for the headers the response varies on.
    pub varied: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// One value: whose flight wrote it, and what it decided.
#[derive(Debug)]
pub struct Entry {
    pub token: Vec<u8>,
    pub verdict: Verdict,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(match &self.verdict {
            Verdict::Release => 64,
            Verdict::Response(r) => 256 + r.key.len() + r.body.len() + r.headers.len() * 48,
        });
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, &self.token);
        match &self.verdict {
            Verdict::Release => out.push(0),
            Verdict::Response(response) => {
                out.push(1);
                response.encode(&mut out);
            }
        }
        out
    }

    /// The value read back, or `None` for anything that is not one whole, well-formed value.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut reader = Reader(bytes);
        if reader.take(4)? != MAGIC {
            return None;
        }
        let token = reader.bytes()?.to_vec();
        let verdict = match reader.take(1)?[0] {
            0 => Verdict::Release,
            1 => Verdict::Response(Box::new(SharedResponse::decode(&mut reader)?)),
            _ => return None,
        };
        reader.0.is_empty().then_some(Entry { token, verdict })
    }
}

impl SharedResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.key);
        let millis = self
            .received_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        out.extend_from_slice(&millis.to_le_bytes());
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        put_fields(out, &self.headers);
        put_fields(out, &self.varied);
        put_bytes(out, &self.body);
        match &self.trailers {
            None => out.push(0),
            Some(trailers) => {
                out.push(1);
                put_fields(out, trailers);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Option<SharedResponse> {
        let key = reader.bytes()?.to_vec();
        let millis = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
        let received_at = UNIX_EPOCH.checked_add(Duration::from_millis(millis))?;
        let status = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
        let status = StatusCode::from_u16(status).ok()?;
        let headers = reader.fields()?;
        let varied = reader.fields()?;
        let body = Bytes::copy_from_slice(reader.bytes()?);
        let trailers = match reader.take(1)?[0] {
            0 => None,
            1 => Some(reader.fields()?),
            _ => return None,
        };
        Some(SharedResponse {
            key,
            received_at,
            status,
            headers,
            varied,
            body,
            trailers,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    for (name, value) in fields {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// Reads a value front to back; every read checks the length it is given.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }

    fn fields(&mut self) -> Option<HeaderMap> {
        let count = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        // Each field takes at least 8 bytes: a count past what is left is a lie.
        if count > self.0.len() / 8 {
            return None;
        }
        let mut fields = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.bytes()?).ok()?;
            let value = HeaderValue::from_bytes(self.bytes()?).ok()?;
            fields.append(name, value);
        }
        Some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> SharedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let mut varied = HeaderMap::new();
        varied.insert("accept-language", HeaderValue::from_static("en"));
        SharedResponse {
            key: b"ns\0key".to_vec(),
            received_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            status: StatusCode::OK,
            headers,
            varied,
            body: Bytes::from_static(b"hello"),
            trailers: Some(HeaderMap::new()),
        }
    }

    #[test]
    fn a_response_reads_back_as_written() {
        let entry = Entry {
            token: b"t1".to_vec(),
            verdict: Verdict::Response(Box::new(response())),
        };
        let read = Entry::decode(&entry.encode()).expect("decodes");
        assert_eq!(read.token, b"t1");
        let Verdict::Response(read) = read.verdict else {
            panic!("a response")
        };
        let written = response();
        assert_eq!(read.key, written.key);
        assert_eq!(read.received_at, written.received_at);
        assert_eq!(read.headers, written.headers);
        assert_eq!(read.varied, written.varied);
        assert_eq!(read.body, written.body);
        assert_eq!(read.trailers, written.trailers);
    }

    #[test]
    fn anything_cut_short_grown_or_of_another_format_is_refused() {
        let bytes = Entry {
            token: b"t1".to_vec(),
            verdict: Verdict::Response(Box::new(response())),
        }
        .encode();
        for len in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..len]).is_none(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Entry::decode(&longer).is_none());
        let mut other = bytes.clone();
        other[3] = b'9';
        assert!(Entry::decode(&other).is_none());
        let release = Entry {
            token: b"t2".to_vec(),
            verdict: Verdict::Release,
        };
        let read = Entry::decode(&release.encode()).expect("decodes");
        assert!(matches!(read.verdict, Verdict::Release));
    }
}
