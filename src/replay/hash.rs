//! The content hash of a stream: SHA-256 whose running state fits in a resume token.
//!
//! A stream's summary hashes every item of the whole request, also when the request was resumed on another
//! connection. The `sha2` crate does not export its running state, so this drives its compression function
//! directly and keeps the state itself: eight words, the byte count and the unhashed tail of at most 63 bytes.
//! The result is plain SHA-256 of the item encodings (each prefixed by its length, u32 little-endian), which any
//! client can recompute with its own library.

use sha2::{compress256, digest::generic_array::GenericArray};

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const BLOCK: usize = 64;

/// A running SHA-256 over a stream's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash {
    state: [u32; 8],
    /// Bytes hashed so far, the tail included.
    length: u64,
    tail: [u8; BLOCK],
}

impl Default for ContentHash {
    fn default() -> Self {
        Self { state: INITIAL, length: 0, tail: [0; BLOCK] }
    }
}

impl ContentHash {
    /// Adds one item: its length as a little-endian u32, then its canonical encoding.
    pub fn item(&mut self, encoded: &[u8]) {
        self.update(&(encoded.len() as u32).to_le_bytes());
        self.update(encoded);
    }

    fn tail_len(&self) -> usize {
        (self.length % BLOCK as u64) as usize
    }

    fn update(&mut self, mut data: &[u8]) {
        let filled = self.tail_len();
        self.length += data.len() as u64;
        if filled > 0 {
            let take = (BLOCK - filled).min(data.len());
            self.tail[filled..filled + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if filled + take < BLOCK {
                return;
            }
            compress256(&mut self.state, &[self.tail.into()]);
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            compress256(&mut self.state, std::slice::from_ref(GenericArray::from_slice(block)));
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
    }

    /// The SHA-256 digest of everything added.
    pub fn finish(&self) -> [u8; 32] {
        let mut last = *self;
        let bits = self.length.wrapping_mul(8);
        let filled = self.tail_len();
        // padding: 0x80, zeros up to 56 mod 64, the length in bits as a big-endian u64
        let zeros = (BLOCK + 55 - filled) % BLOCK;
        let mut padding = [0u8; BLOCK + 9];
        padding[0] = 0x80;
        padding[1 + zeros..9 + zeros].copy_from_slice(&bits.to_be_bytes());
        last.update(&padding[..9 + zeros]);
        let mut out = [0; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(last.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The state for a resume token: state words, byte count and the unhashed tail (40 to 103 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + BLOCK);
        for word in self.state {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.tail[..self.tail_len()]);
        out
    }

    /// The inverse of [`to_bytes`](Self::to_bytes); None when `bytes` is not such a state.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (words, rest) = bytes.split_at_checked(32)?;
        let (length, tail) = rest.split_at_checked(8)?;
        let length = u64::from_be_bytes(length.try_into().ok()?);
        let mut hash = Self { state: INITIAL, length, tail: [0; BLOCK] };
        if tail.len() != hash.tail_len() {
            return None;
        }
        for (word, chunk) in hash.state.iter_mut().zip(words.chunks_exact(4)) {
            *word = u32::from_be_bytes(chunk.try_into().ok()?);
        }
        hash.tail[..tail.len()].copy_from_slice(tail);
        Some(hash)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn equals_sha256_of_the_prefixed_items_across_a_save_and_restore() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..200 {
            let items: Vec<Vec<u8>> = (0..rng.random_range(0..40))
                .map(|_| (0..rng.random_range(0..150)).map(|_| rng.random()).collect())
                .collect();
            let mut reference = Sha256::new();
            let mut ours = ContentHash::default();
            let cut = rng.random_range(0..=items.len());
            for (i, item) in items.iter().enumerate() {
                if i == cut {
                    ours = ContentHash::from_bytes(&ours.to_bytes()).expect("restores");
                }
                reference.update((item.len() as u32).to_le_bytes());
                reference.update(item);
                ours.item(item);
            }
            assert_eq!(ours.finish()[..], reference.finalize()[..], "round {round}");
        }
        assert_eq!(
            ContentHash::default().finish()[..],
            Sha256::digest(b"")[..],
            "the empty stream hashes like the empty string"
        );
    }

    #[test]
    fn damaged_states_are_refused() {
        let mut hash = ContentHash::default();
        hash.item(b"abc");
        let bytes = hash.to_bytes();
        assert_eq!(bytes.len(), 40 + 7);
        assert!(ContentHash::from_bytes(&bytes[..bytes.len() - 1]).is_none(), "tail shorter than the count says");
        assert!(ContentHash::from_bytes(&bytes[..20]).is_none());
    }
}
