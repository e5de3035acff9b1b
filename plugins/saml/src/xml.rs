//! XML handling samael leaves to its caller: screening a message before libxml2 and xmlsec
//! see it, the HTTP-Redirect binding (DEFLATE + base64, query signatures), and escaping for
//! the XML this plugin writes.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Verifier;
use openssl::x509::X509;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use std::io::{Read, Write};

const RSA_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#rsa-sha1";
const SHA1: &str = "http://www.w3.org/2000/09/xmldsig#sha1";
/// Signature algorithms accepted on messages (SHA-1 only when a module allows it).
const SIGNATURE_ALGORITHMS: [&str; 4] = [
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
];
const DIGEST_ALGORITHMS: [&str; 3] = [
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];
/// The transforms the SAML signature profile uses; anything else (XSLT, XPath, comments kept)
/// is refused.
const TRANSFORMS: [&str; 3] = [
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
];
/// Largest inflated Redirect-binding message.
const MAX_INFLATED: u64 = 256 * 1024;

/// What a screened document is, and so what it may hold.
#[derive(Clone, Copy)]
enum Kind {
    /// A SAML message (Response, LogoutRequest, LogoutResponse): nothing but elements, text and
    /// same-document signatures; the signature rules hold for every element of their names.
    Message,
    /// An IdP's metadata: comments are allowed (Shibboleth's generated metadata opens with one);
    /// the signature rules hold inside signatures only, since metadata also advertises
    /// algorithms it supports (`alg:DigestMethod` and `alg:SigningMethod` in `md:Extensions`,
    /// the Metadata Profile for Algorithm Support) and names the digests of its encryption keys.
    Metadata,
}

/// Refuses what a SAML message never needs and attacks use: a DOCTYPE (entity expansion,
/// external entities), comments and CDATA (text split so that a signed value reads as another),
/// processing instructions, references to anything but a same-document element, transforms
/// outside the SAML profile, and signature or digest algorithms not allowed. Then the message
/// must be well-formed XML with every namespace prefix declared ([`parse_strict`]): xmlsec's
/// libxml2 parses in recovery mode, and must never be the one to make sense of a broken message
/// (an unclosed root, a duplicate attribute, `&#0;`, an undeclared prefix around an intact
/// signed Assertion).
pub fn screen(xml: &str, allow_sha1: bool) -> Result<(), String> {
    screen_as(xml, allow_sha1, Kind::Message)?;
    parse_strict(xml).map(drop)
}

/// The screening of IdP metadata: no DOCTYPE or entities, UTF-8, one root; comments allowed;
/// inside its signature (if it has one) the same references, transforms and algorithms as in a
/// message. Well-formedness is checked by the reader ([`parse_strict`]).
pub fn screen_metadata(xml: &str, allow_sha1: bool) -> Result<(), String> {
    screen_as(xml, allow_sha1, Kind::Metadata)
}

/// Most attributes (namespace declarations included) one element may carry; real messages and
/// metadata carry up to about ten.
const MAX_ATTRIBUTES: usize = 32;
/// Most namespace declarations in scope at one element (the sum over it and its ancestors, a
/// redeclaration counted again); real documents have up to about ten.
const MAX_NAMESPACES_IN_SCOPE: usize = 32;
/// Deepest nesting of elements (a Response or metadata nests some ten deep; libxml2 stops at
/// 256 and, in recovery mode, keeps what it read).
const MAX_DEPTH: usize = 64;

/// Bounds what makes parsing cost more than linear, before the strict parser runs: roxmltree
/// compares each attribute of an element with the ones before it and copies the namespaces in
/// scope at every element that declares one, so a document of tens of thousands of attributes
/// on one element, or of namespace declarations nested in each other, takes seconds to minutes
/// of CPU for some hundred kilobytes. Answers the element's namespace declarations.
fn check_shape(element: &BytesStart<'_>, depth: usize, in_scope: usize) -> Result<usize, String> {
    if depth >= MAX_DEPTH {
        return Err(format!("the document nests elements more than {MAX_DEPTH} deep"));
    }
    let mut attributes = 0usize;
    let mut declarations = 0usize;
    for attribute in element.attributes().with_checks(false).flatten() {
        attributes += 1;
        declarations += usize::from(attribute.key.as_namespace_binding().is_some());
    }
    if attributes > MAX_ATTRIBUTES {
        return Err(format!(
            "an element has {attributes} attributes, more than the {MAX_ATTRIBUTES} accepted"
        ));
    }
    if in_scope + declarations > MAX_NAMESPACES_IN_SCOPE {
        return Err(format!(
            "an element has more than {MAX_NAMESPACES_IN_SCOPE} namespace declarations in scope"
        ));
    }
    Ok(declarations)
}

