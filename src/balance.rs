//! TEMPORARY stub: replaced by the real ring.
pub struct Ring { ids: Vec<u32> }
pub fn hash_key(key: &[u8]) -> u64 { xxhash_rust::xxh3::xxh3_64(key) }
impl Ring {
    pub fn new(backends: &[(&str, u32)]) -> Ring { Ring { ids: (0..backends.len() as u32).collect() } }
    pub fn pick(&self, key_hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.ids.len(); if n == 0 { return None }
        (0..n).map(|i| (key_hash as usize + i) % n).find(|&i| usable(i))
    }
    pub fn pick_bounded(&self, key_hash: u64, usable: impl Fn(usize) -> bool, _load: impl Fn(usize) -> u64, _c: f64) -> Option<usize> { self.pick(key_hash, usable) }
    pub fn len(&self) -> usize { self.ids.len() }
    pub fn is_empty(&self) -> bool { self.ids.is_empty() }
}
