//! Building and signing the callout's answer: a user JWT wrapped in an
//! `authorization_response` (protocol notes §3).
//!
//! Owns who signs what: in config mode the `auth_callout.issuer` key signs both the user JWT
//! (`aud` = target account name, no `issuer_account`) and the response; in operator mode the
//! target account key or one of its signing keys signs the user JWT (`issuer_account` = the
//! account key when a signing key is used) and the callout account key (or its signing key)
//! signs the response. Pure: time is an argument. Must never log keys or JWTs.

use std::fmt;

use nkeys::{KeyPair, KeyPairType};

use crate::authz::Grant;
use crate::natsjwt::{
    self, AuthorizationRequest, AuthorizationResponse, Claims, FastSigner, JwtError, JwtSigner,
    User,
};

/// Where admitted users are placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Config mode: the target account's **name** (user JWT `aud`).
    Config { account: String },
    /// Operator mode: the target account's public key (`A…`).
    Operator { account: String },
}

/// Why the signing set-up is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerError {
    /// A seed is not a valid account seed (`SA…`).
    Seed,
    /// Operator mode: the target account is not a valid `A…` key.
    Account,
    /// Config mode: the response must be signed by the issuer itself.
    ConfigResponseSigner,
    /// Config mode: empty account name.
    AccountName,
}

impl SignerError {
    pub fn code(&self) -> &'static str {
        match self {
            SignerError::Seed => "signer_seed",
            SignerError::Account => "signer_account",
            SignerError::ConfigResponseSigner => "signer_config_response",
            SignerError::AccountName => "signer_account_name",
        }
    }
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for SignerError {}

fn account_key(seed: &str) -> Result<KeyPair, SignerError> {
    let kp = KeyPair::from_seed(seed.trim()).map_err(|_| SignerError::Seed)?;
    if kp.key_pair_type() != KeyPairType::Account {
        return Err(SignerError::Seed);
    }
    Ok(kp)
}

/// The keys that sign user JWTs and responses, and where users go.
pub struct Signers {
    placement: Placement,
    user_signer: FastSigner,
    response_signer: FastSigner,
    issuer_account: String,
}

impl fmt::Debug for Signers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signers")
            .field("placement", &self.placement)
            .field("user_signer", &self.user_signer.public())
            .field("response_signer", &self.response_signer.public())
            .finish()
    }
}

impl Signers {
    /// `user_seed`: config mode the `auth_callout.issuer` seed; operator mode the target
    /// account seed or one of its signing-key seeds. `response_seed`: operator mode the callout
    /// account seed or one of its signing-key seeds (`None` = `user_seed`, right when the
    /// callout account is also the target); config mode must be `None` or the issuer seed.
    pub fn new(
        placement: Placement,
        user_seed: &str,
        response_seed: Option<&str>,
    ) -> Result<Self, SignerError> {
        let user_signer = account_key(user_seed)?;
        let response_signer = match response_seed {
            Some(s) => account_key(s)?,
            None => account_key(user_seed)?,
        };
        let issuer_account = match &placement {
            Placement::Config { account } => {
                if account.is_empty() {
                    return Err(SignerError::AccountName);
                }
                if response_signer.public_key() != user_signer.public_key() {
                    return Err(SignerError::ConfigResponseSigner);
                }
                String::new()
            }
            Placement::Operator { account } => {
                if !natsjwt::is_public_key(account, KeyPairType::Account) {
                    return Err(SignerError::Account);
                }
                if user_signer.public_key() == *account {
                    String::new()
                } else {
                    account.clone()
                }
            }
        };
        let fast = |kp: &KeyPair| FastSigner::new(kp).map_err(|_| SignerError::Seed);
        Ok(Signers {
            placement,
            user_signer: fast(&user_signer)?,
            response_signer: fast(&response_signer)?,
            issuer_account,
        })
    }

    /// The public key that signs responses (the config-mode issuer, or the callout account
    /// key / signing key).
    pub fn response_signer(&self) -> String {
        self.response_signer.public()
    }

    /// The user JWT for an admitted client (the grant moves into it: nothing is copied).
    pub fn user_jwt(
        &self,
        req: &Claims<AuthorizationRequest>,
        grant: Grant,
        now: u64,
    ) -> Result<String, JwtError> {
        let mut user = User::with_permissions(grant.permissions);
        user.tags = grant.tags;
        user.issuer_account = self.issuer_account.clone();
        let mut c = Claims::new(req.nats.user_nkey.clone(), now, user);
        c.name = grant.name;
        c.exp = grant.expires_at.unwrap_or(0);
        c.aud = match &self.placement {
            Placement::Config { account } | Placement::Operator { account } => account.clone(),
        };
        natsjwt::encode(&mut c, &self.user_signer)
    }

    fn response(
        &self,
        req: &Claims<AuthorizationRequest>,
        body: AuthorizationResponse,
        now: u64,
    ) -> Result<String, JwtError> {
        let mut c = Claims::new(req.nats.user_nkey.clone(), now, body);
        c.aud = req.nats.server_id.id.clone();
        natsjwt::encode(&mut c, &self.response_signer)
    }

    /// A signed response admitting the client with `grant`.
    pub fn allow(
        &self,
        req: &Claims<AuthorizationRequest>,
        grant: Grant,
        now: u64,
    ) -> Result<String, JwtError> {
        let jwt = self.user_jwt(req, grant, now)?;
        self.response(
            req,
            AuthorizationResponse {
                jwt,
                ..Default::default()
            },
            now,
        )
    }

