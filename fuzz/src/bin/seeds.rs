//! Writes the seed corpus (`corpus/<target>/`) from the real vectors in
//! `../tests/fixtures`: each post's body as sent, its decrypted plaintext,
//! its form fields, and the plaintexts as HMAC-signed bodies. Run from
//! `fuzz/`: `cargo run --bin seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let fixtures = Path::new("../tests/fixtures");
    let mut n = 0;
    for entry in std::fs::read_dir(fixtures)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("seed")
            .to_owned();
        let vector: serde_json::Value = serde_json::from_str(&text)?;
        let field = |name: &str| vector[name].as_str().map(str::to_owned);
        let (Some(body), Some(key)) = (field("http_body"), field("secret_key")) else {
            continue;
        };
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = Path::new("corpus").join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(name), bytes)
        };
        write("authenticate", &stem, body.as_bytes())?;
        match kaching_ins::decrypt(&key, body.as_bytes()) {
            Ok(plaintext) => {
                write("plaintext", &stem, plaintext.as_bytes())?;
                write("hmac", &stem, plaintext.as_bytes())?;
                let signature =
                    kaching_ins::hmac_hex(kaching_ins::harness::HMAC_KEY, plaintext.as_bytes());
                let mut signed = plaintext.into_bytes();
                signed.push(0xFF);
                signed.extend_from_slice(signature.as_bytes());
                write("authenticate", &format!("{stem}_hmac"), &signed)?;
            }
            Err(_) => write("legacy", &stem, body.as_bytes())?,
        }
        n += 1;
    }
    println!("seeds: {n} vectors written to corpus/");
    Ok(())
}
