//! Talking to OAuth 2.0 token endpoints (RFC 6749): grants, client authentication, response
//! parsing and error classification. No Kubernetes types here.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub mod budget;
pub mod device;
mod error;
pub mod jwt;
pub mod pkce;
mod response;

pub use device::{DeviceAuthorization, DeviceAuthorizationRequest, DevicePoll, device_poll};
pub use error::{
    ErrorCode, FailureKind, MAX_RETRY_AFTER, OAuthError, Presentation, parse_retry_after,
};
pub use response::{AccessGrant, Issued, MAX_REFRESH_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME};

/// Largest token endpoint response read; anything longer is refused, though the part of a 2xx
/// read up to the limit is still searched for a rotated refresh token.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default limit for one token request, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client proves its identity (RFC 6749 section 2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    None,
}

/// The client's identity at the provider.
#[derive(Clone)]
pub struct ClientCredentials {
    pub method: AuthMethod,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("method", &self.method)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The grant presented at the token endpoint.
pub enum GrantRequest<'a> {
    RefreshToken(&'a SecretString),
    ClientCredentials,
    /// RFC 8628 section 3.4: grant_type urn:ietf:params:oauth:grant-type:device_code,
    /// device_code=... (see [`device`]).
    DeviceCode(&'a SecretString),
    /// RFC 6749 4.1.3 + RFC 7636: grant_type authorization_code, code, redirect_uri,
    /// code_verifier (see [`pkce`]).
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
        code_verifier: &'a SecretString,
    },
}

/// `grant_type` of the device access token request (RFC 8628 section 3.4).
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Everything one token request needs.
pub struct TokenRequest<'a> {
    pub endpoint: &'a Url,
    pub client: &'a ClientCredentials,
    pub grant: GrantRequest<'a>,
    pub scopes: &'a [String],
    pub audience: Option<&'a str>,
    pub extra_parameters: &'a BTreeMap<String, String>,
}

/// Form parameters the operator sets itself; `extraParameters` may not override them.
const RESERVED_PARAMETERS: &[&str] = &[
    "grant_type",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
    "audience",
    "device_code",
    "code",
    "redirect_uri",
    "code_verifier",
];

/// Settings of the HTTP client used for every token request.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub allow_insecure_http: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: DEFAULT_REQUEST_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            allow_insecure_http: false,
        }
    }
}

/// A token endpoint client: one HTTP connection pool shared by every OAuthToken.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
    options: ClientOptions,
}

