//! permessage-deflate (RFC 7692), sans-IO: negotiation, one-shot compression
//! of a publication, and bounded inflation of client messages.
//!
//! The server always answers `server_no_context_takeover`: each compressed
//! message stands alone, so one compression of a publication is valid on every
//! connection whose window is at least the one it was compressed with, and no
//! compressor lives with any connection (see "permessage-deflate, compressed
//! once" in `../shared/DESIGN-NOTES.md`). Compressors are cached per thread.
//!
//! Memory, measured with a counting allocator (flate2 1.1.11 on C zlib):
//! - an inflater holds 7,280 bytes of zlib state from its creation, and
//!   its window (`2^bits` bytes, plus 8) from the first message on: 9,336
//!   bytes at window 11, 40,056 at 15 ([`inflater_heap`]). It is created on
//!   the first compressed message of a connection and, with
//!   `client_no_context_takeover`, dropped after each message. (zlib-rs
//!   keeps a 47,552-byte state at every window, which is why the crate uses
//!   C zlib.)
//! - a compressor holds 139,224 bytes of heap at window 9, 145,368 at 11
//!   and 268,248 at 15, whatever the level. One per (thread, window, level)
//!   in [`compress`]'s cache, none per connection.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// Largest LZ77 window we let a client compress with, when it lets us choose
/// (it offered `client_max_window_bits`).
///
/// Why 11 (2 KiB): a client stream of 500 chat publishes (142 bytes on
/// average) compressed with context takeover at level 6 shrinks to 32.3% of
/// its size at window 9, 25.0% at 10, 22.7% at 11, 21.2% at 12 and 19.5% at
/// 15; 11 is the knee. It bounds our inflater's memory for that client to
/// 9,336 bytes instead of 40,056 at window 15 ([`inflater_heap`]), and the
/// client's compressor too.
///
/// Must stay below 15: [`DeflateParams::response_header`] reads
/// `client_max_window_bits == 15` as "the client did not offer the parameter".
pub const CLIENT_WINDOW_BITS: u8 = 11;
const _: () = assert!(CLIENT_WINDOW_BITS >= 8 && CLIENT_WINDOW_BITS < 15);

/// Heap bytes of one C zlib inflater with a window of `window_bits`, once
/// it has inflated something (measured, see the module documentation).
/// Used to report the decoder's memory.
pub const fn inflater_heap(window_bits: u8) -> usize {
    7_280 + (1 << window_bits) + 8
}

/// The trailer a sync flush ends with, removed from compressed messages
/// (RFC 7692 section 7.2.1) and put back before inflating (7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What permessage-deflate parameters one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// LZ77 window the server compresses with (8..=15). The server always answers
    /// server_no_context_takeover, so one compressed frame is valid on every connection.
    ///
    /// At 8 the server sends only plain frames: zlib cannot produce raw
    /// deflate with a 256-byte window ([`compress`] returns `None`), and
    /// RFC 7692 lets an endpoint send any message uncompressed.
    pub server_max_window_bits: u8,
    /// Window the client compresses with (8..=15): the window our inflater needs.
    pub client_max_window_bits: u8,
    /// The client resets its compression context after every message.
    pub client_no_context_takeover: bool,
}

impl DeflateParams {
    /// The value of the Sec-WebSocket-Extensions response header.
    ///
    /// `server_max_window_bits` is always stated: required when the offer had
    /// it, allowed when it did not (RFC 7692 section 7.1.2.1).
    /// `client_max_window_bits` is stated only when below 15, which
    /// [`negotiate`] produces only for offers that had the parameter (a server
    /// must not send it otherwise, section 7.1.2.2).
    pub fn response_header(&self) -> String {
        let mut h = format!(
            "{NAME}; server_no_context_takeover; server_max_window_bits={}",
            self.server_max_window_bits
        );
        if self.client_no_context_takeover {
            h.push_str("; client_no_context_takeover");
        }
        if self.client_max_window_bits < 15 {
            h.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        h
    }

    /// The window the inflater of this connection's messages needs. zlib
    /// cannot inflate raw deflate with a window of 8; a larger window decodes
    /// the same streams.
    fn inflate_window_bits(&self) -> u8 {
        self.client_max_window_bits.clamp(9, 15)
    }
}

/// Pick the first offer in the request's Sec-WebSocket-Extensions header values
/// (all header lines, comma-separated lists, each `name; p; p=v`, values possibly
/// quoted strings) that the server can honour. None: decline (no extension in the 101).
///
/// A header that does not parse (bad token, unterminated quoted string,
/// non-ASCII bytes) declines the extension altogether; an offer with a
/// parameter we cannot honour is skipped and the next offer tried. Names are
/// compared ASCII case-insensitively. Window values must be 8..=15 without
/// leading zeros (section 7.1.2.1), bare or quoted (`"10"`).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<DeflateParams> {
    let mut offers = Vec::new();
    for value in header_values {
        parse_extensions(value, &mut offers)?;
    }
    offers
        .iter()
        .filter(|o| o.name.eq_ignore_ascii_case(NAME.as_bytes()))
        .find_map(|o| accept(&o.params))
}

