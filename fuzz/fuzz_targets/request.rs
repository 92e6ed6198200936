//! A client's bytes as the daemon sees them: CDB validation, then a reply built for that
//! request must pass QEMU's client checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pr_proto::{Reply, ReplyHeader, RequestHeader, MAX_TRANSFER};
use pr_scsi::Status;

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let cdb: [u8; 16] = data[..16].try_into().unwrap();
    if let Ok(req) = RequestHeader::parse(cdb) {
        assert!(req.transfer_length <= MAX_TRANSFER);
        let len = u16::from_be_bytes([data[16], data[17]]) as usize;
        let mut reply = Reply { status: Status(data[16]), sense: [0; 96], data: vec![0; len] };
        reply.clamp_to(&req);
        ReplyHeader::decode(&reply.encode_header(), &req).expect("a clamped reply passes the client checks");
        let _ = pr_scsi::PrOutCdb::parse(&cdb).map(|c| (c.service_action(), c.reservation_type(), c.scope()));
        let _ = pr_scsi::PrInCdb::parse(&cdb).map(|c| c.service_action());
    }
});