impl TokenClient {
    pub fn new(options: ClientOptions) -> Result<TokenClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .user_agent(concat!("oauth-token-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TokenClient { http, options })
    }

    /// The limit of one token request, connection included.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// Checks that a token endpoint URL may be used with these options.
    pub fn check_endpoint(&self, raw: &str) -> Result<Url, OAuthError> {
        let url =
            Url::parse(raw).map_err(|_| OAuthError::InvalidEndpoint("not an absolute URL"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.options.allow_insecure_http => {}
            "http" => return Err(OAuthError::InsecureEndpoint),
            _ => return Err(OAuthError::InvalidEndpoint("scheme must be https")),
        }
        if url.host().is_none() {
            return Err(OAuthError::InvalidEndpoint("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OAuthError::InvalidEndpoint(
                "credentials in the URL are not allowed; use clientSecretRef",
            ));
        }
        if url.fragment().is_some() {
            return Err(OAuthError::InvalidEndpoint(
                "fragments are not allowed (RFC 6749 section 3.2)",
            ));
        }
        Ok(url)
    }

    /// Sends one token request and classifies the answer.
    ///
    /// `Ok` whenever a 2xx answer is a complete token response (a JSON object of any
    /// Content-Type, or a form body) or a refresh token can be read from it, even one without a
    /// usable access token (see [`Issued::access`]), so that a rotated refresh token is never
    /// lost. On `Err`, [`OAuthError::presentation`] tells what became of a presented refresh
    /// token.
    pub async fn request(&self, request: &TokenRequest<'_>) -> Result<Issued, OAuthError> {
        let answer = self
            .post_form(request.endpoint, request.client, form_body(request))
            .await?;
        match answer.cut {
            None => response::classify(
                answer.status,
                answer.retry_after,
                &answer.body,
                answer.requested_at,
            ),
            Some(cut) => response::classify_cut(
                answer.status,
                answer.retry_after,
                &answer.body,
                cut,
                answer.requested_at,
            ),
        }
    }

    /// POSTs a form to an endpoint of the provider with the client's authentication and reads
    /// the answer up to the size limit. `Err` only when no answer can be classified at all: the
    /// endpoint is unusable, the request failed in transport, or a refusal declared a body over
    /// the limit.
    async fn post_form(
        &self,
        endpoint: &Url,
        client: &ClientCredentials,
        form: String,
    ) -> Result<Answer, OAuthError> {
        let endpoint = self.check_endpoint(endpoint.as_str())?;
        let mut builder = self
            .http
            .post(endpoint)
            .header(ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if client.method == AuthMethod::ClientSecretBasic {
            builder = builder.header(AUTHORIZATION, basic_authorization(client));
        }
        let requested_at = Utc::now();
        let response = builder
            .body(form)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let declared_length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let limit = self.options.max_response_bytes;
        // A refusal needs no body to be a refusal. A 2xx is read up to the limit all the same:
        // its beginning may hold a rotated refresh token.
        if !(200..300).contains(&status) && declared_length.is_some_and(|len| len > limit) {
            return Err(OAuthError::BodyTooLarge { status, limit });
        }
        let (body, cut) = self.read_limited(status, response).await;
        Ok(Answer {
            status,
            retry_after,
            body,
            cut,
            requested_at,
        })
    }

    /// Reads the body up to the size limit. What arrived is handed back also when the read
    /// fails or the limit is reached, together with the reason (an error to report if nothing
    /// can be made of the part).
    async fn read_limited(
        &self,
        status: u16,
        mut response: reqwest::Response,
    ) -> (Vec<u8>, Option<OAuthError>) {
        let limit = self.options.max_response_bytes;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(None) => return (body, None),
                Ok(Some(chunk)) => {
                    let room = limit.saturating_sub(body.len());
                    if chunk.len() > room {
                        body.extend_from_slice(chunk.get(..room).unwrap_or_default());
                        return (body, Some(OAuthError::BodyTooLarge { status, limit }));
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(e) => return (body, Some(self.transport_error(&e))),
            }
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> OAuthError {
        // Connect first: a connect timeout is both, and it still means nothing was sent.
        if error.is_connect() {
            OAuthError::Connect
        } else if error.is_timeout() {
            OAuthError::Timeout(self.options.timeout)
        } else if error.is_redirect() {
            OAuthError::Redirect {
                status: error.status().map(|s| s.as_u16()).unwrap_or(0),
            }
        } else {
            OAuthError::Transport
        }
    }
}

/// An answer of the provider, read up to the size limit.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    /// The body, or the part of it that arrived.
    body: Vec<u8>,
    /// Why the body is not whole, if it is not.
    cut: Option<OAuthError>,
    /// When the request was sent.
    requested_at: DateTime<Utc>,
}

/// The form body of a token request (RFC 6749 appendix B encoding).
fn form_body(request: &TokenRequest<'_>) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match request.grant {
        GrantRequest::RefreshToken(token) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", token.expose_secret());
        }
        GrantRequest::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
        }
        GrantRequest::DeviceCode(device_code) => {
            form.append_pair("grant_type", DEVICE_CODE_GRANT_TYPE);
            form.append_pair("device_code", device_code.expose_secret());
        }
        GrantRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            form.append_pair("grant_type", "authorization_code");
            form.append_pair("code", code.expose_secret());
            form.append_pair("redirect_uri", redirect_uri);
            form.append_pair("code_verifier", code_verifier.expose_secret());
        }
    }
    append_client_and_parameters(
        &mut form,
        request.client,
        request.scopes,
        request.audience,
        request.extra_parameters,
    );
    form.finish()
}

/// What every form sent to the provider carries after its own parameters: the client's
/// identity (unless it goes in the Authorization header), scope, audience, and the extra
/// parameters that do not override a reserved one.
fn append_client_and_parameters(
    form: &mut form_urlencoded::Serializer<'_, String>,
    client: &ClientCredentials,
    scopes: &[String],
    audience: Option<&str>,
    extra_parameters: &BTreeMap<String, String>,
) {
    match client.method {
        AuthMethod::ClientSecretBasic => {}
        AuthMethod::ClientSecretPost => {
            form.append_pair("client_id", &client.client_id);
            if let Some(secret) = &client.client_secret {
                form.append_pair("client_secret", secret.expose_secret());
            }
        }
        AuthMethod::None => {
            form.append_pair("client_id", &client.client_id);
        }
    }
    if !scopes.is_empty() {
        form.append_pair("scope", &scopes.join(" "));
    }
    if let Some(audience) = audience {
        form.append_pair("audience", audience);
    }
    for (name, value) in extra_parameters {
        if !RESERVED_PARAMETERS.contains(&name.as_str()) {
            form.append_pair(name, value);
        }
    }
}

