//! WebSocket upgrade decisions.

use http::StatusCode;

use super::*;
use crate::filters::{
    UpgradeAnswer, restore_upgrade, strip_hop_by_hop, upgrade_answer, websocket_upgrade,
};

#[test]
fn websocket_upgrades_are_recognised() {
    // (request headers, the upgrade value forwarded)
    let cases: &[(Headers, Option<&str>)] = &[
        (
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            Some("websocket"),
        ),
        (
            &[("Connection", "Upgrade"), ("Upgrade", "WebSocket")],
            Some("WebSocket"),
        ),
        (
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
            Some("websocket"),
        ),
        (
            &[("connection", "upgrade"), ("upgrade", "foo, websocket")],
            Some("foo, websocket"),
        ),
        (
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "foo"),
            ],
            Some("websocket"),
        ),
        (
            &[
                ("connection", "close"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
            Some("websocket"),
        ),
        // Not an upgrade: `connection` does not name it, or `upgrade` names another protocol.
        (&[("upgrade", "websocket")], None),
        (
            &[("connection", "keep-alive"), ("upgrade", "websocket")],
            None,
        ),
        (&[("connection", "upgrade"), ("upgrade", "h2c")], None),
        (
            &[("connection", "upgrade"), ("upgrade", "websockets")],
            None,
        ),
        (&[("connection", "upgrade")], None),
        (
            &[("connection", "upgraded"), ("upgrade", "websocket")],
            None,
        ),
        (&[], None),
    ];
    for (headers, expected) in cases {
        let got = websocket_upgrade(&header_map(headers));
        assert_eq!(
            got.as_ref().map(|v| v.to_str().expect("ascii")),
            *expected,
            "{headers:?}"
        );
    }
}

#[test]
fn upgrade_headers_survive_the_hop_by_hop_strip_only_when_restored() {
    let mut headers = header_map(&[
        ("connection", "Upgrade, x-drop"),
        ("upgrade", "websocket"),
        ("x-drop", "1"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("keep-alive", "timeout=5"),
    ]);
    let upgrade = websocket_upgrade(&headers).expect("an upgrade");
    strip_hop_by_hop(&mut headers);
    restore_upgrade(&mut headers, upgrade);
    assert_eq!(
        dump(&headers),
        [
            "connection: upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version: 13",
            "upgrade: websocket",
        ]
    );
}

#[test]
fn upstream_answers_to_upgrades() {
    use UpgradeAnswer::{ProtocolError, Response, Switch};
    let switching = StatusCode::SWITCHING_PROTOCOLS;
    // (request asked for a WebSocket, upstream status, upstream headers, decision)
    let cases: &[(bool, StatusCode, Headers, UpgradeAnswer)] = &[
        (
            true,
            switching,
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            Switch,
        ),
        (true, switching, &[("Upgrade", "WebSocket")], Switch),
        (true, switching, &[("upgrade", "h2c")], ProtocolError),
        (true, switching, &[], ProtocolError),
        (false, switching, &[("upgrade", "websocket")], ProtocolError),
        (false, switching, &[], ProtocolError),
        (true, StatusCode::OK, &[("upgrade", "websocket")], Response),
        (
            true,
            StatusCode::UPGRADE_REQUIRED,
            &[("upgrade", "websocket")],
            Response,
        ),
        (true, StatusCode::BAD_REQUEST, &[], Response),
        (false, StatusCode::OK, &[], Response),
    ];
    for (requested, status, headers, expected) in cases {
        assert_eq!(
            upgrade_answer(*requested, *status, &header_map(headers)),
            *expected,
            "{requested} {status} {headers:?}"
        );
    }
}
