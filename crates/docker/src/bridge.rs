//! Byte streams between the async Engine API and the blocking repository code.
use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks buffered between the network and the blocking side (bounds memory to about 64 × 32 KiB).
const DEPTH: usize = 64;

/// A blocking reader over chunks that an async task sends. An `Err` chunk ends the stream with
/// that error; a dropped sender is the end of the data.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

pub(crate) fn reader() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        tx,
        ChannelReader {
            rx,
            current: Bytes::new(),
        },
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A blocking writer whose bytes an async task consumes as a stream (in 256 KiB pieces).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const PIECE: usize = 256 << 10;

pub(crate) fn writer() -> (ChannelWriter, mpsc::Receiver<Bytes>) {
    let (tx, rx) = mpsc::channel(DEPTH / 4);
    (
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        },
        rx,
    )
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading the upload"))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
