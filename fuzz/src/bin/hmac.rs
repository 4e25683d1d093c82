//! Any bytes as a plain JSON body with its right HMAC: see `kaching_ins::harness::Harness::hmac`.

fn main() {
    let harness = kaching_ins::harness::Harness::new();
    afl::fuzz!(|data: &[u8]| harness.hmac(data));
}
