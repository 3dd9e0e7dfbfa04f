//! A UDP relay between a QUIC client and `homesync serve` that makes the
//! path bad on purpose: loss, delay with jitter (so reordering), blackouts,
//! and a change of the client's address as the server sees it (a NAT
//! rebinding, a laptop moving networks).
//!
//! User space rather than `tc netem`: this machine's kernel has no netem,
//! and a seeded relay makes every run the same path.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the path does to each datagram, in both directions.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Share of datagrams dropped (0 to 1).
    pub loss: f64,
    pub delay: Duration,
    /// Up to this much more delay, uniformly: datagrams overtake each other.
    pub jitter: Duration,
}

/// A datagram waiting for its time.
struct Due {
    at: Instant,
    seq: u64,
    to_server: bool,
    bytes: Vec<u8>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    // The earliest first out of the (max-)heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Shared {
    faults: Mutex<Faults>,
    queue: Mutex<BinaryHeap<Due>>,
    ready: Condvar,
    /// Until when everything is dropped.
    blackout: Mutex<Option<Instant>>,
    client: Mutex<Option<SocketAddr>>,
    /// The socket towards the server; replaced to change address.
    back: Mutex<Arc<UdpSocket>>,
    rng: AtomicU64,
    stop: AtomicBool,
    dropped: AtomicU64,
    forwarded: AtomicU64,
}

impl Shared {
    fn random(&self) -> f64 {
        // xorshift64*, seeded: the same path every run.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn enqueue(&self, to_server: bool, bytes: Vec<u8>, seq: u64) {
        let f = *self.faults.lock().unwrap();
        let blackout = self
            .blackout
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t);
        if blackout || self.random() < f.loss {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = Instant::now() + f.delay + f.jitter.mul_f64(self.random());
        self.queue.lock().unwrap().push(Due {
            at,
            seq,
            to_server,
            bytes,
        });
        self.ready.notify_one();
    }
}

/// The relay, stopped on drop. The client connects to [`Relay::addr`].
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: SocketAddr,
}

impl Relay {
    pub fn start(server: SocketAddr, faults: Faults, seed: u64) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = front.local_addr().unwrap();
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        back.connect(server).unwrap();
        let shared = Arc::new(Shared {
            faults: Mutex::new(faults),
            queue: Mutex::new(BinaryHeap::new()),
            ready: Condvar::new(),
            blackout: Mutex::new(None),
            client: Mutex::new(None),
            back: Mutex::new(back),
            rng: AtomicU64::new(seed | 1),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let seq = Arc::new(AtomicU64::new(0));
        // Client to server.
        {
            let (sh, front, seq) = (shared.clone(), front.clone(), seq.clone());
            front
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !sh.stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *sh.client.lock().unwrap() = Some(from);
                        sh.enqueue(true, buf[..n].to_vec(), seq.fetch_add(1, Ordering::Relaxed));
                    }
                }
            });
        }
        // Server to client: reads whichever socket is the current one.
        {
            let (sh, seq) = (shared.clone(), seq.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !sh.stop.load(Ordering::Relaxed) {
                    let back = sh.back.lock().unwrap().clone();
                    back.set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    if let Ok(n) = back.recv(&mut buf) {
                        sh.enqueue(
                            false,
                            buf[..n].to_vec(),
                            seq.fetch_add(1, Ordering::Relaxed),
                        );
                    }
                }
            });
        }
        // The sender: each datagram at its time.
        {
            let sh = shared.clone();
            std::thread::spawn(move || {
                let mut q = sh.queue.lock().unwrap();
                while !sh.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    match q.peek() {
                        Some(d) if d.at <= now => {
                            let d = q.pop().unwrap();
                            drop(q);
                            if d.to_server {
                                let back = sh.back.lock().unwrap().clone();
                                let _ = back.send(&d.bytes);
                            } else if let Some(c) = *sh.client.lock().unwrap() {
                                let _ = front.send_to(&d.bytes, c);
                            }
                            sh.forwarded.fetch_add(1, Ordering::Relaxed);
                            q = sh.queue.lock().unwrap();
                        }
                        Some(d) => {
                            let wait = d.at - now;
                            q = sh.ready.wait_timeout(q, wait).unwrap().0;
                        }
                        None => {
                            q = sh
                                .ready
                                .wait_timeout(q, Duration::from_millis(50))
                                .unwrap()
                                .0;
                        }
                    }
                }
            });
        }
        Relay {
            addr,
            shared,
            server,
        }
    }

    /// Drops every datagram, both ways, for `d` from now.
    pub fn blackout(&self, d: Duration) {
        *self.shared.blackout.lock().unwrap() = Some(Instant::now() + d);
    }

    /// From now on the server sees the client at a new address (port).
    pub fn change_address(&self) {
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        back.connect(self.server).unwrap();
        *self.shared.back.lock().unwrap() = back;
    }

    /// The client-side address the server currently sees.
    pub fn server_sees(&self) -> SocketAddr {
        self.shared.back.lock().unwrap().local_addr().unwrap()
    }

    /// Datagrams dropped so far (loss and blackouts).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
    }
}
