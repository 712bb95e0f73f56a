//! The SASL exchanges of one connection, free of I/O: PLAIN (RFC 4616) and
//! SCRAM-SHA-256/512 (RFC 5802, RFC 7677) on the server side. The caller
//! feeds each client token to [`Exchange::step`] and sends back what it
//! says; the password check of PLAIN is the only slow part and runs through
//! [`Accounts::check_plain`].
//!
//! SCRAM without channel binding (`n,,` or `y,,`), as Kafka; extensions
//! after the nonce (Kafka's `tokenauth`) are ignored.

use super::auth::{Account, Accounts, Mechanism};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use sluice_config::{ScramCredential, ScramHash};
use std::sync::Arc;

/// What a client token led to.
#[derive(Debug)]
pub(super) enum Step {
    /// Send this challenge; more tokens follow.
    Challenge(Vec<u8>),
    /// Authenticated as this account; send the final token.
    Done(Arc<Account>, Vec<u8>),
    /// Refused: the message for the client (SASL_AUTHENTICATION_FAILED).
    Failed(String),
}

/// Where one connection's exchange stands.
#[derive(Debug)]
pub(super) enum Exchange {
    /// PLAIN: one token.
    Plain,
    /// SCRAM, before the client-first message.
    ScramFirst(ScramHash),
    /// SCRAM, after the server-first message.
    ScramFinal(Box<ScramState>),
    /// Over (done or failed): any more tokens fail.
    Over,
}

/// What SCRAM remembers between its two rounds.
#[derive(Debug)]
pub(super) struct ScramState {
    account: Arc<Account>,
    credential: ScramCredential,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    /// The client's nonce followed by the server's.
    nonce: String,
    client_nonce: String,
}

impl Exchange {
    /// A fresh exchange of `mechanism`.
    pub(super) fn new(mechanism: Mechanism) -> Exchange {
        match mechanism {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Scram(hash) => Exchange::ScramFirst(hash),
        }
    }

    /// Takes one client token.
    pub(super) async fn step(&mut self, accounts: &Accounts, token: &[u8]) -> Step {
        match std::mem::replace(self, Exchange::Over) {
            Exchange::Plain => plain(accounts, token).await,
            Exchange::ScramFirst(hash) => match scram_first(accounts, hash, token) {
                Ok(state) => {
                    let challenge = state.server_first.clone().into_bytes();
                    *self = Exchange::ScramFinal(Box::new(state));
                    Step::Challenge(challenge)
                }
                Err(step) => step,
            },
            Exchange::ScramFinal(state) => scram_final(&state, token),
            Exchange::Over => Step::Failed("the SASL exchange is already over".into()),
        }
    }
}

const PLAIN_FAILED: &str = "Authentication failed: Invalid username or password";

async fn plain(accounts: &Accounts, token: &[u8]) -> Step {
    let mut parts = token.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("PLAIN message is not authzid NUL user NUL password".into());
    };
    let (Ok(authzid), Ok(user), Ok(password)) =
        (std::str::from_utf8(authzid), std::str::from_utf8(user), std::str::from_utf8(password))
    else {
        return Step::Failed("PLAIN message is not UTF-8".into());
    };
    if !authzid.is_empty() && authzid != user {
        return Step::Failed(
            "Authentication failed: client requested an authorization id that is different from username"
                .into(),
        );
    }
    match accounts.check_plain(user, password).await {
        Some(account) => Step::Done(account, Vec::new()),
        None => Step::Failed(PLAIN_FAILED.into()),
    }
}

fn scram_failed(hash: ScramHash) -> Step {
    Step::Failed(format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
        hash.mechanism()
    ))
}

fn malformed(what: &str) -> Step {
    Step::Failed(format!("SCRAM {what} message is malformed"))
}

/// `saslname` unescaping: `=2C` is `,`, `=3D` is `=`.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn scram_first(accounts: &Accounts, hash: ScramHash, token: &[u8]) -> Result<ScramState, Step> {
    let text = std::str::from_utf8(token).map_err(|_| malformed("client-first"))?;
    // gs2-header: cbind-flag "," [authzid] ","
    let mut it = text.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(malformed("client-first"));
    };
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(Step::Failed("SCRAM channel binding is not supported; use n,,".into()))
        }
        _ => return Err(malformed("client-first")),
    }
    let gs2_header = format!("{flag},{authzid},");
    let mut user = None;
    let mut client_nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            user = unescape(v);
        } else if let Some(v) = attr.strip_prefix("r=") {
            client_nonce = Some(v);
        } else if attr.starts_with("m=") {
            return Err(Step::Failed("SCRAM mandatory extensions are not supported".into()));
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce.filter(|n| !n.is_empty())) else {
        return Err(malformed("client-first"));
    };
    if let Some(id) = authzid.strip_prefix("a=") {
        if unescape(id).as_deref() != Some(user.as_str()) {
            return Err(Step::Failed(
                "Authentication failed: client requested an authorization id that is different from username"
                    .into(),
            ));
        }
    }
    let Some((account, credential)) = accounts.scram(&user, hash) else { return Err(scram_failed(hash)) };
    let nonce = format!("{client_nonce}{}", server_nonce());
    let server_first = format!("r={nonce},s={},i={}", B64.encode(&credential.salt), credential.iterations);
    Ok(ScramState {
        account,
        credential,
        gs2_header,
        client_first_bare: bare.to_owned(),
        server_first,
        nonce,
        client_nonce: client_nonce.to_owned(),
    })
}

