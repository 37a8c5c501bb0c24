//! HTTP digest authentication for SIP (RFC 7616, RFC 2617, RFC 2069 compatibility).
//!
//! Client side only: parse a `WWW-Authenticate` / `Proxy-Authenticate` header value into
//! a [`DigestChallenge`], then compute the matching `Authorization` /
//! `Proxy-Authorization` header value with [`DigestChallenge::respond`].
//!
//! Supported: algorithms `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`; `qop=auth`
//! (preferred), `qop=auth-int` (with the request body) and no qop at all (the RFC 2069
//! form); `nc` written as 8 hex digits; `opaque` and `algorithm` echoed; `userhash`.
//! The parser is tolerant of spacing, case, unquoted tokens and unknown parameters, never
//! panics, and rejects input larger than [`MAX_CHALLENGE_LEN`].
//!
//! ```
//! use callbot_sip::digest::{DigestChallenge, DigestCredentials};
//!
//! let challenge: DigestChallenge =
//!     r#"Digest realm="example.org", nonce="abc123", qop="auth", algorithm=MD5"#.parse()?;
//! let creds = DigestCredentials::new("alice", "secret");
//! let authorization =
//!     challenge.respond(&creds, "REGISTER", "sip:example.org", 1, "0a4f113b")?;
//! assert!(authorization.starts_with("Digest username=\"alice\""));
//! assert!(authorization.contains("nc=00000001"));
//! # Ok::<(), callbot_sip::digest::DigestError>(())
//! ```

use std::fmt::{self, Write as _};
use std::str::FromStr;

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// Largest challenge header value accepted by [`DigestChallenge::parse`], in bytes.
pub const MAX_CHALLENGE_LEN: usize = 8192;
/// Largest number of parameters accepted in one challenge.
pub const MAX_PARAMS: usize = 64;
/// Largest length of one parameter value (realm, nonce, opaque, ...), in bytes.
pub const MAX_PARAM_VALUE_LEN: usize = 2048;

/// Why a challenge could not be parsed or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The header value is longer than [`MAX_CHALLENGE_LEN`], has more than
    /// [`MAX_PARAMS`] parameters, or one value is longer than [`MAX_PARAM_VALUE_LEN`].
    #[error("digest challenge too large")]
    TooLarge,
    /// The authentication scheme is not `Digest` (e.g. `Basic`).
    #[error("not a Digest challenge (scheme {0:?})")]
    NotDigest(String),
    /// The parameter list does not follow the `name=value, ...` grammar.
    #[error("malformed digest challenge: {0}")]
    Malformed(String),
    /// A required parameter (`realm` or `nonce`) is absent.
    #[error("digest challenge lacks the {0} parameter")]
    MissingParam(&'static str),
    /// The `algorithm` is not one of MD5, MD5-sess, SHA-256, SHA-256-sess.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The challenge offers qop values but none this client supports.
    #[error("no supported qop in {0:?}")]
    UnsupportedQop(String),
    /// An argument to `respond` cannot be put in a header (quote, backslash, control
    /// character, or an empty cnonce when a qop is used).
    #[error("invalid digest input: {0}")]
    InvalidInput(&'static str),
}

/// The hash algorithm of a challenge (RFC 7616 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `MD5` (the default when the challenge names none).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl DigestAlgorithm {
    /// The token as written in headers (`MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`).
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// True for the `-sess` variants.
    pub fn is_session(self) -> bool {
        matches!(self, DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess)
    }

    fn hash_hex(self, data: &[u8]) -> String {
        match self {
            DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => hex::encode(Md5::digest(data)),
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess => hex::encode(Sha256::digest(data)),
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DigestAlgorithm {
    type Err = DigestError;

    /// Case-insensitive; also accepts `SHA256` without the dash, as some servers send.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let alg = if t.eq_ignore_ascii_case("MD5") {
            DigestAlgorithm::Md5
        } else if t.eq_ignore_ascii_case("MD5-sess") {
            DigestAlgorithm::Md5Sess
        } else if t.eq_ignore_ascii_case("SHA-256") || t.eq_ignore_ascii_case("SHA256") {
            DigestAlgorithm::Sha256
        } else if t.eq_ignore_ascii_case("SHA-256-sess") || t.eq_ignore_ascii_case("SHA256-sess") {
            DigestAlgorithm::Sha256Sess
        } else {
            return Err(DigestError::UnsupportedAlgorithm(truncate_for_error(t)));
        };
        Ok(alg)
    }
}

/// A quality-of-protection value (RFC 7616 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `auth`: authentication of method and URI.
    Auth,
    /// `auth-int`: also covers the request body.
    AuthInt,
}

