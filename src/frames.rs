//! The WebSocket frame-boundary tracker: one [`FrameTracker`] per tunnel direction.
//!
//! A tunnel splices raw bytes; to drain it politely, tidegate injects a Close frame, which is
//! only allowed at a frame boundary (RFC 6455 §5.4: control frames may go between the
//! fragments of a message, never inside a frame). The tracker watches the bytes of one
//! direction as they pass and always knows whether they end at a boundary. It parses frame
//! headers only (FIN, RSV, opcode, MASK, 7/16/64-bit length, masking key) and skips payloads
//! in O(1) per [`FrameTracker::feed`] call, never copying or unmasking them; the one exception
//! is the 2-byte status code of the first Close frame, which it unmasks for the access log.
//! Headers may be split across reads at any byte.
//!
//! It owns framing validity: a stream that breaks RFC 6455 framing is marked invalid for good,
//! and [`FrameTracker::at_boundary`] is then false forever, so nothing is ever injected into a
//! stream we cannot frame. It does not own what the bytes mean: it neither enforces which
//! direction masks, nor checks UTF-8, minimal length encodings or the content of Close
//! payloads, and it allows RSV1 anywhere (permessage-deflate uses it and extensions pass
//! through). It is pure code: no I/O, no tokio types.
//!
//! How the tunnel drains one direction with it, for each read `buf`:
//! if `at_boundary()`, inject the Close before `buf`; else if
//! `next_boundary(buf) == Some(k)`, forward and `feed(&buf[..k])`, then inject the Close;
//! else forward and `feed(buf)` and wait for the next read.

/// `pos` while a Close frame's status code is being read: its first payload byte comes next.
const CODE_HI: u8 = 0xFC;
/// `pos` while a Close frame's status code is being read: its second payload byte comes next.
const CODE_LO: u8 = 0xFD;
/// `pos` while skipping a payload: `remaining` bytes of it are still to come.
const PAYLOAD: u8 = 0xFE;
/// `pos` once the stream broke framing: terminal, nothing more is parsed.
const INVALID: u8 = 0xFF;

/// `flags`: the last complete data frame had no FIN, so a fragmented message is open.
const FRAGMENTED: u8 = 1;
/// `flags`: a complete Close frame has been seen.
const SAW_CLOSE: u8 = 2;
/// `flags`: `code` holds both bytes of the first Close frame's status code.
const HAS_CODE: u8 = 4;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const FIN: u8 = 0x80;
const RSV2_RSV3: u8 = 0x30;
const MASK: u8 = 0x80;
/// The longest header: 2 bytes, 8 of extended length, 4 of masking key.
const MAX_HEADER: usize = 14;

/// Tracks frame boundaries, frame and message counts and the first close code of one direction
/// of a WebSocket tunnel. 32 bytes, `Copy`: a query clones it to look ahead without changing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameTracker {
    /// Complete frames seen, control frames included.
    frames: u64,
    /// Complete data messages seen (a data frame with FIN, or a final continuation).
    messages: u64,
    /// While in the header: the extended payload length being accumulated (or the 7-bit one);
    /// after it: the payload bytes still to skip.
    remaining: u64,
    /// The status code of the first Close frame, accumulated byte by byte (see `HAS_CODE`).
    code: u16,
    /// The first two bytes of the current frame's masking key (zero if unmasked): the status
    /// code occupies payload bytes 0 and 1, so only these key bytes are ever needed.
    key: [u8; 2],
    /// Header byte 0 of the current frame: FIN, RSV1-3, opcode.
    b0: u8,
    /// Header byte 1 of the current frame: MASK, 7-bit length.
    b1: u8,
    /// Where we are: `0..14` is the index of the next header byte (0 = at a boundary), or one
    /// of `CODE_HI`, `CODE_LO`, `PAYLOAD`, `INVALID`.
    pos: u8,
    /// `FRAGMENTED`, `SAW_CLOSE`, `HAS_CODE`.
    flags: u8,
}

impl FrameTracker {
    /// A tracker at the start of a stream, which is a boundary.
    pub const fn new() -> Self {
        Self { frames: 0, messages: 0, remaining: 0, code: 0, key: [0; 2], b0: 0, b1: 0, pos: 0, flags: 0 }
    }

