//! Parsing token endpoint answers (RFC 6749 sections 5.1 and 5.2).
//!
//! A 2xx answer is read field by field and leniently: providers send `scope` as an array,
//! `expires_in` as a string or a float, `token_type` in any case. One odd field never makes the
//! whole answer unusable, and above all never loses a rotated refresh token: it is read from a
//! form body too, and from a JSON text cut short after it. A 2xx from which none can be read
//! counts as an answer that was not understood, never as one that rotated nothing.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{ErrorCode, OAuthError};

/// Longest lifetime believed of any token, whatever the provider says (`expires_in`, JWT `exp`).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Longest lifetime believed of a refresh token, whatever the provider or the spec says. Longer
/// than [`MAX_TOKEN_LIFETIME`]: refresh tokens legitimately live for years, and a lifetime
/// clamped too short would raise a false "refresh token expiring" alert.
pub const MAX_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Members that state the refresh token's remaining lifetime in seconds, most specific first:
/// `refresh_token_expires_in` (GitHub Apps, Microsoft Entra, Dropbox, ...),
/// `x_refresh_token_expires_in` (Intuit) and `refresh_expires_in` (Keycloak). None of them is
/// in RFC 6749.
const REFRESH_LIFETIME_FIELDS: [&str; 3] = [
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
    "refresh_expires_in",
];

/// A 2xx answer. The refresh token is kept apart from the rest so that the caller can persist it
/// before anything else is judged.
pub struct Issued {
    /// When the request was sent: the start of the token's life.
    pub requested_at: DateTime<Utc>,
    /// The 2xx status the endpoint answered with.
    pub status: u16,
    /// A non-empty string `refresh_token` found in the 2xx answer (a JSON object, a form body, or
    /// the part of a JSON text before it was cut short), even when the rest is unusable.
    pub refresh_token: Option<SecretString>,
    /// How long the refresh token lives from `requested_at`, when the provider says so (see
    /// [`REFRESH_LIFETIME_FIELDS`]); at most [`MAX_REFRESH_TOKEN_LIFETIME`], `None` when absent
    /// or not a positive number (Keycloak's `0` for offline tokens means "no idle limit").
    pub refresh_expires_in: Option<Duration>,
    /// The access token, or why the answer cannot be used (an OAuthError, e.g. Malformed with
    /// problem "no access_token", or "cut short" when the refresh token came from an answer that
    /// was not read whole).
    pub access: Result<AccessGrant, OAuthError>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("requested_at", &self.requested_at)
            .field("status", &self.status)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("access", &self.access)
            .finish()
    }
}

/// The usable part of a successful token response. `Debug` never shows the token.
pub struct AccessGrant {
    pub access_token: SecretString,
    /// `Bearer` when the provider said `bearer` in any case or nothing at all.
    pub token_type: String,
    /// At most [`MAX_TOKEN_LIFETIME`]; `None` when absent or not a positive number.
    pub expires_in: Option<Duration>,
    /// Space-separated, also when the provider sent an array.
    pub scope: Option<String>,
}

impl std::fmt::Debug for AccessGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessGrant")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawError {
    error: String,
}

/// Turns a completely read HTTP answer into an [`Issued`] or a classified error.
///
/// `Err` for every non-2xx answer. A 2xx gives `Ok` when it is a complete token response (a JSON
/// object of any Content-Type, or a form body), with or without a refresh token, and also when
/// it is neither but a refresh token can be read from it (a JSON text cut short). Any other 2xx
/// is [`OAuthError::UnreadableSuccess`]: it may have carried a rotated refresh token, so it must
/// not pass for an answer that rotated nothing.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_at: DateTime<Utc>,
) -> Result<Issued, OAuthError> {
    match status {
        200..=299 => success(status, body, None, requested_at),
        _ => Err(refusal(status, retry_after, body)),
    }
}

/// What a non-2xx answer of the provider (token or device authorization endpoint) means: a
/// redirect, a throttle, an OAuth error (RFC 6749 section 5.2; only the `error` code is kept),
/// or a bare status.
pub(crate) fn refusal(status: u16, retry_after: Option<Duration>, body: &[u8]) -> OAuthError {
    match status {
        300..=399 => OAuthError::Redirect { status },
        429 | 503 => OAuthError::Throttled {
            status,
            retry_after,
        },
        _ => match serde_json::from_slice::<RawError>(body) {
            Ok(raw) => OAuthError::Rejected {
                status,
                code: ErrorCode::new(&raw.error),
            },
            Err(_) => OAuthError::UnexpectedStatus { status },
        },
    }
}

/// [`classify`] for an answer of which only `part` arrived; `cut` says why the rest did not.
///
/// A 2xx gives `Ok` only when a refresh token can be read from `part`, and `cut` otherwise: what
/// was missed may have been a rotated refresh token. A non-2xx is a refusal however much of it
/// arrived, and is classified from what did; a too large one stays `BodyTooLarge`.
pub(crate) fn classify_cut(
    status: u16,
    retry_after: Option<Duration>,
    part: &[u8],
    cut: OAuthError,
    requested_at: DateTime<Utc>,
) -> Result<Issued, OAuthError> {
    match status {
        200..=299 => success(status, part, Some(cut), requested_at),
        _ if matches!(cut, OAuthError::BodyTooLarge { .. }) => Err(cut),
        _ => classify(status, retry_after, part, requested_at),
    }
}

/// A 2xx body, complete (`cut` is `None`) or not.
fn success(
    status: u16,
    body: &[u8],
    cut: Option<OAuthError>,
    requested_at: DateTime<Utc>,
) -> Result<Issued, OAuthError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // `whole`: every member the provider sent was read. A JSON object ends with its own brace,
    // so it is whole even when the read failed after it; a form body has no end mark.
    let (fields, whole) = match Fields::json(body) {
        Some(fields) => (fields, true),
        None => match Fields::form(body, cut.is_some()) {
            Some(fields) => (fields, cut.is_none()),
            None => (Fields::json_prefix(body), false),
        },
    };
    let refresh_token = fields.last("refresh_token", non_empty_string);
    // Only a whole answer, completely read, can say that nothing was rotated.
    if refresh_token.is_none() && (cut.is_some() || !whole) {
        return Err(cut.unwrap_or(OAuthError::UnreadableSuccess { status }));
    }
    Ok(Issued {
        requested_at,
        status,
        refresh_token: refresh_token.map(SecretString::from),
        refresh_expires_in: REFRESH_LIFETIME_FIELDS
            .iter()
            .find_map(|name| fields.last(name, |v| seconds(v, MAX_REFRESH_TOKEN_LIFETIME))),
        access: if whole {
            access_grant(status, &fields)
        } else {
            // A missing member may have been cut off: an expiry or a token type.
            Err(OAuthError::Malformed {
                status,
                problem: "cut short",
            })
        },
    })
}

