//! Operator-mode ("decentralized") NATS setups for tests, the demo and benchmarks: fresh
//! operator, system account, callout account (with its `authorization` section), an app
//! account, the service user's `.creds`, a bearer deny-all sentinel, and the nats-server
//! configuration text (`resolver: MEMORY` with every account JWT preloaded).
//!
//! Every key here is a freshly generated **test key**; never use this module in the service.

use nkeys::{KeyPair, XKey};

use crate::callout::{CalloutConfig, Placement};
use crate::natsjwt::{self, Account, Claims, ExternalAuthorization, Operator, User};
use crate::secret::Secret;

/// Choices for [`OperatorSetup::generate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OperatorOptions {
    /// Give the callout account an xkey (requests are then sealed).
    pub xkey: bool,
    /// Sign with account signing keys instead of the account keys: the app account's signing
    /// key issues user JWTs (with `issuer_account`), the callout account's signing key issues
    /// the service user, the sentinel and the responses.
    pub signing_keys: bool,
}

/// A generated operator-mode world. All keys are test keys.
pub struct OperatorSetup {
    pub operator: KeyPair,
    pub system_account: KeyPair,
    pub callout_account: KeyPair,
    pub callout_signing_key: Option<KeyPair>,
    pub app_account: KeyPair,
    pub app_signing_key: Option<KeyPair>,
    pub service_user: KeyPair,
    pub xkey: Option<XKey>,
    pub operator_jwt: String,
    /// `(account public key, account JWT)` for every account.
    pub account_jwts: Vec<(String, String)>,
    /// The service user's `.creds` file text.
    pub service_creds: String,
    /// A bearer user JWT in the callout account that may do nothing (the sentinel).
    pub sentinel_jwt: String,
}

fn account_jwt(op: &KeyPair, acc: &KeyPair, name: &str, body: Account, iat: u64) -> String {
    let mut c = Claims::new(acc.public_key(), iat, body);
    c.name = name.to_string();
    natsjwt::encode(&mut c, op).expect("sign account JWT")
}

fn user_jwt(
    signer: &KeyPair,
    account: &KeyPair,
    sub: &str,
    name: &str,
    mut u: User,
    iat: u64,
) -> String {
    if signer.public_key() != account.public_key() {
        u.issuer_account = account.public_key();
    }
    let mut c = Claims::new(sub, iat, u);
    c.name = name.to_string();
    natsjwt::encode(&mut c, signer).expect("sign user JWT")
}

impl OperatorSetup {
    /// Generate a fresh operator-mode world.
    pub fn generate(opts: OperatorOptions) -> Self {
        let iat = crate::clock::unix_now();
        let operator = KeyPair::new_operator();
        let system_account = KeyPair::new_account();
        let callout_account = KeyPair::new_account();
        let app_account = KeyPair::new_account();
        let service_user = KeyPair::new_user();
        let callout_signing_key = opts.signing_keys.then(KeyPair::new_account);
        let app_signing_key = opts.signing_keys.then(KeyPair::new_account);
        let xkey = opts.xkey.then(XKey::new);

        let mut op = Claims::new(
            operator.public_key(),
            iat,
            Operator {
                system_account: system_account.public_key(),
                ..Operator::default()
            },
        );
        op.name = "TEST-OPERATOR".into();
        let operator_jwt = natsjwt::encode(&mut op, &operator).expect("sign operator JWT");

        let sys = account_jwt(&operator, &system_account, "SYS", Account::default(), iat);
        let mut callout = Account {
            authorization: Some(ExternalAuthorization {
                auth_users: vec![service_user.public_key()],
                allowed_accounts: vec![app_account.public_key()],
                xkey: xkey.as_ref().map(|x| x.public_key()).unwrap_or_default(),
            }),
            ..Account::default()
        };
        if let Some(sk) = &callout_signing_key {
            callout.signing_keys.push(sk.public_key());
        }
        let callout_jwt = account_jwt(&operator, &callout_account, "AUTH", callout, iat);
        let mut app = Account::default();
        if let Some(sk) = &app_signing_key {
            app.signing_keys.push(sk.public_key());
        }
        let app_jwt = account_jwt(&operator, &app_account, "APP", app, iat);

        let callout_signer = callout_signing_key.as_ref().unwrap_or(&callout_account);
        let service_jwt = user_jwt(
            callout_signer,
            &callout_account,
            &service_user.public_key(),
            "callout-service",
            User::default(),
            iat,
        );
        let service_creds =
            natsjwt::creds_text(&service_jwt, &service_user.seed().expect("user seed"));
        let sentinel_jwt = user_jwt(
            callout_signer,
            &callout_account,
            &KeyPair::new_user().public_key(),
            "sentinel",
            User::deny_all_bearer(),
            iat,
        );

        OperatorSetup {
            account_jwts: vec![
                (system_account.public_key(), sys),
                (callout_account.public_key(), callout_jwt),
                (app_account.public_key(), app_jwt),
            ],
            operator,
            system_account,
            callout_account,
            callout_signing_key,
            app_account,
            app_signing_key,
            service_user,
            xkey,
            operator_jwt,
            service_creds,
            sentinel_jwt,
        }
    }

