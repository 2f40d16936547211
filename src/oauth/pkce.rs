//! The authorization-code grant with PKCE (RFC 6749 section 4.1, RFC 7636), for native apps
//! with loopback or pasted redirects (RFC 8252): the authorization URL to send a browser to,
//! and the code read back from the redirect it ends at. The code is exchanged with
//! [`GrantRequest::AuthorizationCode`](super::GrantRequest::AuthorizationCode).

use std::collections::BTreeMap;

use base64::Engine as _;
use rand::RngCore as _;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::error::ErrorCode;

/// Random bytes in a code verifier: 64 characters once base64url-encoded (RFC 7636 4.1 asks
/// for 43 to 128 unreserved characters).
const VERIFIER_BYTES: usize = 48;
/// Random bytes in a `state`: 43 characters once base64url-encoded.
const STATE_BYTES: usize = 32;

/// Parameters of the authorization request that `extra` may not override.
const RESERVED_AUTHORIZATION_PARAMETERS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// A PKCE code verifier and its S256 challenge (RFC 7636 section 4). `Debug` never shows the
/// verifier.
pub struct Pkce {
    /// Sent with the code to the token endpoint only.
    pub verifier: SecretString,
    /// `BASE64URL(SHA256(verifier))`, sent in the authorization URL.
    pub challenge: String,
}

impl Pkce {
    /// A fresh verifier of 64 unreserved characters from the thread's CSPRNG.
    pub fn new() -> Pkce {
        let verifier = random_url_safe(VERIFIER_BYTES);
        let challenge = challenge_of(&verifier);
        Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }

    /// `S256`: the only method sent.
    pub fn method(&self) -> &'static str {
        "S256"
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"[redacted]")
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// The S256 challenge of a verifier (RFC 7636 section 4.2).
fn challenge_of(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn random_url_safe(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}

/// A fresh `state` (RFC 6749 section 10.12): 43 random URL-safe characters.
pub fn new_state() -> String {
    random_url_safe(STATE_BYTES)
}

/// The URL to send the user's browser to (RFC 6749 4.1.1, RFC 7636 4.3): the endpoint's own
/// query kept, then `response_type=code`, `client_id`, `redirect_uri`, `scope` (when any),
/// `state`, `code_challenge`, `code_challenge_method=S256`, and the `extra` parameters that do
/// not override one of those.
pub fn authorization_url(
    endpoint: &Url,
    client_id: &str,
    redirect_uri: &str,
    scopes: &[String],
    state: &str,
    pkce: &Pkce,
    extra: &BTreeMap<String, String>,
) -> Url {
    let mut url = endpoint.clone();
    url.set_fragment(None);
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("response_type", "code");
        query.append_pair("client_id", client_id);
        query.append_pair("redirect_uri", redirect_uri);
        if !scopes.is_empty() {
            query.append_pair("scope", &scopes.join(" "));
        }
        query.append_pair("state", state);
        query.append_pair("code_challenge", &pkce.challenge);
        query.append_pair("code_challenge_method", pkce.method());
        for (name, value) in extra {
            if !RESERVED_AUTHORIZATION_PARAMETERS.contains(&name.as_str()) {
                query.append_pair(name, value);
            }
        }
    }
    url
}

/// Why no code could be taken from a redirect. Messages never carry the code, the state or an
/// `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error(
        "the redirect carries no state parameter; it does not answer this authorization request"
    )]
    MissingState,
    #[error(
        "the redirect's state does not match this authorization request (a stale or forged redirect)"
    )]
    StateMismatch,
    /// The provider's `error` (RFC 6749 section 4.1.2.1), e.g. `access_denied`.
    #[error("the authorization server answered with OAuth error {0}")]
    Provider(ErrorCode),
    #[error("the redirect carries no authorization code")]
    MissingCode,
    #[error("the redirect repeats the parameter {0}")]
    Repeated(&'static str),
}

impl AuthorizationError {
    /// The user (or the server for them) refused: `access_denied`.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, AuthorizationError::Provider(code) if code.as_str() == ErrorCode::ACCESS_DENIED)
    }
}