    /// Feeds the next bytes of the stream, as they pass through; they are never copied or
    /// modified. Payloads are skipped in O(1) per call, headers are parsed byte by byte.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.advance(bytes, false);
    }

    /// True when every byte fed so far ends exactly at a frame boundary (also before any byte).
    /// Never true again once the stream is invalid.
    pub fn at_boundary(&self) -> bool {
        self.pos == 0
    }

    /// The FIRST offset `k` in `1..=bytes.len()` such that feeding `bytes[..k]` would end at a
    /// frame boundary, or None. This is the one the drain uses: inject the Close as early as
    /// possible (check [`at_boundary`](Self::at_boundary) first for offset 0). A query: the
    /// tracker is unchanged.
    pub fn next_boundary(&self, bytes: &[u8]) -> Option<usize> {
        let mut probe = *self;
        let k = probe.advance(bytes, true);
        (k > 0 && probe.at_boundary()).then_some(k)
    }

    /// The LAST offset `k` in `1..=bytes.len()` such that feeding `bytes[..k]` would end at a
    /// frame boundary, or None: the longest prefix that can be forwarded whole before an
    /// injection. A query: the tracker is unchanged.
    pub fn last_boundary(&self, bytes: &[u8]) -> Option<usize> {
        let mut probe = *self;
        let mut offset = 0;
        let mut last = None;
        while offset < bytes.len() {
            offset += probe.advance(&bytes[offset..], true);
            if !probe.at_boundary() {
                break;
            }
            last = Some(offset);
        }
        last
    }

    /// The payload bytes of the current frame still to come, when the stream is inside a
    /// payload (0 at a boundary, in a header, in a Close frame's status code, or once invalid):
    /// exactly that many bytes may pass unseen through [`skip_payload`](Self::skip_payload).
    /// The tunnel splices them instead of reading them.
    pub fn payload_remaining(&self) -> u64 {
        if self.pos == PAYLOAD { self.remaining } else { 0 }
    }

    /// Accounts for `n` payload bytes that passed without being read; `n` is capped at
    /// [`payload_remaining`](Self::payload_remaining), so it never skips past the frame. Ends
    /// in the same state as feeding those `n` bytes (payloads are never looked at).
    pub fn skip_payload(&mut self, n: u64) {
        if self.pos != PAYLOAD || n == 0 {
            return;
        }
        self.remaining -= n.min(self.remaining);
        if self.remaining == 0 {
            self.end_frame();
        }
    }

    /// Complete frames seen, control frames included.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Complete data messages seen: a text or binary frame with FIN, or a final continuation.
    /// Control frames are not messages.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// True once a complete Close frame has been seen.
    pub fn saw_close(&self) -> bool {
        self.flags & SAW_CLOSE != 0
    }

    /// The status code of the first complete Close frame, if its payload had at least 2 bytes.
    pub fn close_code(&self) -> Option<u16> {
        (self.flags & (SAW_CLOSE | HAS_CODE) == SAW_CLOSE | HAS_CODE).then_some(self.code)
    }

    /// True once the stream broke framing: reserved opcode, RSV2 or RSV3 set, a control frame
    /// fragmented or longer than 125 bytes, a 64-bit length with its top bit set, a
    /// continuation with no message open, or a new data frame while one is open. Permanent.
    pub fn is_invalid(&self) -> bool {
        self.pos == INVALID
    }

    /// True while a data message has been started without FIN and not yet finished: control
    /// frames may still come, but the next data frame must be a continuation.
    pub fn in_fragmented_message(&self) -> bool {
        self.flags & FRAGMENTED != 0
    }

    /// Consumes `bytes` and returns how many were consumed: all of them, unless
    /// `stop_at_boundary` is set and a frame ends earlier (then it stops right after that frame).
    fn advance(&mut self, bytes: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            match self.pos {
                PAYLOAD => {
                    // `remaining > 0` here: the cast cannot truncate below `bytes.len() - i`.
                    let n = self.remaining.min((bytes.len() - i) as u64);
                    self.remaining -= n;
                    i += n as usize;
                    if self.remaining == 0 {
                        self.end_frame();
                    }
                }
                CODE_HI | CODE_LO => {
                    let byte = bytes[i];
                    i += 1;
                    self.read_code_byte(byte);
                }
                INVALID => return bytes.len(),
                // Fast path: a whole header is in this read (small frames are header-bound).
                0 if bytes.len() - i >= MAX_HEADER => i += self.whole_header(&bytes[i..i + MAX_HEADER]),
                _ => {
                    let byte = bytes[i];
                    i += 1;
                    self.header_byte(byte);
                }
            }
            if stop_at_boundary && self.pos == 0 {
                break;
            }
        }
        i
    }

    /// Parses a whole header from the first bytes of `h` at a boundary; returns its length.
    /// Ends in exactly the state that `header_byte` reaches byte by byte.
    fn whole_header(&mut self, h: &[u8]) -> usize {
        if !self.take_b0(h[0]) || !self.take_b1(h[1]) {
            return 0;
        }
        let ext = usize::from(self.ext_len());
        if ext == 8 && h[2] & 0x80 != 0 {
            self.fail();
            return 0;
        }
        for &byte in &h[2..2 + ext] {
            self.remaining = self.remaining << 8 | u64::from(byte);
        }
        if self.b1 & MASK != 0 {
            self.key = [h[2 + ext], h[3 + ext]];
        }
        let len = usize::from(self.header_len());
        self.end_header();
        len
    }

    /// Takes one header byte at index `self.pos`.
    fn header_byte(&mut self, byte: u8) {
        match self.pos {
            0 => {
                self.take_b0(byte);
                return;
            }
            1 => {
                if !self.take_b1(byte) {
                    return;
                }
            }
            pos => {
                let ext = self.ext_len();
                if pos < 2 + ext {
                    if ext == 8 && pos == 2 && byte & 0x80 != 0 {
                        return self.fail();
                    }
                    self.remaining = self.remaining << 8 | u64::from(byte);
                } else if pos < 4 + ext {
                    self.key[usize::from(pos - 2 - ext)] = byte;
                }
                self.pos += 1;
            }
        }
        if self.pos == self.header_len() {
            self.end_header();
        }
    }

    /// Validates header byte 0 against the message state and stores it, or fails.
    fn take_b0(&mut self, byte: u8) -> bool {
        let fragmented = self.flags & FRAGMENTED != 0;
        let valid = byte & RSV2_RSV3 == 0
            && match byte & 0x0F {
                OP_CONTINUATION => fragmented,
                OP_TEXT | OP_BINARY => !fragmented,
                0x8..=0xA => byte & FIN != 0,
                _ => false,
            };
        if valid {
            self.b0 = byte;
            self.pos = 1;
        } else {
            self.fail();
        }
        valid
    }

    /// Validates header byte 1 (control frames carry at most 125 bytes) and stores it, or fails.
    fn take_b1(&mut self, byte: u8) -> bool {
        let len7 = byte & 0x7F;
        if self.b0 & 0x08 != 0 && len7 > 125 {
            self.fail();
            return false;
        }
        self.b1 = byte;
        self.key = [0; 2];
        self.remaining = if len7 < 126 { u64::from(len7) } else { 0 };
        self.pos = 2;
        true
    }

    /// The stream broke framing: stop for good, in one canonical state whatever the split.
    fn fail(&mut self) {
        self.pos = INVALID;
        (self.remaining, self.key, self.b0, self.b1) = (0, [0; 2], 0, 0);
    }

    /// Bytes of extended length after header byte 1: 0, 2 or 8.
    fn ext_len(&self) -> u8 {
        match self.b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    /// The whole header length of the current frame, known once byte 1 is read.
    fn header_len(&self) -> u8 {
        2 + self.ext_len() + if self.b1 & MASK != 0 { 4 } else { 0 }
    }

    /// The header is complete: read the first Close's status code, skip the payload, or end
    /// an empty frame at once.
    fn end_header(&mut self) {
        let first_close = self.b0 & 0x0F == OP_CLOSE && self.flags & SAW_CLOSE == 0;
        if first_close && self.remaining >= 2 {
            self.pos = CODE_HI;
        } else if self.remaining > 0 {
            self.pos = PAYLOAD;
        } else {
            self.end_frame();
        }
    }

    /// Takes one of the two status-code bytes of the first Close frame, unmasking it.
    fn read_code_byte(&mut self, byte: u8) {
        self.remaining -= 1;
        if self.pos == CODE_HI {
            self.code = u16::from(byte ^ self.key[0]) << 8;
            self.pos = CODE_LO;
        } else {
            self.code |= u16::from(byte ^ self.key[1]);
            self.flags |= HAS_CODE;
            self.pos = PAYLOAD;
        }
        if self.remaining == 0 {
            self.end_frame();
        }
    }

    /// The current frame is complete: count it, update the message state, go to a boundary.
    fn end_frame(&mut self) {
        self.frames += 1;
        match self.b0 & 0x0F {
            OP_CONTINUATION | OP_TEXT | OP_BINARY if self.b0 & FIN != 0 => {
                self.messages += 1;
                self.flags &= !FRAGMENTED;
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => self.flags |= FRAGMENTED,
            OP_CLOSE => self.flags |= SAW_CLOSE,
            _ => {}
        }
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes one frame with the minimal length form, masking the payload if `key` is given.
    fn frame(b0: u8, key: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mask = if key.is_some() { MASK } else { 0 };
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(mask | n as u8),
            n @ 126..=0xFFFF => {
                out.push(mask | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// Feeds `stream` one byte at a time and returns the offsets where the tracker is at a boundary.
    fn boundaries_bytewise(t: &mut FrameTracker, stream: &[u8]) -> Vec<usize> {
        let mut found = Vec::new();
        for (i, byte) in stream.iter().enumerate() {
            t.feed(std::slice::from_ref(byte));
            if t.at_boundary() {
                found.push(i + 1);
            }
        }
        found
    }

    /// Concatenates frames, returning the stream and the end offset of each frame.
    fn concat(frames: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let ends = frames.iter().map(|f| {
            stream.extend_from_slice(f);
            stream.len()
        });
        let ends = ends.collect();
        (stream, ends)
    }

    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    #[test]
    fn rfc6455_examples_and_length_forms() {
        let frames = [
            vec![0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F], // unmasked "Hello" (RFC 6455 §5.7)
            vec![0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58], // masked "Hello"
            frame(0x82, None, &[]),
            frame(0x82, Some(KEY), &[]),
            frame(0x82, None, &[7; 125]),
            frame(0x82, Some(KEY), &[7; 126]),
            frame(0x82, None, &[0x81; 256]), // 16-bit length
            frame(0x82, Some(KEY), &[0x88; 65535]),
            frame(0x82, None, &[0xFF; 65536]), // 64-bit length
            frame(0x81, Some(KEY), &[0x7F; 70_000]),
        ];
        assert_eq!(frames[6][..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(frames[8][..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        let (stream, ends) = concat(&frames);
        let mut t = FrameTracker::new();
        assert!(t.at_boundary());
        assert_eq!(boundaries_bytewise(&mut t, &stream), ends);
        assert_eq!((t.frames(), t.messages()), (10, 10));
        let mut whole = FrameTracker::new();
        whole.feed(&stream);
        assert_eq!(whole, t);
        assert!(!t.is_invalid() && !t.saw_close() && t.close_code().is_none());
    }

    #[test]
    fn empty_frame_ends_with_its_header() {
        let mut t = FrameTracker::new();
        t.feed(&[0x89]);
        assert!(!t.at_boundary());
        t.feed(&[0x00]);
        assert!(t.at_boundary());
        t.feed(&[0x8A, 0x80, 1, 2, 3]);
        assert!(!t.at_boundary());
        t.feed(&[4]);
        assert!(t.at_boundary());
        assert_eq!((t.frames(), t.messages()), (2, 0));
    }

    #[test]
    fn control_frames_between_fragments() {
        let frames = [
            frame(0x01, Some(KEY), b"Hel"), // text, no FIN
            frame(0x89, Some(KEY), b"ping"),
            frame(0x00, Some(KEY), b"l"), // continuation, no FIN
            frame(0x8A, None, b""),
            frame(0x88, Some(KEY), &[0x03, 0xF4, b'b', b'y', b'e']), // 1012
            frame(0x80, Some(KEY), b"o"),                            // final continuation
            frame(0x82, None, b"next"),
        ];
        let (stream, ends) = concat(&frames);
        let mut t = FrameTracker::new();
        let mut fragmented = Vec::new();
        let mut at = 0;
        for &end in &ends {
            t.feed(&stream[at..end]);
            assert!(t.at_boundary());
            fragmented.push(t.in_fragmented_message());
            at = end;
        }
        assert_eq!(fragmented, [true, true, true, true, true, false, false]);
        assert_eq!((t.frames(), t.messages()), (7, 2));
        assert_eq!(t.close_code(), Some(1012));
        assert!(!t.is_invalid());
    }

    #[test]
    fn close_codes() {
        let code = |stream: &[u8], step: usize| {
            let mut t = FrameTracker::new();
            stream.chunks(step).for_each(|c| t.feed(c));
            assert!(t.at_boundary());
            (t.saw_close(), t.close_code())
        };
        let unmasked = frame(0x88, None, &1000u16.to_be_bytes());
        let masked = frame(0x88, Some(KEY), &[0x0F, 0xA1, b'x']); // 4001
        for step in 1..8 {
            assert_eq!(code(&unmasked, step), (true, Some(1000)));
            assert_eq!(code(&masked, step), (true, Some(4001)));
            assert_eq!(code(&frame(0x88, Some(KEY), &[]), step), (true, None));
            assert_eq!(code(&frame(0x88, None, &[3]), step), (true, None));
            // Only the first Close counts.
            assert_eq!(code(&[frame(0x88, None, &[]), unmasked.clone()].concat(), step), (true, None));
            assert_eq!(code(&[masked.clone(), unmasked.clone()].concat(), step), (true, Some(4001)));
        }
        // Not reported before the Close frame is complete.
        let mut t = FrameTracker::new();
        t.feed(&masked[..masked.len() - 1]);
        assert_eq!((t.saw_close(), t.close_code()), (false, None));
    }

    #[test]
    fn invalid_streams_stay_invalid() {
        let text = frame(0x81, None, b"hi");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("reserved data opcode", frame(0x83, None, b"")),
            ("reserved data opcode 7", frame(0x87, None, b"")),
            ("reserved control opcode", frame(0x8B, None, b"")),
            ("reserved control opcode F", frame(0x8F, None, b"")),
            ("RSV2", frame(0xA1, None, b"x")),
            ("RSV3", frame(0x91, None, b"x")),
            ("control without FIN", frame(0x09, None, b"")),
            ("control longer than 125", frame(0x89, None, &[0; 126])),
            ("64-bit length with top bit", vec![0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            ("continuation without message", frame(0x80, None, b"x")),
            ("data frame inside fragmented", [frame(0x01, None, b"a"), frame(0x81, None, b"b")].concat()),
        ];
        for (name, bad) in cases {
            let stream = [text.clone(), bad, text.clone()].concat();
            for step in [1, 2, 3, stream.len()] {
                let mut t = FrameTracker::new();
                stream.chunks(step).for_each(|c| t.feed(c));
                assert!(t.is_invalid(), "{name}, step {step}");
                assert!(!t.at_boundary(), "{name}");
                assert_eq!(t.next_boundary(&text), None, "{name}");
                assert_eq!(t.last_boundary(&text), None, "{name}");
                let frames = t.frames();
                t.feed(&[0; 64]);
                t.feed(&text);
                assert!(t.is_invalid() && !t.at_boundary() && t.frames() == frames, "{name}");
            }
        }
        // RSV1 (permessage-deflate) is allowed; the longest legal control frame is fine.
        let mut t = FrameTracker::new();
        t.feed(&[frame(0xC1, None, b"z"), frame(0x41, None, b"a"), frame(0x80, None, b"b")].concat());
        t.feed(&frame(0x89, Some(KEY), &[0; 125]));
        assert!(!t.is_invalid() && t.at_boundary());
        assert_eq!((t.frames(), t.messages()), (4, 2));
    }

    #[test]
    fn boundary_queries_do_not_change_state() {
        let (stream, _) = concat(&[frame(0x81, None, b"ab"), frame(0x82, Some(KEY), b"cde"), frame(0x89, None, b"")]);
        let mut t = FrameTracker::new();
        assert_eq!(t.next_boundary(&[]), None);
        assert_eq!(t.next_boundary(&stream), Some(4));
        assert_eq!(t.last_boundary(&stream), Some(stream.len()));
        assert_eq!(t.last_boundary(&stream[..stream.len() - 1]), Some(13));
        assert_eq!(t, FrameTracker::new());
        t.feed(&stream[..2]);
        assert_eq!(t.next_boundary(&stream[2..3]), None);
        assert_eq!(t.next_boundary(&stream[2..]), Some(2));
    }

    #[test]
    fn skipping_a_payload_is_feeding_it() {
        let (stream, ends) = concat(&[frame(0x02, Some(KEY), &[9; 70_000]), frame(0x80, None, &[8; 300])]);
        let mut t = FrameTracker::new();
        assert_eq!(t.payload_remaining(), 0);
        t.feed(&stream[..14]); // 2 + 8 + 4: the first header, masked, 64-bit length
        assert_eq!(t.payload_remaining(), 70_000);
        t.skip_payload(69_999);
        assert_eq!(t.payload_remaining(), 1);
        t.skip_payload(5); // capped at the frame's end
        assert!(t.at_boundary() && t.in_fragmented_message());
        assert_eq!(t.payload_remaining(), 0);
        t.skip_payload(7); // nothing to skip at a boundary
        t.feed(&stream[ends[0]..]);
        let mut whole = FrameTracker::new();
        whole.feed(&stream);
        assert_eq!(t, whole);
        assert_eq!((t.frames(), t.messages()), (2, 1));
    }

    #[test]
    fn tracker_is_small() {
        assert_eq!(std::mem::size_of::<FrameTracker>(), 32);
    }

    /// A generated valid stream: its bytes, the end offset of every frame, the counts and close code.
    #[derive(Debug)]
    struct Stream {
        bytes: Vec<u8>,
        ends: Vec<usize>,
        messages: u64,
        close_code: Option<u16>,
    }

    fn payload_len() -> impl Strategy<Value = usize> {
        prop_oneof![
            6 => 0usize..200,
            2 => prop::sample::select(vec![0, 1, 2, 125, 126, 127, 65535, 65536]),
            1 => 0usize..70_000,
        ]
    }

    fn key() -> impl Strategy<Value = Option<[u8; 4]>> {
        prop::option::of(any::<[u8; 4]>())
    }

    /// A control frame: opcode (Close, Ping, Pong), payload length, key.
    fn control() -> impl Strategy<Value = (u8, usize, Option<[u8; 4]>)> {
        (prop::sample::select(vec![0x88, 0x89, 0x8A]), 0usize..=125, key())
    }

    /// Messages of 1-4 fragments (opcode bits, RSV1, fragments each with an optional control
    /// frame before it), with the expected boundaries, counts and close code.
    fn stream() -> impl Strategy<Value = Stream> {
        let fragment = (payload_len(), key(), prop::option::of(control()));
        let message = (any::<bool>(), any::<bool>(), prop::collection::vec(fragment, 1..5));
        prop::collection::vec(message, 0..8).prop_map(|messages| {
            let mut frames = Vec::new();
            let mut close_code = None;
            let mut first_close = true;
            for (binary, rsv1, fragments) in &messages {
                let last = fragments.len() - 1;
                for (i, (len, key, ctl)) in fragments.iter().enumerate() {
                    if let Some((opcode, len, key)) = *ctl {
                        let code = 1000 + len as u16;
                        let mut payload: Vec<u8> = (0..len).map(|j| (j * 37) as u8).collect();
                        if opcode == 0x88 && len >= 2 {
                            payload[..2].copy_from_slice(&code.to_be_bytes());
                        }
                        if opcode == 0x88 && std::mem::take(&mut first_close) && len >= 2 {
                            close_code = Some(code);
                        }
                        frames.push(frame(opcode, key, &payload));
                    }
                    let opcode = if i > 0 {
                        0
                    } else if *binary {
                        2
                    } else {
                        1
                    };
                    let b0 = opcode | if i == last { FIN } else { 0 } | if *rsv1 && i == 0 { 0x40 } else { 0 };
                    // Payloads full of header-looking bytes.
                    let payload: Vec<u8> = (0..*len).map(|j| [0x81, 0x7F, 0xFF, 0x88, 0x00][j % 5]).collect();
                    frames.push(frame(b0, *key, &payload));
                }
            }
            let (bytes, ends) = concat(&frames);
            Stream { bytes, ends, messages: messages.len() as u64, close_code }
        })
    }

    fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![1usize..4, 1usize..300, 1usize..100_000], 1..30)
    }

    proptest! {
        /// Any split of a valid stream into reads gives the true boundaries and counts; the
        /// boundary queries agree with them.
        #[test]
        fn any_split_gives_the_true_boundaries(s in stream(), sizes in read_sizes()) {
            let mut t = FrameTracker::new();
            let mut found = Vec::new();
            let (mut off, mut read) = (0, 0);
            while off < s.bytes.len() {
                let end = (off + sizes[read % sizes.len()]).min(s.bytes.len());
                read += 1;
                let chunk = &s.bytes[off..end];
                prop_assert_eq!(t.at_boundary(), off == 0 || s.ends.binary_search(&off).is_ok());
                let inside: Vec<usize> = s.ends.iter().filter(|&&e| e > off && e <= end).map(|e| e - off).collect();
                prop_assert_eq!(t.next_boundary(chunk), inside.first().copied());
                prop_assert_eq!(t.last_boundary(chunk), inside.last().copied());
                // Feed the chunk piecewise, cut at each boundary the query finds.
                let mut rest = chunk;
                while let Some(k) = t.next_boundary(rest) {
                    t.feed(&rest[..k]);
                    prop_assert!(t.at_boundary());
                    found.push(end - rest.len() + k);
                    rest = &rest[k..];
                }
                t.feed(rest);
                off = end;
            }
            prop_assert_eq!(&found, &s.ends);
            prop_assert!(t.at_boundary() && !t.is_invalid() && !t.in_fragmented_message());
            prop_assert_eq!(t.frames(), s.ends.len() as u64);
            prop_assert_eq!(t.messages(), s.messages);
            prop_assert_eq!(t.close_code(), s.close_code);
            let mut whole = FrameTracker::new();
            whole.feed(&s.bytes);
            prop_assert_eq!(whole, t);
        }

        /// Skipping known payload bytes instead of feeding them (what the splice path does)
        /// ends in the same state as feeding everything.
        #[test]
        fn skipping_payloads_matches_feeding(s in stream(), sizes in read_sizes()) {
            let mut t = FrameTracker::new();
            let (mut off, mut read) = (0, 0);
            while off < s.bytes.len() {
                let size = sizes[read % sizes.len()];
                read += 1;
                let skip = t.payload_remaining().min(size as u64) as usize;
                if skip > 0 && read % 2 == 0 {
                    t.skip_payload(skip as u64);
                    off += skip;
                } else {
                    let end = (off + size).min(s.bytes.len());
                    t.feed(&s.bytes[off..end]);
                    off = end;
                }
            }
            let mut whole = FrameTracker::new();
            whole.feed(&s.bytes);
            prop_assert_eq!(whole, t);
        }

        /// Fed one byte at a time, the tracker is at a boundary exactly at the frame ends.
        #[test]
        fn bytewise_feeding_gives_the_true_boundaries(s in stream()) {
            let mut t = FrameTracker::new();
            prop_assert_eq!(boundaries_bytewise(&mut t, &s.bytes), s.ends);
        }

        /// On arbitrary bytes, valid or not, any split ends in the same state as one feed.
        #[test]
        fn arbitrary_bytes_split_like_one_shot(bytes in prop::collection::vec(any::<u8>(), 0..600), sizes in read_sizes()) {
            let mut whole = FrameTracker::new();
            whole.feed(&bytes);
            let mut t = FrameTracker::new();
            let mut off = 0;
            for size in sizes.iter().cycle() {
                if off >= bytes.len() {
                    break;
                }
                let end = (off + size).min(bytes.len());
                t.feed(&bytes[off..end]);
                off = end;
            }
            prop_assert_eq!(whole, t);
        }
    }
}
