//! `sensor verify` and `sensor export`: a run's record checked from the
//! store, or written as a signed bundle and checked from it (see
//! docs/provenance.md).

use std::{collections::BTreeMap, path::Path, process::ExitCode};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{
    args::{ExportArgs, VerifyArgs},
    display::escape_terminal,
};
use crate::{
    provenance::{
        CheckpointFields, Jwks, PublicKey, dsse, read_keys,
        verify::{Line, RunVerdict, stored_lines, verify_run},
    },
    store::{
        self,
        query::{find_run, subtree},
        writer::RunRow,
    },
};

/// The in-toto predicate type of a bundle.
pub const PREDICATE_TYPE: &str = "https://github.com/agent-sensor/sensor/run-record/v1";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The runs a command is about: the run, and with `subtree` its sub-runs.
fn runs_of(
    conn: &rusqlite::Connection,
    run: &str,
    with_subtree: bool,
) -> anyhow::Result<Vec<RunRow>> {
    let root = find_run(conn, run)?;
    Ok(if with_subtree {
        subtree(conn, &root.id)?
    } else {
        vec![root]
    })
}

fn read_jwks(path: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // `sensor token jwks` prints {"issuer", "jwks"}; a bare JWKS is taken too.
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let jwks = value.get("jwks").cloned().unwrap_or(value);
    let jwks: Jwks = serde_json::from_value(jwks)
        .with_context(|| format!("{} is not a JWKS of Ed25519 keys", path.display()))?;
    Ok(jwks.keys)
}

fn print_verdicts(
    verdicts: &[RunVerdict],
    json: bool,
    extra: Option<serde_json::Value>,
) -> ExitCode {
    let intact = verdicts.iter().all(|v| v.intact);
    if json {
        let mut out = serde_json::json!({ "intact": intact, "runs": verdicts });
        if let (Some(extra), Some(map)) = (extra, out.as_object_mut()) {
            map.insert("bundle".into(), extra);
        }
        println!("{out}");
    } else {
        for v in verdicts {
            println!("{}", escape_terminal(&v.describe()));
        }
    }
    if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `sensor verify`.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(bundle) = &args.bundle {
        return verify_bundle(bundle, args.keys.as_deref(), args.db.json);
    }
    let Some(run) = &args.run else {
        anyhow::bail!("a run id, or --bundle FILE");
    };
    let conn = store::open_for_reading(&args.db.db)?;
    let keys = match &args.keys {
        Some(path) => read_jwks(path)?,
        None => store_keys(&args.db.db, &args.state_dir)?,
    };
    let mut verdicts = Vec::new();
    for r in runs_of(&conn, run, args.subtree)? {
        let lines = stored_lines(&conn, &r.id)?;
        verdicts.push(verify_run(&r.id, &lines, &keys, r.end_ns.is_some()));
    }
    Ok(print_verdicts(&verdicts, args.db.json, None))
}

/// What a bundle's Statement says about one policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PolicyText {
    name: String,
    /// The `[policy.NAME]` table, as TOML (`None`: not in the config).
    text: Option<String>,
    /// Its content hash as run tokens name it (`sha256:<hex>`).
    hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Predicate {
    runs: Vec<RunRow>,
    /// Per run, its lines as stored (the exact bytes the chain covers).
    events: BTreeMap<String, Vec<String>>,
    policies: Vec<PolicyText>,
    checkpoints: Vec<CheckpointFields>,
    keys: Jwks,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

/// The `[policy.NAME]` tables of the config, with their content hashes.
fn policy_texts(config: Option<&Path>, names: &[String]) -> Vec<PolicyText> {
    let loaded = crate::config::Config::load_with_policies(config).ok();
    let path = config.map_or_else(
        || Path::new(crate::paths::CONFIG).to_owned(),
        Path::to_owned,
    );
    let table: Option<toml::Table> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.parse().ok());
    names
        .iter()
        .map(|name| PolicyText {
            name: name.clone(),
            text: table
                .as_ref()
                .and_then(|t| t.get("policy"))
                .and_then(|p| p.get(name))
                .and_then(|p| toml::to_string(p).ok()),
            hash: loaded
                .as_ref()
                .and_then(|(_, p)| p.get(name))
                .map(|p| p.content_hash.clone()),
        })
        .collect()
}

