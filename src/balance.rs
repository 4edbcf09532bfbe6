//! The consistent-hash ring: which backend of a pool a key goes to.
//!
//! Owns: building the ring from weighted backend identities, [`Ring::pick`]
//! (the key's home backend, walking past backends the caller cannot use), and
//! [`Ring::pick_bounded`] (consistent hashing with bounded loads).
//!
//! Does not own: I/O, tokio types, health or load tracking. The ring stores
//! backend *indices* into the slice it was built from; callers keep the
//! backend state and answer "is backend `i` usable?" and "what is its load?"
//! through closures. Rings are built off the hot path (on config load or
//! reload) and only read afterwards.
//!
//! Stability contract: the ring depends only on the *set* of
//! `(identity, weight)` pairs, never on their order, so two tidegate instances
//! with the same pool agree on every key without talking to each other. The
//! point of virtual node `i` of backend `id` is `xxh3_64("{id}#{i}")`, with
//! `i` in `0..weight * VNODES_PER_WEIGHT`, and keys hash with [`hash_key`].
//! Changing either changes sticky routing; `tests::golden` pins it.

use xxhash_rust::xxh3::xxh3_64;

/// Virtual nodes per unit of weight. A backend's share of the hash space
/// varies by about 1/sqrt(vnodes), and the busiest of many backends sits
/// a few such deviations above the mean. Measured max/mean share (exact arcs)
/// over 10 / 100 / 1,000 equal backends: 1.12 / 1.18 / 1.30 at the usual 160
/// (ketama, nginx), 1.05 / 1.07 / 1.10 at 1024, 1.04 / 1.05 / 1.07 at 2048.
/// 2048 keeps 100 backends under 1.15x the mean even after the sampling
/// noise of 100k keys (`tests::balance`). Cost: 12 bytes per vnode (24 KiB
/// per unit of weight) and a build of ~O(V log V). Part of the stability
/// contract: changing it re-homes keys.
pub const VNODES_PER_WEIGHT: u32 = 2048;

/// The stable hash of a routing key (room, cookie, client address...).
/// Part of the stability contract: never change it without a migration plan.
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A consistent-hash ring over the backends of one pool. Immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Vnode points in ascending order (ties broken by identity). Kept apart
    /// from `owners` so the binary search touches only dense `u64`s.
    points: Vec<u64>,
    /// `owners[j]` is the backend index owning `points[j]`.
    owners: Vec<u32>,
    /// Weight per backend index, for the bounded-load caps.
    weights: Vec<u32>,
}

impl Ring {
    /// Builds the ring for `backends`: `(identity, weight)`, where identity is
    /// the backend's address as written in config. Identities must be distinct
    /// (config validation rejects duplicates). A backend of weight 0 gets no
    /// vnodes and is never picked. Vnodes `0..weight * VNODES_PER_WEIGHT` keep
    /// their points when the weight changes, so raising one backend's weight
    /// moves keys only onto it.
    ///
    /// Cost: O(V log V) for V = total weight × [`VNODES_PER_WEIGHT`] (one
    /// sort), 12 bytes per vnode once built: config validation should bound
    /// weights.
    pub fn new(backends: &[(&str, u32)]) -> Ring {
        Ring::build(backends, VNODES_PER_WEIGHT)
    }

