//! Any bytes as a post's body, then authenticated: see `kaching_ins::harness::Harness::authenticate`.

fn main() {
    let harness = kaching_ins::harness::Harness::new();
    afl::fuzz!(|data: &[u8]| harness.authenticate(data));
}
