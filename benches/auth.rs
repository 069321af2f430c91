//! Token verification per second on one core: HS256 (a shared secret) and EdDSA (Ed25519 public
//! key), each with a realistic claim set (a subject and a few permission patterns). This is what
//! a reconnect storm costs per client, on top of the connection itself.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fanout::auth::{unix_now_secs, Auth, AuthConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET: &[u8] = b"a benchmark secret, 32 bytes or so";

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("test key")
}

fn verify(c: &mut Criterion) {
    let claims = serde_json::json!({
        "sub": "user-4242",
        "exp": unix_now_secs() + 3600,
        "subscribe": ["room.*", "user.4242.>", "comments"],
        "publish": ["room.*", "@*"],
    });
    let config = AuthConfig {
        hmac_secret: Some(SECRET.to_vec()),
        public_keys: vec![(None, key("ed25519.pub.pem"))],
        ..Default::default()
    };
    let auth = Auth::new(&config).expect("valid configuration").expect("auth on");
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET).expect("secret"),
    )
    .expect("signs");
    let eddsa = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_pem(&key("ed25519.pem")).expect("Ed25519 key"),
    )
    .expect("signs");
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    for (name, token) in [("verify_hs256", &hs256), ("verify_eddsa", &eddsa)] {
        assert!(auth.verify(token.as_bytes()).is_ok(), "{name} verifies");
        group.bench_function(name, |b| b.iter(|| auth.verify(black_box(token.as_bytes()))));
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
