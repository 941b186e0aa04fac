//! One behavioural suite, run over HTTP against every driver on a real backend.

mod common;

use std::time::Duration;

use common::{backend_flags, data_of, identifier, legacy_sid, modern_sid, s, Backend, Harness};
use http::Method;
use serde_json::json;

mod cases {
    use super::*;

    pub async fn create_only_and_read(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        let body = json!({"data": {"uid": 7, "login": "admin", "empty": [], "f": 1700000000.123456, "ctx": {"lang": "fr_FR"}}});
        let r = c
            .json(Method::PUT, &s("", &sid), &[("if-none-match", "*")], &body)
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{:?}", r);
        assert_eq!(r.json()["version"], 1);
        assert_eq!(r.etag.as_deref(), Some("\"1\""));
        let r = c
            .json(Method::PUT, &s("", &sid), &[("if-none-match", "*")], &body)
            .await
            .unwrap();
        assert_eq!(r.status, 412);
        assert_eq!(r.json()["current_version"], 1);
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.etag.as_deref(), Some("\"1\""));
        assert_eq!(
            data_of(&r),
            body["data"],
            "values come back exactly, floats and empty arrays included"
        );
        assert_eq!(r.json()["version"], 1);
        let ttl = r.json()["ttl"].as_u64().unwrap();
        assert!(ttl > 604_000 && ttl <= 604_800, "default expiry, got {ttl}");
    }

    pub async fn compare_and_swap(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[("if-match", "\"1\"")],
                &json!({"data": {}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "If-Match on a missing session");
        assert!(r.json()["current_version"].is_null());
        c.json(Method::PUT, &s("", &sid), &[], &json!({"data": {"a": 1}}))
            .await
            .unwrap();
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[("if-match", "\"1\"")],
                &json!({"data": {"a": 2}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], 2);
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[("if-match", "\"1\"")],
                &json!({"data": {"a": 3}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412);
        assert_eq!(r.json()["current_version"], 2);
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(
            data_of(&r),
            json!({"a": 2}),
            "a failed condition changes nothing"
        );
        let r = c
            .json(Method::PUT, &s("", &sid), &[], &json!({"data": {"b": 1}}))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "unconditional replace");
        assert_eq!(r.json()["version"], 3);
        assert_eq!(
            data_of(&c.get(&s("", &sid)).await.unwrap()),
            json!({"b": 1})
        );
    }

    pub async fn patch_is_partial_and_update_only(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &json!({"set": {"a": 1}}))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "patch never creates");
        assert_eq!(c.get(&s("", &sid)).await.unwrap().status, 404);
        c.json(
            Method::PUT,
            &s("", &sid),
            &[],
            &json!({"data": {"a": 1, "b": 2, "c": 3}}),
        )
        .await
        .unwrap();
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"a": 10, "d": {"x": [1]}}, "remove": ["b", "zz"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], 2);
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(data_of(&r), json!({"a": 10, "c": 3, "d": {"x": [1]}}));
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &json!({"set": {"a": 10}}))
            .await
            .unwrap();
        assert_eq!(
            r.json()["version"],
            2,
            "a patch that changes nothing keeps the version"
        );
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[("if-match", "\"1\"")],
                &json!({"set": {"a": 11}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412);
        assert_eq!(r.json()["current_version"], 2);
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[("if-match", "\"2\"")],
                &json!({"set": {"a": 11}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], 3);
    }

    pub async fn delete_leaves_tombstone(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        c.json(Method::PUT, &s("", &sid), &[], &json!({"data": {"uid": 2}}))
            .await
            .unwrap();
        let r = c
            .send(Method::DELETE, &s("", &sid), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(c.get(&s("", &sid)).await.unwrap().status, 404);
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"uid": 2}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 410, "a late save does not bring the session back");
        for headers in [
            &[][..],
            &[("if-none-match", "*")][..],
            &[("if-match", "\"1\"")][..],
        ] {
            let r = c
                .json(
                    Method::PUT,
                    &s("", &sid),
                    headers,
                    &json!({"data": {"uid": 2}}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 410, "put {headers:?} after delete");
        }
        assert_eq!(c.get(&s("", &sid)).await.unwrap().status, 404);
        let other = legacy_sid();
        let r = c
            .send(Method::DELETE, &s("", &other), &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 204, "deleting a missing session is fine");
        let r = c
            .json(
                Method::PUT,
                &s("", &other),
                &[("if-none-match", "*")],
                &json!({"data": {}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 410, "and still tombstones it");
    }

    pub async fn rotate_stored(h: &Harness) {
        let mut c = h.client();
        let (old, new) = (legacy_sid(), legacy_sid());
        c.json(
            Method::PUT,
            &s("", &old),
            &[],
            &json!({"data": {"uid": 1, "token": "a", "keep": true}}),
        )
        .await
        .unwrap();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &old),
                &[],
                &json!({"new_sid": new, "set": {"token": "b"}, "remove": ["keep"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(c.get(&s("", &old)).await.unwrap().status, 404);
        let r = c.get(&s("", &new)).await.unwrap();
        assert_eq!(data_of(&r), json!({"uid": 1, "token": "b"}));
        assert_eq!(r.json()["version"], 1);
        let r = c
            .json(Method::PATCH, &s("", &old), &[], &json!({"set": {"x": 1}}))
            .await
            .unwrap();
        assert_eq!(r.status, 410, "the old sid is tombstoned");
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &old),
                &[],
                &json!({"new_sid": legacy_sid()}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 410, "rotating from a tombstone");
        let missing = legacy_sid();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &missing),
                &[],
                &json!({"new_sid": legacy_sid()}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 404, "stored rotation needs the old session");
        let third = legacy_sid();
        c.json(Method::PUT, &s("", &third), &[], &json!({"data": {"x": 1}}))
            .await
            .unwrap();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &third),
                &[],
                &json!({"new_sid": new}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "the new sid exists");
        assert_eq!(
            data_of(&c.get(&s("", &third)).await.unwrap()),
            json!({"x": 1}),
            "nothing changed"
        );
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &third),
                &[],
                &json!({"new_sid": old}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "the new sid is a tombstone");
    }

    pub async fn rotate_given_and_soft(h: &Harness) {
        let mut c = h.client();
        let (anon, logged) = (legacy_sid(), legacy_sid());
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &anon),
                &[],
                &json!({"new_sid": logged, "data": {"uid": 5}, "ttl": 3600}),
            )
            .await
            .unwrap();
        assert_eq!(
            r.status, 201,
            "a never-stored session rotates with its data"
        );
        let r = c.get(&s("", &logged)).await.unwrap();
        assert_eq!(data_of(&r), json!({"uid": 5}));
        assert!(r.json()["ttl"].as_u64().unwrap() <= 3600);
        let r = c
            .json(Method::PUT, &s("", &anon), &[], &json!({"data": {}}))
            .await
            .unwrap();
        assert_eq!(
            r.status, 410,
            "the old sid is tombstoned even though it never existed"
        );
        // Odoo 19 soft rotation: same identifier, old one kept briefly with a pointer.
        let ident = identifier();
        let (o, n) = (modern_sid(&ident), modern_sid(&ident));
        c.json(Method::PUT, &s("", &o), &[], &json!({"data": {"uid": 5}}))
            .await
            .unwrap();
        let r = c.json(Method::POST, &s("/rotate", &o), &[], &json!({"new_sid": n, "keep_old": {"ttl": 120, "set": {"next_sid": n, "deletion_time": 1.5}}})).await.unwrap();
        assert_eq!(r.status, 201);
        let old = c.get(&s("", &o)).await.unwrap();
        assert_eq!(old.status, 200);
        assert_eq!(data_of(&old)["next_sid"], json!(n));
        assert!(old.json()["ttl"].as_u64().unwrap() <= 120);
        assert_eq!(
            data_of(&c.get(&s("", &n)).await.unwrap()),
            json!({"uid": 5})
        );
    }

    pub async fn ttl_expires_and_refreshes(h: &Harness) {
        let mut c = h.client();
        let (a, b) = (legacy_sid(), legacy_sid());
        c.json(
            Method::PUT,
            &s("", &a),
            &[],
            &json!({"data": {"k": 1}, "ttl": 1}),
        )
        .await
        .unwrap();
        c.json(
            Method::PUT,
            &s("", &b),
            &[],
            &json!({"data": {"k": 1}, "ttl": 1}),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = c
            .json(Method::PATCH, &s("", &b), &[], &json!({"ttl": 30}))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "an empty patch refreshes the TTL");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(c.get(&s("", &a)).await.unwrap().status, 404, "expired");
        let r = c
            .json(Method::PATCH, &s("", &a), &[], &json!({"set": {"k": 2}}))
            .await
            .unwrap();
        assert_eq!(
            r.status, 404,
            "an expired session is not revived by a patch"
        );
        let r = c.get(&s("", &b)).await.unwrap();
        assert_eq!(r.status, 200, "refreshed in time");
        assert!(r.json()["ttl"].as_u64().unwrap() > 25);
        let r = c
            .json(
                Method::PUT,
                &s("", &a),
                &[("if-none-match", "*")],
                &json!({"data": {"k": 3}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "an expired sid can be created again");
        assert_eq!(r.json()["version"], 1);
    }

    pub async fn identifiers(h: &Harness) {
        let mut c = h.client();
        let (a, b, none, short) = (identifier(), identifier(), identifier(), identifier());
        let a1 = modern_sid(&a);
        let a2 = modern_sid(&a);
        let b1 = modern_sid(&b);
        let s1 = modern_sid(&short);
        for sid in [&a1, &a2, &b1] {
            let r = c
                .json(Method::PUT, &s("", sid), &[], &json!({"data": {"uid": 1}}))
                .await
                .unwrap();
            assert!(r.status.is_success());
        }
        c.json(
            Method::PUT,
            &s("", &s1),
            &[],
            &json!({"data": {}, "ttl": 1}),
        )
        .await
        .unwrap();
        let legacy = legacy_sid();
        c.json(Method::PUT, &s("", &legacy), &[], &json!({"data": {}}))
            .await
            .unwrap();
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": [a, b, none]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["missing"], json!([none]));
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/delete",
                &[],
                &json!({"identifiers": [a, none]}),
            )
            .await
            .unwrap();
        assert_eq!(r.json()["deleted"], 2);
        assert_eq!(c.get(&s("", &a1)).await.unwrap().status, 404);
        assert_eq!(c.get(&s("", &a2)).await.unwrap().status, 404);
        assert_eq!(c.get(&s("", &b1)).await.unwrap().status, 200);
        let r = c
            .json(Method::PATCH, &s("", &a1), &[], &json!({"set": {"uid": 1}}))
            .await
            .unwrap();
        assert_eq!(r.status, 410, "a revoked device's late save is refused");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": [none, b, a, short]}),
            )
            .await
            .unwrap();
        assert_eq!(
            r.json()["missing"],
            json!([none, a, short]),
            "request order kept; expired counts as missing"
        );
        assert_eq!(
            c.get(&s("", &legacy)).await.unwrap().status,
            200,
            "legacy sids are not touched"
        );
        // Rotation moves the index entry.
        let n = modern_sid(&none);
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &b1),
                &[],
                &json!({"new_sid": n}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201);
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": [b, none]}),
            )
            .await
            .unwrap();
        assert_eq!(r.json()["missing"], json!([b]));
    }

    /// Odoo's device clean-up sends up to 100,000 identifiers at once.
    pub async fn identifier_batches_of_100k(h: &Harness) {
        let mut c = h.client();
        let live: Vec<String> = (0..2_000).map(|_| identifier()).collect();
        for id in &live {
            let r = c
                .json(
                    Method::PUT,
                    &s("", &modern_sid(id)),
                    &[],
                    &json!({"data": {}}),
                )
                .await
                .unwrap();
            assert!(r.status.is_success());
        }
        let mut batch: Vec<String> = (0..98_000).map(|i| format!("{i:040}zz")).collect();
        batch.extend(live.iter().cloned());
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": batch}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["missing"].as_array().map(Vec::len), Some(98_000));
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/delete",
                &[],
                &json!({"identifiers": batch}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["deleted"], 2_000);
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": live}),
            )
            .await
            .unwrap();
        assert_eq!(r.json()["missing"].as_array().map(Vec::len), Some(2_000));
    }

    /// Issue 11: the lease API is gone; its routes are unknown like any other path.
    pub async fn lease_routes_are_gone(h: &Harness) {
        let mut c = h.client();
        for verb in ["acquire", "refresh", "release"] {
            let r = c
                .json(
                    Method::POST,
                    &format!("/v1/leases/x/{verb}"),
                    &[],
                    &json!({"owner": "w1", "ttl_ms": 10000}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 404, "{verb}: {r:?}");
            assert_eq!(r.json()["error"], "no_route", "{verb}: {r:?}");
        }
    }

    /// 32 clients patch their own key of one session, 10,000 patches in all: no lost update.
    pub async fn concurrent_patches_keep_every_key(h: &Harness) {
        let sid = legacy_sid();
        let mut c = h.client();
        c.json(Method::PUT, &s("", &sid), &[], &json!({"data": {}}))
            .await
            .unwrap();
        let clients = 32;
        let per_client = 10_000 / clients;
        let mut tasks = Vec::new();
        for i in 0..clients {
            let mut c = h.client();
            let sid = sid.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..per_client {
                    let r = c
                        .json(
                            Method::PATCH,
                            &s("", &sid),
                            &[],
                            &json!({"set": {format!("k{i}"): n}}),
                        )
                        .await
                        .unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let r = c.get(&s("", &sid)).await.unwrap();
        let data = data_of(&r);
        for i in 0..clients {
            assert_eq!(data[format!("k{i}")], json!(per_client - 1), "key k{i}");
        }
        assert_eq!(
            r.json()["version"].as_u64(),
            Some(1 + (clients * per_client) as u64)
        );
    }

    /// Issue 11.1: two requests of one browser soft-rotate the same sid at once (Odoo 19).
    /// Exactly one new session is created; every other rotation answers `409
    /// already_rotated` naming it, and the old sid keeps only its grace period.
    pub async fn concurrent_soft_rotations_make_one_session(h: &Harness) {
        for round in 0..5 {
            let ident = identifier();
            let old = modern_sid(&ident);
            let mut c = h.client();
            c.json(Method::PUT, &s("", &old), &[], &json!({"data": {"uid": 5}}))
                .await
                .unwrap();
            let racers = 8;
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(racers));
            let mut tasks = Vec::new();
            for i in 0..racers {
                let mut c = h.client();
                let (old, new) = (old.clone(), modern_sid(&ident));
                let barrier = barrier.clone();
                tasks.push(tokio::spawn(async move {
                    let body = json!({"new_sid": new, "set": {"by": i}, "keep_old": {"ttl": 120, "set": {"next_sid": new, "deletion_time": 1.5}}});
                    barrier.wait().await;
                    let r = c
                        .json(Method::POST, &s("/rotate", &old), &[], &body)
                        .await
                        .unwrap();
                    (new, r)
                }));
            }
            let mut winners = Vec::new();
            let mut followed = Vec::new();
            let mut tried = Vec::new();
            for t in tasks {
                let (new, r) = t.await.unwrap();
                tried.push(new.clone());
                match r.status.as_u16() {
                    201 => winners.push(new),
                    409 => {
                        assert_eq!(r.json()["error"], "already_rotated", "{r:?}");
                        followed.push(r.json()["new_sid"].as_str().unwrap().to_owned());
                    }
                    other => panic!("round {round}: rotation answered {other}: {r:?}"),
                }
            }
            assert_eq!(
                winners.len(),
                1,
                "round {round}: one rotation wins: {winners:?}"
            );
            let winner = &winners[0];
            assert!(
                followed.iter().all(|f| f == winner),
                "round {round}: every loser is told the winner's sid"
            );
            let mut live = 0;
            for new in &tried {
                let r = c.get(&s("", new)).await.unwrap();
                if r.status == 200 {
                    live += 1;
                    assert!(r.json()["ttl"].as_u64().unwrap() > 600_000);
                }
            }
            assert_eq!(live, 1, "round {round}: exactly one new sid lives");
            let r = c.get(&s("", &old)).await.unwrap();
            assert_eq!(data_of(&r)["next_sid"], json!(winner));
            assert!(r.json()["ttl"].as_u64().unwrap() <= 120, "{r:?}");
            // A later soft rotation answers the same; a PATCH of the old sid keeps the
            // marker; a hard rotation (logout) of the old sid is still allowed.
            c.json(Method::PATCH, &s("", &old), &[], &json!({"set": {"x": 1}}))
                .await
                .unwrap();
            let other = modern_sid(&ident);
            let r = c
                .json(
                    Method::POST,
                    &s("/rotate", &old),
                    &[],
                    &json!({"new_sid": other, "data": {}, "keep_old": {"ttl": 120}}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 409, "{r:?}");
            assert_eq!(r.json()["new_sid"], json!(winner));
            assert_eq!(c.get(&s("", &other)).await.unwrap().status, 404);
            let r = c
                .json(
                    Method::POST,
                    &s("/rotate", &old),
                    &[],
                    &json!({"new_sid": other}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "hard rotation of a soft-rotated sid: {r:?}");
        }
    }

    /// Issue 11.2: a PATCH with per-key conditions is refused (409 conflict, the keys named,
    /// nothing written) when a key changed since the client read it; different keys merge.
    pub async fn patch_expect_detects_same_key_writes(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        c.json(
            Method::PUT,
            &s("", &sid),
            &[],
            &json!({"data": {"n": 0, "z": null, "other": "a"}}),
        )
        .await
        .unwrap();
        // Two requests read n = 0 and both write n + 1.
        let first = json!({"set": {"n": 1}, "expect": {"n": 0}});
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &first)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let second =
            json!({"set": {"n": 1, "m": 1}, "expect": {"n": 0, "z": null}, "expect_absent": ["m"]});
        // The second read n = 0 too: refused although it writes what is stored now (its
        // n + 1 was computed from a stale n), and m is not written either.
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &second)
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.json()["keys"], json!(["n"]));
        assert_eq!(
            c.get(&s("", &sid)).await.unwrap().json()["data"].get("m"),
            None
        );
        let second =
            json!({"set": {"n": 2, "m": 1}, "expect": {"n": 1, "z": null}, "expect_absent": ["m"]});
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &second)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "re-read and re-done: {r:?}");
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"n": 5, "y": 1}, "remove": ["m"], "expect": {"n": 0, "m": 2}, "expect_absent": ["y"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.json()["error"], "conflict");
        assert_eq!(r.json()["keys"], json!(["m", "n"]));
        assert_eq!(r.json()["current_version"], 3);
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(
            data_of(&r),
            json!({"n": 2, "m": 1, "z": null, "other": "a"}),
            "a refused patch writes nothing"
        );
        assert_eq!(r.json()["version"], 3);
        // A key that was absent and now exists; JSON null is a value, not absence.
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"z": 1}, "expect_absent": ["z"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(r.json()["keys"], json!(["z"]));
        // A different key merges as without conditions.
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"other": "b"}, "expect": {"other": "a"}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"expect": {"a": 1}, "expect_absent": ["a"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        // Read-modify-write counters under contention: every increment lands once.
        let clients = 8;
        let per_client = 25;
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = h.client();
            let sid = sid.clone();
            tasks.push(tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..per_client {
                    loop {
                        let r = c.get(&s("", &sid)).await.unwrap();
                        let n = data_of(&r)["n"].as_i64().unwrap();
                        let body = json!({"set": {"n": n + 1}, "expect": {"n": n}});
                        let r = c
                            .json(Method::PATCH, &s("", &sid), &[], &body)
                            .await
                            .unwrap();
                        match r.status.as_u16() {
                            200 => break,
                            409 => refused += 1,
                            other => panic!("patch answered {other}: {r:?}"),
                        }
                    }
                }
                refused
            }));
        }
        let mut refused = 0;
        for t in tasks {
            refused += t.await.unwrap();
        }
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(
            data_of(&r)["n"],
            json!(2 + clients * per_client),
            "no increment lost ({refused} refused and retried)"
        );
    }

    /// Issue 10: an expired session is missing for every operation, whether or not the
    /// backend has collected it yet (PostgreSQL keeps the row until its clean-up runs).
    pub async fn expired_session_stays_missing(h: &Harness) {
        let mut c = h.client();
        let id = identifier();
        let old = modern_sid(&id);
        let r = c
            .json(
                Method::PUT,
                &s("", &old),
                &[],
                &json!({"data": {"uid": 7}, "ttl": 1}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(c.get(&s("", &old)).await.unwrap().status, 404);
        // What the addon sends on an Odoo 19 soft rotation.
        let new = modern_sid(&identifier());
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &old),
                &[],
                &json!({"new_sid": new, "data": {"uid": 7}, "keep_old": {"ttl": 120, "set": {"next_sid": new}}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let r = c.get(&s("", &old)).await.unwrap();
        assert_eq!(r.status, 404, "the expired session came back: {r:?}");
        let other = modern_sid(&identifier());
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &old),
                &[],
                &json!({"new_sid": other, "set": {"a": 1}, "keep_old": {"ttl": 120}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 404, "rotate from an expired session: {r:?}");
        assert_eq!(c.get(&s("", &other)).await.unwrap().status, 404);
        let r = c
            .json(Method::PATCH, &s("", &old), &[], &json!({"set": {"a": 1}}))
            .await
            .unwrap();
        assert_eq!(r.status, 404, "patch of an expired session: {r:?}");
        let r = c
            .json(
                Method::PUT,
                &s("", &old),
                &[("if-match", "\"1\"")],
                &json!({"data": {"a": 1}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "If-Match on an expired session: {r:?}");
        assert!(r.json()["current_version"].is_null());
        let r = c
            .send(Method::DELETE, &s("", &old), &[("if-match", "\"1\"")], None)
            .await
            .unwrap();
        assert_eq!(
            r.status, 412,
            "conditional delete of an expired session: {r:?}"
        );
        assert_eq!(c.get(&s("", &old)).await.unwrap().status, 404);
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": [id]}),
            )
            .await
            .unwrap();
        assert_eq!(r.json()["missing"], json!([id]), "{r:?}");
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/delete",
                &[],
                &json!({"identifiers": [id]}),
            )
            .await
            .unwrap();
        assert_eq!(r.json()["deleted"], 0, "{r:?}");
        // A PUT creates it afresh at version 1 (when not tombstoned by the identifier delete).
        let fresh = modern_sid(&identifier());
        c.json(
            Method::PUT,
            &s("", &fresh),
            &[],
            &json!({"data": {}, "ttl": 1}),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let r = c
            .json(Method::PUT, &s("", &fresh), &[], &json!({"data": {"b": 2}}))
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.json()["version"].clone()),
            (201, json!(1)),
            "{r:?}"
        );
    }

    fn keys(n: usize, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
        (0..n).map(|i| (format!("{prefix}{i}"), json!(i))).collect()
    }

    /// Issue 10: one request's work on the shared backend is bounded: 1,000 keys per write,
    /// 1,000 keys per session; over it, 400 naming the bound and nothing changed.
    pub async fn key_bounds(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[],
                &json!({"data": keys(1001, "k")}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("at most 1000 keys"),
            "{r:?}"
        );
        assert_eq!(c.get(&s("", &sid)).await.unwrap().status, 404);
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[],
                &json!({"data": keys(1000, "k")}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let big: Vec<String> = (0..1001).map(|i| format!("r{i}")).collect();
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"x": 1}, "remove": big[..1000]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "set + remove over 1,000: {r:?}");
        assert_eq!(r.json()["error"], "invalid_body");
        // Growing the session beyond 1,000 keys.
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"k5": 5, "new": 1}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"], "invalid_body");
        assert!(
            r.json()["message"].as_str().unwrap().contains("1001 keys"),
            "{r:?}"
        );
        let new = legacy_sid();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &sid),
                &[],
                &json!({"new_sid": new, "set": {"new": 1}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "rotation growing the session: {r:?}");
        assert_eq!(c.get(&s("", &new)).await.unwrap().status, 404);
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(r.json()["version"], 1, "nothing changed");
        assert_eq!(data_of(&r), json!(keys(1000, "k")));
        // Replacing one key by another stays within the bound.
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"new": 1}, "remove": ["k0"]}),
            )
            .await
            .unwrap();
        assert_eq!(
            (r.status.as_u16(), r.json()["version"].clone()),
            (200, json!(2)),
            "{r:?}"
        );
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &sid),
                &[],
                &json!({"new_sid": new, "set": {"k0": 0}, "remove": ["k1"]}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
    }

    /// Issue 10: numbers and strings either come back exactly or are refused, the same way
    /// on every driver; "changed" means the JSON text of a key changed.
    pub async fn values_kept_or_refused(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        let body = br#"{"data": {"big": 123456789012345678901234567890}}"#.to_vec();
        let r = c
            .send(Method::PUT, &s("", &sid), &[], Some(body))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.json()["message"].as_str().unwrap().contains("64 bits"),
            "{r:?}"
        );
        assert_eq!(
            c.get(&s("", &sid)).await.unwrap().status,
            404,
            "nothing stored"
        );
        let body = br#"{"data": {"i": -9223372036854775808, "u": 18446744073709551615, "f": 1.0}}"#
            .to_vec();
        let r = c
            .send(Method::PUT, &s("", &sid), &[], Some(body))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let r = c.get(&s("", &sid)).await.unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            text.contains(r#""i":-9223372036854775808"#)
                && text.contains(r#""u":18446744073709551615"#)
                && text.contains(r#""f":1.0"#),
            "64-bit integers and floats kept exactly: {text}"
        );
        let r = c
            .json(
                Method::PATCH,
                &s("", &sid),
                &[],
                &json!({"set": {"s": "a\u{0}b"}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "U+0000: {r:?}");
        assert!(
            r.json()["message"].as_str().unwrap().contains("U+0000"),
            "{r:?}"
        );
        let r = c
            .json(
                Method::PUT,
                &s("", &sid),
                &[],
                &json!({"data": {"s": "\u{0}"}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "U+0000: {r:?}");
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(r.json()["version"], 1, "nothing changed: {r:?}");
        // 1.0 -> 1 changes the stored text: a change, on every driver.
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &json!({"set": {"f": 1}}))
            .await
            .unwrap();
        assert_eq!(r.json()["version"], 2, "{r:?}");
        let r = c.get(&s("", &sid)).await.unwrap();
        assert!(
            String::from_utf8_lossy(&r.body).contains(r#""f":1,"#)
                || String::from_utf8_lossy(&r.body).contains(r#""f":1}"#),
            "{r:?}"
        );
        let r = c
            .json(Method::PATCH, &s("", &sid), &[], &json!({"set": {"f": 1}}))
            .await
            .unwrap();
        assert_eq!(r.json()["version"], 2, "same text: no change: {r:?}");
    }

    /// Issue 10: `If-Match` is honoured by DELETE and rotate.
    pub async fn conditional_delete_and_rotate(h: &Harness) {
        let mut c = h.client();
        let sid = legacy_sid();
        c.json(Method::PUT, &s("", &sid), &[], &json!({"data": {"a": 1}}))
            .await
            .unwrap();
        c.json(Method::PATCH, &s("", &sid), &[], &json!({"set": {"a": 2}}))
            .await
            .unwrap();
        let r = c
            .send(Method::DELETE, &s("", &sid), &[("if-match", "\"1\"")], None)
            .await
            .unwrap();
        assert_eq!(r.status, 412, "{r:?}");
        assert_eq!(r.json()["current_version"], 2);
        assert_eq!(
            c.get(&s("", &sid)).await.unwrap().status,
            200,
            "not deleted"
        );
        let r = c
            .send(
                Method::DELETE,
                &s("", &sid),
                &[("if-none-match", "*")],
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        let new = legacy_sid();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &sid),
                &[("if-match", "\"1\"")],
                &json!({"new_sid": new}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "{r:?}");
        assert_eq!(r.json()["current_version"], 2);
        assert_eq!(
            c.get(&s("", &new)).await.unwrap().status,
            404,
            "not rotated"
        );
        assert_eq!(c.get(&s("", &sid)).await.unwrap().status, 200);
        let missing = legacy_sid();
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &missing),
                &[("if-match", "\"1\"")],
                &json!({"new_sid": new, "data": {}}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 412, "If-Match on a missing old session: {r:?}");
        assert_eq!(c.get(&s("", &new)).await.unwrap().status, 404);
        let r = c
            .json(
                Method::POST,
                &s("/rotate", &sid),
                &[("if-match", "\"2\"")],
                &json!({"new_sid": new}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(
            data_of(&c.get(&s("", &new)).await.unwrap()),
            json!({"a": 2})
        );
        let r = c
            .send(Method::DELETE, &s("", &sid), &[("if-match", "\"2\"")], None)
            .await
            .unwrap();
        assert_eq!(r.status, 410, "conditional delete of a tombstone: {r:?}");
        let r = c
            .send(Method::DELETE, &s("", &new), &[("if-match", "\"1\"")], None)
            .await
            .unwrap();
        assert_eq!(r.status, 204, "{r:?}");
        assert_eq!(c.get(&s("", &new)).await.unwrap().status, 404);
    }
}

macro_rules! suite {
    ($flags:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = Harness::with_flags($flags).await;
                cases::$case(&h).await;
            }
        )*
    };
}

macro_rules! all_cases {
    ($flags:expr) => {
        suite!($flags;
            create_only_and_read,
            compare_and_swap,
            patch_is_partial_and_update_only,
            delete_leaves_tombstone,
            rotate_stored,
            rotate_given_and_soft,
            ttl_expires_and_refreshes,
            identifiers,
            identifier_batches_of_100k,
            lease_routes_are_gone,
            concurrent_patches_keep_every_key,
            expired_session_stays_missing,
            key_bounds,
            values_kept_or_refused,
            conditional_delete_and_rotate,
            concurrent_soft_rotations_make_one_session,
            patch_expect_detects_same_key_writes,
        );
    };
}

mod memory {
    use super::*;
    all_cases!(backend_flags(Backend::Memory));
}

mod redis {
    use super::*;
    all_cases!(backend_flags(Backend::Redis));
}

mod postgres {
    use super::*;
    all_cases!(backend_flags(Backend::Postgres));
}

/// `DKN_AUTH_DB_SYNCHRONOUS_COMMIT=off` writes data with other statements: the same cases.
mod postgres_data_writes_not_flushed {
    use super::*;
    all_cases!({
        let mut flags = backend_flags(Backend::Postgres);
        flags.push("--db-synchronous-commit=off".into());
        flags
    });
}

/// Three primaries and three replicas (`store/cluster.rs`); sids of one test land in
/// different slots, so rotations cross slots as well as stay in one.
mod redis_cluster {
    use super::*;
    all_cases!(backend_flags(Backend::RedisCluster));
}
