//! Route matching cost with 10 and 10,000 routes (should be about flat).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use jadugar_gateway::router::{RouteMatcher, RouteTable, check_path};
use std::hint::black_box;

fn table(n: usize) -> RouteTable<usize> {
    let mut b = RouteTable::builder();
    for i in 0..n {
        let m = match i % 3 {
            0 => RouteMatcher::prefix(format!("/svc{i}")),
            1 => RouteMatcher::exact(format!("/api/v1/res{i}/{{id}}")).methods(["GET"]),
            _ => RouteMatcher::exact(format!("/static/{i}/index.html")),
        };
        b.insert(m, &i.to_string(), i).unwrap();
    }
    b.build()
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10usize, 10_000] {
        let t = table(n);
        let prefix_path = format!("/svc{}/users/42/orders", (n / 2) / 3 * 3);
        let param_path = format!("/api/v1/res{}/abc", ((n / 2) / 3 * 3) + 1);
        c.bench_function(&format!("match prefix, {n} routes"), |b| {
            b.iter(|| {
                let p = black_box(prefix_path.as_str());
                check_path(p).unwrap();
                black_box(
                    t.find(None, &Method::GET, p, &headers, None)
                        .map(|m| *m.value),
                )
            })
        });
        c.bench_function(&format!("match param, {n} routes"), |b| {
            b.iter(|| {
                black_box(
                    t.find(
                        None,
                        &Method::GET,
                        black_box(param_path.as_str()),
                        &headers,
                        None,
                    )
                    .map(|m| *m.value),
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
