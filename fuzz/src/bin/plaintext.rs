//! Any text as the plaintext inside a genuine AES envelope: see `kaching_ins::harness::Harness::plaintext`.

fn main() {
    let harness = kaching_ins::harness::Harness::new();
    afl::fuzz!(|data: &[u8]| harness.plaintext(data));
}