fn screen_as(xml: &str, allow_sha1: bool, kind: Kind) -> Result<(), String> {
    let mut reader = Reader::from_str(xml);
    let mut depth = 0usize;
    // The namespace declarations of each open element, and their sum.
    let mut declared: Vec<usize> = Vec::new();
    let mut in_scope = 0usize;
    let mut seen_root = false;
    // Depth of the element inside which signature rules hold (metadata: a `Signature`).
    let mut signature_depth: Option<usize> = None;
    loop {
        let checked = |depth: usize, signature_depth: Option<usize>| {
            matches!(kind, Kind::Message) || signature_depth.is_some_and(|d| depth >= d)
        };
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(()),
            // libxml2 decodes by the declared encoding, this screen by UTF-8: they must agree,
            // or a UTF-7 message would hide from the screen what libxml2 then sees.
            Ok(Event::Decl(declaration)) => {
                let encoding = declaration.encoding().transpose().map_err(|e| e.to_string())?;
                if let Some(encoding) = encoding.filter(|e| !e.eq_ignore_ascii_case(b"utf-8")) {
                    return Err(format!(
                        "the document declares the encoding {}",
                        String::from_utf8_lossy(&encoding)
                    ));
                }
            }
            Ok(Event::Start(element)) => {
                let declarations = check_shape(&element, depth, in_scope)?;
                declared.push(declarations);
                in_scope += declarations;
                if signature_depth.is_none() && element.local_name().as_ref() == b"Signature" {
                    signature_depth = Some(depth);
                }
                if checked(depth, signature_depth) {
                    check_element(&element, allow_sha1)?;
                }
                if depth == 0 && std::mem::replace(&mut seen_root, true) {
                    return Err("the document has more than one root element".into());
                }
                depth += 1;
            }
            Ok(Event::Empty(element)) => {
                check_shape(&element, depth, in_scope)?;
                if checked(depth, signature_depth) {
                    check_element(&element, allow_sha1)?;
                }
                if depth == 0 && std::mem::replace(&mut seen_root, true) {
                    return Err("the document has more than one root element".into());
                }
            }
            Ok(Event::End(_)) => {
                depth = depth.saturating_sub(1);
                in_scope -= declared.pop().unwrap_or_default();
                if signature_depth == Some(depth) {
                    signature_depth = None;
                }
            }
            Ok(Event::Text(text)) if depth == 0 && !text.iter().all(u8::is_ascii_whitespace) => {
                return Err("the document has text outside its root element".into());
            }
            Ok(Event::GeneralRef(_)) if depth == 0 => {
                return Err("the document has a reference outside its root element".into());
            }
            Ok(Event::DocType(_)) => return Err("the document has a DOCTYPE".into()),
            Ok(Event::Comment(_)) if matches!(kind, Kind::Message) => {
                return Err("the message has an XML comment".into())
            }
            Ok(Event::CData(_)) => return Err("the document has a CDATA section".into()),
            Ok(Event::PI(_)) => return Err("the document has a processing instruction".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("the document is not well-formed XML: {e}")),
        }
    }
}

fn check_element(element: &BytesStart<'_>, allow_sha1: bool) -> Result<(), String> {
    let name = element.local_name();
    let attribute = |key: &[u8]| -> Option<String> {
        element
            .attributes()
            .flatten()
            .find(|a| a.key.local_name().as_ref() == key)
            .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()))
    };
    match name.as_ref() {
        b"Reference" => match attribute(b"URI") {
            Some(uri) if uri.len() > 1 && uri.starts_with('#') => Ok(()),
            other => Err(format!(
                "a signature reference points at {other:?}, not at an element of the message"
            )),
        },
        b"Transform" => match attribute(b"Algorithm") {
            Some(a) if TRANSFORMS.contains(&a.as_str()) => Ok(()),
            other => Err(format!("the signature transform {other:?} is not allowed")),
        },
        b"SignatureMethod" => match attribute(b"Algorithm") {
            Some(a) if SIGNATURE_ALGORITHMS.contains(&a.as_str()) || (allow_sha1 && a == RSA_SHA1) => Ok(()),
            other => Err(format!("the signature algorithm {other:?} is not allowed")),
        },
        b"DigestMethod" => match attribute(b"Algorithm") {
            Some(a) if DIGEST_ALGORITHMS.contains(&a.as_str()) || (allow_sha1 && a == SHA1) => Ok(()),
            other => Err(format!("the digest algorithm {other:?} is not allowed")),
        },
        b"RetrievalMethod" => Err("the message asks to fetch a key (RetrievalMethod)".into()),
        _ => Ok(()),
    }
}

