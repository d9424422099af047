//! Reading PostgreSQL's binary COPY format (the `COPY ... TO STDOUT (FORMAT binary)` of the replays).
//!
//! The stream is an 11-byte signature, flags and a header extension, then tuples: a field count (i16), and per
//! field its length (i32, -1 for NULL) and bytes; a field count of -1 ends it. Values are in network byte order,
//! timestamps are microseconds since 2000-01-01 UTC. PostgreSQL sends a CopyData message per tuple, but the
//! format does not promise it, so the reader takes chunks of any size and yields complete tuples.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::Error;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Splits a binary COPY stream into tuples. A chunk is read where it lies (PostgreSQL sends a tuple per chunk);
/// only the rest of a tuple cut across chunks is copied, into `spill`.
#[derive(Debug, Default)]
pub struct Reader {
    /// The current chunk's unread bytes, while `spill` is empty.
    chunk: Bytes,
    /// Unread bytes gathered from several chunks; when not empty, `chunk` is.
    spill: BytesMut,
    header_read: bool,
    ended: bool,
}

/// A complete tuple at the front of the reader's buffer: where its N fields are, and its length.
#[derive(Debug, Clone, Copy)]
pub struct Tuple<const N: usize> {
    fields: [Option<(u32, u32)>; N],
    len: usize,
}

impl Reader {
    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: Bytes) {
        if self.spill.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
            return;
        }
        if !self.chunk.is_empty() {
            self.spill.extend_from_slice(&self.chunk);
            self.chunk.clear();
        }
        self.spill.extend_from_slice(&chunk);
    }

    /// The unread bytes.
    fn data(&self) -> &[u8] {
        if self.spill.is_empty() { &self.chunk } else { &self.spill }
    }

    fn advance(&mut self, n: usize) {
        if self.spill.is_empty() {
            self.chunk.advance(n);
        } else {
            self.spill.advance(n);
        }
    }

    /// The next complete tuple, which must have `N` fields; None when more bytes are needed or the stream ended.
    /// Read its fields with [`field`](Self::field), then [`consume`](Self::consume) it.
    pub fn next_tuple<const N: usize>(&mut self) -> Result<Option<Tuple<N>>, Error> {
        if !self.header_read {
            let buf = self.data();
            if buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(malformed("not a binary COPY stream"));
            }
            let extension = read_u32(&buf[SIGNATURE.len() + 4..]) as usize;
            let header = SIGNATURE.len() + 8 + extension;
            if buf.len() < header {
                return Ok(None);
            }
            self.advance(header);
            self.header_read = true;
        }
        if self.ended || self.data().len() < 2 {
            return Ok(None);
        }
        let buf = self.data();
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            self.ended = true;
            self.advance(2);
            return Ok(None);
        }
        if count as usize != N {
            return Err(malformed(format!("expected {N} fields, got {count}")));
        }
        let mut fields = [None; N];
        let mut at = 2usize;
        for field in &mut fields {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            at += 4;
            if len >= 0 {
                let len = len as usize;
                if buf.len() < at + len {
                    return Ok(None);
                }
                *field = Some((at as u32, len as u32));
                at += len;
            } else if len != -1 {
                return Err(malformed(format!("field length {len}")));
            }
        }
        Ok(Some(Tuple { fields, len: at }))
    }

    /// Field `i` of `tuple`; NULL is an error (for NOT NULL columns; see [`field_opt`](Self::field_opt)).
    pub fn field<const N: usize>(&self, tuple: &Tuple<N>, i: usize) -> Result<&[u8], Error> {
        let (at, len) = tuple.fields[i].ok_or_else(|| malformed(format!("NULL in field {i}")))?;
        Ok(&self.data()[at as usize..(at + len) as usize])
    }

    /// Field `i` of `tuple`, None for NULL (a nullable column).
    pub fn field_opt<const N: usize>(&self, tuple: &Tuple<N>, i: usize) -> Option<&[u8]> {
        tuple.fields[i].map(|(at, len)| &self.data()[at as usize..(at + len) as usize])
    }

    /// Drops `tuple` from the front of the buffer.
    pub fn consume<const N: usize>(&mut self, tuple: &Tuple<N>) {
        self.advance(tuple.len);
    }

    /// Checks that the stream ended with its trailer and nothing was left over.
    pub fn finish(&self) -> Result<(), Error> {
        if !self.ended || !self.data().is_empty() {
            return Err(malformed("stream cut before its end"));
        }
        Ok(())
    }
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed(reason.into())
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// An `int8` value.
pub fn int8(b: &[u8]) -> Result<i64, Error> {
    Ok(i64::from_be_bytes(b.try_into().map_err(|_| malformed("int8 of the wrong size"))?))
}

/// An `int2` value.
pub fn int2(b: &[u8]) -> Result<i16, Error> {
    Ok(i16::from_be_bytes(b.try_into().map_err(|_| malformed("int2 of the wrong size"))?))
}

/// A `timestamptz` value as microseconds since the Unix epoch.
pub fn timestamp_micros(b: &[u8]) -> Result<i64, Error> {
    int8(b)?.checked_add(POSTGRES_EPOCH_MICROS).ok_or_else(|| malformed("timestamp out of range"))
}

/// A `text` value.
pub fn text(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|_| malformed("text that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream with two tuples of (int8, text), the second with a NULL.
    fn stream() -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"ext!");
        for (n, text) in [(7i64, Some("seven")), (-1, None)] {
            s.extend_from_slice(&2i16.to_be_bytes());
            s.extend_from_slice(&8i32.to_be_bytes());
            s.extend_from_slice(&n.to_be_bytes());
            match text {
                Some(t) => {
                    s.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    s.extend_from_slice(t.as_bytes());
                }
                None => s.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    #[test]
    fn tuples_come_out_whole_from_chunks_of_any_size() {
        let bytes = stream();
        for chunk in 1..bytes.len() {
            let mut reader = Reader::default();
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                reader.push(Bytes::copy_from_slice(piece));
                while let Some(tuple) = reader.next_tuple::<2>().expect("valid") {
                    let n = int8(reader.field(&tuple, 0).expect("int8")).expect("int8");
                    let t = reader.field(&tuple, 1).ok().map(|b| text(b).expect("utf-8").to_owned());
                    seen.push((n, t));
                    reader.consume(&tuple);
                }
            }
            reader.finish().expect("complete");
            assert_eq!(seen, [(7, Some("seven".to_owned())), (-1, None)], "chunks of {chunk}");
        }
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let bytes = stream();
        let mut reader = Reader::default();
        reader.push(Bytes::copy_from_slice(&bytes[..bytes.len() - 2]));
        while let Some(tuple) = reader.next_tuple::<2>().expect("valid") {
            reader.consume(&tuple);
        }
        assert!(reader.finish().is_err(), "no trailer");
        let mut reader = Reader::default();
        reader.push(Bytes::from(bytes.clone()));
        assert!(reader.next_tuple::<3>().is_err(), "wrong field count");
        let mut reader = Reader::default();
        reader.push(Bytes::from_static(b"PGCOPY\nXXXXXXXXXXXXXXXXXX"));
        assert!(reader.next_tuple::<2>().is_err(), "bad signature");
        assert_eq!(timestamp_micros(&0i64.to_be_bytes()).expect("epoch"), POSTGRES_EPOCH_MICROS);
        assert!(int8(&[1, 2]).is_err());
    }
}
