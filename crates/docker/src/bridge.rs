//! Byte streams between the async Engine API and the blocking repository code.
use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

pub use lifeboat_model::reach::stream_stall;

/// Sends what `stream` delivers to `tx` in batches (whatever pieces are ready go over together:
/// far fewer wake-ups of the reading thread). Ends with an error sent on the stream's first
/// error (`describe` says what it was, after `what`), and with a `TimedOut` error when nothing
/// comes for `stall`; ends quietly when the reader is gone.
pub(crate) async fn pump<S, E>(
    stream: S,
    tx: mpsc::Sender<io::Result<Vec<Bytes>>>,
    stall: std::time::Duration,
    what: String,
    describe: impl Fn(&E) -> String,
) where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut ready = std::pin::pin!(stream.ready_chunks(64));
    loop {
        let items = match tokio::time::timeout(stall, ready.next()).await {
            Ok(Some(items)) => items,
            Ok(None) => return,
            Err(_) => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no data for {} s: the engine stalled", stall.as_secs()),
                );
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut batch = Vec::with_capacity(items.len());
        let mut failed = None;
        for item in items {
            match item {
                Ok(b) => batch.push(b),
                Err(e) => {
                    failed = Some(io::Error::other(format!("{what}: {}", describe(&e))));
                    break;
                }
            }
        }
        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
            return;
        }
        if let Some(e) = failed {
            let _ = tx.send(Err(e)).await;
            return;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_volume_stream_that_stalls_times_out() {
        // One piece, then nothing, as from an engine stopped in the middle of a volume.
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from_static(b"tar"))])
            .chain(futures_util::stream::pending());
        let (tx, mut rx) = mpsc::channel(4);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(pump(
            stream,
            tx,
            Duration::from_secs(120),
            "site a: read volume v".into(),
            |e| e.to_string(),
        ));
        assert_eq!(rx.recv().await.unwrap().unwrap(), vec![Bytes::from_static(b"tar")]);
        let e = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            e.to_string().contains("site a: read volume v: no data for 120 s"),
            "{e}"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(120),
            "given up at the deadline, not before"
        );
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "the stream ends after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_delivering_is_never_cut() {
        // A piece every 100 s for 10 pieces: slow, never stalled for 120 s.
        let stream = futures_util::stream::unfold(0, |n| async move {
            if n == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(100)).await;
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(vec![n as u8])), n + 1))
        });
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(pump(stream, tx, Duration::from_secs(120), "x".into(), |e| {
            e.to_string()
        }));
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend(b.unwrap().concat());
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
    }
}