/// Most nodes a SAML document may have (a Response has some hundred; Entra ID's metadata, a
/// large one, some two thousand).
const MAX_NODES: u32 = 100_000;

/// Parses `xml` strictly: well-formed (tags closed and matched, attributes quoted and unique,
/// character references to XML characters only), every namespace prefix declared, no DTD.
pub fn parse_strict(xml: &str) -> Result<roxmltree::Document<'_>, String> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| format!("the document is not well-formed XML: {e}"))?;
    check_character_references(xml)?;
    Ok(document)
}

/// Every character reference must name an XML character (XML 1.0, production [2] and WFC
/// "Legal Character"). roxmltree reads a surrogate (`&#xD800;`) or a code point beyond Unicode
/// (`&#x110000;`) as U+FFFD where libxml2 drops it and recovers; both are refused. Run on a
/// document roxmltree accepted, where `&#` opens a reference everywhere but in a comment (so a
/// comment naming such a reference is refused too; other `&#` in a comment are left alone).
fn check_character_references(xml: &str) -> Result<(), String> {
    for (at, _) in xml.match_indices("&#") {
        let rest = &xml[at + 2..];
        let length = rest.bytes().take_while(|b| b.is_ascii_hexdigit() || *b == b'x').count();
        let (reference, after) = rest.split_at(length);
        if !after.starts_with(';') {
            continue;
        }
        let code = match reference.strip_prefix('x') {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => reference.parse::<u32>(),
        };
        let legal = code.ok().and_then(char::from_u32).is_some_and(
            |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
        );
        if !legal {
            let shown: String = reference.chars().take(12).collect();
            return Err(format!(
                "the document is not well-formed XML: &#{shown}; is not an XML character"
            ));
        }
    }
    Ok(())
}

/// Where a Response may carry XML signatures (SAML core 5.4.2): each an immediate child of the
/// Response or of an Assertion that is an immediate child of it, with exactly one Reference, to
/// that parent's ID. A signature anywhere else (inside another signature, an Extensions, an
/// Advice) or covering anything else is refused before xmlsec sees the message, so that which
/// signed part samael then reads cannot be steered. Answers whether the Response itself is
/// signed.
pub fn check_signatures(xml: &str) -> Result<bool, String> {
    struct Open {
        depth: usize,
        reference: String,
        references: usize,
    }
    let mut reader = Reader::from_str(xml);
    // Local names and IDs of the open elements, root first.
    let mut path: Vec<(Vec<u8>, Option<String>)> = Vec::new();
    let mut signature: Option<Open> = None;
    let mut response_signed = false;
    loop {
        let (element, empty) = match reader.read_event() {
            Ok(Event::Start(e)) => (e, false),
            Ok(Event::Empty(e)) => (e, true),
            Ok(Event::End(_)) => {
                path.pop();
                if let Some(open) = signature.take_if(|open| open.depth == path.len()) {
                    if open.references != 1 {
                        return Err(format!("a signature has {} references, not one", open.references));
                    }
                }
                continue;
            }
            Ok(Event::Eof) => return Ok(response_signed),
            Err(e) => return Err(format!("the message is not well-formed XML: {e}")),
            Ok(_) => continue,
        };
        let name = element.local_name().as_ref().to_vec();
        let attribute = |key: &[u8]| {
            element
                .attributes()
                .flatten()
                .find(|a| a.key.as_ref() == key)
                .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()))
        };
        match name.as_slice() {
            b"Signature" => {
                let names: Vec<&[u8]> = path.iter().map(|(n, _)| n.as_slice()).collect();
                let placed = matches!(names.as_slice(), [b"Response"] | [b"Response", b"Assertion"]);
                let parent_id = path.last().and_then(|(_, id)| id.clone());
                let (Some(id), true, None) = (parent_id, placed, &signature) else {
                    return Err("a signature is not an immediate child of the Response or of its Assertion".into());
                };
                if empty {
                    return Err("an empty signature".into());
                }
                response_signed |= path.len() == 1;
                signature = Some(Open {
                    depth: path.len(),
                    reference: format!("#{id}"),
                    references: 0,
                });
            }
            b"Reference" => {
                if let Some(open) = signature.as_mut() {
                    if attribute(b"URI").as_deref() != Some(open.reference.as_str()) {
                        return Err(format!("a signature does not cover its parent {}", open.reference));
                    }
                    open.references += 1;
                }
            }
            _ => {}
        }
        if !empty {
            path.push((name, attribute(b"ID")));
        }
    }
}