impl Qop {
    /// The token as written in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// The username and password used to answer a challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    /// The authentication user name (often the user part of the AOR).
    pub username: String,
    /// The password (never logged: `Debug` hides it).
    pub password: String,
}

impl DigestCredentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        DigestCredentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for DigestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestCredentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A parsed `WWW-Authenticate` or `Proxy-Authenticate` Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    /// The protection space (`realm`).
    pub realm: String,
    /// The server nonce.
    pub nonce: String,
    /// The opaque value, echoed unchanged in the response.
    pub opaque: Option<String>,
    /// The `algorithm` parameter as given, `None` when the challenge names none
    /// (then MD5 is used and no algorithm is written in the response).
    pub algorithm: Option<DigestAlgorithm>,
    /// The qop values offered that this client understands, in the server's order.
    /// Empty when the challenge has no `qop` (RFC 2069 form).
    pub qop: Vec<Qop>,
    /// True when the challenge had a `qop` parameter (even one naming only unknown values).
    pub qop_present: bool,
    /// `stale=true`: the previous nonce was stale, the credentials were right.
    pub stale: bool,
    /// `userhash=true` (RFC 7616): send `H(username:realm)` instead of the user name.
    pub userhash: bool,
    /// The `domain` parameter, if any (informational).
    pub domain: Option<String>,
}

impl FromStr for DigestChallenge {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DigestChallenge::parse(s)
    }
}

