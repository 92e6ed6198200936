//! A guest's virtio-scsi request as pr-target sees it: the request header, the LUN field,
//! then the CDB and data-out through the device server of a small in-memory disk. Nothing
//! may panic, data-in stays within the transfer bound, and a refused write changes nothing.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use pr_scsi::RelativeTargetPort;
use pr_target::scsi::{BlockDevice, DiskIdentity, DiskServer, MAX_TRANSFER_BYTES};
use pr_target::virtio::{address, Control, Request, REQUEST_HEADER_SIZE};

struct Mem(Mutex<Vec<u8>>);

impl BlockDevice for Mem {
    fn size_bytes(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn can_discard(&self) -> bool {
        true
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Control::parse(data);
    let Some(req) = Request::parse(data) else { return };
    let _ = address(&req.lun);
    let data_out = &data[REQUEST_HEADER_SIZE..];
    let identity = DiskIdentity {
        vendor: *b"FUZZ    ",
        product: *b"pr-target       ",
        revision: *b"0001",
        serial: "F".into(),
        naa: vec![0x50, 1, 2, 3, 4, 5, 6, 7],
    };
    let disk = DiskServer::new(Mem(Mutex::new(vec![0; 64 * 1024])), identity, 512, req.lun[7] & 1 == 1);
    if let Ok(p) = disk.prepare(&req.cdb) {
        let before = disk.device().0.lock().unwrap().clone();
        let reply = disk.execute(&p, &data_out[..p.data_out_len.min(data_out.len())], RelativeTargetPort(1));
        assert!(reply.data.len() <= MAX_TRANSFER_BYTES);
        if reply.status.0 != 0 {
            assert_eq!(*disk.device().0.lock().unwrap(), before, "a refused command wrote");
        }
    }
});
