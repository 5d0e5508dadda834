//! Byte streams between the async Engine API and the blocking repository code.
use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Batches buffered between the network and the blocking side (each at most 64 pieces of what the
/// socket delivered, typically 16 to 64 KiB).
const DEPTH: usize = 16;

/// A blocking reader over batches of chunks that an async task sends. An `Err` ends the stream with
/// that error; a dropped sender is the end of the data.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<Bytes>>>,
    pending: std::collections::VecDeque<Bytes>,
}

pub(crate) fn reader() -> (mpsc::Sender<io::Result<Vec<Bytes>>>, ChannelReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        tx,
        ChannelReader {
            rx,
            pending: Default::default(),
        },
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.pending.front_mut() {
                Some(b) if b.is_empty() => {
                    self.pending.pop_front();
                }
                Some(b) => {
                    let n = b.len().min(buf.len());
                    buf[..n].copy_from_slice(&b[..n]);
                    let _ = b.split_to(n);
                    return Ok(n);
                }
                None => match self.rx.blocking_recv() {
                    Some(Ok(batch)) => self.pending.extend(batch),
                    Some(Err(e)) => return Err(e),
                    None => return Ok(0),
                },
            }
        }
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

impl lifeboat_fs::archive::VecWrite for ChannelWriter {
    fn write_vec(&mut self, data: Vec<u8>) -> io::Result<()> {
        if data.len() < PIECE / 4 {
            return self.write_all(&data);
        }
        // Large pieces travel as they are, after what is buffered.
        self.flush()?;
        self.tx
            .blocking_send(Bytes::from(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped reading the upload"))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
