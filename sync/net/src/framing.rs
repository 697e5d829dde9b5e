//! Frames on a QUIC stream: a 4-byte big-endian length, then that many bytes. The length
//! is checked against [`FRAME_BYTES_MAX`] before anything is allocated.

use bytes::Bytes;
use iroh::endpoint::{ReadExactError, RecvStream, SendStream, WriteError};

use care_sync::Encoded;
use care_sync::frame::FRAME_BYTES_MAX;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The peer finished its stream between frames: the session is over.
    #[error("the other device closed the session")]
    Finished,
    /// The stream broke mid-frame or the connection was lost.
    #[error("the connection was lost: {0}")]
    Lost(String),
    /// The announced frame is larger than allowed.
    #[error("the other device announced a {len}-byte frame, more than the {max} allowed")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, frame: &[u8]) -> Result<(), WriteError> {
    let len = u32::try_from(frame.len()).expect("frames are smaller than FRAME_BYTES_MAX");
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    send.write_all(&buf).await
}

/// Writes one encoded frame without copying its pieces: the stream keeps each (a part of
/// a document shares the document's bytes) until it is sent.
pub async fn write_encoded(send: &mut SendStream, frame: Encoded) -> Result<(), WriteError> {
    let len = u32::try_from(frame.len()).expect("frames are smaller than FRAME_BYTES_MAX");
    let mut chunks = vec![Bytes::copy_from_slice(&len.to_be_bytes())];
    chunks.extend(frame.into_pieces());
    send.write_all_chunks(&mut chunks).await
}

/// Reads one sync frame, of at most [`FRAME_BYTES_MAX`].
pub async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, ReadFrameError> {
    read_frame_max(recv, FRAME_BYTES_MAX).await
}

/// Reads one frame of at most `max` bytes: handshakes that anyone may start (joining a
/// team, handing a team to a circle node) read with their own, smaller limits.
pub async fn read_frame_max(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, ReadFrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Err(ReadFrameError::Finished),
        Err(e) => return Err(ReadFrameError::Lost(with_causes(&e))),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ReadFrameError::TooLarge { len, max });
    }
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await.map_err(|e| ReadFrameError::Lost(with_causes(&e)))?;
    Ok(frame)
}

/// An error with the chain of its causes, so that "connection lost" says why (the idle
/// timeout, a reset, a close by the other device and its reason).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection lost")]
    struct Lost(#[source] std::io::Error);

    #[test]
    fn a_lost_connection_says_why() {
        let error = Lost(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
        assert_eq!(with_causes(&error), "connection lost: timed out");
    }
}
