//! Fuzzes the WebSocket frame-boundary tracker on arbitrary bytes: it never panics, feeding in
//! any split ends in the same state as one feed (and as byte-by-byte feeding), and the boundary
//! queries agree with the boundaries seen byte by byte.
//!
//! The first input byte seeds the read sizes; the rest is the stream.
//! Run (stable, no sanitizer): `cargo fuzz run frames -s none -- -max_total_time=60`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidegate::frames::FrameTracker;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };

    let mut whole = FrameTracker::new();
    whole.feed(stream);
    assert!(whole.messages() <= whole.frames());
    assert!(!(whole.is_invalid() && whole.at_boundary()));

    let mut bytewise = FrameTracker::new();
    let mut ends = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        bytewise.feed(std::slice::from_ref(byte));
        if bytewise.at_boundary() {
            ends.push(i + 1);
        }
    }
    assert_eq!(bytewise, whole);

    // Read sizes from a xorshift seeded by the first byte, capped by its low bits.
    let cap = [3, 16, 300, usize::MAX][usize::from(seed & 3)];
    let mut rng = (u32::from(seed) << 8) | 0x9E37_79B9;
    let mut tracker = FrameTracker::new();
    let mut found = Vec::new();
    let mut off = 0;
    while off < stream.len() {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let size = 1 + (rng as usize) % cap.min(stream.len());
        let end = (off + size).min(stream.len());
        let chunk = &stream[off..end];
        assert_eq!(tracker.at_boundary(), off == 0 || ends.binary_search(&off).is_ok());
        let inside: Vec<usize> = ends.iter().filter(|&&e| e > off && e <= end).map(|e| e - off).collect();
        assert_eq!(tracker.next_boundary(chunk), inside.first().copied());
        assert_eq!(tracker.last_boundary(chunk), inside.last().copied());
        let mut rest = chunk;
        while let Some(k) = tracker.next_boundary(rest) {
            tracker.feed(&rest[..k]);
            assert!(tracker.at_boundary());
            found.push(end - rest.len() + k);
            rest = &rest[k..];
        }
        tracker.feed(rest);
        off = end;
    }
    assert_eq!(found, ends);
    assert_eq!(tracker, whole);
});