fn scram_final(state: &ScramState, token: &[u8]) -> Step {
    let hash = state.credential.hash;
    let Ok(text) = std::str::from_utf8(token) else { return malformed("client-final") };
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else { return malformed("client-final") };
    let mut channel = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        if let Some(v) = attr.strip_prefix("c=") {
            channel = Some(v);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v);
        }
    }
    if channel != Some(B64.encode(&state.gs2_header).as_str()) {
        return Step::Failed("SCRAM channel binding does not match the client-first message".into());
    }
    // librdkafka before 2.6.1 sends its own nonce again in front of the
    // server's (librdkafka#4895); Kafka up to 3.9 accepts that, so sluice
    // does too. Either way the whole server nonce must come back.
    let legacy = format!("{}{}", state.client_nonce, state.nonce);
    if nonce != Some(state.nonce.as_str()) && nonce != Some(legacy.as_str()) {
        return Step::Failed("SCRAM nonce does not match the server's".into());
    }
    let Ok(proof) = B64.decode(proof) else { return malformed("client-final") };
    let auth_message = format!("{},{},{without_proof}", state.client_first_bare, state.server_first);
    let client_signature = hmac(hash, &state.credential.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return scram_failed(hash);
    }
    let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
    if !constant_time_eq(&digest(hash, &client_key), &state.credential.stored_key) {
        return scram_failed(hash);
    }
    let server_signature = hmac(hash, &state.credential.server_key, auth_message.as_bytes());
    Step::Done(state.account.clone(), format!("v={}", B64.encode(server_signature)).into_bytes())
}

fn server_nonce() -> String {
    use password_hash::rand_core::RngCore as _;
    let mut bytes = [0u8; 24];
    password_hash::rand_core::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha512 => {
            let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        ScramHash::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// SaltedPassword = Hi(password, salt, iterations), i.e. PBKDF2-HMAC.
fn salted_password(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; hash.output_len()];
    let pw = password.as_bytes();
    match hash {
        ScramHash::Sha256 => pbkdf2::pbkdf2::<Hmac<Sha256>>(pw, salt, iterations, &mut out),
        ScramHash::Sha512 => pbkdf2::pbkdf2::<Hmac<Sha512>>(pw, salt, iterations, &mut out),
    }
    .expect("HMAC takes any key length");
    out
}

/// Derives the stored credentials of `password` (what `sluice
/// scram-credential` prints and the server keeps).
pub fn derive_credential(hash: ScramHash, password: &str, salt: Vec<u8>, iterations: u32) -> ScramCredential {
    let salted = salted_password(hash, password, &salt, iterations);
    let client_key = hmac(hash, &salted, b"Client Key");
    ScramCredential {
        hash,
        iterations,
        stored_key: digest(hash, &client_key),
        server_key: hmac(hash, &salted, b"Server Key"),
        salt,
    }
}

/// A fresh random salt for [`derive_credential`].
pub fn random_salt() -> Vec<u8> {
    use password_hash::rand_core::RngCore as _;
    let mut salt = vec![0u8; 16];
    password_hash::rand_core::OsRng.fill_bytes(&mut salt);
    salt
}

/// Whether `password` matches SCRAM credentials (PLAIN over a user that
/// has only SCRAM credentials): costs one PBKDF2.
pub(super) fn scram_matches(credential: &ScramCredential, password: &str) -> bool {
    let c = derive_credential(credential.hash, password, credential.salt.clone(), credential.iterations);
    constant_time_eq(&c.stored_key, &credential.stored_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: user "user", password "pencil".
    #[test]
    fn rfc7677_example_derives_and_verifies() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
        let cred = derive_credential(ScramHash::Sha256, "pencil", salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let state = ScramState {
            account: Arc::new(Account::for_tests("user")),
            credential: cred.clone(),
            gs2_header: "n,,".into(),
            client_first_bare: client_first_bare.into(),
            server_first: server_first.into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            client_nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        let good = format!("{without_proof},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let Step::Done(_, last) = scram_final(&state, good.as_bytes()) else { panic!("proof accepted") };
        assert_eq!(last, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let bad = format!("{without_proof},p=AHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert!(
            matches!(scram_final(&state, bad.as_bytes()), Step::Failed(m) if m.contains("SCRAM-SHA-256"))
        );
        let wrong_nonce = "c=biws,r=rOprNGfwEbeRWgbNEkqOx,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert!(
            matches!(scram_final(&state, wrong_nonce.as_bytes()), Step::Failed(m) if m.contains("nonce"))
        );
        assert!(scram_matches(&cred, "pencil"));
        assert!(!scram_matches(&cred, "pencil2"));
    }

    #[test]
    fn sasl_names_unescape() {
        assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape("plain").as_deref(), Some("plain"));
        assert_eq!(unescape("bad=2"), None);
        assert_eq!(unescape("bad=41"), None);
    }
}