/// The members of a token response, each kept as raw JSON so that one odd value (a number out
/// of `f64` range, a deep nesting) cannot make the others unreadable. Duplicate names are kept.
struct Fields<'a>(Vec<(String, Cow<'a, RawValue>)>);

impl<'a> Fields<'a> {
    /// `None` when the body is not a JSON object.
    fn json(body: &'a [u8]) -> Option<Fields<'a>> {
        serde_json::from_slice(body).ok()
    }

    /// The members of an `application/x-www-form-urlencoded` body, which GitHub sends when it
    /// ignores `Accept`; each value becomes a JSON string. `None` unless the syntax is exact and
    /// a token response member is present, so that an error page or stray text is never taken
    /// for a complete answer. When `cut`, the last pair may lack its end and is left out.
    fn form(body: &[u8], cut: bool) -> Option<Fields<'static>> {
        let body = body.trim_ascii();
        if body.is_empty() || !body.iter().all(|&b| is_form_byte(b)) {
            return None;
        }
        let mut pairs: Vec<&[u8]> = body.split(|&b| b == b'&').collect();
        if cut {
            pairs.pop();
        }
        let mut fields = Vec::new();
        for pair in pairs.into_iter().filter(|p| !p.is_empty()) {
            let split = pair.iter().position(|&b| b == b'=')?;
            let name = form_decode(pair.get(..split)?)?;
            let value = form_decode(pair.get(split + 1..)?)?;
            if name.is_empty() {
                return None;
            }
            let value = RawValue::from_string(serde_json::to_string(&value).ok()?).ok()?;
            fields.push((name, Cow::Owned(value)));
        }
        fields
            .iter()
            .any(|(name, _)| FORM_MEMBERS.contains(&name.as_str()))
            .then_some(Fields(fields))
    }

    /// The top-level members of a JSON object whose text stops early: cut short by a gateway or
    /// a failed read, or followed by something that is not JSON. Only members whose value is
    /// complete and lies before the first byte that cannot continue the JSON text are taken;
    /// members nested in objects and arrays never are. When a `refresh_token` value is cut,
    /// no `refresh_token` member is taken: which one the provider meant is unknown.
    fn json_prefix(body: &'a [u8]) -> Fields<'a> {
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            // A cut may split a character: what comes before it is still readable.
            Err(e) => body
                .get(..e.valid_up_to())
                .and_then(|valid| std::str::from_utf8(valid).ok())
                .unwrap_or_default(),
        };
        let mut members = Vec::new();
        let refresh_token_cut = !Scanner { text, pos: 0 }.members(&mut members);
        if refresh_token_cut {
            members.retain(|(name, _)| name != "refresh_token");
        }
        Fields(members)
    }

    /// The last member called `name` that `read` accepts.
    fn last<T>(&self, name: &str, read: impl Fn(&RawValue) -> Option<T>) -> Option<T> {
        self.0
            .iter()
            .rev()
            .filter(|(key, _)| key == name)
            .find_map(|(_, value)| read(value))
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push((name, Cow::Borrowed(value)));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Names that make a form body a token response (RFC 6749 section 5.1) or an error response
/// (section 5.2, which GitHub sends with status 200).
const FORM_MEMBERS: [&str; 6] = [
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "scope",
    "error",
];

/// Bytes that may appear in a form-urlencoded body: unreserved and sub-delimiters (RFC 3986),
/// `%` escapes, and the separators. Whitespace, quotes, braces and angle brackets never do, which
/// keeps JSON, HTML and prose out.
fn is_form_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~*+%=&!$'(),/:;?@".contains(&b)
}

/// `+` is a space and `%XX` a byte; `None` for a broken escape or bytes that are not UTF-8.
fn form_decode(raw: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let (hex, tail) = rest.split_first_chunk::<2>()?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = tail;
            }
            _ => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// How far one JSON value or token could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Done,
    /// The text ended inside it.
    Cut,
    /// Not JSON.
    Invalid,
}

/// A lenient reader of a JSON text that may stop anywhere. It validates as it goes and never
/// recurses, so no nesting depth and no byte sequence can make it fail other than by saying so.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// Adds the top-level members read to `out`, in order. `false` when the text stopped in the
    /// value of a `refresh_token` member.
    fn members(&mut self, out: &mut Vec<(String, Cow<'a, RawValue>)>) -> bool {
        self.skip_whitespace();
        if !self.eat(b'{') {
            return true;
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return true;
            }
            let start = self.pos;
            if self.string() != Scan::Done {
                return true;
            }
            // Decoded, so that an escaped name still counts; `None` for a lone surrogate.
            let name = self
                .since(start)
                .and_then(|raw| serde_json::from_str::<String>(raw).ok());
            self.skip_whitespace();
            if !self.eat(b':') {
                return true;
            }
            self.skip_whitespace();
            let start = self.pos;
            let value = self.value();
            let raw = self.since(start);
            if value != Scan::Done {
                return name.as_deref() != Some("refresh_token");
            }
            self.skip_whitespace();
            // A value is complete once a delimiter or the end follows it (a number at the end
            // already counts as cut).
            let delimited = matches!(self.peek(), None | Some(b',' | b'}'));
            if !delimited {
                return name.as_deref() != Some("refresh_token");
            }
            if let (Some(name), Some(raw)) = (name, raw)
                && let Ok(value) = serde_json::from_str::<&'a RawValue>(raw)
            {
                out.push((name, Cow::Borrowed(value)));
            }
            if !self.eat(b',') {
                return true;
            }
        }
    }

    fn value(&mut self) -> Scan {
        match self.peek() {
            Some(b'{' | b'[') => self.container(),
            _ => self.scalar(),
        }
    }

    fn scalar(&mut self) -> Scan {
        match self.peek() {
            None => Scan::Cut,
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Scan::Invalid,
        }
    }

    /// An object or array with everything in it, brackets matched; the grammar of commas and
    /// colons inside is not checked, as nothing inside is ever taken.
    fn container(&mut self) -> Scan {
        let mut open = Vec::new();
        loop {
            self.skip_whitespace();
            let step = match self.peek() {
                None => Scan::Cut,
                Some(b'{') => {
                    open.push(b'}');
                    self.pos += 1;
                    Scan::Done
                }
                Some(b'[') => {
                    open.push(b']');
                    self.pos += 1;
                    Scan::Done
                }
                Some(close @ (b'}' | b']')) => {
                    if open.pop() != Some(close) {
                        return Scan::Invalid;
                    }
                    self.pos += 1;
                    if open.is_empty() {
                        return Scan::Done;
                    }
                    Scan::Done
                }
                Some(b',' | b':') => {
                    self.pos += 1;
                    Scan::Done
                }
                Some(_) => self.scalar(),
            };
            if step != Scan::Done {
                return step;
            }
        }
    }

    /// A string with its quotes. Escapes are checked here; whether `\u` ones pair up is left
    /// to the reader of the value.
    fn string(&mut self) -> Scan {
        if !self.eat(b'"') {
            return Scan::Invalid;
        }
        loop {
            match self.peek() {
                None => return Scan::Cut,
                Some(b'"') => {
                    self.pos += 1;
                    return Scan::Done;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None => return Scan::Cut,
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1;
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    None => return Scan::Cut,
                                    Some(h) if h.is_ascii_hexdigit() => self.pos += 1,
                                    Some(_) => return Scan::Invalid,
                                }
                            }
                        }
                        Some(_) => return Scan::Invalid,
                    }
                }
                Some(0x00..=0x1f) => return Scan::Invalid,
                Some(_) => self.pos += 1,
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, complete only when something follows.
    fn number(&mut self) -> Scan {
        self.eat(b'-');
        match self.peek() {
            None => return Scan::Cut,
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            Some(_) => return Scan::Invalid,
        }
        if self.eat(b'.') {
            match self.peek() {
                None => return Scan::Cut,
                Some(b'0'..=b'9') => self.digits(),
                Some(_) => return Scan::Invalid,
            }
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _sign = self.eat(b'+') || self.eat(b'-');
            match self.peek() {
                None => return Scan::Cut,
                Some(b'0'..=b'9') => self.digits(),
                Some(_) => return Scan::Invalid,
            }
        }
        // `36` at the end may have been `3600`.
        if self.peek().is_none() {
            Scan::Cut
        } else {
            Scan::Done
        }
    }

    fn literal(&mut self, word: &[u8]) -> Scan {
        for &expected in word {
            match self.peek() {
                None => return Scan::Cut,
                Some(b) if b == expected => self.pos += 1,
                Some(_) => return Scan::Invalid,
            }
        }
        Scan::Done
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// The text from `start` to here; every position the scanner stops at is an ASCII byte's
    /// or the end, so this is always a whole slice.
    fn since(&self, start: usize) -> Option<&'a str> {
        self.text.get(start..self.pos)
    }
}