    fn build(backends: &[(&str, u32)], per_weight: u32) -> Ring {
        assert!(u32::try_from(backends.len()).is_ok(), "too many backends");
        let total: u64 = backends.iter().map(|&(_, w)| u64::from(w) * u64::from(per_weight)).sum();
        // (point, backend index): all generated, then one sort.
        let mut nodes: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        let mut buf = Vec::with_capacity(64);
        for (idx, &(id, weight)) in backends.iter().enumerate() {
            // The hashed bytes are "{id}#{vnode}"; the prefix is written once
            // per backend because formatting dominated the build time.
            buf.clear();
            buf.extend_from_slice(id.as_bytes());
            buf.push(b'#');
            let prefix = buf.len();
            for vnode in 0..u64::from(weight) * u64::from(per_weight) {
                buf.truncate(prefix);
                push_decimal(&mut buf, vnode);
                nodes.push((xxh3_64(&buf), idx as u32));
            }
        }
        // Equal points are ordered by identity, not by index, so the ring
        // does not depend on the order of `backends`. (Equal point and equal
        // identity means the same backend: their order cannot matter.)
        nodes.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| backends[a.1 as usize].0.cmp(backends[b.1 as usize].0))
        });
        Ring {
            points: nodes.iter().map(|n| n.0).collect(),
            owners: nodes.iter().map(|n| n.1).collect(),
            weights: backends.iter().map(|&(_, w)| w).collect(),
        }
    }

    /// Number of backends the ring was built from.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// True when the ring was built from no backends.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Number of virtual nodes on the ring.
    pub fn vnodes(&self) -> usize {
        self.points.len()
    }

    /// Backend indices clockwise from the first vnode at or after `key_hash`,
    /// wrapping once around the ring: every vnode is visited exactly once,
    /// which bounds every walk.
    fn walk(&self, key_hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&p| p < key_hash);
        let (before, after) = self.owners.split_at(start);
        after.iter().chain(before).map(|&b| b as usize)
    }

    /// The key's backend: the owner of the first vnode clockwise at or after
    /// `key_hash` for which `usable` holds. Keys of a down or draining backend
    /// thus go to the next backend on the ring and come back when it is usable
    /// again; keys of other backends never move.
    ///
    /// Returns `None` on an empty ring or when nothing is usable (after one
    /// turn of the ring, i.e. up to [`Ring::vnodes`] calls of `usable`: a
    /// caller that knows the whole pool is down should not ask).
    /// Does not allocate; `usable` should be cheap (an atomic load).
    pub fn pick(&self, key_hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        self.walk(key_hash).find(|&b| usable(b))
    }

    /// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
    /// "Consistent Hashing with Bounded Loads", 2018), weighted.
    ///
    /// With `total` the sum of `load` over usable backends and `W` the sum of
    /// their weights, backend `i` may take a new connection while
    /// `load(i) < ceil(c * (total + 1) * weight_i / W)`. Walks clockwise from
    /// the key like [`Ring::pick`] and returns the first usable backend under
    /// its cap, so a key leaves its home backend only while that one is hot.
    /// The caps sum to more than `total`, so some backend always qualifies;
    /// should none (e.g. loads changing under us) the result is `pick`.
    ///
    /// `c` below 1 (or NaN) cannot be met by every backend and is treated as
    /// 1; an infinite `c` is strict affinity. Cost: one `usable`/`load` call
    /// per backend for the totals, plus the walk. Does not allocate.
    pub fn pick_bounded(
        &self,
        key_hash: u64,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
        c: f64,
    ) -> Option<usize> {
        let (mut total, mut weight_sum) = (0u64, 0u64);
        for (b, &w) in self.weights.iter().enumerate() {
            if usable(b) {
                total = total.saturating_add(load(b));
                weight_sum += u64::from(w);
            }
        }
        if weight_sum == 0 {
            return None;
        }
        // `+ 1` counts the connection being placed, so an idle pool has caps >= 1.
        let per_weight = c.max(1.0) * (total as f64 + 1.0) / weight_sum as f64;
        let under_cap = |b: usize| load(b) < (per_weight * f64::from(self.weights[b])).ceil() as u64;
        self.walk(key_hash).find(|&b| usable(b) && under_cap(b)).or_else(|| self.pick(key_hash, &usable))
    }
}

