//! Codecs: encoding a delivered message (once per format per batch on the server), batching many
//! into one buffer, and decoding client requests.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fanout::protocol::{binary, text, Format, Request};

fn codec(c: &mut Criterion) {
    let payload = [b'x'; 64];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    for format in Format::ALL {
        group.bench_function(format!("encode_message_64B_{format:?}"), |b| {
            b.iter(|| {
                format.encode_message(
                    black_box(b"prices.eurusd"),
                    black_box(1),
                    black_box(123_456),
                    black_box(&payload),
                )
            })
        });
    }
    group.throughput(Throughput::Elements(1000));
    for format in Format::ALL {
        group.bench_function(format!("batch_1000_messages_64B_{format:?}"), |b| {
            let mut out = BytesMut::with_capacity(128 * 1000);
            b.iter(|| {
                out.clear();
                for offset in 0..1000 {
                    format.put_message(&mut out, b"prices.eurusd", 1, offset, &payload);
                }
                black_box(out.len())
            })
        });
    }
    let mut binary_stream = Vec::new();
    let mut text_stream = Vec::new();
    for _ in 0..1000 {
        binary::encode_request(
            &Request::Publish { channel: b"prices.eurusd", payload: (&payload[..]).into() },
            &mut binary_stream,
        );
        text_stream.extend_from_slice(b"PUB prices.eurusd ");
        text_stream.extend_from_slice(&payload);
        text_stream.extend_from_slice(b"\r\n");
    }
    for (format, stream) in [(Format::Binary, &binary_stream), (Format::Text, &text_stream)] {
        group.bench_function(format!("parse_1000_publishes_64B_{format:?}"), |b| {
            b.iter(|| {
                let mut at = 0;
                while let Some((request, used)) =
                    format.parse_request(&stream[at..], 1 << 20).unwrap()
                {
                    black_box(request);
                    at += used;
                }
                at
            })
        });
    }
    group.finish();
    let _ = text::unescape(b"");
}

criterion_group!(benches, codec);
criterion_main!(benches);
