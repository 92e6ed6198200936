//! A client for persistent-reservation helpers that speak QEMU's `pr-manager-helper` protocol
//! (ours or QEMU's C `qemu-pr-helper`), with the semantics of QEMU's own client: connect and
//! handshake, send a request with the device's descriptor, read and check the reply, and
//! reconnect once when the socket turns out to be broken before the request was sent.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pr_proto::{
    check_client_features, encode_features, ProtocolError, ReplyHeader, RequestHeader, CDB_SIZE,
    FEATURES_NONE, FEATURES_SIZE, REPLY_HEADER_SIZE, SENSE_SIZE,
};
use pr_scsi::Status;

pub use pr_proto::Reply;

/// What went wrong talking to a helper. A SCSI error is not a client error: it comes back as
/// a [`Reply`] with its status and sense.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the helper socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("handshake with the helper at {path} failed: {source}")]
    Handshake {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the helper sent feature word {0:#010x}; this client knows none")]
    Features(u32),
    #[error("invalid request: {0}")]
    Request(#[source] ProtocolError),
    #[error("parameter data is {actual} bytes but the CDB announces {expected}")]
    ParameterLength { actual: usize, expected: usize },
    #[error("connection to the helper failed during the request: {0}")]
    Io(#[source] io::Error),
    #[error("the helper sent an invalid reply: {0}")]
    Reply(#[source] ProtocolError),
}

/// A connection to a helper.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: Option<UnixStream>,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects and performs the handshake.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, None)
    }

    /// Like [`Client::connect`], with a read/write timeout on the socket (None: wait forever,
    /// as QEMU does).
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Option<Duration>,
    ) -> Result<Client, ClientError> {
        let mut c = Client {
            path: path.as_ref().to_path_buf(),
            stream: None,
            timeout,
        };
        c.reconnect()?;
        Ok(c)
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the current connection (if any) and opens a new one.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        self.stream = None;
        let mut s = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let hs = |source| ClientError::Handshake {
            path: self.path.clone(),
            source,
        };
        s.set_read_timeout(self.timeout).map_err(hs)?;
        s.set_write_timeout(self.timeout).map_err(hs)?;
        let mut word = [0u8; FEATURES_SIZE];
        s.read_exact(&mut word).map_err(hs)?;
        // QEMU does not check the helper's word; we do, since no features exist.
        if let Err(ProtocolError::UnsupportedFeatures(f)) = check_client_features(word) {
            return Err(ClientError::Features(f));
        }
        s.write_all(&encode_features(FEATURES_NONE)).map_err(hs)?;
        self.stream = Some(s);
        Ok(())
    }

    /// Sends one request: `cdb` (16 bytes, PR IN or PR OUT) with `device` attached and, for
    /// PR OUT, `parameters` (exactly the CDB's parameter list length). Returns the helper's reply.
    ///
    /// If sending the CDB fails (the helper restarted since the last request), the client
    /// reconnects once and sends again. A failure after the CDB went out is returned as an
    /// error, as QEMU fails the command then.
    pub fn execute(
        &mut self,
        device: BorrowedFd<'_>,
        cdb: &[u8; CDB_SIZE],
        parameters: &[u8],
    ) -> Result<Reply, ClientError> {
        let header = RequestHeader::parse(*cdb).map_err(ClientError::Request)?;
        if parameters.len() != header.parameter_bytes() {
            return Err(ClientError::ParameterLength {
                actual: parameters.len(),
                expected: header.parameter_bytes(),
            });
        }
        if self.stream.is_none() {
            self.reconnect()?;
        }
        if self.send_cdb(device, cdb).is_err() {
            self.reconnect()?;
            self.send_cdb(device, cdb).map_err(|e| {
                self.stream = None;
                ClientError::Io(e)
            })?;
        }
        let result = self.finish(&header, parameters);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn stream(&mut self) -> io::Result<&mut UnixStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn send_cdb(&mut self, device: BorrowedFd<'_>, cdb: &[u8; CDB_SIZE]) -> io::Result<()> {
        let s = self.stream()?;
        let sent = pr_sys::scm::send_with_fds(s.as_fd(), cdb, &[device])?;
        s.write_all(&cdb[sent..])
    }

    fn finish(&mut self, header: &RequestHeader, parameters: &[u8]) -> Result<Reply, ClientError> {
        let s = self.stream().map_err(ClientError::Io)?;
        s.write_all(parameters).map_err(ClientError::Io)?;
        let mut h = [0u8; REPLY_HEADER_SIZE];
        s.read_exact(&mut h).map_err(ClientError::Io)?;
        let rh = ReplyHeader::decode(&h, header).map_err(ClientError::Reply)?;
        let mut data = vec![0u8; rh.data_length];
        s.read_exact(&mut data).map_err(ClientError::Io)?;
        let mut sense = [0u8; SENSE_SIZE];
        sense.copy_from_slice(&rh.sense);
        Ok(Reply {
            status: Status(rh.status_word as u8),
            sense,
            data,
        })
    }
}