    /// nats-server configuration text: operator, system account, memory resolver with every
    /// account preloaded, and `default_sentinel` (2.11.2+) so token-only clients reach the
    /// callout. `extra` is appended verbatim (e.g. `port: 4222`).
    pub fn server_config(&self, extra: &str) -> String {
        let mut s = String::with_capacity(8192);
        s.push_str(&format!("operator: {}\n", self.operator_jwt));
        s.push_str(&format!(
            "system_account: {}\n",
            self.system_account.public_key()
        ));
        s.push_str("resolver: MEMORY\nresolver_preload: {\n");
        for (k, j) in &self.account_jwts {
            s.push_str(&format!("  {k}: {j}\n"));
        }
        s.push_str("}\n");
        s.push_str(&format!("default_sentinel: {}\n", self.sentinel_jwt));
        s.push_str(extra);
        s.push('\n');
        s
    }

    /// A callout configuration that places admitted users into the app account.
    pub fn callout_config(&self) -> CalloutConfig {
        let user_signer = self.app_signing_key.as_ref().unwrap_or(&self.app_account);
        let response_signer = self
            .callout_signing_key
            .as_ref()
            .unwrap_or(&self.callout_account);
        let mut cfg = CalloutConfig::new(
            Placement::Operator {
                account: self.app_account.public_key(),
            },
            Secret::new(user_signer.seed().expect("seed")),
        );
        cfg.response_signing_seed = Some(Secret::new(response_signer.seed().expect("seed")));
        cfg.callout_account = Some(self.callout_account.public_key());
        cfg.xkey_seed = self
            .xkey
            .as_ref()
            .map(|x| Secret::new(x.seed().expect("xkey seed")));
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natsjwt::decode_at;

    #[test]
    fn generated_world_is_consistent() {
        let s = OperatorSetup::generate(OperatorOptions {
            xkey: true,
            signing_keys: true,
        });
        let now = crate::clock::unix_now();
        let op: Claims<Operator> = decode_at(&s.operator_jwt, now).unwrap();
        assert_eq!(op.iss, s.operator.public_key());
        assert_eq!(op.nats.system_account, s.system_account.public_key());
        let (_, cj) = &s.account_jwts[1];
        let callout: Claims<Account> = decode_at(cj, now).unwrap();
        let auth = callout.nats.authorization.unwrap();
        assert_eq!(auth.auth_users, vec![s.service_user.public_key()]);
        assert_eq!(auth.xkey, s.xkey.as_ref().unwrap().public_key());
        let sentinel: Claims<User> = decode_at(&s.sentinel_jwt, now).unwrap();
        assert!(sentinel.nats.bearer_token);
        assert_eq!(sentinel.nats.issuer_account, s.callout_account.public_key());
        assert!(s.service_creds.contains("BEGIN NATS USER JWT"));
        let cfg_text = s.server_config("port: 4222");
        assert!(cfg_text.contains("resolver: MEMORY"));
        assert!(cfg_text.ends_with("port: 4222\n"));
        let cfg = s.callout_config();
        assert!(crate::callout::Signers::new(
            cfg.placement.clone(),
            cfg.user_signing_seed.expose(),
            cfg.response_signing_seed.as_ref().map(|x| x.expose())
        )
        .is_ok());
    }
}