/// Reads the redirect a browser was sent to: checks `state` first (a redirect of another
/// request is refused whatever it carries), then returns the code, or the provider's `error`
/// code (e.g. `access_denied`) as an error. Never echoes the code in an error message.
pub fn code_from_redirect(
    redirect: &Url,
    expected_state: &str,
) -> Result<SecretString, AuthorizationError> {
    let only = |name: &'static str| -> Result<Option<String>, AuthorizationError> {
        let mut values = redirect
            .query_pairs()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned());
        let first = values.next();
        if values.next().is_some() {
            return Err(AuthorizationError::Repeated(name));
        }
        Ok(first)
    };
    let state = only("state")?.ok_or(AuthorizationError::MissingState)?;
    if !constant_time_eq(state.as_bytes(), expected_state.as_bytes()) {
        return Err(AuthorizationError::StateMismatch);
    }
    if let Some(error) = only("error")? {
        return Err(AuthorizationError::Provider(ErrorCode::new(&error)));
    }
    match only("code")? {
        Some(code) if !code.is_empty() => Ok(SecretString::from(code)),
        _ => Err(AuthorizationError::MissingCode),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn verifier_and_challenge_follow_rfc_7636() {
        let pkce = Pkce::new();
        let verifier = pkce.verifier.expose_secret();
        assert!((43..=128).contains(&verifier.len()), "{}", verifier.len());
        assert!(
            verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        );
        assert_eq!(pkce.challenge, challenge_of(verifier));
        assert_ne!(Pkce::new().verifier.expose_secret(), verifier);
        // RFC 7636 appendix B.
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let debug = format!("{pkce:?}");
        assert!(!debug.contains(verifier), "{debug}");
    }

    #[test]
    fn states_are_random_and_url_safe() {
        let state = new_state();
        assert_eq!(state.len(), 43);
        assert!(
            state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        );
        assert_ne!(new_state(), state);
    }

    #[test]
    fn the_authorization_url_carries_every_parameter() {
        let endpoint = Url::parse("https://idp.test/authorize?tenant=x#frag").unwrap();
        let pkce = Pkce::new();
        let extra = BTreeMap::from([
            ("prompt".to_string(), "consent".to_string()),
            ("state".to_string(), "evil".to_string()),
            ("code_challenge_method".to_string(), "plain".to_string()),
        ]);
        let url = authorization_url(
            &endpoint,
            "my client",
            "http://127.0.0.1:4711/callback",
            &["openid".to_string(), "offline_access".to_string()],
            "st",
            &pkce,
            &extra,
        );
        assert_eq!(url.fragment(), None);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected: Vec<(String, String)> = [
            ("tenant", "x"),
            ("response_type", "code"),
            ("client_id", "my client"),
            ("redirect_uri", "http://127.0.0.1:4711/callback"),
            ("scope", "openid offline_access"),
            ("state", "st"),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("prompt", "consent"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
        assert!(!url.as_str().contains(pkce.verifier.expose_secret()));
    }

    #[test]
    fn codes_are_read_from_redirects() {
        let url = |q: &str| Url::parse(&format!("http://127.0.0.1:5000/callback?{q}")).unwrap();
        let code = code_from_redirect(&url("code=THE-CODE&state=st&iss=x"), "st").unwrap();
        assert_eq!(code.expose_secret(), "THE-CODE");
        let cases = [
            ("code=THE-CODE", AuthorizationError::MissingState),
            (
                "code=THE-CODE&state=other",
                AuthorizationError::StateMismatch,
            ),
            ("code=THE-CODE&state=s", AuthorizationError::StateMismatch),
            (
                "error=access_denied&error_description=THE-CODE&state=st",
                AuthorizationError::Provider(ErrorCode::new("access_denied")),
            ),
            (
                "error=THE-CODE%20x&state=st",
                AuthorizationError::Provider(ErrorCode::new("unrecognized_error")),
            ),
            ("state=st", AuthorizationError::MissingCode),
            ("code=&state=st", AuthorizationError::MissingCode),
            (
                "code=THE-CODE&code=other&state=st",
                AuthorizationError::Repeated("code"),
            ),
            (
                "code=THE-CODE&state=st&state=st",
                AuthorizationError::Repeated("state"),
            ),
        ];
        for (query, expected) in cases {
            let error = code_from_redirect(&url(query), "st").unwrap_err();
            assert_eq!(error, expected, "{query}");
            for text in [error.to_string(), format!("{error:?}")] {
                assert!(!text.contains("THE-CODE"), "{text}");
            }
        }
        assert!(
            code_from_redirect(&url("error=access_denied&state=st"), "st")
                .unwrap_err()
                .is_access_denied()
        );
    }
}
