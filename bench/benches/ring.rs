//! Ring build and pick at 10 / 100 / 1,000 equal backends.
//! Run: `cargo bench --bench ring -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tidegate::balance::{Ring, hash_key};

fn identities(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.{}.{}:9000", i / 256, i % 256)).collect()
}

fn ring_benches(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024).map(|i| hash_key(format!("room-{i}").as_bytes())).collect();
    for n in [10, 100, 1_000] {
        let ids = identities(n);
        let backends: Vec<(&str, u32)> = ids.iter().map(|id| (id.as_str(), 1)).collect();

        let mut build = c.benchmark_group("build");
        build.sample_size(10);
        build.bench_with_input(BenchmarkId::from_parameter(n), &backends, |b, backends| {
            b.iter(|| Ring::new(black_box(backends)))
        });
        build.finish();

        let ring = Ring::new(&backends);
        let mut pick = c.benchmark_group("pick");
        pick.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                ring.pick(black_box(keys[i]), |_| true)
            })
        });
        // Every 10th backend down: some keys walk past it.
        pick.bench_function(BenchmarkId::new("some_down", n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                ring.pick(black_box(keys[i]), |b| b % 10 != 0)
            })
        });
        pick.bench_function(BenchmarkId::new("bounded", n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                ring.pick_bounded(black_box(keys[i]), |_| true, |b| (b as u64 * 7) % 13, 1.25)
            })
        });
        pick.finish();
    }
}

criterion_group!(benches, ring_benches);
criterion_main!(benches);
