//! Batches over HTTP(S): Splunk's HTTP Event Collector and Elasticsearch's
//! (or OpenSearch's) `_bulk` API.
//!
//! One `send` is one POST of the whole batch (gzip-compressed when asked):
//!
//! - [`HttpShape::Hec`]: one HEC event object per record, newline
//!   separated, `{"time":<s.µs>,"host":..,"source":"sensor",
//!   "sourcetype":"sensor:event"[,"index":..],"event":<payload>}`, with
//!   `Authorization: Splunk <token>`. The token must not require indexer
//!   acknowledgement (no channel is sent).
//! - [`HttpShape::Bulk`]: NDJSON, `{"create":{"_index":..}}` then the
//!   payload, per record, with `Authorization: ApiKey <token>`. `create`
//!   rather than `index`: a data stream accepts only `create`, and with
//!   server-made ids it does the same as `index` on a plain index.
//!
//! # What `send` reports (see [`Transport`]: `delivered` is always a prefix)
//!
//! - 2xx: HEC has indexed (or queued) every event: `Ok`. A bulk answer is
//!   read item by item (in request order): `Ok` when every item succeeded
//!   (409, "already there", counts as delivered); otherwise the first item
//!   that failed decides, and every item before it is delivered. A 429 /
//!   5xx item gives `retry(i)`: items from `i` on are sent again, so items
//!   after `i` that did succeed arrive twice. Another 4xx item (a mapping
//!   error) is poison: `refused(i)`, since everything before it succeeded.
//! - 408, 429, 5xx, a redirect, connection errors and time-outs:
//!   `retry(0)`. So are 401/403 (authentication failed: a token fixed later
//!   must not have cost data) and 404/405 (wrong URL), and HEC's "incorrect
//!   index" and "channel" errors: configuration a person fixes.
//! - Another 4xx refuses the whole request without saying which record is
//!   at fault. Refusing record 0 could drop an innocent record, so `send`
//!   isolates the culprit by posting shorter prefixes (half, a quarter, ...,
//!   or straight up to the event HEC's `invalid-event-number` names): when
//!   a prefix of `k` records goes through, it returns `retry(k)` (or
//!   `refused(k)` when HEC named record `k`), and when record 0 alone is
//!   refused, `refused(0)`. Isolation stops after [`ISOLATE_BUDGET`] with
//!   `retry(0)`.
//! - 413: the batch is too large for the server. [`Http::batch_bytes`] is
//!   halved (for the rest of the process's life) and the batch is isolated
//!   as above, so a smaller prefix goes through now; a single record the
//!   server still finds too large is refused.
//!
//! Every error message names the URL, the status and the start of the
//! answer.

use std::{
    fmt::Write as _,
    io::Write as _,
    time::{Duration, Instant},
};

use serde::Deserialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::{
    Record, SendError, Transport,
    tls::{TlsError, TlsOptions},
};

/// Per TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For a whole request, connect to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `send` goes on posting shorter prefixes of a refused batch.
pub const ISOLATE_BUDGET: Duration = Duration::from_secs(60);
/// Default for [`HttpConfig::batch_bytes`].
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;
/// Smallest batch limit a 413 can bring `batch_bytes` down to.
const MIN_BATCH_BYTES: usize = 4 << 10;
/// Largest answer read (a bulk answer has one item per record).
const ANSWER_LIMIT: u64 = 64 << 20;
/// How much of an answer an error message quotes.
const QUOTE: usize = 200;
/// The bulk index used when none is set.
pub const DEFAULT_INDEX: &str = "sensor-events";

pub use crate::sinks::HttpShape;

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The full endpoint, e.g. `https://splunk:8088/services/collector/event`
    /// or `http://es:9200/_bulk`.
    pub url: String,
    pub shape: HttpShape,
    /// HEC token, or Elasticsearch API key (the base64 `id:key` form).
    pub token: Option<String>,
    /// Compress the body (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// HEC index, or bulk index / data stream ([`DEFAULT_INDEX`] if unset).
    pub index: Option<String>,
    pub tls: TlsOptions,
    /// HEC's `host` field.
    pub hostname: String,
    /// Largest batch (bytes of payload) handed to one send.
    pub batch_bytes: usize,
}