/// One `name; p; p=v` element of the header.
struct Offer<'a> {
    name: &'a [u8],
    /// Parameters in order; the value unquoted.
    params: Vec<(&'a [u8], Option<Vec<u8>>)>,
}

/// The parameters of a permessage-deflate offer we can honour, or None.
fn accept(params: &[(&[u8], Option<Vec<u8>>)]) -> Option<DeflateParams> {
    const KNOWN: [&str; 4] = [
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    ];
    let mut seen = [false; 4];
    let mut server_bits = 15;
    // None: not offered; Some(None): offered without a value.
    let mut client_bits: Option<Option<u8>> = None;
    let mut client_no_context = false;
    for (name, value) in params {
        let i = KNOWN
            .iter()
            .position(|k| name.eq_ignore_ascii_case(k.as_bytes()))?;
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        match i {
            0 | 1 if value.is_some() => return None,
            0 => {}
            1 => client_no_context = true,
            2 => server_bits = window_bits(value.as_deref()?)?,
            _ => {
                client_bits = Some(
                    value
                        .as_deref()
                        .map(window_bits)
                        .map_or(Some(None), |b| b.map(Some))?,
                )
            }
        }
    }
    Some(match client_bits {
        // The client may compress with window 15: ask it to reset after each
        // message so no inflate state outlives a message (section 7.1.1.2).
        None => DeflateParams {
            server_max_window_bits: server_bits,
            client_max_window_bits: 15,
            client_no_context_takeover: true,
        },
        Some(offered) => DeflateParams {
            server_max_window_bits: server_bits,
            client_max_window_bits: offered.unwrap_or(15).min(CLIENT_WINDOW_BITS),
            client_no_context_takeover: client_no_context,
        },
    })
}

/// A window-bits value: `8`..`15`, no leading zero, no sign.
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// Parse one header value (a comma-separated list of extensions, empty
/// elements allowed) into `offers`. None on a syntax error.
fn parse_extensions<'a>(s: &'a [u8], offers: &mut Vec<Offer<'a>>) -> Option<()> {
    let mut p = Cursor { s, i: 0 };
    loop {
        p.skip_ows();
        match p.peek() {
            None => return Some(()),
            Some(b',') => {
                p.i += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = p.token()?;
        let mut params = Vec::new();
        loop {
            p.skip_ows();
            match p.peek() {
                None => break,
                Some(b',') => {
                    p.i += 1;
                    break;
                }
                Some(b';') => {
                    p.i += 1;
                    p.skip_ows();
                    let k = p.token()?;
                    p.skip_ows();
                    let v = if p.peek() == Some(b'=') {
                        p.i += 1;
                        p.skip_ows();
                        Some(p.value()?)
                    } else {
                        None
                    };
                    params.push((k, v));
                }
                Some(_) => return None,
            }
        }
        offers.push(Offer { name, params });
    }
}

/// A position in a header value.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// An RFC 7230 token (one or more tchar).
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }

    /// A token or a quoted string, unescaped.
    fn value(&mut self) -> Option<Vec<u8>> {
        if self.peek() != Some(b'"') {
            return self.token().map(<[u8]>::to_vec);
        }
        self.i += 1;
        let mut v = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(v);
                }
                b'\\' => {
                    let c = *self.s.get(self.i + 1)?;
                    if !(c == b'\t' || (0x20..0x7f).contains(&c)) {
                        return None;
                    }
                    v.push(c);
                    self.i += 2;
                }
                c if c == b'\t' || (0x20..0x7f).contains(&c) => {
                    v.push(c);
                    self.i += 1;
                }
                _ => return None,
            }
        }
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