fn access_grant(status: u16, fields: &Fields<'_>) -> Result<AccessGrant, OAuthError> {
    let access_token =
        fields
            .last("access_token", non_empty_string)
            .ok_or(OAuthError::Malformed {
                status,
                problem: "no access_token",
            })?;
    Ok(AccessGrant {
        access_token: SecretString::from(access_token),
        token_type: fields
            .last("token_type", token_type)
            .unwrap_or_else(|| BEARER.to_string()),
        expires_in: fields.last("expires_in", |v| seconds(v, MAX_TOKEN_LIFETIME)),
        scope: fields.last("scope", scope),
    })
}

const BEARER: &str = "Bearer";

pub(crate) fn string(value: &RawValue) -> Option<String> {
    serde_json::from_str(value.get()).ok()
}

pub(crate) fn non_empty_string(value: &RawValue) -> Option<String> {
    string(value).filter(|s| !s.is_empty())
}

/// `bearer` in any case is `Bearer` (RFC 6749 section 5.1 says it is case-insensitive); other
/// types are kept as given.
fn token_type(value: &RawValue) -> Option<String> {
    let given = string(value)?;
    match given.trim() {
        "" => None,
        t if t.eq_ignore_ascii_case(BEARER) => Some(BEARER.to_string()),
        _ => Some(given),
    }
}