impl DigestChallenge {
    /// Parses a header value such as
    /// `Digest realm="a", nonce="b", qop="auth,auth-int", algorithm=SHA-256, opaque="c"`.
    ///
    /// Scheme and parameter names are case-insensitive; values may be quoted strings
    /// (with backslash escapes) or bare tokens; unknown parameters are ignored; a
    /// parameter given twice keeps its first value.
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        if value.len() > MAX_CHALLENGE_LEN {
            return Err(DigestError::TooLarge);
        }
        let s = value.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let scheme_end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
        let (scheme, rest) = s.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest(truncate_for_error(scheme)));
        }
        let params = parse_params(rest)?;

        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = None;
        let mut qop_raw: Option<String> = None;
        let mut stale = false;
        let mut userhash = false;
        let mut domain = None;
        for (name, val) in params {
            let set = |slot: &mut Option<String>, v: String| {
                if slot.is_none() {
                    *slot = Some(v);
                }
            };
            match name.to_ascii_lowercase().as_str() {
                "realm" => set(&mut realm, val),
                "nonce" => set(&mut nonce, val),
                "opaque" => set(&mut opaque, val),
                "domain" => set(&mut domain, val),
                "qop" => set(&mut qop_raw, val),
                "algorithm" if algorithm.is_none() => {
                    algorithm = Some(val.parse::<DigestAlgorithm>()?);
                }
                "stale" => stale = val.trim().eq_ignore_ascii_case("true"),
                "userhash" => userhash = val.trim().eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        let realm = realm.ok_or(DigestError::MissingParam("realm"))?;
        let nonce = nonce.ok_or(DigestError::MissingParam("nonce"))?;
        let mut qop = Vec::new();
        if let Some(raw) = &qop_raw {
            for item in raw.split(',') {
                let item = item.trim();
                let q = if item.eq_ignore_ascii_case("auth") {
                    Qop::Auth
                } else if item.eq_ignore_ascii_case("auth-int") {
                    Qop::AuthInt
                } else {
                    continue;
                };
                if !qop.contains(&q) {
                    qop.push(q);
                }
            }
        }
        Ok(DigestChallenge {
            realm,
            nonce,
            opaque,
            algorithm,
            qop,
            qop_present: qop_raw.is_some(),
            stale,
            userhash,
            domain,
        })
    }

    /// The algorithm in effect (MD5 when the challenge names none).
    pub fn effective_algorithm(&self) -> DigestAlgorithm {
        self.algorithm.unwrap_or(DigestAlgorithm::Md5)
    }

    /// The qop this client will use: `auth` when offered, else `auth-int`, else none
    /// (RFC 2069 form). Errors when the challenge has a `qop` naming only unknown values.
    pub fn chosen_qop(&self) -> Result<Option<Qop>, DigestError> {
        if self.qop.contains(&Qop::Auth) {
            Ok(Some(Qop::Auth))
        } else if self.qop.contains(&Qop::AuthInt) {
            Ok(Some(Qop::AuthInt))
        } else if self.qop_present {
            Err(DigestError::UnsupportedQop(String::from(
                "no auth or auth-int offered",
            )))
        } else {
            Ok(None)
        }
    }

    /// The `Authorization` / `Proxy-Authorization` header value for a request with an
    /// empty body (REGISTER, BYE, ...; with `qop=auth` the body is not covered anyway).
    ///
    /// `nc` is the nonce count (1 for the first use of this nonce, then 2, 3, ...),
    /// `cnonce` a client nonce (random, token characters). Both are only used when the
    /// challenge offers a qop.
    pub fn respond(
        &self,
        creds: &DigestCredentials,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> Result<String, DigestError> {
        self.respond_with_body(creds, method, uri, b"", nc, cnonce)
    }

    /// Like [`respond`](Self::respond), with the request body, which matters only when
    /// the server offers `auth-int` and not `auth`.
    pub fn respond_with_body(
        &self,
        creds: &DigestCredentials,
        method: &str,
        uri: &str,
        body: &[u8],
        nc: u32,
        cnonce: &str,
    ) -> Result<String, DigestError> {
        check_header_safe(&creds.username, "username")?;
        check_token(method, "method")?;
        check_header_safe(uri, "uri")?;
        if uri.is_empty() {
            return Err(DigestError::InvalidInput("uri is empty"));
        }
        let qop = self.chosen_qop()?;
        if qop.is_some() {
            check_header_safe(cnonce, "cnonce")?;
            if cnonce.is_empty() {
                return Err(DigestError::InvalidInput("cnonce is empty"));
            }
        }
        let alg = self.effective_algorithm();
        let nc_hex = format!("{nc:08x}");

        let mut ha1 =
            alg.hash_hex(format!("{}:{}:{}", creds.username, self.realm, creds.password).as_bytes());
        if alg.is_session() {
            ha1 = alg.hash_hex(format!("{ha1}:{}:{cnonce}", self.nonce).as_bytes());
        }
        let ha2 = match qop {
            Some(Qop::AuthInt) => {
                let body_hash = alg.hash_hex(body);
                alg.hash_hex(format!("{method}:{uri}:{body_hash}").as_bytes())
            }
            _ => alg.hash_hex(format!("{method}:{uri}").as_bytes()),
        };
        let response = match qop {
            Some(q) => alg
                .hash_hex(format!("{ha1}:{}:{nc_hex}:{cnonce}:{}:{ha2}", self.nonce, q.as_str()).as_bytes()),
            None => alg.hash_hex(format!("{ha1}:{}:{ha2}", self.nonce).as_bytes()),
        };

        let username = if self.userhash {
            alg.hash_hex(format!("{}:{}", creds.username, self.realm).as_bytes())
        } else {
            creds.username.clone()
        };
        let mut out = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\"",
            quote_escape(&username),
            quote_escape(&self.realm),
            quote_escape(&self.nonce),
            uri,
            response
        );
        if let Some(a) = self.algorithm {
            let _ = write!(out, ", algorithm={a}");
        }
        if let Some(q) = qop {
            let _ = write!(out, ", qop={}, nc={nc_hex}, cnonce=\"{cnonce}\"", q.as_str());
        }
        if let Some(o) = &self.opaque {
            let _ = write!(out, ", opaque=\"{}\"", quote_escape(o));
        }
        if self.userhash {
            out.push_str(", userhash=true");
        }
        Ok(out)
    }
}

