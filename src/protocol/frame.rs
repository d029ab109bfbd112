//! Frames: a big-endian `u32` body length, then the body.
//!
//! The length is checked against the limit before anything is allocated. EOF before a frame starts is a clean
//! close; EOF inside one is an error. A frame that has started must arrive whole within the read timeout, and a
//! connection may wait at most the idle timeout for the next frame to start.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Limits on reading frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest body accepted.
    pub max_frame_bytes: u32,
    /// Time allowed from a frame's first byte to its last.
    pub read_timeout: Duration,
    /// Time allowed between frames (`None`: wait forever).
    pub idle_timeout: Option<Duration>,
}

/// Why a frame could not be read. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length is over the limit; nothing was read past the length.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The peer closed the connection inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// A started frame did not arrive whole in time.
    #[error("frame not completed within {0:?}")]
    ReadTimeout(Duration),
    /// No frame started within the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame. `Ok(None)` is a clean close between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, limits: &FrameLimits) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    // The first byte waits under the idle timeout; the rest of the frame under the read timeout.
    let first = match limits.idle_timeout {
        Some(idle) => tokio::time::timeout(idle, reader.read(&mut header[..1]))
            .await
            .map_err(|_| FrameError::Idle(idle))??,
        None => reader.read(&mut header[..1]).await?,
    };
    if first == 0 {
        return Ok(None);
    }
    let rest = async {
        read_exact_or_truncated(reader, &mut header[1..]).await?;
        let len = u32::from_be_bytes(header);
        if len > limits.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: limits.max_frame_bytes,
            });
        }
        let mut body = vec![0u8; len as usize];
        read_exact_or_truncated(reader, &mut body).await?;
        Ok(body)
    };
    let body = tokio::time::timeout(limits.read_timeout, rest)
        .await
        .map_err(|_| FrameError::ReadTimeout(limits.read_timeout))??;
    Ok(Some(body))
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Prepends the length to a body.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 4);
    append_frame(&mut frame, body);
    frame
}

/// Appends one frame (length and body) to `out`, so that several frames can go out in one write.
pub fn append_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Writes one frame (length and body) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> io::Result<()> {
    writer.write_all(&encode_frame(body)).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: max,
            read_timeout: Duration::from_secs(1),
            idle_timeout: None,
        }
    }

    #[tokio::test]
    async fn frames_round_trip_through_split_reads() {
        let frame = encode_frame(b"hello");
        // The frame arrives one byte at a time.
        let mut builder = tokio_test::io::Builder::new();
        for byte in &frame {
            builder.read(std::slice::from_ref(byte));
        }
        let mut reader = builder.build();
        assert_eq!(read_frame(&mut reader, &limits(64)).await.unwrap().unwrap(), b"hello");
        assert!(
            read_frame(&mut reader, &limits(64)).await.unwrap().is_none(),
            "EOF between frames is a clean close"
        );
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let mut reader = tokio_test::io::Builder::new().read(&u32::MAX.to_be_bytes()).build();
        match read_frame(&mut reader, &limits(1024)).await {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (u32::MAX, 1024)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let mut reader = tokio_test::io::Builder::new().read(&[0, 0]).build();
        assert!(matches!(read_frame(&mut reader, &limits(64)).await, Err(FrameError::Truncated)));
        let mut reader = tokio_test::io::Builder::new().read(&[0, 0, 0, 9, 1, 2]).build();
        assert!(matches!(read_frame(&mut reader, &limits(64)).await, Err(FrameError::Truncated)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0, 0, 0, 10, 1]).await.unwrap();
        let result = read_frame(&mut server, &limits(64)).await;
        assert!(matches!(result, Err(FrameError::ReadTimeout(_))), "{result:?}");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let limits = FrameLimits {
            idle_timeout: Some(Duration::from_secs(5)),
            ..limits(64)
        };
        assert!(matches!(read_frame(&mut server, &limits).await, Err(FrameError::Idle(_))));
    }

    proptest::proptest! {
        #[test]
        fn any_body_round_trips(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let frame = encode_frame(&body);
            let got = rt.block_on(async { read_frame(&mut &frame[..], &limits(4096)).await }).unwrap().unwrap();
            proptest::prop_assert_eq!(got, body);
        }
    }
}
