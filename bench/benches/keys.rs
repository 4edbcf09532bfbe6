//! Key extraction: how long taking each kind of key from a request costs.
//! `cargo bench -p tidegate-bench --bench keys`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use tidegate::config::KeySpec;
use tidegate::route::extract_key;

fn keys(c: &mut Criterion) {
    let parts = http::Request::get("/rooms/blue/ws?user=7&room=red-42&token=abc")
        .header("host", "chat.example.com")
        .header("x-tenant", "acme")
        .header("cookie", "a=1; theme=dark; sid=0123456789abcdef")
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let mut group = c.benchmark_group("extract_key");
    for spec in ["ip", "header:x-tenant", "cookie:sid", "query:room", "path:2"] {
        let spec: KeySpec = spec.parse().unwrap();
        group.bench_function(spec.to_string(), |b| b.iter(|| extract_key(black_box(&spec), black_box(&parts), ip)));
    }
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