/// Appends `n` in decimal, as `format!("{n}")` would, without the formatting machinery.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:9000", i / 256, i % 256)).collect()
    }

    fn equal(ids: &[String]) -> Vec<(&str, u32)> {
        ids.iter().map(|id| (id.as_str(), 1)).collect()
    }

    /// Keys per backend for `keys` keys "key-{i}", everything usable.
    fn counts(ring: &Ring, keys: usize) -> Vec<usize> {
        let mut counts = vec![0; ring.len()];
        for i in 0..keys {
            counts[ring.pick(hash_key(format!("key-{i}").as_bytes()), |_| true).unwrap()] += 1;
        }
        counts
    }

    fn max_over_mean(counts: &[usize]) -> f64 {
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        *counts.iter().max().unwrap() as f64 / mean
    }

    /// Exact share of the hash space per backend: no key-sampling noise.
    fn arc_max_over_mean(ring: &Ring) -> f64 {
        let mut shares = vec![0.0; ring.len()];
        let n = ring.points.len();
        for j in 0..n {
            // Points in (points[j - 1], points[j]] belong to owners[j].
            let arc = ring.points[j].wrapping_sub(ring.points[(j + n - 1) % n]);
            shares[ring.owners[j] as usize] += arc as f64;
        }
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        shares.iter().copied().fold(0.0, f64::max) / mean
    }

    #[test]
    fn balance() {
        for n in [3, 10, 100] {
            let ids = ids(n);
            let ring = Ring::new(&equal(&ids));
            assert_eq!(ring.len(), n);
            assert_eq!(ring.vnodes(), n * VNODES_PER_WEIGHT as usize);
            let keys = max_over_mean(&counts(&ring, 100_000));
            let arc = arc_max_over_mean(&ring);
            println!("{n} backends: max/mean {keys:.3} over 100k keys, {arc:.3} of the hash space");
            assert!(keys <= 1.15, "{n} backends: max/mean {keys:.3}");
            assert!(arc <= 1.10, "{n} backends: arc max/mean {arc:.3}");
        }
    }

    #[test]
    fn weight_scales_share() {
        let ids = ids(5);
        let mut backends = equal(&ids);
        backends[2].1 = 2;
        let counts = counts(&Ring::new(&backends), 100_000);
        let others = (counts.iter().sum::<usize>() - counts[2]) as f64 / 4.0;
        let ratio = counts[2] as f64 / others;
        assert!((1.7..=2.3).contains(&ratio), "weight 2 got {ratio:.3}x the share of weight 1");
    }

    /// Backend ("0", "1", "2" for 10.0.0.1..3:9000) of keys "room-0".."room-999".
    /// If this test fails, sticky routing changed: every deployed client would
    /// be re-homed on upgrade. Change it only on purpose, with release notes.
    const GOLDEN: &str = concat!(
        "0021012022110211122111211221201111011202110111201211200222200111011222200202201021110120020121121210",
        "2202101002202112002000111122122210111111122202000122101202112011200010021010112111202100110220010110",
        "0021100201201112012212200211201000202111002110202212122222022111110202100210011021221021122001212111",
        "2120012220110201200102000000122212021112011010222211201211001011111101120222211022012202201020021010",
        "1012202112220220010101112221020211121101210012102210010011221101222022000002122112201001011111001211",
        "2210002022021112221111110201110120212211021020110101000212101110012110001101020001010020101121222020",
        "0201212012122210211000220010212002100201001222222211200010001112220210201021010010210112222111100102",
        "1121210100012221020112222010021021201101210000222010210100101222210110021222111001210111001211110210",
        "1020102220201110002102101200221001000221021120212001212112212222100100210012011100202101120002022222",
        "0122122202201200220100020101112010100102220010211022121222120020220111102120102200012100020102112221",
    );

    #[test]
    fn golden() {
        let backends = [("10.0.0.1:9000", 1), ("10.0.0.2:9000", 1), ("10.0.0.3:9000", 1)];
        let ring = Ring::new(&backends);
        let got: String = (0..1000)
            .map(|i| {
                let b = ring.pick(hash_key(format!("room-{i}").as_bytes()), |_| true).unwrap();
                char::from(b'0' + b as u8)
            })
            .collect();
        assert_eq!(got, GOLDEN);
    }

    #[test]
    fn none_when_nothing_usable() {
        let empty = Ring::new(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.vnodes(), 0);
        assert_eq!(empty.pick(42, |_| true), None);
        assert_eq!(empty.pick_bounded(42, |_| true, |_| 0, 1.25), None);

        let ring = Ring::new(&[("a:1", 1), ("b:1", 3)]);
        assert!(!ring.is_empty());
        assert_eq!(ring.pick(42, |_| false), None);
        assert_eq!(ring.pick_bounded(42, |_| false, |_| 0, 1.25), None);
        // The only usable backend takes every key, whatever its load.
        assert_eq!(ring.pick(42, |b| b == 1), Some(1));
        assert_eq!(ring.pick_bounded(42, |b| b == 1, |_| 1_000, 1.25), Some(1));
        // A weight of 0 means no vnodes: never picked.
        assert_eq!(Ring::new(&[("a:1", 0)]).pick(42, |_| true), None);
    }

    #[test]
    fn bounded_caps_loads_by_weight() {
        let ids = ids(10);
        let mut backends = equal(&ids);
        backends[7].1 = 2;
        let ring = Ring::new(&backends);
        let weight_sum = 11.0;
        let loads: Vec<std::cell::Cell<u64>> = vec![Default::default(); ring.len()];
        let keys = 10_000;
        for i in 0..keys {
            let key = hash_key(format!("key-{i}").as_bytes());
            let b = ring.pick_bounded(key, |_| true, |b| loads[b].get(), 1.25).unwrap();
            loads[b].set(loads[b].get() + 1);
        }
        for (b, load) in loads.iter().enumerate() {
            let mean = keys as f64 * f64::from(backends[b].1) / weight_sum;
            let cap = (1.25 * mean).ceil() as u64 + 1;
            assert!(load.get() <= cap, "backend {b}: {} > {cap}", load.get());
        }
    }

    #[test]
    fn bounded_without_load_is_pick() {
        let ids = ids(10);
        let ring = Ring::new(&equal(&ids));
        for i in 0..10_000 {
            let key = hash_key(format!("key-{i}").as_bytes());
            assert_eq!(ring.pick_bounded(key, |_| true, |_| 0, 1.25), ring.pick(key, |_| true));
            let up = |b: usize| b % 3 != 0;
            assert_eq!(ring.pick_bounded(key, up, |_| 0, 1.25), ring.pick(key, up));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// 2..20 distinct identities, in random order.
        fn identities() -> impl Strategy<Value = Vec<String>> {
            prop::collection::btree_set("[a-z0-9.-]{1,16}:[0-9]{1,5}", 2..20)
                .prop_map(|set| set.into_iter().collect::<Vec<_>>())
                .prop_shuffle()
        }

        fn keys(n: usize) -> Vec<u64> {
            (0..n).map(|i| hash_key(format!("key-{i}").as_bytes())).collect()
        }

        /// Each key's backend identity, everything usable.
        fn homes<'a>(ring: &Ring, backends: &[(&'a str, u32)], keys: &[u64]) -> Vec<&'a str> {
            keys.iter().map(|&k| backends[ring.pick(k, |_| true).unwrap()].0).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]

            /// Removing X moves only X's keys; adding X moves keys only onto X,
            /// about 1/N of them.
            #[test]
            fn membership_change_moves_only_that_backends_keys(
                ids in identities(),
                x in any::<prop::sample::Index>(),
            ) {
                let with: Vec<(&str, u32)> = equal(&ids);
                let x = x.index(with.len());
                let mut without = with.clone();
                let x_id = without.remove(x).0;
                let keys = keys(10_000);
                let before = homes(&Ring::new(&with), &with, &keys);
                let after = homes(&Ring::new(&without), &without, &keys);
                let mut moved = 0;
                for (b, a) in before.iter().zip(&after) {
                    if b == &x_id {
                        moved += 1;
                    } else {
                        prop_assert_eq!(b, a);
                    }
                }
                let expected = keys.len() as f64 / with.len() as f64;
                prop_assert!((0.5 * expected..=1.5 * expected).contains(&(moved as f64)));
            }

            /// With X unusable, keys not on X stay; X's keys go where they
            /// would if X were removed, spread over several backends.
            #[test]
            fn unusable_backend_keys_go_to_next_on_ring(
                ids in identities(),
                x in any::<prop::sample::Index>(),
            ) {
                let with: Vec<(&str, u32)> = equal(&ids);
                let x = x.index(with.len());
                let mut without = with.clone();
                without.remove(x);
                let ring = Ring::new(&with);
                let keys = keys(10_000);
                let removed = homes(&Ring::new(&without), &without, &keys);
                let mut heirs = std::collections::BTreeSet::new();
                for (&k, removed) in keys.iter().zip(removed) {
                    let home = ring.pick(k, |_| true).unwrap();
                    let failover = ring.pick(k, |b| b != x).unwrap();
                    prop_assert_eq!(with[failover].0, removed);
                    if home == x {
                        heirs.insert(failover);
                    } else {
                        prop_assert_eq!(failover, home);
                    }
                }
                if with.len() >= 4 {
                    prop_assert!(heirs.len() >= 2, "X's keys all went to {:?}", heirs);
                }
            }

            /// The ring depends on the set of (identity, weight), not on order.
            #[test]
            fn order_does_not_matter(
                ids in identities(),
                weights in prop::collection::vec(1u32..4, 20),
                seed in any::<prop::sample::Index>(),
            ) {
                let backends: Vec<(&str, u32)> =
                    ids.iter().zip(weights).map(|(id, w)| (id.as_str(), w)).collect();
                // A rotation and a reversal: a different order of the same set.
                let mut shuffled = backends.clone();
                shuffled.rotate_left(seed.index(backends.len()));
                shuffled.reverse();
                let keys = keys(2_000);
                prop_assert_eq!(
                    homes(&Ring::new(&backends), &backends, &keys),
                    homes(&Ring::new(&shuffled), &shuffled, &keys)
                );
            }
        }
    }

    /// Prints max/mean per vnode count:
    /// `cargo test --release tune -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn tune() {
        for per_weight in [160, 256, 512, 1024, 2048] {
            let line: Vec<String> = [3, 10, 100, 1000]
                .iter()
                .map(|&n| {
                    let ring = Ring::build(&equal(&ids(n)), per_weight);
                    let keys = max_over_mean(&counts(&ring, 100_000));
                    format!("n={n}: keys {keys:.3} arc {:.3}", arc_max_over_mean(&ring))
                })
                .collect();
            println!("vnodes/weight {per_weight:4}: {}", line.join("  "));
        }
    }
}
