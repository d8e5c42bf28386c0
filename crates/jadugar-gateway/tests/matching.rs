#![allow(clippy::unwrap_used, missing_docs)]

//! Property tests of the matcher against a straightforward reference.

use http::{HeaderMap, Method};
use jadugar_gateway::router::{RouteMatcher, RouteTable, check_path};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct R {
    base: String,
    prefix: bool,
}

fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "ab", "api", "v1", "x.y"]).prop_map(String::from)
}

/// Literal segments, parameters and (last only, by construction of the
/// test) catch-alls.
fn param_segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "{p}", "{q}", "{*rest}"]).prop_map(String::from)
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn routes() -> impl Strategy<Value = Vec<R>> {
    prop::collection::vec((path(), any::<bool>()), 1..12).prop_map(|raw| {
        let mut seen = std::collections::HashSet::new();
        raw.into_iter()
            .filter(|(p, _)| seen.insert(p.clone()))
            .map(|(base, prefix)| R { base, prefix })
            .collect()
    })
}

/// Exact beats prefix; the longest matching prefix wins; prefixes match on
/// segment boundaries only.
fn reference(routes: &[R], path: &str) -> Option<usize> {
    if let Some(i) = routes.iter().position(|r| r.base == path) {
        return Some(i);
    }
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.prefix)
        .filter(|(_, r)| {
            r.base == "/" || path == r.base || path.starts_with(&format!("{}/", r.base))
        })
        .max_by_key(|(_, r)| if r.base == "/" { 0 } else { r.base.len() })
        .map(|(i, _)| i)
}

proptest! {
    #[test]
    fn matcher_agrees_with_reference(routes in routes(), requests in prop::collection::vec(path(), 1..20)) {
        let mut b = RouteTable::builder();
        for (i, r) in routes.iter().enumerate() {
            let m = if r.prefix { RouteMatcher::prefix(r.base.clone()) } else { RouteMatcher::exact(r.base.clone()) };
            b.insert(m, &i.to_string(), i).unwrap();
        }
        let table = b.build();
        let headers = HeaderMap::new();
        for p in requests {
            let got = table.find(None, &Method::GET, &p, &headers, None).map(|m| *m.value);
            prop_assert_eq!(got, reference(&routes, &p), "path {}", p);
        }
    }

    #[test]
    fn method_conditions_fall_back_to_prefix_routes(seg in segment(), rest in path()) {
        let mut b = RouteTable::builder();
        b.insert(RouteMatcher::prefix(format!("/{seg}")), "p", "prefix").unwrap();
        b.insert(RouteMatcher::exact(format!("/{seg}/item")).methods(["GET"]), "g", "get").unwrap();
        let t = b.build();
        let h = HeaderMap::new();
        prop_assert_eq!(t.find(None, &Method::GET, &format!("/{seg}/item"), &h, None).map(|m| *m.value), Some("get"));
        prop_assert_eq!(t.find(None, &Method::POST, &format!("/{seg}/item"), &h, None).map(|m| *m.value), Some("prefix"));
        let below = format!("/{seg}{rest}");
        prop_assert_eq!(t.find(None, &Method::DELETE, &below, &h, None).map(|m| *m.value), Some("prefix"));
        let beside = format!("/{seg}zz{rest}");
        prop_assert!(t.find(None, &Method::GET, &beside, &h, None).is_none());
    }

    #[test]
    fn exact_routes_sharing_a_prefix_pattern_never_take_longer_paths(seg in segment(), rest in path(), prefix_first in any::<bool>()) {
        let mut b = RouteTable::builder();
        let prefix = RouteMatcher::prefix(format!("/{seg}")).methods(["GET"]);
        let exact = RouteMatcher::exact(format!("/{seg}")).methods(["POST"]);
        if prefix_first {
            b.insert(prefix, "p", "prefix").unwrap();
            b.insert(exact, "e", "exact").unwrap();
        } else {
            b.insert(exact, "e", "exact").unwrap();
            b.insert(prefix, "p", "prefix").unwrap();
        }
        let t = b.build();
        let h = HeaderMap::new();
        let at = |m: Method, p: &str| t.find(None, &m, p, &h, None).map(|m| *m.value);
        prop_assert_eq!(at(Method::POST, &format!("/{seg}")), Some("exact"));
        prop_assert_eq!(at(Method::GET, &format!("/{seg}")), Some("prefix"));
        if rest != "/" {
            let below = format!("/{seg}{rest}");
            prop_assert_eq!(at(Method::GET, &below), Some("prefix"));
            prop_assert_eq!(at(Method::POST, &below), None);
        }
    }

    /// Without conditions the fallback tree is not built: the results must
    /// not change (a route with a condition, on a path no request takes,
    /// forces the tree into the other table).
    #[test]
    fn tables_without_conditions_match_as_with_the_fallback_tree(
        patterns in prop::collection::vec((prop::collection::vec(param_segment(), 1..4), any::<bool>()), 1..10),
        requests in prop::collection::vec(path(), 1..20),
    ) {
        let mut plain = RouteTable::builder();
        let mut forced = RouteTable::builder();
        let mut seen = std::collections::HashSet::new();
        for (i, (segments, prefix)) in patterns.iter().enumerate() {
            let base = format!("/{}", segments.join("/"));
            let key = base.replace(|c: char| c.is_ascii_lowercase(), "");
            if !seen.insert((key, base.contains("{*"), *prefix)) {
                continue;
            }
            let m = if *prefix && !base.contains("{*") { RouteMatcher::prefix(base.clone()) } else { RouteMatcher::exact(base.clone()) };
            let (a, b) = (plain.insert(m.clone(), &i.to_string(), i), forced.insert(m, &i.to_string(), i));
            prop_assert_eq!(a.is_ok(), b.is_ok());
        }
        forced.insert(RouteMatcher::exact("/zz-never").methods(["PATCH"]), "z", usize::MAX).unwrap();
        let (plain, forced) = (plain.build(), forced.build());
        let headers = HeaderMap::new();
        for p in requests {
            let a = plain.find(None, &Method::GET, &p, &headers, None).map(|m| *m.value);
            let b = forced.find(None, &Method::GET, &p, &headers, None).map(|m| *m.value);
            prop_assert_eq!(a, b, "path {}", p);
        }
    }

    #[test]
    fn paths_that_pass_the_check_have_no_dot_segments(raw in "[a-z./%0-9A-F]{0,24}") {
        let p = format!("/{raw}");
        if check_path(&p).is_ok() {
            prop_assert!(!p.split('/').any(|s| s == "." || s == ".."));
            let lower = p.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c"));
        }
    }
}
