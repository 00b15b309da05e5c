//! The null responder: the smallest auth callout responder that can exist, the floor any
//! callout can reach on a given nats-server. Used by `scripts/bench` (run as a child process so
//! its CPU time can be read from `/proc`).
//!
//! It answers every request with an allow of a fixed shape (publish/subscribe `bench.>`),
//! signed by the issuer key. It validates nothing: it does not verify the request signature,
//! does not look at the token and checks no expiry. With an xkey it opens the sealed request
//! and seals the response, because the server requires that. It must never be used outside
//! benchmarks.
//!
//! ```text
//! null_responder --url nats://127.0.0.1:PORT --user auth --password-file F \
//!                --issuer-seed-file F --account APP [--xkey-seed-file F] [--workers 4]
//! ```
//! Prints `ready` on stdout once subscribed, then serves until stdin closes or it is killed.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use nats_k8s_callout::callout::{XKeyBox, AUTH_SUBJECT, XKEY_HEADER};
use nats_k8s_callout::nats::{Auth, Connection, Message, Options};
use nats_k8s_callout::natsjwt::{self, AuthorizationResponse, Claims, FastSigner, User};
use nats_k8s_callout::permissions::{Permissions, SubjectRules};
use nats_k8s_callout::secret::Secret;
use nkeys::KeyPair;
use serde::Deserialize;

/// Just the two request fields an allow needs; everything else is ignored.
#[derive(Deserialize)]
struct Req {
    nats: ReqNats,
}
#[derive(Deserialize)]
struct ReqNats {
    server_id: ReqServer,
    user_nkey: String,
}
#[derive(Deserialize)]
struct ReqServer {
    id: String,
}

struct Responder {
    issuer: FastSigner,
    account: String,
    xkey: Option<XKeyBox>,
    user: User,
}

impl Responder {
    fn answer(&self, msg: &Message) -> Option<Vec<u8>> {
        let header = msg.headers.as_ref().and_then(|h| h.get(XKEY_HEADER));
        let opened;
        let token: &[u8] = match (&self.xkey, header) {
            (Some(k), Some(server)) => {
                opened = k.open(&msg.payload, server).ok()?;
                &opened
            }
            _ => &msg.payload,
        };
        let payload = token.split(|b| *b == b'.').nth(1)?;
        let json = data_encoding::BASE64URL_NOPAD.decode(payload).ok()?;
        let req: Req = serde_json::from_slice(&json).ok()?;
        let now = nats_k8s_callout::clock::unix_now();

        let mut user = Claims::new(req.nats.user_nkey.clone(), now, self.user.clone());
        user.aud = self.account.clone();
        user.name = "null".into();
        let jwt = natsjwt::encode(&mut user, &self.issuer).ok()?;
        let mut resp = Claims::new(
            req.nats.user_nkey,
            now,
            AuthorizationResponse {
                jwt,
                ..Default::default()
            },
        );
        resp.aud = req.nats.server_id.id;
        let signed = natsjwt::encode(&mut resp, &self.issuer).ok()?;
        match (&self.xkey, header) {
            (Some(k), Some(server)) => k.seal(signed.as_bytes(), server).ok(),
            _ => Some(signed.into_bytes()),
        }
    }
}

fn read_secret(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .trim()
        .to_string()
}

fn main() {
    let mut url = String::new();
    let mut user = "auth".to_string();
    let mut password = String::new();
    let mut issuer_seed = String::new();
    let mut account = "APP".to_string();
    let mut xkey_seed = None;
    let mut workers = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = v(),
            "--user" => user = v(),
            "--password-file" => password = read_secret(&v()),
            "--issuer-seed-file" => issuer_seed = read_secret(&v()),
            "--account" => account = v(),
            "--xkey-seed-file" => xkey_seed = Some(read_secret(&v())),
            "--workers" => workers = v().parse().expect("--workers N"),
            _ => panic!("unknown argument {a}"),
        }
    }
    let issuer = KeyPair::from_seed(&issuer_seed).expect("issuer seed (SA…)");
    let issuer = FastSigner::new(&issuer).expect("issuer seed (SA…)");
    let xkey = xkey_seed.map(|s| XKeyBox::from_seed(&s).expect("xkey seed (SX…)"));
    let rules = SubjectRules {
        allow: vec!["bench.>".into()],
        deny: Vec::new(),
    };
    let user_body = User::with_permissions(Permissions {
        publish: rules.clone(),
        subscribe: rules,
        responses: None,
    });
    let responder = Arc::new(Responder {
        issuer,
        account,
        xkey,
        user: user_body,
    });

    let mut opts = Options::new(vec![url]);
    opts.auth = Auth::UserPassword {
        user,
        password: Secret::new(password),
    };
    opts.name = "null-responder".into();
    let conn = Connection::connect(opts).expect("connect to nats-server");
    let sub = conn
        .subscribe(AUTH_SUBJECT, Some("null"), 4096)
        .expect("subscribe");
    conn.flush(Duration::from_secs(5)).expect("flush");

    for _ in 0..workers.max(1) {
        let rx = sub.receiver().clone();
        let conn = conn.clone();
        let r = responder.clone();
        std::thread::spawn(move || {
            while let Ok(msg) = rx.recv() {
                let (Some(reply), Some(out)) = (msg.reply.as_deref(), r.answer(&msg)) else {
                    continue;
                };
                let _ = conn.publish(reply, None, &out);
            }
        });
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    // Serve until the parent closes our stdin (or kills us).
    let mut line = String::new();
    while matches!(std::io::stdin().lock().read_line(&mut line), Ok(n) if n > 0) {
        line.clear();
    }
    conn.close();
}