/// The `Value`s of the message's status code (its `Status`'s `StatusCode`) and the codes
/// nested in it, top-level first; empty when the message does not parse.
pub fn status_codes(xml: &str) -> Vec<String> {
    let Ok(document) = parse_strict(xml) else {
        return Vec::new();
    };
    let mut codes = Vec::new();
    let status = document
        .root_element()
        .children()
        .find(|n| n.tag_name().name() == "Status");
    let mut code = status.and_then(|s| s.children().find(|n| n.tag_name().name() == "StatusCode"));
    while let Some(node) = code {
        codes.push(node.attribute("Value").unwrap_or_default().to_string());
        code = node.children().find(|n| n.tag_name().name() == "StatusCode");
    }
    codes
}

/// The attribute `name` of the root element.
pub fn root_attribute(xml: &str, name: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == name.as_bytes())
                    .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok().map(|v| v.into_owned()));
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The local name of the root element.
pub fn element_name(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The text of the first element with local name `name` (e.g. `NameID`, `Issuer`).
pub fn element_text(xml: &str, name: &str) -> Option<String> {
    element_texts(xml, name, 1)?.pop()
}

/// The texts of the first `most` elements with local name `name` (e.g. a LogoutRequest's
/// `SessionIndex`es), in document order; `None` if the XML is malformed before them.
pub fn element_texts(xml: &str, name: &str, most: usize) -> Option<Vec<String>> {
    let mut reader = Reader::from_str(xml);
    let mut texts = Vec::new();
    let mut text: Option<String> = None;
    while texts.len() < most {
        match (reader.read_event(), text.as_mut()) {
            (Ok(Event::Start(e)), None) if e.local_name().as_ref() == name.as_bytes() => text = Some(String::new()),
            (Ok(Event::Text(t)), Some(text)) => text.push_str(&t.xml_content(XmlVersion::Implicit1_0).ok()?),
            (Ok(Event::GeneralRef(r)), Some(text)) => {
                let reference = format!("&{};", r.decode().ok()?);
                text.push_str(&quick_xml::escape::unescape(&reference).ok()?);
            }
            (Ok(Event::End(_)), Some(_)) => texts.extend(text.take().map(|t| t.trim().to_string())),
            (Ok(Event::Eof), _) => break,
            (Err(_), _) => return None,
            _ => {}
        }
    }
    Some(texts)
}

pub use portcullis_plugin_sdk::escape;

/// DEFLATE + base64, as the HTTP-Redirect binding carries a message.
pub fn deflate_base64(xml: &str) -> Result<String, String> {
    let mut encoder = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(xml.as_bytes()).map_err(|e| e.to_string())?;
    let compressed = encoder.finish().map_err(|e| e.to_string())?;
    Ok(BASE64.encode(compressed))
}

/// Decodes a HTTP-Redirect binding message (base64 + DEFLATE), bounded in size.
pub fn inflate_base64(encoded: &str) -> Result<String, String> {
    let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let compressed = BASE64
        .decode(compact)
        .map_err(|_| "the message is not base64".to_string())?;
    let mut xml = String::new();
    DeflateDecoder::new(compressed.as_slice())
        .take(MAX_INFLATED)
        .read_to_string(&mut xml)
        .map_err(|_| "the message is not DEFLATE-compressed UTF-8".to_string())?;
    Ok(xml)
}

/// Builds a signed HTTP-Redirect binding URL: `destination?<kind>=…[&RelayState=…]&SigAlg=…&Signature=…`.
pub fn signed_redirect(
    destination: &str,
    kind: &str,
    xml: &str,
    relay_state: Option<&str>,
    key: &PKey<Private>,
) -> Result<String, String> {
    let mut url = url::Url::parse(destination).map_err(|e| format!("bad destination {destination}: {e}"))?;
    url.query_pairs_mut().append_pair(kind, &deflate_base64(xml)?);
    if let Some(relay_state) = relay_state {
        url.query_pairs_mut().append_pair("RelayState", relay_state);
    }
    samael::crypto::sign_url(url, key)
        .map(|u| u.to_string())
        .map_err(|e| format!("signing the redirect: {e}"))
}

/// An HTTP-Redirect binding message whose signature verified: the values the signature covers,
/// decoded. Use only these.
pub struct VerifiedRedirect {
    /// `SAMLRequest` or `SAMLResponse`.
    pub kind: &'static str,
    /// The message, base64 + DEFLATE (see [`inflate_base64`]).
    pub message: String,
    pub relay_state: Option<String>,
}

/// The SAML parameters of a Redirect-binding query, raw: each name written exactly (never
/// percent-encoded) and at most once, so that what is verified is what is read.
fn redirect_parameters(raw_query: &str) -> Result<Vec<(&str, &str)>, String> {
    const NAMES: [&str; 5] = ["SAMLRequest", "SAMLResponse", "RelayState", "SigAlg", "Signature"];
    let mut found: Vec<(&str, &str)> = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = portcullis_plugin_sdk::percent_decode(&name.replace('+', " "));
        if NAMES.contains(&decoded.as_str()) && decoded != name {
            return Err(format!("the parameter name {name} is percent-encoded"));
        }
        if NAMES.contains(&name) {
            if found.iter().any(|(n, _)| *n == name) {
                return Err(format!("the parameter {name} appears twice"));
            }
            found.push((name, value));
        }
    }
    Ok(found)
}

