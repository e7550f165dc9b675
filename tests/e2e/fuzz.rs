//! Issue 9, item 6: a fuzz test of the SCIM endpoint. Mutated filters, `attributes` /
//! `excludedAttributes` lists, paging and sort parameters, POST / PUT / PATCH / search
//! bodies, ids and paths, sent to the SCIM router in process (no HTTP round trip), its
//! store on the real API server. Every answer must be below 500 (but the 501 of `/Bulk`
//! and `/Me`), every 4xx a SCIM error body (`application/scim+json`, the Error schema,
//! the status repeated), and every resource a 2xx shows only declared attributes (what
//! one request stored can't break a strict client's next list).
//!
//! Deterministic requests from a seeded PRNG: `KUBE_SCIM_FUZZ_SEED` (default 9),
//! `KUBE_SCIM_FUZZ_CASES` (default 2,000: 4–10 s here; 10,000 take 20–25 s). A failure
//! prints the case number and request, to replay with the same seed.
use std::time::Instant;

use axum::body::Body;
use http::Request;
use kube::api::{Api, DeleteParams};
use kube_scim::crd::{ScimGroup, ScimUser};
use kube_scim::scim::schema::{self, ResourceKind};
use kube_scim::scim::server::{router, AppState};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::harness::{
    admin_client, enc, operator, scim, unique, CUSTOM_EXTENSION, ENTERPRISE, ERROR_SCHEMA,
    GROUP_SCHEMA, PATCH_OP, USER_SCHEMA,
};

const DEFAULT_CASES: usize = 2_000;
const DEFAULT_SEED: u64 = 9;
const SCIM_CONTENT_TYPE: &str = "application/scim+json";

const FILTERS: &[&str] = &[
    r#"userName eq "bjensen""#,
    r#"userName eq "a" and active eq true"#,
    r#"emails[type eq "work" and value co "@"]"#,
    r#"emails[type eq "work"].value eq "a@b.c""#,
    r#"name.familyName sw "J""#,
    r#"meta.lastModified gt "2011-05-13T04:42:34Z""#,
    r#"not (userName pr)"#,
    r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "1""#,
    r#"members[value eq "x"]"#,
    r#"displayName co "g" or externalId eq 5"#,
    r#"id eq "x""#,
    r#"title pr and (userType eq "Employee" or userType eq "Intern")"#,
    r#"emails.value ew ".org""#,
    "active eq false",
    r#"x509Certificates.value eq "AA==""#,
    r#"schemas eq "urn:ietf:params:scim:schemas:core:2.0:User""#,
    "meta.created lt 5",
    "members eq null",
    r#"urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User:badge ge 3"#,
];

const ATTRS: &[&str] = &[
    "userName",
    "name.givenName",
    "emails",
    "emails.value",
    "members",
    "members.value",
    "meta",
    "id",
    "schemas",
    "password",
    "groups",
    "displayName",
    "memberé",
    "ÄÖ",
    "urn:x:y",
    "a..b",
    "urn:",
    "$ref",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
    "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User:costCode",
    "urn:ietf:params:scim:schemas:core:2.0:User:userName",
];

const PATCH_PATHS: &[&str] = &[
    "userName",
    "name.givenName",
    "name",
    r#"emails[type eq "work"].value"#,
    r#"emails[value co "@"]"#,
    "emails",
    "members",
    r#"members[value eq "x"]"#,
    r#"members[type eq "User"]"#,
    "active",
    "title",
    "roles",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
    "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User:badge",
    "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User",
    r#"phoneNumbers[primary eq true]"#,
    r#"addresses[type eq "work"].formatted"#,
    "schemas",
    "id",
    "meta.version",
    "groups",
    "password",
    "favouriteColour",
    "name.nope",
    "externalId",
    "displayName",
    "x509Certificates",
    "",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "é",
    "💥",
    "system:masters",
    "../../x",
    "%ZZ",
    "\"",
    "\\",
    "True",
    "False",
    "null",
    "[]",
    "{}",
    "urn:ietf:params:scim:schemas:core:2.0:User",
    "W/\"1\"",
    "2024-01-01T00:00:00Z",
    "User",
    "Group",
    "work",
    "AA==",
];

/// Characters that mean something to a SCIM filter, path or JSON parser.
const SPECIAL: &[char] = &[
    '"', '(', ')', '[', ']', ' ', '.', ':', ',', '\\', '{', '}', '%', '\u{0}', 'é', '\u{202e}',
];

