//! Criterion benchmarks of `jadugar-core` pieces on every request's error path.
//!
//! Run with `cargo bench -p jadugar-benches --bench core`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use jadugar_core::{FieldError, Problem};

/// Problem serialisation: the body and the full response of the problems a
/// gateway sends most (404, 429) and of a validation problem with fields.
fn problem_serialisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("problem");
    let not_found = Problem::not_found("no route matches GET /x")
        .with_instance("/x")
        .with_request_id("0190f0c4-8f5e-7a3b-9c1d-2e4f6a8b0c1d");
    let rate_limited =
        Problem::too_many_requests(3).with_request_id("0190f0c4-8f5e-7a3b-9c1d-2e4f6a8b0c1d");
    let validation = Problem::validation(vec![
        FieldError::new("email", "must contain @"),
        FieldError::new("password", "must be at least 12 characters"),
        FieldError::new("labels[2]", "must be at most 64 characters"),
    ]);
    group.bench_function("to_body/404", |b| {
        b.iter(|| black_box(&not_found).to_body())
    });
    group.bench_function("to_body/422_three_fields", |b| {
        b.iter(|| black_box(&validation).to_body())
    });
    group.bench_function("to_response/429", |b| {
        b.iter(|| black_box(&rate_limited).to_response::<Bytes>())
    });
    group.bench_function("build_and_respond/404", |b| {
        b.iter(|| {
            Problem::not_found(black_box("no route matches GET /x"))
                .with_instance("/x")
                .to_response::<Bytes>()
        })
    });
    group.bench_function("parse/422_three_fields", |b| {
        let body = validation.to_body();
        b.iter(|| serde_json::from_slice::<Problem>(black_box(&body)))
    });
    group.finish();
}

criterion_group!(benches, problem_serialisation);
criterion_main!(benches);
