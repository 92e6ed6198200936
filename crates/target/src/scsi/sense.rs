//! Sense codes of block commands that pr-scsi (which names the persistent-reservation ones)
//! does not have. Values from SPC-4 Annex D, table D.1 (ASC and ASCQ assignments).

use pr_scsi::{SenseCode, SenseKey};

/// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
pub const LBA_OUT_OF_RANGE: SenseCode = SenseCode {
    key: SenseKey::ILLEGAL_REQUEST,
    asc: 0x21,
    ascq: 0x00,
};
/// DATA PROTECT, WRITE PROTECTED (27h/00h).
pub const WRITE_PROTECTED: SenseCode = SenseCode {
    key: SenseKey::DATA_PROTECT,
    asc: 0x27,
    ascq: 0x00,
};
/// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (1Dh/00h).
pub const MISCOMPARE_DURING_VERIFY: SenseCode = SenseCode {
    key: SenseKey(0xe),
    asc: 0x1d,
    ascq: 0x00,
};
/// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (39h/00h).
pub const SAVING_PARAMETERS_NOT_SUPPORTED: SenseCode = SenseCode {
    key: SenseKey::ILLEGAL_REQUEST,
    asc: 0x39,
    ascq: 0x00,
};
/// MEDIUM ERROR, WRITE ERROR (0Ch/00h).
pub const WRITE_ERROR: SenseCode = SenseCode {
    key: SenseKey::MEDIUM_ERROR,
    asc: 0x0c,
    ascq: 0x00,
};
/// MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h).
pub const READ_ERROR: SenseCode = SenseCode::READ_ERROR;
