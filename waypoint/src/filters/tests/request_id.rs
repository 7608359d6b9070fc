//! `x-request-id`.

use super::*;
use crate::filters::{REQUEST_ID, ensure_request_id, uuid_v4};

#[test]
fn keeps_or_generates() {
    let cases: [(&str, Headers, u128, &str); 4] = [
        ("kept", &[("x-request-id", "abc")], 0, "abc"),
        (
            "generated when absent",
            &[],
            0,
            "00000000-0000-4000-8000-000000000000",
        ),
        (
            "generated when empty",
            &[("x-request-id", "")],
            0,
            "00000000-0000-4000-8000-000000000000",
        ),
        (
            "all ones keeps version and variant",
            &[],
            u128::MAX,
            "ffffffff-ffff-4fff-bfff-ffffffffffff",
        ),
    ];
    for (name, before, roll, want) in cases {
        let mut headers = header_map(before);
        let id = ensure_request_id(&mut headers, roll);
        assert_eq!(id, want, "{name}");
        assert_eq!(headers.get(&REQUEST_ID).expect(name), want, "{name}");
        assert_eq!(headers.get_all(&REQUEST_ID).iter().count(), 1, "{name}");
    }
}

#[test]
fn uuid_layout() {
    let id = uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    assert_eq!(id, "01234567-89ab-4def-8123-456789abcdef");
}