/// `sensor export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let conn = store::open_for_reading(&args.db.db)?;
    let runs = runs_of(&conn, &args.run, args.subtree)?;
    let mut events = BTreeMap::new();
    let mut checkpoints = Vec::new();
    let mut subject = Vec::new();
    for r in &runs {
        let lines = stored_lines(&conn, &r.id)?;
        let mut head = hex::encode(crate::provenance::chain::GENESIS);
        for l in &lines {
            if let Some(s) = crate::provenance::chain::open(l.body.as_bytes()) {
                head = hex::encode(s.chain);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&s.canonical)
                    && v["kind"] == "run.checkpoint"
                    && let Ok(c) = serde_json::from_value(v["checkpoint"].clone())
                {
                    checkpoints.push(c);
                }
            }
        }
        subject.push(Subject {
            name: format!("run/{}", r.id),
            digest: BTreeMap::from([("sha256".to_owned(), head)]),
        });
        events.insert(r.id.clone(), lines.into_iter().map(|l| l.body).collect());
    }
    let mut names: Vec<String> = runs.iter().filter_map(|r| r.policy.clone()).collect();
    names.sort();
    names.dedup();
    let (kid, der) = crate::tokens::keys::read_active(&args.state_dir)
        .context("the signing key (is --state-dir the daemon's?)")?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|e| anyhow::anyhow!("the signing key: {e}"))?;
    let mut keys = read_keys(&args.state_dir).context("the public keys")?;
    let own = PublicKey {
        kid: kid.clone(),
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ring::signature::KeyPair::public_key(&pair).as_ref())
        },
    };
    if !keys.contains(&own) {
        keys.push(own);
    }
    let statement = Statement {
        kind: STATEMENT_TYPE.into(),
        subject,
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Predicate {
            runs,
            events,
            policies: policy_texts(args.db.config.path.as_deref(), &names),
            checkpoints,
            keys: Jwks { keys },
        },
    };
    let payload = serde_json::to_vec(&statement)?;
    let envelope = dsse::sign(dsse::IN_TOTO, &payload, &kid, &pair);
    let mut text = serde_json::to_vec_pretty(&envelope)?;
    text.push(b'\n');
    std::fs::write(&args.output, text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: {}, {}, {}, signed by key {}",
        escape_terminal(&args.output.to_string_lossy()),
        super::display::count(statement.predicate.runs.len(), "run", "runs"),
        super::display::count(
            statement
                .predicate
                .events
                .values()
                .map(Vec::len)
                .sum::<usize>(),
            "event",
            "events"
        ),
        super::display::count(
            statement.predicate.checkpoints.len(),
            "checkpoint",
            "checkpoints"
        ),
        kid
    );
    Ok(ExitCode::SUCCESS)
}