/// `Authorization: Basic` value: id and secret are form-urlencoded first (RFC 6749 2.3.1).
fn basic_authorization(client: &ClientCredentials) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let secret = client
        .client_secret
        .as_ref()
        .map(|s| encode(s.expose_secret()))
        .unwrap_or_default();
    let pair = format!("{}:{}", encode(&client.client_id), secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(method: AuthMethod) -> ClientCredentials {
        ClientCredentials {
            method,
            client_id: "my client".into(),
            client_secret: Some(SecretString::from("s3cr:et")),
        }
    }

    fn request<'a>(
        endpoint: &'a Url,
        client: &'a ClientCredentials,
        grant: GrantRequest<'a>,
        extra: &'a BTreeMap<String, String>,
        scopes: &'a [String],
    ) -> TokenRequest<'a> {
        TokenRequest {
            endpoint,
            client,
            grant,
            scopes,
            audience: Some("api"),
            extra_parameters: extra,
        }
    }

    #[test]
    fn refresh_form_with_post_auth_carries_credentials() {
        let url = Url::parse("https://example.test/token").unwrap();
        let credentials = client(AuthMethod::ClientSecretPost);
        let token = SecretString::from("rt/1");
        let extra = BTreeMap::from([
            ("resource".to_string(), "https://api".to_string()),
            ("grant_type".to_string(), "password".to_string()),
        ]);
        let scopes = vec!["a".to_string(), "b".to_string()];
        let body = form_body(&request(
            &url,
            &credentials,
            GrantRequest::RefreshToken(&token),
            &extra,
            &scopes,
        ));
        assert_eq!(
            body,
            "grant_type=refresh_token&refresh_token=rt%2F1&client_id=my+client&client_secret=s3cr%3Aet&scope=a+b&audience=api&resource=https%3A%2F%2Fapi"
        );
    }

    #[test]
    fn basic_auth_keeps_credentials_out_of_the_body() {
        let url = Url::parse("https://example.test/token").unwrap();
        let credentials = client(AuthMethod::ClientSecretBasic);
        let extra = BTreeMap::new();
        let body = form_body(&request(
            &url,
            &credentials,
            GrantRequest::ClientCredentials,
            &extra,
            &[],
        ));
        assert_eq!(body, "grant_type=client_credentials&audience=api");
        let header = basic_authorization(&credentials);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my+client:s3cr%3Aet");
    }

    #[test]
    fn public_clients_send_only_their_id() {
        let url = Url::parse("https://example.test/token").unwrap();
        let credentials = client(AuthMethod::None);
        let extra = BTreeMap::new();
        let token = SecretString::from("rt");
        let body = form_body(&request(
            &url,
            &credentials,
            GrantRequest::RefreshToken(&token),
            &extra,
            &[],
        ));
        assert!(body.contains("client_id=my+client"));
        assert!(!body.contains("client_secret"));
    }

    #[test]
    fn device_code_and_authorization_code_forms() {
        let url = Url::parse("https://example.test/token").unwrap();
        let credentials = client(AuthMethod::None);
        let device_code = SecretString::from("dc/1");
        let extra = BTreeMap::from([
            ("device_code".to_string(), "other".to_string()),
            ("code".to_string(), "other".to_string()),
            ("redirect_uri".to_string(), "https://evil".to_string()),
            ("code_verifier".to_string(), "other".to_string()),
        ]);
        let body = form_body(&request(
            &url,
            &credentials,
            GrantRequest::DeviceCode(&device_code),
            &extra,
            &[],
        ));
        assert_eq!(
            body,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=dc%2F1&client_id=my+client&audience=api"
        );
        let code = SecretString::from("c&1");
        let verifier = SecretString::from("v~1");
        let body = form_body(&request(
            &url,
            &credentials,
            GrantRequest::AuthorizationCode {
                code: &code,
                redirect_uri: "http://127.0.0.1:5000/callback",
                code_verifier: &verifier,
            },
            &extra,
            &[],
        ));
        assert_eq!(
            body,
            "grant_type=authorization_code&code=c%261&redirect_uri=http%3A%2F%2F127.0.0.1%3A5000%2Fcallback&code_verifier=v%7E1&client_id=my+client&audience=api"
        );
    }

    #[test]
    fn endpoints_are_checked() {
        let strict = TokenClient::new(ClientOptions::default()).unwrap();
        assert!(strict.check_endpoint("https://idp.test/token").is_ok());
        assert!(matches!(
            strict.check_endpoint("http://127.0.0.1/token"),
            Err(OAuthError::InsecureEndpoint)
        ));
        assert!(matches!(
            strict.check_endpoint("ftp://idp.test/token"),
            Err(OAuthError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            strict.check_endpoint("https://user:pw@idp.test/token"),
            Err(OAuthError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            strict.check_endpoint("/token"),
            Err(OAuthError::InvalidEndpoint(_))
        ));
        let insecure = TokenClient::new(ClientOptions {
            allow_insecure_http: true,
            ..ClientOptions::default()
        })
        .unwrap();
        assert!(
            insecure
                .check_endpoint("http://127.0.0.1:8080/token")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_handed_back_up_to_the_limit() {
        let tokens = TokenClient::new(ClientOptions {
            max_response_bytes: 10,
            ..ClientOptions::default()
        })
        .unwrap();
        let response = |body: &'static str| {
            reqwest::Response::from(http::Response::builder().status(201).body(body).unwrap())
        };
        let (body, cut) = tokens
            .read_limited(201, response(r#"{"refresh_token":"r"}"#))
            .await;
        assert_eq!(body, br#"{"refresh_"#);
        assert!(matches!(
            cut,
            Some(OAuthError::BodyTooLarge {
                status: 201,
                limit: 10
            })
        ));
        let (body, cut) = tokens.read_limited(201, response("0123456789")).await;
        assert_eq!(body, b"0123456789");
        assert!(cut.is_none());
    }

    #[test]
    fn debug_of_credentials_hides_the_secret() {
        let text = format!("{:?}", client(AuthMethod::ClientSecretPost));
        assert!(!text.contains("s3cr"));
        assert!(text.contains("[redacted]"));
    }
}