/// An HTTP sender; ureq keeps the connection alive between batches.
pub struct Http {
    agent: ureq::Agent,
    url: String,
    shape: HttpShape,
    authorization: Option<String>,
    gzip: bool,
    /// HEC: the fields after `time` up to `"event":`; bulk: the action line.
    per_record: String,
    batch_bytes: usize,
}

impl Http {
    /// Checks the TLS settings (CA file); connects later.
    pub fn new(cfg: HttpConfig) -> Result<Self, TlsError> {
        let roots = match super::tls::ca_certificates(&cfg.tls)? {
            Some(certs) => RootCerts::new_with_certs(
                &certs
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
            None => RootCerts::WebPki,
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("sensor/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build();
        let authorization = cfg.token.as_ref().map(|t| match cfg.shape {
            HttpShape::Hec => format!("Splunk {t}"),
            HttpShape::Bulk => format!("ApiKey {t}"),
        });
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            url: cfg.url,
            shape: cfg.shape,
            authorization,
            gzip: cfg.gzip,
            per_record: per_record(cfg.shape, &cfg.hostname, cfg.index.as_deref()),
            batch_bytes: cfg.batch_bytes.max(1),
        })
    }

    /// POSTs `records` and classifies the answer.
    fn post(&self, records: &[Record<'_>]) -> Answer {
        let mut body = Vec::with_capacity(
            records
                .iter()
                .map(|r| r.payload.len() + self.per_record.len() + 32)
                .sum(),
        );
        build_body(&mut body, self.shape, &self.per_record, records);
        if self.gzip {
            body = match gzip(&body) {
                Ok(b) => b,
                Err(e) => return Answer::Failed(SendError::retry(0, format!("gzip: {e}"))),
            };
        }
        let content_type = match self.shape {
            HttpShape::Hec => "application/json",
            HttpShape::Bulk => "application/x-ndjson",
        };
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", content_type);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        if self.gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        let mut response = match request.send(&body[..]) {
            Ok(r) => r,
            Err(e) => {
                return Answer::Failed(SendError::retry(0, e.to_string()));
            }
        };
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(ANSWER_LIMIT)
            .read_to_vec();
        match answer {
            Ok(answer) => classify(self.shape, status, &answer, records.len()),
            // HEC says all it has to in the status; a bulk answer must be read.
            Err(_) if self.shape == HttpShape::Hec && (200..300).contains(&status) => {
                Answer::Delivered
            }
            Err(e) => Answer::Failed(SendError::retry(
                0,
                format!("HTTP {status}, answer unreadable: {e}"),
            )),
        }
    }

    fn with_url(&self, mut err: SendError) -> SendError {
        err.message = format!("POST {}: {}", self.url, err.message);
        err
    }
}

impl Transport for Http {
    fn send(&mut self, records: &[Record<'_>]) -> Result<(), SendError> {
        if records.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + ISOLATE_BUDGET;
        let first = self.post(records);
        if let Answer::TooLarge(_) = first
            && records.len() > 1
        {
            let payload: usize = records.iter().map(|r| r.payload.len()).sum();
            let lowered =
                (payload / 2).clamp(MIN_BATCH_BYTES, self.batch_bytes.max(MIN_BATCH_BYTES));
            if lowered < self.batch_bytes {
                tracing::warn!(url = %self.url, "HTTP 413: batch limit lowered to {lowered} bytes");
                self.batch_bytes = lowered;
            }
        }
        let result = isolate(records, first, deadline, |prefix| self.post(prefix));
        result.map_err(|e| self.with_url(e))
    }

    fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }
}

/// What one POST came to.
#[derive(Debug)]
enum Answer {
    /// Every record is held.
    Delivered,
    /// Settled: a retry, or a refusal of a known record.
    Failed(SendError),
    /// The whole request was refused, the culprit unknown.
    Refused(String),
    /// HEC refused the request because of event `.0`.
    InvalidEvent(usize, String),
    /// 413.
    TooLarge(String),
}

/// Turns the answer to a POST of `records` into the result of `send`,
/// posting shorter prefixes (through `post`) while the whole request is
/// refused and the culprit unknown; see the module doc.
fn isolate(
    records: &[Record<'_>],
    first: Answer,
    deadline: Instant,
    mut post: impl FnMut(&[Record<'_>]) -> Answer,
) -> Result<(), SendError> {
    // `records[..refused]` was refused as a whole; `named`: HEC's culprit.
    let mut refused = records.len();
    let mut answer = first;
    loop {
        let (why, named) = match answer {
            Answer::Delivered => return Ok(()),
            Answer::Failed(e) => return Err(e),
            Answer::Refused(why) | Answer::TooLarge(why) => (why, None),
            Answer::InvalidEvent(i, why) => (why, Some(i)),
        };
        let try_len = match named {
            Some(0) => return Err(SendError::refused(0, why)),
            Some(i) if i < refused => i,
            _ if refused <= 1 => return Err(SendError::refused(0, why)),
            _ => refused / 2,
        };
        if Instant::now() >= deadline {
            return Err(SendError::retry(
                0,
                format!("{why} (gave up looking for the record at fault)"),
            ));
        }
        answer = match post(&records[..try_len]) {
            Answer::Delivered if named.is_some() => {
                return Err(SendError::refused(try_len, why));
            }
            Answer::Delivered => {
                return Err(SendError::retry(
                    try_len,
                    format!(
                        "{why}; the first {try_len} records went through alone, \
                         the rest are sent again"
                    ),
                ));
            }
            other => other,
        };
        refused = try_len;
    }
}

/// Classifies the answer (`status`, `body`) to a POST of `n` records.
fn classify(shape: HttpShape, status: u16, body: &[u8], n: usize) -> Answer {
    let what = || format!("HTTP {status}: {}", quote(body));
    match status {
        200..=299 => match shape {
            HttpShape::Hec => Answer::Delivered,
            HttpShape::Bulk => classify_bulk(body, n),
        },
        401 | 403 => Answer::Failed(SendError::retry(
            0,
            format!("authentication failed (check the token): {}", what()),
        )),
        404 | 405 => Answer::Failed(SendError::retry(
            0,
            format!("no such endpoint (check the URL): {}", what()),
        )),
        408 | 429 | 500..=599 => Answer::Failed(SendError::retry(0, what())),
        413 => Answer::TooLarge(what()),
        400..=499 if shape == HttpShape::Hec => classify_hec_refusal(status, body, n),
        400..=499 => Answer::Refused(what()),
        300..=399 => Answer::Failed(SendError::retry(
            0,
            format!("redirected (set the URL to the final one): {}", what()),
        )),
        _ => Answer::Failed(SendError::retry(0, what())),
    }
}

/// A HEC 4xx other than 401/403/404/405/408/413/429.
fn classify_hec_refusal(status: u16, body: &[u8], n: usize) -> Answer {
    #[derive(Deserialize)]
    struct HecAnswer {
        code: Option<u32>,
        #[serde(rename = "invalid-event-number")]
        invalid_event_number: Option<usize>,
    }
    let what = format!("HTTP {status}: {}", quote(body));
    let Ok(answer) = serde_json::from_slice::<HecAnswer>(body) else {
        return Answer::Refused(what);
    };
    match answer.code {
        // 7 incorrect index, 10/11 channel missing/invalid (the token wants
        // indexer acknowledgement), 14 ack disabled, 16 query-string auth.
        Some(7 | 10 | 11 | 14 | 16) => Answer::Failed(SendError::retry(
            0,
            format!("HEC configuration (check the index and the token's settings): {what}"),
        )),
        _ => match answer.invalid_event_number {
            Some(i) if i < n => Answer::InvalidEvent(i, what),
            _ => Answer::Refused(what),
        },
    }
}

/// A 2xx answer from `_bulk` to `n` records.
fn classify_bulk(body: &[u8], n: usize) -> Answer {
    #[derive(Deserialize)]
    struct BulkAnswer {
        errors: bool,
        #[serde(default)]
        items: Vec<std::collections::HashMap<String, BulkItem>>,
    }
    #[derive(Deserialize)]
    struct BulkItem {
        status: u16,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let answer: BulkAnswer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return Answer::Failed(SendError::retry(
                0,
                format!("bulk answer unreadable ({e}): {}", quote(body)),
            ));
        }
    };
    if !answer.errors {
        return Answer::Delivered;
    }
    for i in 0..n {
        let Some(item) = answer.items.get(i).and_then(|m| m.values().next()) else {
            return Answer::Failed(SendError::retry(
                i,
                format!(
                    "bulk answer has {} items for {n} records",
                    answer.items.len()
                ),
            ));
        };
        let status = item.status;
        // 409 (create of an existing id) means the document is there.
        if (200..300).contains(&status) || status == 409 {
            continue;
        }
        let reason = item.error.as_ref().map_or_else(String::new, describe_error);
        let what = format!("bulk item {i}: status {status}: {reason}");
        return Answer::Failed(if status == 429 || status == 408 || status >= 500 {
            SendError::retry(i, what)
        } else {
            SendError::refused(i, what)
        });
    }
    Answer::Delivered
}

/// `type: reason` of an Elasticsearch error object, shortened.
fn describe_error(error: &serde_json::Value) -> String {
    let field = |name| error.get(name).and_then(serde_json::Value::as_str);
    let text = match (field("type"), field("reason")) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (Some(t), None) => t.to_owned(),
        _ => error.to_string(),
    };
    quote(text.as_bytes())
}

/// The start of an answer, on one line.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE)]);
    let mut out: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > QUOTE {
        out.push_str("...");
    }
    if out.is_empty() {
        out.push_str("(empty answer)");
    }
    out
}

/// The constant part of each record's framing.
fn per_record(shape: HttpShape, hostname: &str, index: Option<&str>) -> String {
    let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    match shape {
        HttpShape::Hec => {
            let mut s = format!(
                r#","host":{},"source":"sensor","sourcetype":"sensor:event""#,
                json(hostname)
            );
            if let Some(index) = index {
                let _ = write!(s, r#","index":{}"#, json(index));
            }
            s.push_str(r#","event":"#);
            s
        }
        HttpShape::Bulk => format!(
            "{{\"create\":{{\"_index\":{}}}}}\n",
            json(index.unwrap_or(DEFAULT_INDEX))
        ),
    }
}

/// Appends the request body for `records`.
fn build_body(out: &mut Vec<u8>, shape: HttpShape, per_record: &str, records: &[Record<'_>]) {
    for record in records {
        match shape {
            HttpShape::Hec => {
                let ns = u64::try_from(record.time_ns).unwrap_or(0);
                let _ = write!(
                    out,
                    "{{\"time\":{}.{:06}{per_record}",
                    ns / 1_000_000_000,
                    ns % 1_000_000_000 / 1_000
                );
                out.extend_from_slice(record.payload);
                out.extend_from_slice(b"}\n");
            }
            HttpShape::Bulk => {
                out.extend_from_slice(per_record.as_bytes());
                out.extend_from_slice(record.payload);
                out.push(b'\n');
            }
        }
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::Read as _;

    use super::*;

    const T: i64 = 1_795_428_000_123_456_789;

    fn rec(seq: u64, payload: &[u8]) -> Record<'_> {
        Record {
            seq,
            time_ns: T,
            kind: "process.exec",
            payload,
        }
    }

    fn body(shape: HttpShape, host: &str, index: Option<&str>, records: &[Record<'_>]) -> String {
        let mut out = Vec::new();
        build_body(&mut out, shape, &per_record(shape, host, index), records);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hec_body() {
        let records = [rec(1, br#"{"seq":1}"#), rec(2, br#"{"seq":2}"#)];
        assert_eq!(
            body(HttpShape::Hec, "web-1", None, &records),
            concat!(
                r#"{"time":1795428000.123456,"host":"web-1","source":"sensor","sourcetype":"sensor:event","event":{"seq":1}}"#,
                "\n",
                r#"{"time":1795428000.123456,"host":"web-1","source":"sensor","sourcetype":"sensor:event","event":{"seq":2}}"#,
                "\n",
            )
        );
        assert_eq!(
            body(HttpShape::Hec, "a\"b", Some("sec"), &records[..1]),
            concat!(
                r#"{"time":1795428000.123456,"host":"a\"b","source":"sensor","sourcetype":"sensor:event","index":"sec","event":{"seq":1}}"#,
                "\n",
            )
        );
        let early = Record {
            time_ns: 5_000_000,
            ..rec(3, b"{}")
        };
        assert!(body(HttpShape::Hec, "h", None, &[early]).starts_with(r#"{"time":0.005000,"#));
    }

    #[test]
    fn bulk_body() {
        let records = [rec(1, br#"{"seq":1}"#), rec(2, br#"{"seq":2}"#)];
        assert_eq!(
            body(HttpShape::Bulk, "web-1", None, &records),
            "{\"create\":{\"_index\":\"sensor-events\"}}\n{\"seq\":1}\n\
             {\"create\":{\"_index\":\"sensor-events\"}}\n{\"seq\":2}\n"
        );
        assert_eq!(
            body(
                HttpShape::Bulk,
                "web-1",
                Some("logs-sensor-default"),
                &records[..1]
            ),
            "{\"create\":{\"_index\":\"logs-sensor-default\"}}\n{\"seq\":1}\n"
        );
    }

    #[test]
    fn gzip_roundtrip() {
        let text = body(HttpShape::Bulk, "h", None, &[rec(1, br#"{"a":1}"#); 100]);
        let packed = gzip(text.as_bytes()).unwrap();
        assert!(packed.len() < text.len() / 10);
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, text);
    }

    fn failed(a: Answer) -> SendError {
        match a {
            Answer::Failed(e) => e,
            other => panic!("not Failed: {other:?}"),
        }
    }

    fn bulk_answer(statuses: &[u16]) -> Vec<u8> {
        let items: Vec<String> = statuses
            .iter()
            .map(|s| {
                if *s < 300 {
                    format!(r#"{{"create":{{"_index":"i","status":{s}}}}}"#)
                } else {
                    format!(
                        r#"{{"create":{{"_index":"i","status":{s},"error":{{"type":"t{s}","reason":"r{s}"}}}}}}"#
                    )
                }
            })
            .collect();
        let errors = statuses.iter().any(|s| *s >= 300);
        format!(
            r#"{{"took":3,"errors":{errors},"items":[{}]}}"#,
            items.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn bulk_all_created() {
        let a = classify(HttpShape::Bulk, 200, &bulk_answer(&[201, 201, 201]), 3);
        assert!(matches!(a, Answer::Delivered));
        let a = classify(HttpShape::Bulk, 200, &bulk_answer(&[201, 409, 201]), 3);
        assert!(matches!(a, Answer::Delivered));
    }

    #[test]
    fn bulk_item_to_retry() {
        let e = failed(classify(
            HttpShape::Bulk,
            200,
            &bulk_answer(&[201, 429, 201, 400]),
            4,
        ));
        assert!(e.retry);
        assert_eq!(e.delivered, 1);
        assert!(
            e.message.contains("429") && e.message.contains("t429: r429"),
            "{e}"
        );
        let e = failed(classify(
            HttpShape::Bulk,
            200,
            &bulk_answer(&[201, 201, 503]),
            3,
        ));
        assert!(e.retry);
        assert_eq!(e.delivered, 2);
    }

    #[test]
    fn bulk_item_refused() {
        let e = failed(classify(
            HttpShape::Bulk,
            200,
            &bulk_answer(&[201, 400, 429]),
            3,
        ));
        assert!(!e.retry);
        assert_eq!(e.delivered, 1);
        assert!(e.message.contains("t400: r400"), "{e}");
        let e = failed(classify(HttpShape::Bulk, 200, &bulk_answer(&[400, 201]), 2));
        assert!(!e.retry);
        assert_eq!(e.delivered, 0);
    }

    #[test]
    fn bulk_answer_short_or_garbled() {
        let e = failed(classify(HttpShape::Bulk, 200, &bulk_answer(&[201, 400]), 3));
        assert_eq!((e.delivered, e.retry), (1, false));
        let e = failed(classify(
            HttpShape::Bulk,
            200,
            &bulk_answer(&[201, 201, 500])[..40],
            3,
        ));
        assert_eq!((e.delivered, e.retry), (0, true));
        // errors:true but fewer items than records, all fine so far.
        let answer = br#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        let e = failed(classify(HttpShape::Bulk, 200, answer, 2));
        assert_eq!((e.delivered, e.retry), (1, true));
    }

    #[test]
    fn statuses() {
        for shape in [HttpShape::Hec, HttpShape::Bulk] {
            let e = failed(classify(shape, 503, b"busy, try later", 5));
            assert_eq!((e.delivered, e.retry), (0, true));
            assert!(e.message.contains("503") && e.message.contains("busy, try later"));
            for status in [408, 429, 500, 502, 301] {
                assert!(failed(classify(shape, status, b"", 5)).retry, "{status}");
            }
            for status in [401, 403] {
                let e = failed(classify(shape, status, b"{}", 5));
                assert!(e.retry);
                assert!(e.message.contains("authentication failed"), "{e}");
            }
            assert!(matches!(
                classify(shape, 400, b"bad", 5),
                Answer::Refused(_)
            ));
            assert!(matches!(classify(shape, 413, b"", 5), Answer::TooLarge(_)));
        }
        assert!(matches!(
            classify(HttpShape::Hec, 200, b"", 5),
            Answer::Delivered
        ));
        let long = vec![b'x'; 1000];
        let e = failed(classify(HttpShape::Hec, 500, &long, 1));
        assert!(e.message.len() < 260, "{}", e.message);
    }

    #[test]
    fn hec_refusals() {
        let a = classify(
            HttpShape::Hec,
            400,
            br#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
            5,
        );
        assert!(matches!(a, Answer::InvalidEvent(3, _)), "{a:?}");
        let a = classify(
            HttpShape::Hec,
            400,
            br#"{"text":"Incorrect index","code":7}"#,
            5,
        );
        assert!(failed(a).retry);
        let a = classify(HttpShape::Hec, 400, br#"{"text":"No data","code":5}"#, 5);
        assert!(matches!(a, Answer::Refused(_)));
    }

    /// A fake receiver refusing any request holding record `bad`.
    fn refusing(bad: usize, calls: &mut Vec<usize>) -> impl FnMut(&[Record<'_>]) -> Answer + '_ {
        move |prefix| {
            calls.push(prefix.len());
            if prefix.len() > bad {
                Answer::Refused("HTTP 400: bad".into())
            } else {
                Answer::Delivered
            }
        }
    }

    #[test]
    fn isolation_finds_a_good_prefix() {
        let payloads: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| rec(0, p)).collect();
        let far = Instant::now() + Duration::from_secs(60);

        // Bad record 7: [..5] goes through, the rest is retried from 5.
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::Refused("x".into()),
            far,
            refusing(7, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (5, true));
        assert_eq!(calls, [5]);

        // Bad record 0: halving down to record 0 alone, which is refused.
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::Refused("x".into()),
            far,
            refusing(0, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (0, false));
        assert_eq!(calls, [5, 2, 1]);

        // Bad record 1: [..1] goes through.
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::Refused("x".into()),
            far,
            refusing(1, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (1, true));
        assert_eq!(calls, [5, 2, 1]);

        // A single record refused: no further request.
        let mut calls = Vec::new();
        let e = isolate(
            &records[..1],
            Answer::Refused("x".into()),
            far,
            refusing(0, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (0, false));
        assert!(calls.is_empty());
    }

    #[test]
    fn isolation_uses_hec_invalid_event_number() {
        let payloads: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| rec(0, p)).collect();
        let far = Instant::now() + Duration::from_secs(60);
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::InvalidEvent(6, "x".into()),
            far,
            refusing(6, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (6, false));
        assert_eq!(calls, [6]);
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::InvalidEvent(0, "x".into()),
            far,
            refusing(0, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (0, false));
        assert!(calls.is_empty());
    }

    #[test]
    fn isolation_stops_at_the_deadline_and_on_other_failures() {
        let payloads: Vec<Vec<u8>> = (0..4)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| rec(0, p)).collect();
        let past = Instant::now();
        let mut calls = Vec::new();
        let e = isolate(
            &records,
            Answer::Refused("x".into()),
            past,
            refusing(0, &mut calls),
        )
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (0, true));
        assert!(calls.is_empty());

        let far = Instant::now() + Duration::from_secs(60);
        let e = isolate(&records, Answer::Refused("x".into()), far, |_| {
            Answer::Failed(SendError::retry(0, "HTTP 503"))
        })
        .unwrap_err();
        assert_eq!((e.delivered, e.retry), (0, true));
        assert!(isolate(&records, Answer::Delivered, far, |_| unreachable!()).is_ok());
    }
}