/// `sensor verify --bundle`: the envelope's signature, then every run's
/// chain and checkpoints, the subjects' heads and the policies' hashes.
fn verify_bundle(path: &Path, trusted: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let envelope: dsse::Envelope = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a DSSE envelope", path.display()))?;
    let fail = |why: String| -> anyhow::Result<ExitCode> {
        if json {
            println!(
                "{}",
                serde_json::json!({ "intact": false, "bundle": { "ok": false, "why": why } })
            );
        } else {
            println!("bundle: NOT valid: {}", escape_terminal(&why));
        }
        Ok(ExitCode::FAILURE)
    };
    if envelope.payload_type != dsse::IN_TOTO {
        return fail(format!("payload type {:?}", envelope.payload_type));
    }
    // The keys it carries, unless the caller names the ones to trust.
    let unverified: Statement = {
        use base64::Engine as _;
        let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(&envelope.payload)
        else {
            return fail("the payload is not base64".into());
        };
        match serde_json::from_slice(&payload) {
            Ok(s) => s,
            Err(e) => return fail(format!("the payload is not a run-record Statement: {e}")),
        }
    };
    let keys = match trusted {
        Some(p) => read_jwks(p)?,
        None => unverified.predicate.keys.keys.clone(),
    };
    let mut signed_by = None;
    for sig in &envelope.signatures {
        if let Some(raw) = keys
            .iter()
            .find(|k| k.kid == sig.keyid)
            .and_then(PublicKey::raw)
            && dsse::verify(&envelope, &sig.keyid, &raw).is_ok()
        {
            signed_by = Some(sig.keyid.clone());
            break;
        }
    }
    let Some(kid) = signed_by else {
        return fail("no signature verifies with the bundle's keys".into());
    };
    let statement = unverified;
    if statement.kind != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return fail("not an in-toto v1 Statement of a run record".into());
    }
    let mut verdicts = Vec::new();
    for r in &statement.predicate.runs {
        let lines: Vec<Line> = statement
            .predicate
            .events
            .get(&r.id)
            .map(|ls| {
                ls.iter()
                    .map(|body| Line {
                        seq: serde_json::from_str::<serde_json::Value>(body)
                            .ok()
                            .and_then(|v| v["seq"].as_u64())
                            .unwrap_or(0),
                        body: body.clone(),
                        chain: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let verdict = verify_run(&r.id, &lines, &keys, r.end_ns.is_some());
        let head = lines
            .last()
            .and_then(|l| crate::provenance::chain::open(l.body.as_bytes()))
            .map_or_else(
                || hex::encode(crate::provenance::chain::GENESIS),
                |s| hex::encode(s.chain),
            );
        let subject = statement
            .subject
            .iter()
            .find(|s| s.name == format!("run/{}", r.id));
        if subject.and_then(|s| s.digest.get("sha256")) != Some(&head) {
            return fail(format!(
                "the subject of run {} does not name its chain head",
                r.id
            ));
        }
        verdicts.push(verdict);
    }
    for p in &statement.predicate.policies {
        if let (Some(text), Some(hash)) = (&p.text, &p.hash) {
            let ok = toml::from_str::<crate::policy::PolicyConfig>(text)
                .is_ok_and(|c| &crate::policy::content_hash(&c) == hash);
            if !ok {
                return fail(format!(
                    "the text of policy {} does not hash to {hash}",
                    p.name
                ));
            }
        }
    }
    if !json {
        println!(
            "bundle: signature ok (key {}{})",
            escape_terminal(&kid),
            if trusted.is_some() {
                ""
            } else {
                ", carried by the bundle: pin it with --keys"
            }
        );
    }
    Ok(print_verdicts(
        &verdicts,
        json,
        Some(serde_json::json!({ "ok": true, "kid": kid })),
    ))
}

/// The public keys that check a store's checkpoints: those in the daemon's
/// state dir (the config's `[daemon] state_dir`), then those in the store's
/// directory (the default store is in the state dir; a `[store] path`
/// elsewhere is not).
fn store_keys(db: &Path, state_dir: &Path) -> anyhow::Result<Vec<PublicKey>> {
    let mut keys = read_keys(state_dir)
        .with_context(|| format!("reading the public keys in {}", state_dir.display()))?;
    let dir = db.parent().unwrap_or_else(|| Path::new("."));
    if dir != state_dir {
        for key in read_keys(dir)
            .with_context(|| format!("reading the public keys in {}", dir.display()))?
        {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// The report's "Record integrity" section: per run, whether its record
/// verifies (as `sensor verify` says), put at the end of `page`'s body.
pub fn with_record_section(
    page: String,
    conn: &rusqlite::Connection,
    runs: &[RunRow],
    db: &Path,
    state_dir: &Path,
) -> String {
    let keys = store_keys(db, state_dir).unwrap_or_default();
    let verdicts: Vec<RunVerdict> = runs
        .iter()
        .map(|r| match stored_lines(conn, &r.id) {
            Ok(lines) => verify_run(&r.id, &lines, &keys, r.end_ns.is_some()),
            Err(e) => RunVerdict {
                run: r.id.clone(),
                intact: false,
                events: 0,
                checkpoints: 0,
                unsigned_tail: 0,
                problem: Some(crate::provenance::verify::Problem {
                    seq: 0,
                    what: "unreadable",
                    detail: e.to_string(),
                }),
            },
        })
        .collect();
    let section = record_html(&verdicts).into_string();
    match page.rfind("</body>") {
        Some(at) => {
            let mut out = page;
            out.insert_str(at, &section);
            out
        }
        None => page,
    }
}

fn record_html(verdicts: &[RunVerdict]) -> maud::Markup {
    let text = |s: &str| escape_terminal(s).into_owned();
    maud::html! {
        h2 { "Record integrity" }
        p.meta { "Each run's hash chain recomputed from the store and its checkpoints' signatures checked (" code { "sensor verify" } ")." }
        table {
            thead { tr { th { "run" } th { "record" } th { "events" } th { "checkpoints" } th { "detail" } } }
            tbody {
                @for v in verdicts {
                    tr class=[(!v.intact).then_some("deny")] {
                        td { code { (text(&v.run)) } }
                        td.v { @if v.intact { "intact" } @else { b { "NOT intact" } } }
                        td { (v.events) }
                        td { (v.checkpoints) }
                        td {
                            @match &v.problem {
                                Some(p) => { (p.what) " at seq " (p.seq) ": " (text(&p.detail)) }
                                None => @if v.unsigned_tail > 0 {
                                    (v.unsigned_tail) " event(s) after the last checkpoint"
                                } @else { "—" },
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provenance::verify::Problem;

    #[test]
    fn the_report_section_says_which_records_verify() {
        let verdicts = [
            RunVerdict {
                run: "r-ok".into(),
                intact: true,
                events: 7,
                checkpoints: 2,
                unsigned_tail: 0,
                problem: None,
            },
            RunVerdict {
                run: "r-bad<script>".into(),
                intact: false,
                events: 5,
                checkpoints: 1,
                unsigned_tail: 0,
                problem: Some(Problem {
                    seq: 42,
                    what: "edited",
                    detail: "x".into(),
                }),
            },
        ];
        let html = record_html(&verdicts).into_string();
        assert!(html.contains("Record integrity"));
        assert!(
            html.contains("<code>r-ok</code></td><td class=\"v\">intact</td><td>7</td><td>2</td>"),
            "{html}"
        );
        assert!(
            html.contains("<b>NOT intact</b>") && html.contains("edited at seq 42"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "escaped: {html}");
    }

    /// A store outside the state dir (`[store] path`) is checked with the
    /// state dir's keys, and its own directory's too (the default store is
    /// in the state dir); each key once.
    #[test]
    fn keys_come_from_the_state_dir_and_the_stores_dir() {
        let key = |kid: &str| PublicKey {
            kid: kid.into(),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: "AAAA".into(),
        };
        let write = |dir: &Path, keys: Vec<PublicKey>| {
            std::fs::write(
                dir.join(crate::provenance::KEYS_FILE),
                serde_json::to_vec(&Jwks { keys }).unwrap(),
            )
            .unwrap();
        };
        let state = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        write(state.path(), vec![key("a"), key("b")]);
        write(store.path(), vec![key("b"), key("c")]);
        let db = store.path().join("sensor.db");
        let kids = |keys: Vec<PublicKey>| keys.into_iter().map(|k| k.kid).collect::<Vec<_>>();
        assert_eq!(
            kids(store_keys(&db, state.path()).unwrap()),
            ["a", "b", "c"]
        );
        // The default layout: the store in the state dir.
        let inside = state.path().join("sensor.db");
        assert_eq!(kids(store_keys(&inside, state.path()).unwrap()), ["a", "b"]);
        // No keys anywhere: none (every checkpoint then fails its check).
        let empty = tempfile::tempdir().unwrap();
        assert!(
            store_keys(&empty.path().join("x.db"), empty.path())
                .unwrap()
                .is_empty()
        );
    }
}
