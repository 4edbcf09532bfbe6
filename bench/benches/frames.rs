//! Throughput of the WebSocket frame-boundary tracker (`FrameTracker::feed`), in bytes per
//! second, on a stream of small frames (64-byte payloads: header-bound) and of large frames
//! (1 MiB payloads: skip-bound), fed in 64 KiB reads as a tunnel would.
//!
//! Run: `cargo bench -p tidegate-bench --bench frames`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidegate::frames::FrameTracker;

/// Size of one read, as the tunnel's pooled buffers.
const READ: usize = 64 * 1024;

/// About 8 MiB of binary frames with `payload`-byte payloads, masked as a client sends them.
fn stream(payload: usize) -> Vec<u8> {
    let mut frame = vec![0x82];
    match payload {
        0..=125 => frame.push(0x80 | payload as u8),
        126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0x37, 0xFA, 0x21, 0x3D]);
    frame.resize(frame.len() + payload, 0xA5);
    frame.repeat((8 << 20) / frame.len())
}

fn feed(c: &mut Criterion) {
    let mut group = c.benchmark_group("frames/feed");
    for (name, payload) in [("64B-frames", 64), ("1MiB-frames", 1 << 20)] {
        let bytes = stream(payload);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tracker = FrameTracker::new();
                for read in black_box(&bytes).chunks(READ) {
                    tracker.feed(read);
                }
                assert!(tracker.at_boundary());
                black_box(tracker.frames())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, feed);
criterion_main!(benches);
