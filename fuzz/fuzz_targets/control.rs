//! A control socket request line, as the daemon handles it: parsed as a
//! `Request`; a `launch` starts a run of this process (the peer SO_PEERCRED
//! would name) through `Attribution::launch` (which creates it with
//! `RunTable::create`), then a sub-run from inside it; the runs, the answers
//! and the run.start event are serialized as the daemon sends them.
//! `attest` and `whoami` are answered the same way. A `token` request is
//! signed for a fresh run of this process (any audience, TTL and scopes:
//! refused or a token that verifies), and `jwks` answered.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::{
    attribution::{Matchers, Peer, Run},
    control::protocol::{Request, Response},
};
use sensor_fuzz::{attribution, builder, check_json_line, now};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    // What `sensor launch` writes for it must read back the same.
    let line = serde_json::to_vec(&request).expect("a request serializes");
    let again: Request = serde_json::from_slice(&line).expect("a serialized request parses");
    assert_eq!(again, request);

    let me = std::process::id();
    let root = Peer::local(me, 0, 0);
    let mut b = builder(
        attribution(Matchers::default()),
        sensor::policy::Policies::default(),
    );
    let response = match request {
        Request::Launch(req) => {
            // Any TTL: out-of-range ones must be refused, never panic.
            let sub = sensor::attribution::LaunchRequest {
                run_id: None,
                ..req.clone()
            };
            let response = match b.attribution_mut().launch(&root, req, now(), |_, _| Ok(())) {
                Ok((run, change)) => {
                    check_run(&run);
                    check_json_line(&b.run_change(&change));
                    // The same process launches again: a sub-run, by someone
                    // who is not root (its principal claim is checked).
                    let nobody = Peer::local(me, 65_534, 65_534);
                    if let Ok((child, change)) =
                        b.attribution_mut()
                            .launch(&nobody, sub, now(), |_, _| Ok(()))
                    {
                        check_run(&child);
                        assert_eq!(child.depth, run.depth + 1, "a sub-run is one deeper");
                        assert_eq!(child.parent_id.as_deref(), Some(run.id.as_str()));
                        assert_eq!(child.root_id, run.root_id);
                        check_json_line(&b.run_change(&change));
                    }
                    Response::Launched { run: Box::new(run) }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
            let answer = b.attribution().attest(me, None);
            if let Ok(answer) = &answer {
                check_run(&answer.run);
            }
            response
        }
        Request::Whoami => answer(b.attribution().attest(me, None)),
        Request::Attest { pid, start_ticks } => answer(b.attribution().attest(pid, start_ticks)),
        // Any pid: a live one is answered, the rest refused, never a panic.
        Request::Process { pid } => match b.attribution().process(pid) {
            Ok(answer) => Response::Process(Box::new(answer)),
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Request::Token(req) => TOKENS.with(|tokens| {
            let mut tokens = tokens.borrow_mut();
            let launch = sensor::attribution::LaunchRequest {
                agent: "fuzz".into(),
                run_id: None,
                principal: None,
                policy: None,
                labels: Default::default(),
                ttl_secs: None,
                scopes: Some(vec!["a".into(), "b:c".into()]),
            };
            let (run, _) = b
                .attribution_mut()
                .launch(&root, launch, now(), |_, _| Ok(()))
                .expect("a plain launch is accepted");
            match tokens.0.issue(&run, &[], "launch", None, &req, std::time::SystemTime::now()) {
                Ok(issued) => {
                    let claims = sensor::tokens::verify(
                        &issued.token,
                        &tokens.0.jwks(),
                        tokens.0.issuer(),
                        Some(&req.aud),
                    )
                    .expect("an issued token verifies");
                    assert_eq!(claims, issued.claims);
                    assert!(claims.exp > claims.iat && claims.exp - claims.iat <= 300);
                    tokens.0.forget(run.handle);
                    Response::Token {
                        token: issued.token,
                        claims: Box::new(claims),
                    }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            }
        }),
        Request::Jwks => TOKENS.with(|t| {
            let t = t.borrow();
            Response::Jwks {
                issuer: t.0.issuer().to_owned(),
                jwks: t.0.jwks(),
            }
        }),
        Request::Status | Request::ReloadPolicies | Request::Handover => return,
    };
    let line = serde_json::to_vec(&response).expect("a response serializes");
    let _: Response = serde_json::from_slice(&line).expect("a response parses back");
});

thread_local! {
    /// One issuer (and its key file) for the whole run of the fuzzer.
    static TOKENS: std::cell::RefCell<(sensor::tokens::Issuer, tempfile::TempDir)> = {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let issuer = sensor::tokens::Issuer::open(
            sensor::tokens::TokensConfig::default(),
            dir.path(),
            "fuzz",
            None,
            std::time::SystemTime::now(),
        )
        .expect("token keys");
        std::cell::RefCell::new((issuer, dir))
    };
}

fn answer(
    result: Result<sensor::attribution::RunAnswer, sensor::attribution::AttributionError>,
) -> Response {
    match result {
        Ok(answer) => Response::Run(Box::new(answer)),
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// A run reads back from its JSON as it was: the journal and the state file
/// rely on it.
fn check_run(run: &Run) {
    let json = serde_json::to_vec(run).expect("a run serializes");
    let back: Run = serde_json::from_slice(&json).expect("a serialized run parses");
    assert_eq!(&back, run, "a run survives its JSON");
}
