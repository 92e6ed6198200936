//! The values the host fence reads from etcd, written by any host (hostile bytes): a logical
//! unit's stored state and an acknowledgement's revision. Neither may panic; a decoded state
//! keeps the engine's invariants, and a state never takes access away from itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_store_etcd::fence::{decode_state, parse_ack, takes_access_away};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = parse_ack(data) {
        assert!(r >= 0);
    }
    if let Ok(state) = decode_state(data) {
        assert!(state.check_invariants().is_ok());
        assert!(!takes_access_away(&state, &state));
    }
});