thread_local! {
    /// Compressors by (window bits, level), reset after every message: a
    /// publication allocates no zlib state. Few entries (one per setting in use).
    static COMPRESSORS: RefCell<Vec<(u8, u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// Compress one message payload as a permessage-deflate frame payload: raw deflate,
/// sync flush, the trailing 00 00 ff ff removed, no context kept (server_no_context_takeover).
/// Returns None when window_bits is 8 (unsupported by zlib for raw deflate), or when the
/// result is not smaller than the input (send plain then).
///
/// Also None for an empty payload (an empty plain frame is the smallest) and
/// for a window outside 9..=15. `level` is zlib's, 0..=9 (larger is taken as 9).
pub fn compress(payload: &[u8], window_bits: u8, level: u32) -> Option<Vec<u8>> {
    if payload.is_empty() || !(9..=15).contains(&window_bits) {
        return None;
    }
    let level = level.min(9);
    COMPRESSORS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let at = match cache
            .iter()
            .position(|(w, l, _)| (*w, *l) == (window_bits, level))
        {
            Some(at) => at,
            None => {
                let c = Compress::new_with_window_bits(Compression::new(level), false, window_bits);
                cache.push((window_bits, level, c));
                cache.len() - 1
            }
        };
        let c = &mut cache[at].2;
        let out = compress_with(c, payload);
        c.reset();
        out
    })
}

/// The body of [`compress`] with a fresh (or reset) compressor.
fn compress_with(c: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    // Worth sending only if smaller than the payload, so with the tail the
    // output never needs more than `payload.len() + 3` bytes: stop there.
    let limit = payload.len() + TAIL.len() - 1;
    let mut out = Vec::with_capacity((payload.len() / 2 + 64).min(limit));
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        // A sync flush is complete when all input is consumed and zlib left
        // room in the output (it stops only when the output is full).
        if c.total_in() - start_in == payload.len() as u64 && out.len() < out.capacity() {
            break;
        }
        if out.len() >= limit {
            return None;
        }
        let grow = out.capacity().max(64).min(limit - out.len());
        out.reserve_exact(grow);
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    if out.len() >= payload.len() {
        return None;
    }
    if out.capacity() - out.len() > 64 {
        out.shrink_to_fit();
    }
    Some(out)
}

/// Why inflating a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would exceed the limit.
    TooBig,
    /// The compressed data is not valid deflate.
    Corrupt,
}

/// Inflates the compressed messages of one connection, chunk by chunk as
/// frames arrive, never producing more than a given limit.
pub struct Inflater {
    /// The zlib stream; kept across messages only with context takeover.
    z: Decompress,
    /// Window bits `z` was made with, to remake it after a final block.
    window_bits: u8,
    /// The current message ended with a BFINAL block: what follows in it
    /// (other than our appended tail) is corrupt, and the stream must be
    /// reset before the next message.
    ended: bool,
    /// Compressed bytes were given for the current message. A message with
    /// none is empty: inflating the tail alone would leave zlib inside a
    /// stored block (`00 00 ff ff` read as a block header and half a length).
    fed: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("window_bits", &self.window_bits)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater for messages compressed with a window of `window_bits`
    /// (taken as 9..=15: zlib has no raw window of 8, and a larger window
    /// decodes the same data).
    pub fn new(window_bits: u8) -> Self {
        let window_bits = window_bits.clamp(9, 15);
        Self {
            z: Decompress::new_with_window_bits(false, window_bits),
            window_bits,
            ended: false,
            fed: false,
        }
    }

    /// An inflater for a connection that agreed to `params`.
    pub fn for_params(params: &DeflateParams) -> Self {
        Self::new(params.inflate_window_bits())
    }

    /// Heap bytes this inflater holds, at most (see [`inflater_heap`]).
    pub fn memory(&self) -> usize {
        inflater_heap(self.window_bits) + std::mem::size_of::<Self>()
    }

