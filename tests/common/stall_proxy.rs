//! A TCP proxy that forwards everything but holds chosen requests for a while.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TCP proxy on 127.0.0.1 in front of a registry that forwards everything, but holds a
/// request whose bytes contain `needle` (e.g. `/blobs/sha256:...`) for `delay` before
/// forwarding it. Each client connection has its own threads, so only that request waits.
pub struct StallProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// How many requests were held.
    pub stalled: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallProxy {
    pub fn start(upstream: &str, needle: &str, delay: Duration) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (upstream, needle) = (upstream.to_string(), needle.as_bytes().to_vec());
        {
            let stop = stop.clone();
            let stalled = stalled.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = TcpStream::connect(&upstream) else {
                                continue;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                                (Ok(c), Ok(s)) => (c, s),
                                _ => continue,
                            };
                            let (needle, stalled, stop) =
                                (needle.clone(), stalled.clone(), stop.clone());
                            std::thread::spawn(move || {
                                forward(client, server, Some((needle, delay, stalled, stop)))
                            });
                            std::thread::spawn(move || forward(s2, c2, None));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        StallProxy {
            addr,
            stop,
            stalled,
        }
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Stall = (
    Vec<u8>,
    Duration,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<AtomicBool>,
);

/// Copies `from` to `to` until either side closes; chunks containing the stall needle wait.
fn forward(mut from: TcpStream, mut to: TcpStream, stall: Option<Stall>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((needle, delay, count, stop)) = &stall {
            if buf[..n]
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                count.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + *delay;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}