/// A space-separated string, or an array of strings joined with spaces.
fn scope(value: &RawValue) -> Option<String> {
    let scope = match string(value) {
        Some(scope) => scope,
        None => {
            let parts: Vec<String> = serde_json::from_str(value.get()).ok()?;
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    (!scope.is_empty()).then_some(scope)
}

/// A positive number of seconds, as a JSON number (integer or float, however large) or a
/// numeric string; at most `max`.
pub(crate) fn seconds(value: &RawValue, max: Duration) -> Option<Duration> {
    let raw = value.get();
    let text = if raw.starts_with('"') {
        string(value)?
    } else {
        raw.to_string()
    };
    let text = text.trim();
    // Rust's float syntax also takes "inf" and "NaN": only digits, signs, points and exponents.
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    if number.is_nan() || number <= 0.0 {
        return None;
    }
    if number >= max.as_secs_f64() {
        return Some(max);
    }
    Duration::try_from_secs_f64(number)
        .ok()
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::jwt;
    use crate::oauth::{FailureKind, Presentation};
    use crate::schedule::{self, RefreshPolicy};
    use base64::Engine as _;
    use chrono::TimeDelta;
    use secrecy::ExposeSecret;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn parse(body: &str) -> Issued {
        classify(200, None, body.as_bytes(), at()).unwrap()
    }

    fn usable(body: &str) -> AccessGrant {
        parse(body).access.unwrap()
    }

    fn expires_in_of(value: &str) -> Option<Duration> {
        usable(&format!(r#"{{"access_token":"x","expires_in":{value}}}"#)).expires_in
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn success_is_parsed() {
        let body = r#"{"access_token":"at-1","token_type":"bearer","expires_in":3600,"refresh_token":"rt-2","scope":"a b"}"#;
        let issued = parse(body);
        assert_eq!(issued.status, 200);
        assert_eq!(issued.requested_at, at());
        assert_eq!(
            issued.refresh_token.as_ref().unwrap().expose_secret(),
            "rt-2"
        );
        let debug = format!("{issued:?}");
        assert!(
            !debug.contains("at-1") && !debug.contains("rt-2"),
            "{debug}"
        );
        let grant = issued.access.unwrap();
        assert_eq!(grant.access_token.expose_secret(), "at-1");
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(grant.expires_in, Some(secs(3600)));
        assert_eq!(grant.scope.as_deref(), Some("a b"));
        assert!(!format!("{grant:?}").contains("at-1"));
    }

    #[test]
    fn scope_may_be_an_array() {
        let grant = usable(r#"{"access_token":"x","scope":["read","write"]}"#);
        assert_eq!(grant.scope.as_deref(), Some("read write"));
        for odd in [r#"[]"#, "42", "{}", r#"["read",7]"#, "null", r#""""#] {
            let grant = usable(&format!(r#"{{"access_token":"x","scope":{odd}}}"#));
            assert_eq!(grant.scope, None, "{odd}");
        }
    }

    #[test]
    fn expires_in_in_every_shape() {
        assert_eq!(expires_in_of("3600"), Some(secs(3600)));
        assert_eq!(expires_in_of("3600.0"), Some(secs(3600)));
        assert_eq!(expires_in_of("59.5"), Some(Duration::from_millis(59_500)));
        assert_eq!(expires_in_of(r#""3600""#), Some(secs(3600)));
        assert_eq!(expires_in_of(r#"" 60 ""#), Some(secs(60)));
        assert_eq!(expires_in_of(r#""3600.0""#), Some(secs(3600)));
        assert_eq!(expires_in_of("null"), None);
    }

    #[test]
    fn absurd_expires_in_is_clamped_or_ignored_but_never_an_error() {
        for huge in [
            "1e15",
            "1000000000000000",
            "18446744073709551616",
            "1e308",
            "1e400",
        ] {
            assert_eq!(expires_in_of(huge), Some(MAX_TOKEN_LIFETIME), "{huge}");
        }
        for useless in [
            "-5",
            "0",
            "-0",
            "0.0",
            "1e-400",
            r#""soon""#,
            r#""NaN""#,
            r#""inf""#,
            r#""""#,
            r#""-5""#,
            "true",
            "[3600]",
            r#"{"s":1}"#,
            r#""0x10""#,
            r#""1 h""#,
        ] {
            let issued = parse(&format!(
                r#"{{"access_token":"x","refresh_token":"r","expires_in":{useless}}}"#
            ));
            assert!(issued.refresh_token.is_some(), "{useless}");
            assert_eq!(issued.access.unwrap().expires_in, None, "{useless}");
        }
    }

    fn refresh_expires_in_of(member: &str, value: &str) -> Option<Duration> {
        parse(&format!(
            r#"{{"access_token":"x","refresh_token":"r","{member}":{value}}}"#
        ))
        .refresh_expires_in
    }

    #[test]
    fn refresh_token_lifetime_under_every_known_name_and_in_every_shape() {
        for member in REFRESH_LIFETIME_FIELDS {
            assert_eq!(
                refresh_expires_in_of(member, "7776000"),
                Some(secs(7_776_000))
            );
            assert_eq!(refresh_expires_in_of(member, "1800.0"), Some(secs(1800)));
            assert_eq!(
                refresh_expires_in_of(member, r#"" 1800 ""#),
                Some(secs(1800))
            );
            assert_eq!(
                refresh_expires_in_of(member, "59.5"),
                Some(Duration::from_millis(59_500))
            );
        }
        let issued = parse(
            r#"{"access_token":"x","expires_in":300,"refresh_token":"r","refresh_expires_in":1800}"#,
        );
        assert_eq!(issued.refresh_expires_in, Some(secs(1800)));
        assert_eq!(issued.access.unwrap().expires_in, Some(secs(300)));
        assert_eq!(parse(r#"{"access_token":"x"}"#).refresh_expires_in, None);
        // The specific name wins over Keycloak's, whatever the order.
        let issued =
            parse(r#"{"refresh_expires_in":60,"access_token":"x","refresh_token_expires_in":120}"#);
        assert_eq!(issued.refresh_expires_in, Some(secs(120)));
        // A useless specific one does not hide a usable other one.
        let issued = parse(
            r#"{"refresh_token_expires_in":"soon","access_token":"x","refresh_expires_in":60}"#,
        );
        assert_eq!(issued.refresh_expires_in, Some(secs(60)));
        // Stated even when the rest of the answer is unusable.
        let issued = parse(r#"{"refresh_token":"r","refresh_token_expires_in":60}"#);
        assert!(issued.access.is_err());
        assert_eq!(issued.refresh_expires_in, Some(secs(60)));
        assert!(format!("{issued:?}").contains("refresh_expires_in: Some(60s)"));
    }

    #[test]
    fn absurd_refresh_token_lifetimes_are_clamped_or_ignored() {
        for huge in ["1e15", "18446744073709551616", "1e400", r#""1e308""#] {
            assert_eq!(
                refresh_expires_in_of("refresh_expires_in", huge),
                Some(MAX_REFRESH_TOKEN_LIFETIME),
                "{huge}"
            );
        }
        // Longer than an access token may live, but believed.
        assert_eq!(
            refresh_expires_in_of("refresh_token_expires_in", "63072000"),
            Some(secs(63_072_000))
        );
        // Keycloak's 0 (an offline token without idle limit) and junk say nothing.
        for useless in [
            "0",
            "-5",
            "0.0",
            "1e-400",
            "null",
            "true",
            r#""soon""#,
            r#""NaN""#,
            r#""inf""#,
            r#""""#,
            "[60]",
            r#"{"s":60}"#,
        ] {
            let issued = parse(&format!(
                r#"{{"access_token":"x","refresh_token":"r","refresh_expires_in":{useless}}}"#
            ));
            assert_eq!(issued.refresh_expires_in, None, "{useless}");
            assert!(
                issued.refresh_token.is_some() && issued.access.is_ok(),
                "{useless}"
            );
        }
    }

    #[test]
    fn token_type_is_normalised() {
        let type_of = |body: &str| usable(body).token_type;
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"BEARER"}"#),
            "Bearer"
        );
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"bearer"}"#),
            "Bearer"
        );
        assert_eq!(type_of(r#"{"access_token":"x"}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":""}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":5}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":"mac"}"#), "mac");
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"DPoP"}"#),
            "DPoP"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let grant = usable(
            r#"{"id_token":{"deep":[1,{"x":null}]},"access_token":"x","not-before":1e999,"extra":[],"expires_in":60}"#,
        );
        assert_eq!(grant.access_token.expose_secret(), "x");
        assert_eq!(grant.expires_in, Some(secs(60)));
    }

    #[test]
    fn a_refresh_token_survives_an_unusable_answer() {
        let issued = parse(r#"{"refresh_token":"r2","token_type":"Bearer"}"#);
        assert_eq!(issued.refresh_token.as_ref().unwrap().expose_secret(), "r2");
        let error = issued.access.unwrap_err();
        assert!(
            matches!(
                error,
                OAuthError::Malformed {
                    status: 200,
                    problem: "no access_token"
                }
            ),
            "{error}"
        );
        assert_eq!(error.kind(), FailureKind::Transient);
        for access_token in [r#""""#, "null", "42", r#"["a"]"#, r#"{"a":"b"}"#] {
            let issued = parse(&format!(
                r#"{{"access_token":{access_token},"refresh_token":"r3"}}"#
            ));
            assert!(issued.refresh_token.is_some(), "{access_token}");
            assert!(issued.access.is_err(), "{access_token}");
        }
        // Odd siblings do not hide it either, and a UTF-8 BOM is tolerated.
        let issued =
            parse("\u{feff}{\"expires_in\":1e999,\"refresh_token\":\"r4\",\"access_token\":\"a\"}");
        assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r4");
        assert_eq!(issued.access.unwrap().expires_in, Some(MAX_TOKEN_LIFETIME));
    }

    #[test]
    fn only_a_non_empty_string_is_a_refresh_token() {
        for odd in ["123", r#""""#, "null", "true", r#"["r"]"#, r#"{"v":"r"}"#] {
            let issued = parse(&format!(r#"{{"access_token":"a","refresh_token":{odd}}}"#));
            assert!(issued.refresh_token.is_none(), "{odd}");
            assert!(issued.access.is_ok(), "{odd}");
        }
    }

    #[test]
    fn duplicate_members_keep_the_last_usable_value() {
        let issued = parse(r#"{"access_token":"a","refresh_token":"r1","refresh_token":null}"#);
        assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r1");
    }

    fn unreadable(status: u16, body: &[u8]) -> OAuthError {
        match classify(status, None, body, at()) {
            Ok(issued) => panic!("{:?} gave {issued:?}", String::from_utf8_lossy(body)),
            Err(error) => error,
        }
    }

    fn assert_unreadable(body: &[u8]) {
        let error = unreadable(200, body);
        let shown = String::from_utf8_lossy(body);
        assert!(
            matches!(error, OAuthError::UnreadableSuccess { status: 200 }),
            "{shown:?}: {error}"
        );
        assert_eq!(error.presentation(), Presentation::Unknown, "{shown:?}");
        assert_eq!(error.kind(), FailureKind::Transient);
        assert_eq!(error.category(), "UnreadableResponse");
        assert_eq!(error.http_status(), None);
    }

    fn refresh_of(issued: &Issued) -> Option<&str> {
        issued.refresh_token.as_ref().map(|r| r.expose_secret())
    }

    fn assert_cut_short(issued: &Issued) {
        assert!(
            matches!(
                issued.access,
                Err(OAuthError::Malformed {
                    status: 200,
                    problem: "cut short"
                })
            ),
            "{issued:?}"
        );
    }

    #[test]
    fn success_bodies_that_are_neither_objects_nor_forms_are_unreadable() {
        for body in [
            &b"<html>oops</html>"[..],
            b"<html><body>access_token=a&refresh_token=r</body></html>",
            b"[]",
            br#"[{"refresh_token":"r"}]"#,
            br#""x""#,
            b"42",
            b"null",
            b"true",
            b"",
            b"   \r\n",
            b"\xEF\xBB\xBF",
            b"{not json",
            b"{",
            br#"{"access_token":"a"} trailing"#,
            b"\xff\xfe{}",
            b"OK",
            b"Bad Gateway",
            b"\x00\x01\x02",
        ] {
            assert_unreadable(body);
        }
        // The message names the status only.
        let error = unreadable(200, b"<p>secret-looking-page</p>");
        assert_eq!(
            error.to_string(),
            "token endpoint answered HTTP 200, but no token response could be read from it"
        );
        assert!(!format!("{error:?}").contains("secret"));
    }

    #[test]
    fn a_whole_object_or_form_without_refresh_token_rotated_nothing() {
        for body in [
            &br#"{"access_token":"a","expires_in":60}"#[..],
            b"{}",
            b"\xEF\xBB\xBF{\"access_token\":\"a\"}",
            b"access_token=a&token_type=bearer&scope=repo",
            b"\xEF\xBB\xBFaccess_token=a\r\n",
        ] {
            let issued = classify(200, None, body, at()).unwrap();
            assert!(issued.refresh_token.is_none());
        }
    }

    #[test]
    fn form_bodies_are_read_like_json() {
        // GitHub's token endpoint, when it ignores `Accept`.
        let issued = parse(
            "access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&expires_in=28800&refresh_token=ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498&refresh_token_expires_in=15811200&scope=&token_type=bearer",
        );
        assert_eq!(
            refresh_of(&issued),
            Some(
                "ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1ccbF66C46812d16D5B1A9Dc86A1498"
            )
        );
        assert_eq!(issued.refresh_expires_in, Some(secs(15_811_200)));
        let grant = issued.access.unwrap();
        assert_eq!(
            grant.access_token.expose_secret(),
            "gho_16C7e42F292c6912E7710c838347Ae178B4a"
        );
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(grant.expires_in, Some(secs(28_800)));
        assert_eq!(grant.scope, None);

        // Escapes, `+`, other lifetime names, odd values and the last duplicate.
        let issued = parse(
            "refresh_token=old&scope=repo%2Cgist+user&access_token=a%2Fb%3D%3D&refresh_token=r%2B%2F%3D%C3%A9&refresh_expires_in=1800.0&expires_in=soon&token_type=DPoP&extra=%E2%9C%93",
        );
        assert_eq!(refresh_of(&issued), Some("r+/=é"));
        assert_eq!(issued.refresh_expires_in, Some(secs(1800)));
        let grant = issued.access.unwrap();
        assert_eq!(grant.access_token.expose_secret(), "a/b==");
        assert_eq!(grant.scope.as_deref(), Some("repo,gist user"));
        assert_eq!(grant.expires_in, None);
        assert_eq!(grant.token_type, "DPoP");

        // An empty refresh_token is none, as in JSON.
        let issued = parse("access_token=a&refresh_token=");
        assert!(issued.refresh_token.is_none() && issued.access.is_ok());
        // A refresh token alone is kept, the answer is not usable.
        let issued = parse("refresh_token=r2&&");
        assert_eq!(refresh_of(&issued), Some("r2"));
        assert!(issued.access.is_err());
    }

    #[test]
    fn a_form_error_answered_with_200_rotated_nothing() {
        // GitHub answers a refused refresh with 200 and an error in the body.
        let issued = parse(
            "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired.&error_uri=https%3A%2F%2Fdocs.github.com",
        );
        assert!(issued.refresh_token.is_none());
        assert!(matches!(
            issued.access,
            Err(OAuthError::Malformed {
                problem: "no access_token",
                ..
            })
        ));
    }

    #[test]
    fn only_exact_form_syntax_is_a_form() {
        for body in [
            "foo=bar",                              // no token response member
            "access_token",                         // no `=`
            "access_token=a&refresh_token",         // a pair without `=`
            "=x&access_token=a",                    // an empty name
            "access_token=a&refresh_token=%zz",     // a broken escape
            "access_token=a&refresh_token=r%2",     // a cut escape
            "access_token=a&refresh_token=%FF",     // not UTF-8
            "access_token=a refresh_token=r",       // whitespace inside
            "access_token=\"a\"&refresh_token=r",   // quotes
            "access_token=a&refresh_token=r\u{e9}", // raw non-ASCII
            "access_token=a\nrefresh_token=r",
        ] {
            assert_unreadable(body.as_bytes());
        }
    }

    #[test]
    fn a_refresh_token_is_read_from_json_cut_after_it() {
        let issued = parse(r#"{"access_token":"a","refresh_token":"r2","expires_in":36"#);
        assert_eq!(refresh_of(&issued), Some("r2"));
        assert_cut_short(&issued);
        assert_eq!(issued.refresh_expires_in, None);

        let issued = parse(r#"{"refresh_token":"r2""#);
        assert_eq!(refresh_of(&issued), Some("r2"));
        let issued = parse("\u{feff} {\r\n \"refresh_token\" : \"r2\" ,\n ");
        assert_eq!(refresh_of(&issued), Some("r2"));

        // Escapes, \u ones and surrogate pairs included, and an escaped member name.
        let issued = parse(
            r#"{"scope":["a","b"],"refresh\u005ftoken":"r\"2\\\/\u00e9\ud83d\ude00\n","refresh_token_expires_in":60,"x":{"#,
        );
        assert_eq!(refresh_of(&issued), Some("r\"2\\/é😀\n"));
        assert_eq!(issued.refresh_expires_in, Some(secs(60)));
        assert_cut_short(&issued);

        // A number only counts once something follows it.
        let issued = parse(r#"{"refresh_token":"r","refresh_expires_in":1800"#);
        assert_eq!(issued.refresh_expires_in, None);
        let issued = parse(r#"{"refresh_token":"r","refresh_expires_in":1800 "#);
        assert_eq!(issued.refresh_expires_in, Some(secs(1800)));

        // A whole object followed by junk is read up to the junk.
        let issued = parse(r#"{"access_token":"a","refresh_token":"r3"}<html>"#);
        assert_eq!(refresh_of(&issued), Some("r3"));
        assert_cut_short(&issued);

        // A cut through a character: what comes before it is read.
        let mut body = br#"{"refresh_token":"r4","scope":"caf"#.to_vec();
        body.extend_from_slice(&"é".as_bytes()[..1]);
        let issued = classify(200, None, &body, at()).unwrap();
        assert_eq!(refresh_of(&issued), Some("r4"));
    }

    #[test]
    fn json_cut_before_or_inside_the_refresh_token_is_unreadable() {
        for body in [
            r#"{"access_token":"a","expires_in":3600,"refr"#,
            r#"{"access_token":"a","expires_in":3600,"refresh_token""#,
            r#"{"access_token":"a","expires_in":3600,"refresh_token":"#,
            r#"{"access_token":"a","refresh_token":""#,
            r#"{"access_token":"a","refresh_token":"r2"#,
            r#"{"access_token":"a","refresh_token":"r2\"#,
            r#"{"access_token":"a","refresh_token":"r2\u00"#,
            r#"{"access_token":"a","refresh_token":"r2\ud83d"#,
            r#"{"access_token":"a","refresh_token":nul"#,
            r#"{"access_token":"a","refresh_token":"","#,
            r#"{"access_token":"a","refresh_token":null,"#,
            r#"{"access_token":"a","refresh_token":12,"#,
            // Broken JSON before or inside the member.
            r#"{"access_token":a,"refresh_token":"r2","#,
            r#"{"access_token":"a" "refresh_token":"r2","#,
            r#"{"access_token":"a","refresh_token":"r\x","#,
            "{\"access_token\":\"a\",\"refresh_token\":\"r\t2\",",
            r#"{"access_token":"a","refresh_token":"r2"x"#,
            r#"{"access_token":"a","refresh_token":"\ud800","#,
            // A second refresh_token cut: which one the provider meant is unknown.
            r#"{"refresh_token":"r1","access_token":"a","refresh_token":"r"#,
        ] {
            assert_unreadable(body.as_bytes());
        }
    }

    #[test]
    fn nested_refresh_tokens_are_never_taken() {
        for body in [
            r#"{"outer":{"refresh_token":"evil"},"access_token":"a""#,
            r#"{"outer":{"refresh_token":"evil","#,
            r#"{"list":[{"refresh_token":"evil"}],"x":1,"#,
            r#"{"list":["refresh_token","evil"],"#,
            r#"{"s":"\"refresh_token\":\"evil\"","#,
            r#"{"a":[{"b":"}"},"refresh_token","evil"]"#,
            r#"{"a":[}],"refresh_token":"evil""#,
        ] {
            assert_unreadable(body.as_bytes());
        }
        let issued = parse(
            r#"{"outer":{"refresh_token":"evil","deep":[[{"refresh_token":"x"}]]},"refresh_token":"r5","more":{"#,
        );
        assert_eq!(refresh_of(&issued), Some("r5"));
    }

    #[test]
    fn deep_nesting_is_no_danger() {
        let depth = 1024 * 1024;
        for body in [
            format!(r#"{{"a":{}"#, "[".repeat(depth)),
            format!(
                r#"{{"a":{}{},"refresh_token":"r6","#,
                "[".repeat(depth),
                "]".repeat(depth)
            ),
        ] {
            let result = classify(200, None, body.as_bytes(), at());
            if body.contains("r6") {
                assert_eq!(refresh_of(&result.unwrap()), Some("r6"));
            } else {
                assert!(result.is_err());
            }
        }
    }

    fn cut(status: u16, part: &[u8], cut: OAuthError) -> Result<Issued, OAuthError> {
        classify_cut(status, Some(secs(4)), part, cut, at())
    }

    #[test]
    fn a_partial_read_gives_what_it_holds() {
        // A refresh token, the rest of the answer lost.
        let issued = cut(
            200,
            br#"{"access_token":"a","refresh_token":"r2","expires_in":3600,"sc"#,
            OAuthError::Transport,
        )
        .unwrap();
        assert_eq!(refresh_of(&issued), Some("r2"));
        assert_cut_short(&issued);
        // A whole object before the connection failed: all of it is usable.
        let issued = cut(
            200,
            br#"{"access_token":"a","refresh_token":"r2","expires_in":60}"#,
            OAuthError::Timeout(secs(30)),
        )
        .unwrap();
        assert_eq!(refresh_of(&issued), Some("r2"));
        assert_eq!(issued.access.unwrap().expires_in, Some(secs(60)));
        // No refresh token: even a whole object cannot tell what a lost rest would have said.
        for part in [
            &br#"{"access_token":"a","expires_in":60}"#[..],
            br#"{"access_token":"a","refresh_token":"r"#,
            b"",
            b"access_token=a&token_type=bearer",
        ] {
            let error = cut(200, part, OAuthError::Transport).unwrap_err();
            assert!(matches!(error, OAuthError::Transport), "{error}");
            assert_eq!(error.presentation(), Presentation::Unknown);
        }
        // A form has no end mark: only pairs that `&` closes are whole.
        let issued = cut(
            200,
            b"access_token=a&refresh_token=r2&expires_in=36",
            OAuthError::Transport,
        )
        .unwrap();
        assert_eq!(refresh_of(&issued), Some("r2"));
        assert_cut_short(&issued);
        let error = cut(
            200,
            b"access_token=a&expires_in=3600&refresh_token=r2",
            OAuthError::Transport,
        )
        .unwrap_err();
        assert!(matches!(error, OAuthError::Transport), "{error}");
    }

    #[test]
    fn an_oversized_success_is_salvaged_an_oversized_refusal_is_refused() {
        let too_large = |status| OAuthError::BodyTooLarge { status, limit: 64 };
        let issued = cut(
            200,
            br#"{"refresh_token":"r7","access_token":"aaaaaaaa"#,
            too_large(200),
        )
        .unwrap();
        assert_eq!(refresh_of(&issued), Some("r7"));
        assert_cut_short(&issued);
        let error = cut(200, br#"{"access_token":"aaaaaaaa"#, too_large(200)).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::BodyTooLarge { status: 200, .. }
        ));
        assert_eq!(error.presentation(), Presentation::Unknown);
        assert_eq!(error.http_status(), None);
        for status in [400, 401, 429, 500, 302] {
            let error =
                cut(status, br#"{"error":"invalid_grant"}"#, too_large(status)).unwrap_err();
            assert!(
                matches!(error, OAuthError::BodyTooLarge { status: s, limit: 64 } if s == status),
                "{error}"
            );
            assert_eq!(error.presentation(), Presentation::Refused);
            assert_eq!(error.http_status(), Some(status));
            assert_eq!(error.kind(), FailureKind::Transient);
            assert_eq!(
                error.to_string(),
                format!(
                    "token endpoint answered HTTP {status} with a response larger than 64 bytes"
                )
            );
        }
    }

    #[test]
    fn a_refusal_cut_short_is_still_a_refusal() {
        let error = cut(400, br#"{"error":"invalid_grant"}"#, OAuthError::Transport).unwrap_err();
        assert_eq!(error.kind(), FailureKind::ReauthorizationRequired);
        let error = cut(400, br#"{"error":"inv"#, OAuthError::Transport).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 400 }
        ));
        assert_eq!(error.presentation(), Presentation::Refused);
        let error = cut(503, b"bu", OAuthError::Timeout(secs(1))).unwrap_err();
        assert_eq!(error.retry_after(), Some(secs(4)));
        assert_eq!(error.presentation(), Presentation::Refused);
        let error = cut(302, b"", OAuthError::Transport).unwrap_err();
        assert!(matches!(error, OAuthError::Redirect { status: 302 }));
    }

    /// Response bodies whose refresh token is known, in every syntax the scanner must follow.
    fn known_bodies() -> Vec<(String, Option<&'static str>)> {
        let marker = "SECRETMARK";
        vec![
            (
                format!(
                    r#"{{"access_token":"{marker}-a","token_type":"Bearer","expires_in":3600,"refresh_token":"{marker}-r","scope":"a b"}}"#
                ),
                Some("SECRETMARK-r"),
            ),
            (
                format!(
                    "\u{feff}{{ \"id_token\" : {{\"refresh_token\":\"{marker}-n\",\"l\":[1,-2.5e+3,true,null,\"}}]\\\"\"]}},\r\n\"refresh_token\" :\"{marker}\\u0041\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\u{e9}\", \"expires_in\":-0.0e0 , \"extra\":[[],{{}}] }}  "
                ),
                Some("SECRETMARKA😀\"\\/\u{8}\u{c}\n\r\té"),
            ),
            (
                format!(
                    r#"{{"expires_in":60,"access_token":"{marker}-a","refresh_expires_in":1800}}"#
                ),
                None,
            ),
            (
                format!(
                    "access_token={marker}-a&expires_in=28800&refresh_token={marker}%2Dr%2B&refresh_token_expires_in=15811200&scope=&token_type=bearer"
                ),
                Some("SECRETMARK-r+"),
            ),
        ]
    }

    /// Nothing read from a body may show in an error or a Debug output.
    fn assert_nothing_shown(result: &Result<Issued, OAuthError>) {
        let shown = match result {
            Ok(issued) => format!("{issued:?}"),
            Err(error) => format!("{error} {error:?}"),
        };
        assert!(!shown.contains("SECRETMARK"), "{shown}");
    }

    #[test]
    fn every_prefix_of_a_response_gives_its_refresh_token_or_nothing() {
        for (body, refresh) in known_bodies() {
            let is_form = !body.trim_start_matches('\u{feff}').starts_with(['{', ' ']);
            let bytes = body.as_bytes();
            for end in 0..=bytes.len() {
                let prefix = &bytes[..end];
                let whole = end == bytes.len();
                let mut results = vec![(cut(200, prefix, OAuthError::Transport), false)];
                // A form cut short without a failed read cannot be told from a whole one.
                if !is_form || whole {
                    results.push((classify(200, None, prefix, at()), true));
                }
                for (result, read_whole) in results {
                    assert_nothing_shown(&result);
                    match result {
                        Ok(issued) => match refresh_of(&issued) {
                            Some(found) => assert_eq!(Some(found), refresh, "{end}: {body}"),
                            // Nothing rotated: only a whole body completely read says so.
                            None => assert!(
                                read_whole && refresh.is_none() && body[end..].trim().is_empty(),
                                "{end}: {body}"
                            ),
                        },
                        Err(error) => {
                            assert_eq!(error.presentation(), Presentation::Unknown, "{end}");
                            assert!(!whole || !read_whole || refresh.is_none(), "{body}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_byte_sequence_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5a1_7a6e);
        let alphabet: &[u8] =
            b"{}[]\":,\\/ \t\n\r-+.eE0123456789abcdefnulltrueu&=%_refresh_tokenaccess\xc3\xa9\xed\xa0\x80\xef\xbb\xbf\x00\x7f";
        let seeds: Vec<Vec<u8>> = known_bodies()
            .into_iter()
            .map(|(body, _)| body.into_bytes())
            .collect();
        for round in 0..30_000 {
            let input: Vec<u8> = match round % 3 {
                0 => {
                    let len = rng.random_range(0..80);
                    (0..len).map(|_| rng.random()).collect()
                }
                1 => {
                    let len = rng.random_range(0..80);
                    (0..len)
                        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                        .collect()
                }
                _ => {
                    // A known body with a few bytes changed, inserted or removed, then cut.
                    let mut body = seeds[rng.random_range(0..seeds.len())].clone();
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..body.len());
                        let byte = alphabet[rng.random_range(0..alphabet.len())];
                        match rng.random_range(0..3) {
                            0 => body[at] = byte,
                            1 => body.insert(at, byte),
                            _ => {
                                body.remove(at);
                            }
                        }
                    }
                    let end = rng.random_range(0..=body.len());
                    body.truncate(end);
                    body
                }
            };
            for result in [
                classify(200, None, &input, at()),
                classify(400, None, &input, at()),
                cut(200, &input, OAuthError::Transport),
                cut(500, &input, OAuthError::Transport),
            ] {
                assert_nothing_shown(&result);
                if let Ok(issued) = &result {
                    // What is taken for a refresh token is a non-empty string.
                    assert!(refresh_of(issued).is_none_or(|r| !r.is_empty()));
                }
                if let Err(error) = result {
                    let _ = (error.presentation(), error.http_status(), error.category());
                }
            }
        }
    }

    #[test]
    fn error_bodies_give_their_code_but_not_their_description() {
        let body =
            br#"{"error":"invalid_grant","error_description":"grant rt-secret-123 revoked"}"#;
        let error = classify(400, None, body, at()).unwrap_err();
        assert_eq!(error.kind(), FailureKind::ReauthorizationRequired);
        assert!(!error.to_string().contains("rt-secret-123"));
        let error = classify(401, None, br#"{"error":"invalid_client"}"#, at()).unwrap_err();
        assert_eq!(error.kind(), FailureKind::InvalidClient);
        let error = classify(400, None, br#"{"error":7}"#, at()).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 400 }
        ));
    }

    #[test]
    fn throttling_keeps_retry_after() {
        let error = classify(
            503,
            Some(secs(9)),
            br#"{"error":"temporarily_unavailable"}"#,
            at(),
        )
        .unwrap_err();
        assert_eq!(error.retry_after(), Some(secs(9)));
        assert_eq!(error.kind(), FailureKind::Transient);
        let error = classify(429, None, b"", at()).unwrap_err();
        assert!(matches!(error, OAuthError::Throttled { status: 429, .. }));
    }

    #[test]
    fn non_json_errors_keep_their_status() {
        let error = classify(502, None, b"Bad Gateway", at()).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 502 }
        ));
        assert!(matches!(
            classify(302, None, b"", at()).unwrap_err(),
            OAuthError::Redirect { status: 302 }
        ));
    }

    fn jwt_with(claims: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", engine.encode("{}"), engine.encode(claims))
    }

    /// Odd JSON values: extreme numbers, wrong types, nesting.
    fn odd_values() -> Vec<String> {
        let mut values: Vec<String> = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1",
            "-1",
            "0.5",
            "-0.5",
            "1e-400",
            "5e-324",
            "1e15",
            "1e308",
            "-1e308",
            "1e309",
            "-1e999",
            "1.7976931348623157e308",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890123456789012345678901234567890",
            r#""""#,
            r#"" ""#,
            r#""3600""#,
            r#"" 60 ""#,
            r#""3600.0""#,
            r#""1e400""#,
            r#""-1e400""#,
            r#""NaN""#,
            r#""inf""#,
            r#""-inf""#,
            r#""infinity""#,
            r#""0x10""#,
            r#""+7""#,
            r#"".""#,
            r#""soon""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""é""#,
            r#""bearer""#,
            r#""BeArEr""#,
            "[]",
            "{}",
            r#"["read","write"]"#,
            r#"["a",1]"#,
            "[null]",
            r#"{"a":{"b":[1,2]}}"#,
            r#"[[[[[[[[[[["x"]]]]]]]]]]]"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1] {
            values.push(n.to_string());
        }
        for n in [u64::MAX, u64::MAX / 2 + 1] {
            values.push(n.to_string());
        }
        for f in [
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            -f64::EPSILON,
        ] {
            values.push(format!("{f:e}"));
            values.push(format!("\"{f}\""));
        }
        values.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)));
        for exp in [
            "9223372036854775807",
            "-9223372036854775808",
            "1e300",
            "-1e300",
            "1e999",
            "8210298412799",
            "8210298412800",
            "-8334632851200",
            "1700000000.75",
            r#""1700000000""#,
            "null",
        ] {
            values.push(format!("\"{}\"", jwt_with(&format!(r#"{{"exp":{exp}}}"#))));
        }
        values.push(r#""a.!!!.c""#.to_string());
        values.push(r#""a.b+/=.c""#.to_string());
        values
    }

    fn odd_bodies() -> Vec<String> {
        let fields = [
            "access_token",
            "refresh_token",
            "token_type",
            "expires_in",
            "refresh_expires_in",
            "refresh_token_expires_in",
            "scope",
            "error",
        ];
        let mut bodies = Vec::new();
        for value in odd_values() {
            for field in fields {
                // The odd value replaces the usual one: no duplicate members here.
                let mut members = vec![format!(r#""{field}":{value}"#)];
                for (name, usual) in [("access_token", r#""a""#), ("refresh_token", r#""r""#)] {
                    if name != field {
                        members.push(format!(r#""{name}":{usual}"#));
                    }
                }
                bodies.push(format!("{{{}}}", members.join(",")));
            }
            bodies.push(format!(
                r#"{{"access_token":{value},"expires_in":{value},"scope":{value},"refresh_token":{value}}}"#
            ));
            bodies.push(value);
        }
        bodies
    }

    #[test]
    fn no_body_panics_and_no_expiry_exceeds_the_maximum_lifetime() {
        let max = TimeDelta::from_std(MAX_TOKEN_LIFETIME).unwrap();
        let clocks = [
            at(),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(1),
            DateTime::from_timestamp(0, 999_999_999).unwrap(),
        ];
        let defaults = [Duration::ZERO, secs(3600), Duration::MAX];
        let policies = [
            RefreshPolicy::default(),
            RefreshPolicy::Before(Duration::ZERO),
            RefreshPolicy::Before(secs(900)),
            RefreshPolicy::Before(Duration::MAX),
            RefreshPolicy::RemainingPercent(0),
            RefreshPolicy::RemainingPercent(100),
            RefreshPolicy::RemainingPercent(u8::MAX),
        ];
        let jitters = [0.0, 0.999_999, 1.0, -1.0, f64::NAN, f64::INFINITY];
        let bodies = odd_bodies();
        assert!(bodies.len() > 300, "{}", bodies.len());
        let mut usable = 0;
        for body in &bodies {
            for status in [200, 201, 299, 400, 401, 429, 500] {
                let result = classify(status, Some(secs(1)), body.as_bytes(), at());
                let Ok(issued) = result else { continue };
                assert!((200..300).contains(&status));
                // A refresh token is reported exactly when the body has a non-empty string one.
                let refresh = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("refresh_token").cloned());
                if let Some(refresh) = refresh {
                    assert_eq!(
                        issued.refresh_token.is_some(),
                        refresh.as_str().is_some_and(|s| !s.is_empty()),
                        "{body}"
                    );
                }
                assert!(
                    issued
                        .refresh_expires_in
                        .is_none_or(|d| !d.is_zero() && d <= MAX_REFRESH_TOKEN_LIFETIME),
                    "{body}"
                );
                let Ok(grant) = issued.access else { continue };
                usable += 1;
                assert!(grant.expires_in.is_none_or(|d| d <= MAX_TOKEN_LIFETIME));
                let jwt_exp = jwt::expiry(grant.access_token.expose_secret());
                for requested_at in clocks {
                    for default in defaults {
                        for jwt_exp in [jwt_exp, None] {
                            let (expires_at, _) = schedule::token_expiry(
                                requested_at,
                                grant.expires_in,
                                jwt_exp,
                                default,
                            );
                            let lifetime = expires_at.signed_duration_since(requested_at);
                            assert!(
                                lifetime >= TimeDelta::zero() && lifetime <= max,
                                "{body} at {requested_at}: {lifetime}"
                            );
                            for policy in policies {
                                for jitter in jitters {
                                    let refresh_at = schedule::refresh_at(
                                        requested_at,
                                        expires_at,
                                        policy,
                                        jitter,
                                    );
                                    assert!(refresh_at <= expires_at, "{body}");
                                    assert!(
                                        refresh_at >= schedule::truncate_to_seconds(requested_at),
                                        "{body}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(usable > 100, "{usable}");
    }
}