    /// Inflate more compressed bytes of the current message, appending to
    /// `out`, which never grows past `max + 1` bytes: TooBig as soon as the
    /// message would exceed `max`. On an error `out` keeps what was inflated
    /// before it.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), InflateError> {
        if input.is_empty() {
            return Ok(());
        }
        if self.ended {
            return Err(InflateError::Corrupt);
        }
        self.fed = true;
        self.run(input, out, max, false)
    }

    /// The message's last frame was inflated: inflate the sync-flush tail
    /// the sender removed, and get ready for the next message.
    pub fn finish(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), InflateError> {
        if std::mem::take(&mut self.fed) && !self.ended {
            self.run(&TAIL, out, max, true)?;
        }
        if self.ended {
            // After a final block zlib takes no more input; the context
            // cannot be carried on, start afresh.
            self.z = Decompress::new_with_window_bits(false, self.window_bits);
            self.ended = false;
        }
        Ok(())
    }

    /// Inflate `input` into `out` (at most `max + 1` bytes). `tail`: the
    /// input is our appended `00 00 ff ff`, which may follow a final block.
    ///
    /// On an error, `out` holds what was inflated before it, so the caller
    /// can validate that first (the error found does not depend on how the
    /// compressed bytes were split).
    fn run(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
        tail: bool,
    ) -> Result<(), InflateError> {
        let cap = max.saturating_add(1);
        loop {
            if out.len() == out.capacity() {
                if out.capacity() >= cap {
                    return Err(InflateError::TooBig);
                }
                let target = (out.capacity() * 2).max(1024).min(cap);
                out.reserve_exact(target - out.len());
            }
            let (in0, out0) = (self.z.total_in(), out.len());
            let status = self
                .z
                .decompress_vec(input, out, FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (self.z.total_in() - in0) as usize;
            input = &input[consumed..];
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                self.ended = true;
                // Input after the final block belongs to no deflate stream.
                return if input.is_empty() || tail {
                    Ok(())
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            if consumed == 0 && out.len() == out0 && out.len() < out.capacity() {
                // No progress with input and room left: cannot happen with a
                // sane stream; never spin.
                return Err(InflateError::Corrupt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(headers: &[&str]) -> Option<DeflateParams> {
        negotiate(headers.iter().map(|h| h.as_bytes()))
    }

    fn answer(headers: &[&str]) -> Option<String> {
        neg(headers).map(|p| p.response_header())
    }

    #[test]
    fn browsers_offers() {
        // Chrome.
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; client_max_window_bits=11"
            )
        );
        assert_eq!(
            neg(&["permessage-deflate; client_max_window_bits"]),
            Some(DeflateParams {
                server_max_window_bits: 15,
                client_max_window_bits: CLIENT_WINDOW_BITS,
                client_no_context_takeover: false,
            })
        );
        // Firefox: the client keeps window 15, so it must reset every message.
        assert_eq!(
            answer(&["permessage-deflate"]).as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; client_no_context_takeover"
            )
        );
        assert_eq!(neg(&["permessage-deflate"]).unwrap().client_max_window_bits, 15);
    }

    #[test]
    fn autobahn_offers() {
        let p = neg(&["permessage-deflate; server_max_window_bits=8; client_max_window_bits"]).unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (8, 11));
        assert!(p.response_header().contains("server_max_window_bits=8"));
        let p = neg(&["permessage-deflate; server_no_context_takeover; server_max_window_bits=15"]).unwrap();
        assert_eq!(p.server_max_window_bits, 15);
        assert!(p.client_no_context_takeover);
        let p = neg(&["permessage-deflate; client_no_context_takeover; client_max_window_bits=9"]).unwrap();
        assert_eq!(
            p,
            DeflateParams {
                server_max_window_bits: 15,
                client_max_window_bits: 9,
                client_no_context_takeover: true,
            }
        );
        assert_eq!(
            p.response_header(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15; client_no_context_takeover; client_max_window_bits=9"
        );
        // Several offers in one header: the first acceptable one wins.
        let p = neg(&[
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=9; client_max_window_bits=15, permessage-deflate",
        ])
        .unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (9, 11));
        // Autobahn 13.7.*, as its client writes it: window 8 first.
        let p = neg(&[
            "permessage-deflate; client_max_window_bits; server_no_context_takeover; server_max_window_bits=8, permessage-deflate; client_max_window_bits; server_no_context_takeover, permessage-deflate; client_max_window_bits",
        ])
        .unwrap();
        assert_eq!(
            p.response_header(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=8; client_max_window_bits=11"
        );
        // Window 8 is accepted, and served with plain frames.
        assert_eq!(compress(&[b'a'; 1000], p.server_max_window_bits, 6), None);
        // ... also over several header lines.
        let p = neg(&[
            "x-webkit-deflate-frame",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=12",
        ])
        .unwrap();
        assert_eq!(p.server_max_window_bits, 12);
    }

    #[test]
    fn offers_we_skip() {
        for h in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "x-webkit-deflate-frame",
            "deflate-stream, foo; bar=1",
            "",
            " , ,",
        ] {
            assert_eq!(neg(&[h]), None, "{h:?}");
        }
    }

    #[test]
    fn quoted_values_and_spacing() {
        let p =
            neg(&["permessage-deflate;server_max_window_bits=\"10\";client_max_window_bits=\"9\""]).unwrap();
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (10, 9));
        let p = neg(&["  Permessage-Deflate ;\tServer_Max_Window_Bits = \"1\\1\" ,"]).unwrap();
        assert_eq!(p.server_max_window_bits, 11);
        // Empty list elements are allowed around offers.
        assert!(neg(&[", permessage-deflate ,"]).is_some());
    }

    #[test]
    fn malformed_headers_decline_everything() {
        for h in [
            &b"permessage-deflate; server_max_window_bits=\"10"[..],
            b"permessage-deflate; =10",
            b"permessage-deflate;; client_max_window_bits",
            b"permessage-deflate client_max_window_bits",
            b"permessage-deflate\xff",
            b"\xc3\xa9, permessage-deflate",
            b"permessage-deflate; a=\"\x01\"",
            b"permessage-deflate; server_max_window_bits=10=",
            b"\0\0\0",
        ] {
            assert_eq!(negotiate([h]), None, "{h:?}");
        }
        // A good first line does not rescue a malformed second one.
        assert_eq!(
            negotiate([&b"permessage-deflate"[..], b"permessage-deflate; \"x\""]),
            None
        );
    }

    fn inflate_plain(data: &[u8], w: u8) -> Vec<u8> {
        let mut d = Decompress::new_with_window_bits(false, w);
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
        out
    }

    #[test]
    fn compress_round_trips_and_declines() {
        let json = br#"{"type":"message","group":"room-42","data":{"text":"hello"}}"#.repeat(40);
        for w in 9..=15 {
            for level in [1, 6, 9] {
                let z = compress(&json, w, level).unwrap();
                assert!(z.len() < json.len());
                assert_eq!(inflate_plain(&z, w), json);
                // The cached compressor was reset: same input, same output.
                assert_eq!(compress(&json, w, level).unwrap(), z);
            }
        }
        assert_eq!(compress(&json, 8, 6), None);
        assert_eq!(compress(b"", 15, 6), None);
        assert_eq!(compress(b"a", 15, 6), None);
        let mut x = 0x9e37_79b9u32;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(compress(&noise, 15, 9), None);
        // Large and very compressible: the output buffer has to grow.
        let big = vec![b'x'; 1 << 20];
        let z = compress(&big, 15, 1).unwrap();
        assert_eq!(inflate_plain(&z, 15), big);
    }

    #[test]
    fn inflater_bounds_its_output() {
        let big = vec![0u8; 1 << 20];
        let z = compress(&big, 15, 9).unwrap();
        let mut inf = Inflater::new(15);
        let mut out = Vec::new();
        let r = z.chunks(100).try_for_each(|c| inf.inflate(c, &mut out, 4096));
        assert_eq!(r, Err(InflateError::TooBig));
        assert!(out.capacity() <= 4097, "{}", out.capacity());
        let mut inf = Inflater::new(9);
        let mut out = Vec::new();
        assert_eq!(
            inf.inflate(&[0xff, 0xff, 0xff], &mut out, 100),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn inflater_empty_and_final_block_messages() {
        let mut inf = Inflater::new(15);
        for msg in [&[][..], &[0x00][..]] {
            let mut out = Vec::new();
            inf.inflate(msg, &mut out, 10).unwrap();
            inf.finish(&mut out, 10).unwrap();
            assert!(out.is_empty());
        }
        // A message closed with BFINAL (zlib's Finish flush), then another.
        let mut c = Compress::new(Compression::new(6), false);
        let mut z = Vec::with_capacity(100);
        c.compress_vec(b"hello hello", &mut z, FlushCompress::Finish)
            .unwrap();
        for _ in 0..2 {
            let mut out = Vec::new();
            inf.inflate(&z, &mut out, 100).unwrap();
            inf.finish(&mut out, 100).unwrap();
            assert_eq!(out, b"hello hello");
        }
        let mut out = Vec::new();
        let mut z2 = z.clone();
        z2.push(1);
        assert_eq!(inf.inflate(&z2, &mut out, 100), Err(InflateError::Corrupt));
    }
}