/// Splits `name=value, name="quoted value", ...` into pairs.
fn parse_params(s: &str) -> Result<Vec<(String, String)>, DigestError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws_commas = |i: &mut usize| {
        while let Some(&b) = bytes.get(*i) {
            if b == b',' || b.is_ascii_whitespace() {
                *i += 1;
            } else {
                break;
            }
        }
    };
    let skip_ws = |i: &mut usize| {
        while bytes.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    loop {
        skip_ws_commas(&mut i);
        if i >= bytes.len() {
            break;
        }
        if out.len() >= MAX_PARAMS {
            return Err(DigestError::TooLarge);
        }
        let name_start = i;
        while let Some(&b) = bytes.get(i) {
            if b == b'=' || b == b',' || b.is_ascii_whitespace() {
                break;
            }
            if b == b'"' {
                return Err(DigestError::Malformed(String::from("quote in parameter name")));
            }
            i += 1;
        }
        let name = s.get(name_start..i).unwrap_or_default().to_string();
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(DigestError::Malformed(format!(
                "parameter {} has no value",
                truncate_for_error(&name)
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut v = Vec::new();
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(DigestError::Malformed(String::from("unterminated quoted string")));
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        match bytes.get(i + 1) {
                            Some(&c) => v.push(c),
                            None => {
                                return Err(DigestError::Malformed(String::from(
                                    "unterminated quoted string",
                                )));
                            }
                        }
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
                if v.len() > MAX_PARAM_VALUE_LEN {
                    return Err(DigestError::TooLarge);
                }
            }
            String::from_utf8(v).map_err(|_| DigestError::Malformed(String::from("value is not UTF-8")))?
        } else {
            let start = i;
            while let Some(&b) = bytes.get(i) {
                if b == b',' || b.is_ascii_whitespace() {
                    break;
                }
                i += 1;
            }
            if i - start > MAX_PARAM_VALUE_LEN {
                return Err(DigestError::TooLarge);
            }
            s.get(start..i).unwrap_or_default().to_string()
        };
        // After a value: whitespace, then a comma or the end.
        skip_ws(&mut i);
        match bytes.get(i) {
            None | Some(b',') => {}
            Some(_) => {
                return Err(DigestError::Malformed(format!(
                    "missing comma after {}",
                    truncate_for_error(&name)
                )));
            }
        }
        out.push((name, value));
    }
    Ok(out)
}

fn quote_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Rejects values that would break a quoted header parameter (uri, cnonce, username).
fn check_header_safe(s: &str, what: &'static str) -> Result<(), DigestError> {
    let bad = s.chars().any(|c| c.is_control());
    let quote_bad = what != "username" && s.contains(['"', '\\']);
    if bad || quote_bad {
        return Err(DigestError::InvalidInput(what));
    }
    Ok(())
}

fn check_token(s: &str, what: &'static str) -> Result<(), DigestError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DigestError::InvalidInput(what))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7616 section 3.9.1.
    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616(alg: &str) -> DigestChallenge {
        let v = format!(
            "Digest\n       realm=\"http-auth@example.org\",\n       qop=\"auth, auth-int\",\n       algorithm={alg},\n       nonce=\"{RFC7616_NONCE}\",\n       opaque=\"{RFC7616_OPAQUE}\""
        );
        DigestChallenge::parse(&v).unwrap()
    }

    fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
        let body = header.strip_prefix("Digest ")?;
        body.split(", ").find_map(|p| {
            let (n, v) = p.split_once('=')?;
            (n == name).then_some(v)
        })
    }

    #[test]
    fn rfc7616_md5() {
        let c = rfc7616("MD5");
        assert_eq!(c.qop, vec![Qop::Auth, Qop::AuthInt]);
        let creds = DigestCredentials::new("Mufasa", "Circle of Life");
        let h = c
            .respond(&creds, "GET", "/dir/index.html", 1, RFC7616_CNONCE)
            .unwrap();
        assert_eq!(
            param(&h, "response"),
            Some("\"8ca523f5e9506fed4657c9700eebdbec\"")
        );
        assert_eq!(param(&h, "qop"), Some("auth"));
        assert_eq!(param(&h, "nc"), Some("00000001"));
        assert_eq!(param(&h, "algorithm"), Some("MD5"));
        assert_eq!(
            param(&h, "opaque").map(String::from),
            Some(format!("\"{RFC7616_OPAQUE}\""))
        );
        assert_eq!(param(&h, "realm"), Some("\"http-auth@example.org\""));
        assert_eq!(param(&h, "uri"), Some("\"/dir/index.html\""));
    }

    #[test]
    fn rfc7616_sha256() {
        let c = rfc7616("SHA-256");
        let creds = DigestCredentials::new("Mufasa", "Circle of Life");
        let h = c
            .respond(&creds, "GET", "/dir/index.html", 1, RFC7616_CNONCE)
            .unwrap();
        assert_eq!(
            param(&h, "response"),
            Some("\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\"")
        );
        assert_eq!(param(&h, "algorithm"), Some("SHA-256"));
    }

    #[test]
    fn rfc2617_section_3_5() {
        let c = DigestChallenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(c.algorithm, None);
        let creds = DigestCredentials::new("Mufasa", "Circle Of Life");
        let h = c
            .respond(&creds, "GET", "/dir/index.html", 1, "0a4f113b")
            .unwrap();
        assert_eq!(
            param(&h, "response"),
            Some("\"6629fae49393a05397450978507c4ef1\"")
        );
        // No algorithm in the challenge: none echoed.
        assert_eq!(param(&h, "algorithm"), None);
        assert_eq!(param(&h, "cnonce"), Some("\"0a4f113b\""));
    }

    /// Reference computed independently (Python hashlib) for the -sess variants:
    /// HA1 = H(H(user:realm:pass):nonce:cnonce).
    #[test]
    fn sess_variants() {
        let creds = DigestCredentials::new("Mufasa", "Circle of Life");
        let md5s = rfc7616("MD5-sess")
            .respond(&creds, "GET", "/dir/index.html", 1, RFC7616_CNONCE)
            .unwrap();
        assert_eq!(
            param(&md5s, "response"),
            Some("\"e783283f46242139c486a698fec7211d\"")
        );
        assert_eq!(param(&md5s, "algorithm"), Some("MD5-sess"));
        let shas = rfc7616("SHA-256-sess")
            .respond(&creds, "GET", "/dir/index.html", 1, RFC7616_CNONCE)
            .unwrap();
        assert_eq!(
            param(&shas, "response"),
            Some("\"2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7\"")
        );
        assert_eq!(param(&shas, "algorithm"), Some("SHA-256-sess"));
    }

    #[test]
    fn no_qop_rfc2069_form() {
        let c = DigestChallenge::parse(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
        )
        .unwrap();
        let creds = DigestCredentials::new("Mufasa", "Circle Of Life");
        let h = c.respond(&creds, "GET", "/dir/index.html", 7, "ignored").unwrap();
        // MD5(MD5(A1):nonce:MD5(A2)) computed independently.
        assert_eq!(
            param(&h, "response"),
            Some("\"670fd8c2df070c60b045671b8b24ff02\"")
        );
        assert_eq!(param(&h, "qop"), None);
        assert_eq!(param(&h, "nc"), None);
        assert_eq!(param(&h, "cnonce"), None);
    }

    #[test]
    fn auth_int_only_uses_body() {
        let c = DigestChallenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\", algorithm=MD5")
            .unwrap();
        let creds = DigestCredentials::new("u", "p");
        let a = c
            .respond_with_body(&creds, "INVITE", "sip:x@y", b"v=0\r\n", 1, "c")
            .unwrap();
        let b = c
            .respond_with_body(&creds, "INVITE", "sip:x@y", b"", 1, "c")
            .unwrap();
        assert_eq!(param(&a, "qop"), Some("auth-int"));
        assert_ne!(param(&a, "response"), param(&b, "response"));
        // Reference: HA2 = MD5("INVITE:sip:x@y:" + MD5("v=0\r\n")).
        let ha1 = hex::encode(Md5::digest(b"u:r:p"));
        let hb = hex::encode(Md5::digest(b"v=0\r\n"));
        let ha2 = hex::encode(Md5::digest(format!("INVITE:sip:x@y:{hb}").as_bytes()));
        let want = hex::encode(Md5::digest(
            format!("{ha1}:n:00000001:c:auth-int:{ha2}").as_bytes(),
        ));
        assert_eq!(
            param(&a, "response").map(String::from),
            Some(format!("\"{want}\""))
        );
    }

    #[test]
    fn tolerant_parsing() {
        let c = DigestChallenge::parse(
            "  dIgEsT   REALM = example.com ,NONCE=abc,, foo=\"b,a=r\" , stale=TRUE,\
             QOP=\"Auth\",algorithm=sha-256 , opaque=\"q\\\"x\"",
        )
        .unwrap();
        assert_eq!(c.realm, "example.com");
        assert_eq!(c.nonce, "abc");
        assert!(c.stale);
        assert_eq!(c.qop, vec![Qop::Auth]);
        assert_eq!(c.algorithm, Some(DigestAlgorithm::Sha256));
        assert_eq!(c.opaque.as_deref(), Some("q\"x"));
        // Opaque re-escaped in the response.
        let h = c
            .respond(
                &DigestCredentials::new("a", "b"),
                "REGISTER",
                "sip:example.com",
                0x1a,
                "cn",
            )
            .unwrap();
        assert!(h.contains("opaque=\"q\\\"x\""), "{h}");
        assert!(h.contains("nc=0000001a"), "{h}");
    }

    #[test]
    fn kamailio_style_challenge() {
        let c = DigestChallenge::parse(
            "Digest realm=\"127.0.0.1\", nonce=\"ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=\", qop=\"auth\"",
        )
        .unwrap();
        assert_eq!(c.effective_algorithm(), DigestAlgorithm::Md5);
        assert_eq!(c.chosen_qop().unwrap(), Some(Qop::Auth));
    }

    #[test]
    fn errors_not_panics() {
        use DigestError::*;
        assert!(matches!(
            DigestChallenge::parse("Basic realm=\"x\""),
            Err(NotDigest(_))
        ));
        assert!(matches!(DigestChallenge::parse(""), Err(NotDigest(_))));
        assert_eq!(
            DigestChallenge::parse("Digest nonce=\"n\""),
            Err(MissingParam("realm"))
        );
        assert_eq!(
            DigestChallenge::parse("Digest realm=\"r\""),
            Err(MissingParam("nonce"))
        );
        assert!(matches!(
            DigestChallenge::parse("Digest realm=\"r"),
            Err(Malformed(_))
        ));
        assert!(matches!(
            DigestChallenge::parse("Digest realm"),
            Err(Malformed(_))
        ));
        assert!(matches!(
            DigestChallenge::parse("Digest realm=a b"),
            Err(Malformed(_))
        ));
        assert!(matches!(
            DigestChallenge::parse("Digest realm=r, nonce=n, algorithm=SHA-512-256"),
            Err(UnsupportedAlgorithm(_))
        ));
        let big = format!("Digest realm=\"{}\", nonce=n", "x".repeat(MAX_CHALLENGE_LEN));
        assert_eq!(DigestChallenge::parse(&big), Err(TooLarge));
        let long_val = format!(
            "Digest realm=\"{}\", nonce=n",
            "x".repeat(MAX_PARAM_VALUE_LEN + 1)
        );
        assert_eq!(DigestChallenge::parse(&long_val), Err(TooLarge));
        let many = format!("Digest realm=r, nonce=n{}", ", a=b".repeat(MAX_PARAMS));
        assert_eq!(DigestChallenge::parse(&many), Err(TooLarge));

        let c = DigestChallenge::parse("Digest realm=r, nonce=n, qop=\"auth-conf\"").unwrap();
        let creds = DigestCredentials::new("u", "p");
        assert!(matches!(
            c.respond(&creds, "REGISTER", "sip:r", 1, "c"),
            Err(UnsupportedQop(_))
        ));
        let c = DigestChallenge::parse("Digest realm=r, nonce=n, qop=auth").unwrap();
        assert!(matches!(
            c.respond(&creds, "REGISTER", "sip:r", 1, ""),
            Err(InvalidInput(_))
        ));
        assert!(matches!(
            c.respond(&creds, "REGISTER", "sip:r", 1, "a\"b"),
            Err(InvalidInput(_))
        ));
        assert!(matches!(
            c.respond(&creds, "REG ISTER", "sip:r", 1, "c"),
            Err(InvalidInput(_))
        ));
        assert!(matches!(
            c.respond(&creds, "REGISTER", "sip:r\r\nX: y", 1, "c"),
            Err(InvalidInput(_))
        ));
    }

    #[test]
    fn username_with_quote_is_escaped_and_userhash() {
        let c = DigestChallenge::parse("Digest realm=r, nonce=n, userhash=true, algorithm=SHA-256").unwrap();
        let h = c
            .respond(&DigestCredentials::new("bob", "p"), "REGISTER", "sip:r", 1, "c")
            .unwrap();
        let uh = hex::encode(Sha256::digest(b"bob:r"));
        assert_eq!(param(&h, "username").map(String::from), Some(format!("\"{uh}\"")));
        assert_eq!(param(&h, "userhash"), Some("true"));
        let c = DigestChallenge::parse("Digest realm=r, nonce=n").unwrap();
        let h = c
            .respond(&DigestCredentials::new("a\"b", "p"), "REGISTER", "sip:r", 1, "c")
            .unwrap();
        assert!(h.starts_with("Digest username=\"a\\\"b\""), "{h}");
    }

    #[test]
    fn credentials_debug_hides_password() {
        let d = format!("{:?}", DigestCredentials::new("u", "topsecret"));
        assert!(!d.contains("topsecret"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,600}") {
            let _ = DigestChallenge::parse(&s);
            let _ = DigestChallenge::parse(&format!("Digest {s}"));
        }

        #[test]
        fn respond_never_panics(realm in "[ -~]{0,40}", nonce in "[ -~]{0,40}", uri in "[ -~]{0,40}", nc: u32, cnonce in "[ -~]{0,20}") {
            let v = format!("Digest realm=\"{}\", nonce=\"{}\", qop=auth, algorithm=SHA-256-sess", quote_escape(&realm), quote_escape(&nonce));
            let c = DigestChallenge::parse(&v).unwrap();
            proptest::prop_assert_eq!(&c.realm, &realm);
            let _ = c.respond(&DigestCredentials::new("u", "p"), "INVITE", &uri, nc, &cnonce);
        }
    }
}