    /// A signed response refusing the client with reason `code` (server log/events only).
    pub fn deny(
        &self,
        req: &Claims<AuthorizationRequest>,
        code: &str,
        now: u64,
    ) -> Result<String, JwtError> {
        self.response(
            req,
            AuthorizationResponse {
                error: code.to_string(),
                ..Default::default()
            },
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::request::tests::{request_claims, NOW};
    use crate::permissions::{Permissions, SubjectRules};
    use data_encoding::BASE64URL_NOPAD;

    fn grant() -> Grant {
        let rules = SubjectRules {
            allow: vec!["app.>".into()],
            deny: vec![],
        };
        Grant {
            name: "app/worker".into(),
            permissions: Permissions {
                publish: rules.clone(),
                subscribe: rules,
                responses: None,
            },
            expires_at: Some(NOW + 600),
            tags: vec!["k8s-namespace:app".into()],
            identity: Default::default(),
        }
    }

    fn payload_json(token: &str) -> String {
        String::from_utf8(
            BASE64URL_NOPAD
                .decode(token.split('.').nth(1).unwrap().as_bytes())
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn config_mode_response_exact_shape() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let req = request_claims(&server, &issuer.public_key());
        let s = Signers::new(
            Placement::Config {
                account: "APP".into(),
            },
            &issuer.seed().unwrap(),
            None,
        )
        .unwrap();
        let resp = s.allow(&req, grant(), NOW).unwrap();
        let r: Claims<AuthorizationResponse> = natsjwt::decode_at(&resp, NOW).unwrap();
        assert_eq!(
            payload_json(&resp),
            format!(
                r#"{{"aud":"{}","jti":"{}","iat":{NOW},"iss":"{}","sub":"{}","nats":{{"jwt":"{}","type":"authorization_response","version":2}}}}"#,
                server.public_key(),
                r.jti,
                issuer.public_key(),
                req.nats.user_nkey,
                r.nats.jwt
            )
        );
        let u: Claims<User> = natsjwt::decode_at(&r.nats.jwt, NOW).unwrap();
        assert_eq!(
            payload_json(&r.nats.jwt),
            format!(
                r#"{{"aud":"APP","exp":{},"jti":"{}","iat":{NOW},"iss":"{}","name":"app/worker","sub":"{}","nats":{{"pub":{{"allow":["app.>"]}},"sub":{{"allow":["app.>"]}},"subs":-1,"data":-1,"payload":-1,"tags":["k8s-namespace:app"],"type":"user","version":2}}}}"#,
                NOW + 600,
                u.jti,
                issuer.public_key(),
                req.nats.user_nkey
            )
        );
    }

    #[test]
    fn deny_carries_only_the_reason() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let req = request_claims(&server, &issuer.public_key());
        let s = Signers::new(
            Placement::Config {
                account: "APP".into(),
            },
            &issuer.seed().unwrap(),
            None,
        )
        .unwrap();
        let resp = s.deny(&req, "test_denied", NOW).unwrap();
        let r: Claims<AuthorizationResponse> = natsjwt::decode_at(&resp, NOW).unwrap();
        assert_eq!(r.nats.error, "test_denied");
        assert!(r.nats.jwt.is_empty());
        assert_eq!(r.sub, req.nats.user_nkey);
        assert_eq!(r.aud, server.public_key());
    }

    #[test]
    fn operator_mode_signing_key_sets_issuer_account() {
        let target = KeyPair::new_account();
        let target_sk = KeyPair::new_account();
        let callout = KeyPair::new_account();
        let server = KeyPair::new_server();
        let req = request_claims(&server, &callout.public_key());
        let placement = Placement::Operator {
            account: target.public_key(),
        };
        // Signing key: issuer_account = target; response by the callout account.
        let s = Signers::new(
            placement.clone(),
            &target_sk.seed().unwrap(),
            Some(&callout.seed().unwrap()),
        )
        .unwrap();
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(&s.allow(&req, grant(), NOW).unwrap(), NOW).unwrap();
        assert_eq!(r.iss, callout.public_key());
        assert!(r.nats.issuer_account.is_empty());
        let u: Claims<User> = natsjwt::decode_at(&r.nats.jwt, NOW).unwrap();
        assert_eq!(u.iss, target_sk.public_key());
        assert_eq!(u.nats.issuer_account, target.public_key());
        // Account key itself: no issuer_account.
        let s = Signers::new(
            placement,
            &target.seed().unwrap(),
            Some(&callout.seed().unwrap()),
        )
        .unwrap();
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(&s.allow(&req, grant(), NOW).unwrap(), NOW).unwrap();
        let u: Claims<User> = natsjwt::decode_at(&r.nats.jwt, NOW).unwrap();
        assert_eq!(u.iss, target.public_key());
        assert!(u.nats.issuer_account.is_empty());
    }

    #[test]
    fn bad_signer_setups_are_refused() {
        let a = KeyPair::new_account();
        let b = KeyPair::new_account();
        let cfg = Placement::Config {
            account: "APP".into(),
        };
        assert_eq!(
            Signers::new(cfg.clone(), &a.seed().unwrap(), Some(&b.seed().unwrap())).unwrap_err(),
            SignerError::ConfigResponseSigner
        );
        assert_eq!(
            Signers::new(cfg, &KeyPair::new_user().seed().unwrap(), None).unwrap_err(),
            SignerError::Seed
        );
        assert_eq!(
            Signers::new(
                Placement::Operator {
                    account: "APP".into()
                },
                &a.seed().unwrap(),
                None
            )
            .unwrap_err(),
            SignerError::Account
        );
    }
}