struct Fuzz {
    rng: StdRng,
    users: Vec<String>,
    groups: Vec<String>,
}

impl Fuzz {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items.choose(&mut self.rng).copied().unwrap_or_default()
    }

    /// A few character-level mutations of `s`.
    fn mutate(&mut self, s: &str) -> String {
        let mut c: Vec<char> = s.chars().collect();
        for _ in 0..self.rng.random_range(0..4) {
            let n = c.len();
            match self.rng.random_range(0..7) {
                0 => {
                    let ch = *SPECIAL.choose(&mut self.rng).unwrap_or(&'x');
                    c.insert(self.rng.random_range(0..=n), ch);
                }
                1 if n > 0 => {
                    let a = self.rng.random_range(0..n);
                    let b = self.rng.random_range(a..=n.min(a + 8));
                    c.drain(a..b);
                }
                2 if n > 0 => {
                    let a = self.rng.random_range(0..n);
                    let b = self.rng.random_range(a..=n);
                    let dup: Vec<char> = c[a..b].to_vec();
                    let at = self.rng.random_range(0..=c.len());
                    c.splice(at..at, dup);
                }
                3 if n > 0 => {
                    c.truncate(self.rng.random_range(0..n));
                }
                4 if n > 0 => {
                    let at = self.rng.random_range(0..n);
                    c[at] = char::from_u32(self.rng.random_range(1..0x3000)).unwrap_or('?');
                }
                5 => {
                    let word = self.pick(&[" and ", " or ", "not ", " pr", " eq ", "[", "]"]);
                    let at = self.rng.random_range(0..=n);
                    c.splice(at..at, word.chars());
                }
                _ => {}
            }
        }
        c.into_iter().collect()
    }

    fn string(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => self.pick(STRINGS).to_string(),
            1 => {
                let s = self.pick(STRINGS);
                self.mutate(s)
            }
            2 => "x".repeat(self.rng.random_range(0..600)),
            _ => unique("fz"),
        }
    }

    fn json(&mut self, depth: u32) -> Value {
        let top = if depth >= 3 { 5 } else { 8 };
        match self.rng.random_range(0..top) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.random()),
            2 => json!(self.rng.random_range(-5i64..5)),
            3 => match self.rng.random_range(0..3) {
                0 => json!(u64::MAX),
                1 => json!(1.5e300),
                _ => json!(-0.0),
            },
            4 => Value::String(self.string()),
            5 => {
                let n = self.rng.random_range(0..4);
                Value::Array((0..n).map(|_| self.json(depth + 1)).collect())
            }
            _ => {
                let mut m = Map::new();
                for _ in 0..self.rng.random_range(0..4) {
                    let k = if self.chance(0.7) {
                        self.pick(ATTRS).to_string()
                    } else {
                        self.string()
                    };
                    m.insert(k, self.json(depth + 1));
                }
                Value::Object(m)
            }
        }
    }

    fn id(&mut self, users: bool) -> String {
        let pool = if users { &self.users } else { &self.groups };
        match self.rng.random_range(0..5) {
            0..=2 if !pool.is_empty() => pool[self.rng.random_range(0..pool.len())].clone(),
            3 => uuid::Uuid::new_v4().to_string(),
            _ => {
                let s = self.string();
                self.mutate(&s)
            }
        }
    }

    fn members(&mut self) -> Value {
        let n = self.rng.random_range(0..4);
        let items: Vec<Value> = (0..n)
            .map(|_| {
                let users = self.chance(0.8);
                let mut m = json!({"value": self.id(users)});
                if self.chance(0.3) {
                    m["type"] = json!(self.pick(&["User", "Group", "Device", ""]));
                }
                if self.chance(0.1) {
                    m["display"] = json!("d");
                }
                if self.chance(0.1) {
                    m[self.pick(ATTRS)] = self.json(2);
                }
                m
            })
            .collect();
        Value::Array(items)
    }

    /// A plausible resource, then a few structural mutations.
    fn resource(&mut self, users: bool) -> Value {
        let mut doc = if users {
            json!({"schemas": [USER_SCHEMA, ENTERPRISE], "userName": format!("{}@fuzz.example", unique("fz")),
                   "name": {"givenName": "F", "familyName": "Z"}, "active": "True",
                   "emails": [{"value": "f@fuzz.example", "type": "work", "primary": true}],
                   ENTERPRISE: {"department": "D", "manager": {"value": self.id(true)}},
                   CUSTOM_EXTENSION: {"costCode": "C", "badge": 1}})
        } else {
            json!({"schemas": [GROUP_SCHEMA], "displayName": unique("Fuzz Group"),
                   "externalId": uuid::Uuid::new_v4().to_string(), "members": self.members()})
        };
        for _ in 0..self.rng.random_range(0..3) {
            let Some(m) = doc.as_object_mut() else { break };
            match self.rng.random_range(0..4) {
                0 => {
                    let k = if self.rng.random_bool(0.5) {
                        self.pick(ATTRS).to_string()
                    } else {
                        self.pick(PATCH_PATHS).to_string()
                    };
                    let v = self.json(1);
                    doc[k] = v;
                }
                1 => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    if let Some(k) = keys.choose(&mut self.rng) {
                        m.remove(k);
                    }
                }
                2 => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    if let Some(k) = keys.choose(&mut self.rng).cloned() {
                        let v = self.json(1);
                        doc[k] = v;
                    }
                }
                _ => {
                    let k = self.string();
                    let v = self.json(1);
                    doc[k] = v;
                }
            }
        }
        doc
    }

    fn patch(&mut self) -> Value {
        let n = self.rng.random_range(1..4);
        let ops: Vec<Value> = (0..n)
            .map(|_| {
                let mut op = json!({"op": self.pick(&["add", "remove", "replace", "Add", "Replace", "Remove", "ADD", "move", ""])});
                if self.chance(0.85) {
                    let p = self.pick(PATCH_PATHS);
                    op["path"] = json!(if self.chance(0.3) { self.mutate(p) } else { p.to_string() });
                }
                if self.chance(0.9) {
                    op["value"] = match self.rng.random_range(0..4) {
                        0 => self.members(),
                        1 => {
                            let users = self.chance(0.5);
                            self.resource(users)
                        }
                        _ => self.json(0),
                    };
                }
                op
            })
            .collect();
        let schemas = if self.chance(0.9) {
            json!([PATCH_OP])
        } else {
            self.json(1)
        };
        json!({"schemas": schemas, "Operations": ops})
    }

    fn search(&mut self) -> Value {
        let mut body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]});
        if self.chance(0.8) {
            let f = self.pick(FILTERS);
            body["filter"] = json!(self.mutate(f));
        }
        if self.chance(0.3) {
            body["attributes"] = json!([self.pick(ATTRS), self.pick(ATTRS)]);
        }
        if self.chance(0.3) {
            body["excludedAttributes"] = self.json(1);
        }
        if self.chance(0.3) {
            body["startIndex"] = self.json(1);
        }
        if self.chance(0.3) {
            body["count"] = json!(self.rng.random_range(-2i64..5));
        }
        if self.chance(0.2) {
            body["sortBy"] = json!(self.pick(ATTRS));
        }
        body
    }

    fn query(&mut self) -> String {
        let mut q: Vec<String> = Vec::new();
        if self.chance(0.5) {
            let f = self.pick(FILTERS);
            let f = self.mutate(f);
            q.push(format!("filter={}", enc(&f)));
        }
        if self.chance(0.3) {
            let n = self.rng.random_range(1..4);
            let list: Vec<String> = (0..n)
                .map(|_| {
                    let a = self.pick(ATTRS);
                    if self.chance(0.3) {
                        self.mutate(a)
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let key = if self.chance(0.5) {
                "attributes"
            } else {
                "excludedAttributes"
            };
            q.push(format!("{key}={}", enc(&list.join(","))));
        }
        if self.chance(0.2) {
            let v = self.pick(&["1", "0", "-1", "2", "99999999999999999999", "x", ""]);
            q.push(format!("startIndex={v}"));
        }
        if self.chance(0.2) {
            let v = self.pick(&["0", "1", "-3", "1000000", "x"]);
            q.push(format!("count={v}"));
        }
        if self.chance(0.15) {
            let a = self.pick(ATTRS);
            q.push(format!("sortBy={}", enc(a)));
            q.push(format!(
                "sortOrder={}",
                self.pick(&["ascending", "descending", "sideways"])
            ));
        }
        if self.chance(0.1) {
            q.push("aadOptscim062020".into());
        }
        q.join("&")
    }

    /// One request: method, path and query, body bytes, content type, extra headers.
    fn request(&mut self) -> (String, String, Option<Vec<u8>>, Option<&'static str>) {
        let users = self.chance(0.5);
        let coll = if users { "/Users" } else { "/Groups" };
        let (method, path, body): (&str, String, Option<Value>) = match self.rng.random_range(0..14)
        {
            0 | 1 => ("GET", coll.to_string(), None),
            2 => ("GET", format!("{coll}/{}", enc(&self.id(users))), None),
            3 | 4 => ("POST", coll.to_string(), Some(self.resource(users))),
            5 => (
                "PUT",
                format!("{coll}/{}", enc(&self.id(users))),
                Some(self.resource(users)),
            ),
            6..=8 => (
                "PATCH",
                format!("{coll}/{}", enc(&self.id(users))),
                Some(self.patch()),
            ),
            9 => (
                "POST",
                self.pick(&["/Users/.search", "/Groups/.search", "/.search"])
                    .to_string(),
                Some(self.search()),
            ),
            10 => ("DELETE", format!("{coll}/{}", enc(&self.id(users))), None),
            11 => {
                let p = self.pick(&[
                    "/ServiceProviderConfig",
                    "/ResourceTypes",
                    "/ResourceTypes/User",
                    "/ResourceTypes/x",
                    "/Schemas",
                    "/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group",
                    "/Schemas/urn:nope",
                    "/Bulk",
                    "/Me",
                    "/Users/",
                    "/Groups/x/y",
                    "/nothing",
                ]);
                ("GET", p.to_string(), None)
            }
            12 => {
                let m = self.pick(&["OPTIONS", "HEAD", "TRACE", "FOO", "PUT", "POST", "DELETE"]);
                let p = format!("/{}", enc(&self.string()));
                (m, p, Some(self.json(0)))
            }
            _ => {
                // A raw id, percent sequences and all, straight into the path.
                let raw =
                    self.pick(&["%ZZ", "%C3%28", "%00", "..%2F..", "a%2Fb", "%E2%80%AE", "%"]);
                ("GET", format!("{coll}/{raw}"), None)
            }
        };
        let q = self.query();
        let uri = if q.is_empty() || method != "GET" && self.chance(0.7) {
            path
        } else {
            format!("{path}?{q}")
        };
        let bytes = body.map(|b| {
            let mut bytes = serde_json::to_vec(&b).unwrap_or_default();
            if self.chance(0.08) && !bytes.is_empty() {
                // Broken JSON: a byte flipped or the tail cut.
                let at = self.rng.random_range(0..bytes.len());
                if self.chance(0.5) {
                    bytes[at] = self.rng.random();
                } else {
                    bytes.truncate(at);
                }
            }
            bytes
        });
        let content_type = if self.chance(0.9) {
            Some(SCIM_CONTENT_TYPE)
        } else {
            *[Some("application/json"), Some("text/plain"), None]
                .choose(&mut self.rng)
                .unwrap_or(&None)
        };
        (method.to_string(), uri, bytes, content_type)
    }
}

/// What is wrong with an answer, if anything. `/Bulk` and `/Me` answer 501, as RFC 7644
/// §3.12 prescribes for an unsupported operation (and ServiceProviderConfig says so).
fn verdict(
    method: &str,
    uri: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<String> {
    let unsupported = ["/Bulk", "/Me"].iter().any(|p| {
        uri == *p || uri.starts_with(&format!("{p}?")) || uri.starts_with(&format!("{p}/"))
    });
    if status >= 500 && !(status == 501 && unsupported) {
        return Some(format!("status {status}"));
    }
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status >= 400 {
        if !content_type.is_some_and(|c| c.starts_with(SCIM_CONTENT_TYPE)) {
            return Some(format!("{status} with content type {content_type:?}"));
        }
        // HTTP: an answer to HEAD has no body (the headers are those of the GET).
        if method == "HEAD" {
            return None;
        }
        if doc["schemas"][0] != ERROR_SCHEMA || doc["status"] != json!(status.to_string()) {
            return Some(format!("{status} without the SCIM error body"));
        }
        return None;
    }
    let resources: Vec<&Value> = match doc.get("Resources").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![&doc],
    };
    for r in resources {
        let Some(m) = r.as_object() else { continue };
        let Some(list) = m.get("schemas").and_then(Value::as_array) else {
            continue;
        };
        let kind = if list.contains(&json!(USER_SCHEMA)) {
            ResourceKind::User
        } else if list.contains(&json!(GROUP_SCHEMA)) {
            ResourceKind::Group
        } else {
            continue;
        };
        let junk = kube_scim::scim::validate::undeclared(m, kind);
        if !junk.is_empty() {
            return Some(format!("a {} shows undeclared {junk:?}", kind.name()));
        }
        if let Some(s) = list.iter().find(|s| {
            !s.as_str()
                .is_some_and(|s| schema::is_served_schema(kind, s))
        }) {
            return Some(format!("a {} lists the schema {s}", kind.name()));
        }
    }
    None
}

#[tokio::test]
async fn fuzzed_requests_never_get_a_500_or_a_non_scim_error() {
    let held = scim().await;
    let op = operator().await;
    let cases: usize = std::env::var("KUBE_SCIM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seed: u64 = std::env::var("KUBE_SCIM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    // The same extension attributes as the shared operator serves (once per process).
    let _ = kube_scim::scim::extensions::install(&[
        format!("{CUSTOM_EXTENSION}:costCode"),
        format!("{CUSTOM_EXTENSION}:badge=integer"),
    ]);

    // The router in process, with a real store and token store on the API server (the
    // shared operator's namespace: its tokens and name claims).
    let client = admin_client().await;
    let shutdown = CancellationToken::new();
    let store = kube_scim::store::Store::start(client.clone(), &op.namespace, shutdown.clone());
    let tokens =
        kube_scim::auth::TokenStore::start(client.clone(), &op.namespace, shutdown.clone());
    store.wait_synced().await;
    tokens.wait_synced().await;
    let app = router(
        AppState {
            store,
            configured_base_url: None,
            max_results: 100,
            max_body_bytes: 1 << 20,
            request_deadline: kube_scim::scim::server::DEFAULT_REQUEST_DEADLINE,
        },
        tokens,
        kube_scim::telemetry::Metrics::new(),
        None,
    );

    let mut fz = Fuzz {
        rng: StdRng::seed_from_u64(seed),
        users: Vec::new(),
        groups: Vec::new(),
    };
    // A few real users and groups for the requests to name.
    for users in [true, true, true, false, false] {
        let coll = if users { "Users" } else { "Groups" };
        let body = if users {
            json!({"schemas": [USER_SCHEMA], "userName": format!("{}@fuzz.example", unique("seed"))})
        } else {
            json!({"schemas": [GROUP_SCHEMA], "displayName": unique("Fuzz Seed")})
        };
        let r = held.post(&format!("/{coll}"), &body).await;
        r.created();
        let id = r.id();
        if users {
            fz.users.push(id);
        } else {
            fz.groups.push(id);
        }
    }

    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut skipped = 0;
    for case in 0..cases {
        let (method, uri, body, content_type) = fz.request();
        let mut req = Request::builder()
            .method(method.as_str())
            .uri(format!("/scim/v2{uri}"))
            .header("host", "fuzz.example");
        if fz.chance(0.97) {
            req = req.header("authorization", format!("Bearer {}", op.token));
        } else if fz.chance(0.5) {
            req = req.header("authorization", "Bearer nope");
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if fz.chance(0.05) {
            req = req.header("if-match", fz.pick(&["*", "W/\"1\"", "\"x\"", "", "é"]));
        }
        let Ok(req) = req.body(Body::from(body.clone().unwrap_or_default())) else {
            // Not a request an HTTP client could send (an invalid URI).
            skipped += 1;
            continue;
        };
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        if let Some(why) = verdict(&method, &uri, status, ct.as_deref(), &bytes) {
            let body_text = String::from_utf8_lossy(body.as_deref().unwrap_or_default());
            let shown: String = body_text.chars().take(300).collect();
            failures.push(format!(
                "case {case}: {why}\n  {method} {uri}\n  body {shown}\n  answer {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ));
        }
        // Created resources join the pool (and are cleaned up below).
        if status == 201 {
            if let (Some(loc), Ok(doc)) = (location, serde_json::from_slice::<Value>(&bytes)) {
                if let Some(id) = doc["id"].as_str() {
                    if loc.contains("/Users/") {
                        fz.users.push(id.to_string());
                    } else {
                        fz.groups.push(id.to_string());
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "fuzz: {cases} cases (seed {seed}, {skipped} not sendable) in {elapsed:?}; statuses {statuses:?}; {} failures",
        failures.len()
    );

    shutdown.cancel();
    let users: Api<ScimUser> = Api::all(client.clone());
    let groups: Api<ScimGroup> = Api::all(client);
    for id in &fz.users {
        let _ = users.delete(id, &DeleteParams::default()).await;
    }
    for id in &fz.groups {
        let _ = groups.delete(id, &DeleteParams::default()).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} fuzzed requests got a bad answer (seed {seed}):\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        statuses.keys().any(|s| *s < 300) && statuses.keys().any(|s| *s >= 400),
        "the fuzz reached both successes and refusals: {statuses:?}"
    );
}
