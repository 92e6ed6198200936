//! What the block-layer and multipath backends make of a client's request before any ioctl or
//! library call: a command or a CHECK CONDITION, never a panic; the multipath backend never
//! hands the library more TransportIDs than its list holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_backend::mpath::translate::MpathCommand;
use pr_proto::{Direction, RequestHeader};
use pr_scsi::Status;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let cdb: [u8; 16] = data[..16].try_into().unwrap();
    let Ok(req) = RequestHeader::parse(cdb) else {
        return;
    };
    let params = match req.direction {
        Direction::In => &[][..],
        Direction::Out => match data[16..].get(..req.parameter_bytes()) {
            Some(p) => p,
            None => return,
        },
    };
    if let Err(r) = pr_backend::blkpr::translate::translate(&req, params) {
        assert_eq!(r.reply.status, Status::CHECK_CONDITION);
    }
    match pr_backend::mpath::translate::translate(&req, params) {
        Ok(MpathCommand::Out(o)) => {
            assert!(o.transport_ids.len() <= pr_sys::mpath::MAX_TRANSPORT_IDS)
        }
        Ok(_) => {}
        Err(r) => assert_eq!(r.reply.status, Status::CHECK_CONDITION),
    }
});
