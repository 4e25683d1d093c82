//! Any bytes as a legacy form body with its right cverify: see `kaching_ins::harness::Harness::legacy`.

fn main() {
    let harness = kaching_ins::harness::Harness::new();
    afl::fuzz!(|data: &[u8]| harness.legacy(data));
}
