//! `deflate::negotiate` on arbitrary `Sec-WebSocket-Extensions` values, checked
//! against a reading of RFC 7692 written here.
//!
//! Input layout: byte 0 the server's configuration (bits 0-2 its window, 9 + n up to
//! 15; bits 3-5 the client window it asks for, 8 + n); the rest, made UTF-8 and split
//! at newlines, the header values.
//!
//! Checks: no panic; the first acceptable offer is taken; an offer is acceptable
//! exactly when RFC 7692 says so (known parameters, none repeated, valid values); the
//! response only names parameters the offer named, honours the ones the server must
//! (server_no_context_takeover, server_max_window_bits), and its window sizes are
//! within both the offer and the configuration; the agreed parameters match it.

use wsplug_ws::deflate::{self, DeflateConfig, DeflateParams};

pub fn config(c: u8) -> DeflateConfig {
    DeflateConfig {
        server_max_window_bits: 9 + (c & 7).min(6),
        client_max_window_bits: 8 + ((c >> 3) & 7),
        level: 6,
    }
}

pub fn run(data: &[u8]) {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    check(text.split('\n'), &config(c));
}

/// One offer as RFC 7692 reads it, or `None` if the server must decline it.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: allowed, no value suggested.
    client_max_window_bits: Option<Option<u8>>,
}

/// A window-bits value: `1*DIGIT`, 8 to 15, no leading zero, optionally quoted.
fn bits(value: &str) -> Option<u8> {
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.starts_with('0') || value.len() > 2 {
        return None;
    }
    let n: u8 = value.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

fn parse_offer(offer: &str) -> Option<Offer> {
    let mut parts = offer.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut parsed = Offer::default();
    let mut names: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (param.trim().to_ascii_lowercase(), None),
        };
        if names.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => parsed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => parsed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => parsed.server_max_window_bits = Some(bits(v)?),
            ("client_max_window_bits", None) => parsed.client_max_window_bits = Some(None),
            ("client_max_window_bits", Some(v)) => parsed.client_max_window_bits = Some(Some(bits(v)?)),
            _ => return None,
        }
        names.push(name);
    }
    Some(parsed)
}

pub fn check<'a>(values: impl Iterator<Item = &'a str> + Clone, config: &DeflateConfig) {
    let result = deflate::negotiate(values.clone(), config);
    let offers = values.flat_map(|v| v.split(','));
    let mut first = None;
    for offer in offers {
        let single = deflate::negotiate([offer], config);
        let model = parse_offer(offer);
        assert_eq!(
            single.is_some(),
            model.is_some(),
            "offer {offer:?}: negotiate says {single:?}, RFC 7692 says {model:?}"
        );
        if let (Some((params, response)), Some(model)) = (&single, &model) {
            check_response(offer, model, params, response, config);
            if first.is_none() {
                first = single;
            }
        }
    }
    assert_eq!(result, first, "not the first acceptable offer");
}

fn check_response(offer: &str, offer_model: &Offer, params: &DeflateParams, response: &str, config: &DeflateConfig) {
    assert!(
        response.is_ascii() && !response.contains(['\r', '\n', ',']),
        "response {response:?}"
    );
    let mut parts = response.split("; ");
    assert_eq!(parts.next(), Some("permessage-deflate"));
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = None;
    let mut client_bits = None;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n, Some(v.parse::<u8>().expect("a number"))),
            None => (part, None),
        };
        assert!(!seen.contains(&name), "{name} twice in {response:?}");
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => {
                assert!(offer_model.server_no_context_takeover, "{name} not offered: {offer:?}")
            }
            ("client_no_context_takeover", None) => {
                assert!(offer_model.client_no_context_takeover, "{name} not offered: {offer:?}")
            }
            ("server_max_window_bits", Some(v)) => {
                let offered = offer_model
                    .server_max_window_bits
                    .expect("server_max_window_bits not offered");
                assert!(
                    (8..=offered.min(config.server_max_window_bits)).contains(&v),
                    "{response:?} for {offer:?}"
                );
                server_bits = Some(v);
            }
            ("client_max_window_bits", Some(v)) => {
                let offered = offer_model
                    .client_max_window_bits
                    .expect("client_max_window_bits not offered");
                let most = offered.unwrap_or(15).min(config.client_max_window_bits);
                assert!((8..=most).contains(&v), "{response:?} for {offer:?}");
                client_bits = Some(v);
            }
            _ => panic!("response names {part:?}: {response:?}"),
        }
    }
    // What the server must honour.
    assert_eq!(
        seen.contains(&"server_no_context_takeover"),
        offer_model.server_no_context_takeover
    );
    assert_eq!(offer_model.server_max_window_bits.is_some(), server_bits.is_some());
    // With no client_max_window_bits in the response the client may use 15 bits: only
    // when neither its offer nor the configuration asks for fewer.
    if let (Some(offered), None) = (offer_model.client_max_window_bits, client_bits) {
        assert!(
            offered.unwrap_or(15).min(config.client_max_window_bits) == 15,
            "client window not limited: {response:?}"
        );
    }
    // The agreed parameters are what the response says.
    assert_eq!(
        params.server_no_context_takeover,
        offer_model.server_no_context_takeover
    );
    assert_eq!(
        params.client_no_context_takeover,
        offer_model.client_no_context_takeover
    );
    assert_eq!(
        params.client_no_context_takeover,
        seen.contains(&"client_no_context_takeover")
    );
    assert!(params.server_window_bits <= config.server_max_window_bits);
    if let Some(bits) = server_bits {
        assert_eq!(params.server_window_bits, bits);
    }
}
