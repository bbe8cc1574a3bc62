//! Incremental UTF-8 validation of a text message that arrives in pieces.
//!
//! Autobahn (cases 6.4.*) checks that a server fails the connection as soon
//! as the bytes received so far can no longer be valid UTF-8, even in the
//! middle of a frame, so each chunk is checked as it is appended.

/// Tracks how much of a growing buffer is known to be valid UTF-8.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Tracker {
    /// Bytes at the start of the buffer that form complete valid characters.
    checked: usize,
}

/// The bytes can never become valid UTF-8, whatever follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Tracker {
    /// Check the bytes appended since the last call. A character cut at the
    /// end of `buf` is accepted for now and checked again on the next call.
    pub fn extend(&mut self, buf: &[u8]) -> Result<(), InvalidUtf8> {
        match std::str::from_utf8(&buf[self.checked..]) {
            Ok(_) => {
                self.checked = buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the whole buffer (`len` bytes) was complete valid UTF-8.
    pub fn is_complete(&self, len: usize) -> bool {
        self.checked == len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_accepted_until_the_end() {
        let text = "κόσμε €𝄞".as_bytes();
        for cut in 0..=text.len() {
            let mut t = Utf8Tracker::default();
            t.extend(&text[..cut]).unwrap();
            t.extend(text).unwrap();
            assert!(t.is_complete(text.len()));
        }
        let mut t = Utf8Tracker::default();
        t.extend(&text[..2 + 1]).unwrap(); // "κ" + half of "ό"
        assert!(!t.is_complete(3));
    }

    #[test]
    fn invalid_bytes_fail_immediately() {
        let mut t = Utf8Tracker::default();
        t.extend(b"abc").unwrap();
        assert_eq!(t.extend(b"abc\xff"), Err(InvalidUtf8));
        let mut t = Utf8Tracker::default();
        // 0xF4 0x90 starts a code point above U+10FFFF: invalid before it is complete.
        assert_eq!(t.extend(b"\xf4\x90"), Err(InvalidUtf8));
    }
}