/// Checks the signature of an HTTP-Redirect binding message against the IdP's certificates,
/// over the parameters exactly as they arrived (saml-bindings 3.4.4.1), and returns what it
/// covers.
pub fn verify_redirect(raw_query: &str, certs: &[X509], allow_sha1: bool) -> Result<VerifiedRedirect, String> {
    let parameters = redirect_parameters(raw_query)?;
    let raw = |name: &str| parameters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let (kind, message) = match (raw("SAMLRequest"), raw("SAMLResponse")) {
        (Some(m), None) => ("SAMLRequest", m),
        (None, Some(m)) => ("SAMLResponse", m),
        _ => return Err("exactly one of SAMLRequest and SAMLResponse is expected".into()),
    };
    let (Some(sig_alg), Some(signature)) = (raw("SigAlg"), raw("Signature")) else {
        return Err("the message is not signed".into());
    };
    let mut signed = format!("{kind}={message}");
    if let Some(relay_state) = raw("RelayState") {
        signed.push_str("&RelayState=");
        signed.push_str(relay_state);
    }
    signed.push_str("&SigAlg=");
    signed.push_str(sig_alg);
    let digest = match portcullis_plugin_sdk::percent_decode(sig_alg).as_str() {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" | "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256" => {
            MessageDigest::sha256()
        }
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384" => MessageDigest::sha384(),
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512" => MessageDigest::sha512(),
        RSA_SHA1 if allow_sha1 => MessageDigest::sha1(),
        other => return Err(format!("the signature algorithm {other} is not allowed")),
    };
    let form_decoded = |v: &str| portcullis_plugin_sdk::percent_decode(&v.replace('+', " "));
    let signature = BASE64
        .decode(portcullis_plugin_sdk::percent_decode(signature).replace(' ', "+"))
        .map_err(|_| "the signature is not base64".to_string())?;
    for cert in certs {
        let Ok(key) = cert.public_key() else { continue };
        let Ok(mut verifier) = Verifier::new(digest, &key) else {
            continue;
        };
        if verifier.update(signed.as_bytes()).is_ok() && verifier.verify(&signature).unwrap_or(false) {
            return Ok(VerifiedRedirect {
                kind,
                // base64 has `+`, which a form decoder would read as a space.
                message: portcullis_plugin_sdk::percent_decode(message),
                relay_state: raw("RelayState").map(form_decoded),
            });
        }
    }
    Err("the signature does not verify with the IdP's certificate".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_sit_on_the_response_and_its_assertions_and_cover_their_parent() {
        let sig = |id: &str| {
            format!(r##"<ds:Signature><ds:SignedInfo><ds:Reference URI="#{id}"/></ds:SignedInfo></ds:Signature>"##)
        };
        let assertion = |id: &str| {
            format!(
                r#"<saml:Assertion ID="{id}"><saml:Issuer/>{}</saml:Assertion>"#,
                sig(id)
            )
        };
        let response = |inner: &str| format!(r#"<samlp:Response ID="r"><saml:Issuer/>{inner}</samlp:Response>"#);
        assert_eq!(
            check_signatures(&response(&format!("{}{}", sig("r"), assertion("a")))),
            Ok(true)
        );
        assert_eq!(check_signatures(&response(&assertion("a"))), Ok(false));
        assert_eq!(
            check_signatures(&response(&format!("{}{}", assertion("a"), assertion("b")))),
            Ok(false)
        );
        for (bad, why) in [
            (response(&format!("<samlp:Extensions>{}</samlp:Extensions>", assertion("a"))), "in Extensions"),
            (response(&sig("a")), "Response signature covering something else"),
            (assertion("a"), "a bare Assertion"),
            (
                response(&assertion("a").replace("<saml:Issuer/>", &format!("<saml:Advice>{}</saml:Advice>", assertion("b")))),
                "in an Advice",
            ),
            (
                response(&sig("r").replace("</ds:SignedInfo>", r##"<ds:Reference URI="#r"/></ds:SignedInfo>"##)),
                "two references",
            ),
            (
                response(&sig("r").replace("</ds:SignedInfo>", "</ds:SignedInfo><ds:Object>").replace(
                    "</ds:Signature>",
                    &format!("{}</ds:Object></ds:Signature>", assertion("b")),
                )),
                "inside another signature",
            ),
            (response("<ds:Signature/>"), "empty"),
            (r##"<samlp:Response><ds:Signature><ds:SignedInfo><ds:Reference URI="#"/></ds:SignedInfo></ds:Signature></samlp:Response>"##.to_string(), "parent without ID"),
        ] {
            assert!(check_signatures(&bad).is_err(), "{why}: {bad}");
        }
    }

    #[test]
    fn screening_refuses_what_saml_never_needs() {
        let ok = r##"<Response><ds:Reference xmlns:ds="x" URI="#_a"/><Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></Response>"##;
        assert_eq!(screen(ok, false), Ok(()));
        for (bad, why) in [
            (r#"<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>"#, "DOCTYPE"),
            ("<r><NameID>a@x<!---->.evil</NameID></r>", "comment"),
            ("<r><NameID>a<![CDATA[b]]></NameID></r>", "CDATA"),
            ("<r><?xml-stylesheet href='x'?></r>", "processing instruction"),
            (
                "<?xml version=\"1.0\" encoding=\"UTF-7\"?><r><ds:+AFI-eference URI=\"http://evil/\"/></r>",
                "encoding",
            ),
            ("<r/><r/>", "more than one root"),
            ("<r/>+ADw-x", "text outside"),
            (r#"<r><Reference URI="http://evil/"/></r>"#, "reference"),
            (r#"<r><Reference URI=""/></r>"#, "reference"),
            (
                r#"<r><Transform Algorithm="http://www.w3.org/TR/1999/REC-xslt-19991116"/></r>"#,
                "transform",
            ),
            (
                r#"<r><SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/></r>"#,
                "signature algorithm",
            ),
            (
                r#"<r><DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/></r>"#,
                "digest algorithm",
            ),
            ("<r><a>", "well-formed"),
            (r#"<r a="1" a="2"/>"#, "well-formed"),
            ("<r a=1/>", "well-formed"),
            (r#"<r a="&#0;"/>"#, "well-formed"),
            ("<r>&#xFFFE;</r>", "well-formed"),
            ("<r>&#xD800;</r>", "well-formed"),
            (r#"<r a="&#57343;"/>"#, "well-formed"),
            ("<r>&#x110000;</r>", "well-formed"),
            (r#"<r p:a="1"/>"#, "well-formed"),
            ("<p:r/>", "well-formed"),
            ("<r></s>", "well-formed"),
            ("<r>&unknown;</r>", "well-formed"),
        ] {
            let error = screen(bad, false).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(
            screen(
                r#"<r><SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/></r>"#,
                true
            ),
            Ok(())
        );
        assert_eq!(
            screen("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<r/>\n", false),
            Ok(())
        );
        assert_eq!(
            screen(
                r#"<r a="&#9;&#x41;">&#65;&#xD7FF;&#xE000;&#xFFFD;&#x1F600;&#x10FFFF;</r>"#,
                false
            ),
            Ok(())
        );
        // In a comment (metadata), `&#` that opens no reference is text.
        assert!(parse_strict(&format!("<r><!-- &# &#12 &#x {} --></r>", "&#".repeat(100_000))).is_ok());
    }

    #[test]
    fn shapes_that_make_parsing_superlinear_are_refused_before_it() {
        let attributes = |n: usize| (0..n).map(|i| format!(" a{i}=\"\"")).collect::<String>();
        let nested_declarations = |n: usize| {
            let open: String = (0..n).map(|i| format!("<r xmlns:p{i}=\"urn:x\">")).collect();
            format!("{open}{}", "</r>".repeat(n))
        };
        let nested = |n: usize| format!("{}{}", "<r>".repeat(n), "</r>".repeat(n));
        let declarations =
            |range: std::ops::Range<usize>| range.map(|i| format!(" xmlns:p{i}=\"urn:x\"")).collect::<String>();
        // Some hundred kilobytes each; roxmltree alone takes seconds on the first two.
        for (bad, why) in [
            (format!("<r{}/>", attributes(50_000)), "attributes"),
            (nested_declarations(4_000), "namespace declarations"),
            (format!("<r{}></r>", attributes(33)), "attributes"),
            (nested_declarations(33), "namespace declarations"),
            (
                format!("<r{}><c{}/></r>", declarations(0..20), declarations(20..40)),
                "namespace declarations",
            ),
            (nested(65), "deep"),
        ] {
            let error = screen(&bad, false).expect_err(why);
            assert!(error.contains(why), "{why}: {error}");
            let error = screen_metadata(&bad, false).expect_err(why);
            assert!(error.contains(why), "{why}: {error}");
        }
        for fine in [format!("<r{}/>", attributes(32)), nested_declarations(32), nested(64)] {
            assert_eq!(screen(&fine, false), Ok(()), "{}", &fine[..40]);
        }
    }

    #[test]
    fn redirect_parameters_are_written_plainly_and_once() {
        assert!(redirect_parameters("SAMLRequest=a&SigAlg=b&Signature=c&other=%53").is_ok());
        for bad in [
            "SAML%52equest=evil&SAMLRequest=a&SigAlg=b&Signature=c",
            "SAMLRequest=a&SAMLRequest=b&SigAlg=b&Signature=c",
            "SAMLRequest=a&Relay%53tate=x&SigAlg=b&Signature=c",
        ] {
            assert!(redirect_parameters(bad).is_err(), "{bad}");
        }
        assert!(verify_redirect("SAMLRequest=a&SAMLResponse=b&SigAlg=x&Signature=y", &[], false).is_err());
    }

    #[test]
    fn redirect_messages_round_trip() {
        let xml = "<samlp:LogoutRequest ID=\"_1\">é</samlp:LogoutRequest>";
        assert_eq!(inflate_base64(&deflate_base64(xml).unwrap()).unwrap(), xml);
        assert!(inflate_base64("not base64!").is_err());
    }

    #[test]
    fn simple_reads() {
        let xml = r#"<p:LogoutRequest xmlns:p="x" ID="_abc"><Issuer>idp</Issuer><NameID Format="f"> alice </NameID><p:Status><p:StatusCode Value="ok"/></p:Status></p:LogoutRequest>"#;
        assert_eq!(root_attribute(xml, "ID").as_deref(), Some("_abc"));
        assert_eq!(element_text(xml, "NameID").as_deref(), Some("alice"));
        assert_eq!(element_text(xml, "Issuer").as_deref(), Some("idp"));
        assert_eq!(status_codes(xml), ["ok"]);
        let nested = r#"<p:Response xmlns:p="x"><p:Extensions><p:StatusCode Value="not this"/></p:Extensions><p:Status><p:StatusCode Value="top"><p:StatusCode Value="second"/></p:StatusCode></p:Status></p:Response>"#;
        assert_eq!(status_codes(nested), ["top", "second"]);
    }
}
