//! UDP load tool for `benches/agent_vs_wireguard_go.sh` (not a Criterion benchmark).
//!
//! `udp_load echo ADDR`: echoes every datagram back to its sender.
//! `udp_load blast TARGET SIZE SECONDS WINDOW`: closed-loop load: keeps at most WINDOW
//! datagrams of SIZE bytes in flight to an echo server for SECONDS, and prints one JSON line
//! with echoed packets per second, goodput (bits per second, one direction) and loss.
//! Closed loop (a window instead of a fixed rate) measures what the path sustains without
//! measuring how fast a queue overflows.
//!
//! Run without arguments (as `cargo test --all-targets` does), it prints this help and exits 0.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn echo(addr: SocketAddr) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr)?;
    let mut buf = [0u8; 65_536];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn blast(target: SocketAddr, size: usize, seconds: f64, window: u64) -> std::io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(target)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut payload = vec![0u8; size.max(8)];
    let mut buf = vec![0u8; 65_536];
    let (mut sent, mut received, mut outstanding, mut timeouts) = (0u64, 0u64, 0u64, 0u64);
    // Warm-up: one round trip completes the handshake.
    let start_warm = Instant::now();
    while start_warm.elapsed() < Duration::from_secs(10) {
        sock.send(&payload)?;
        if sock.recv(&mut buf).is_ok() {
            break;
        }
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        while outstanding < window {
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            if sock.send(&payload).is_err() {
                break;
            }
            sent += 1;
            outstanding += 1;
        }
        match sock.recv(&mut buf) {
            Ok(_) => {
                received += 1;
                outstanding = outstanding.saturating_sub(1);
                // Take whatever else is waiting before refilling the window.
                sock.set_nonblocking(true)?;
                while sock.recv(&mut buf).is_ok() {
                    received += 1;
                    outstanding = outstanding.saturating_sub(1);
                }
                sock.set_nonblocking(false)?;
            }
            Err(_) => {
                // Nothing for 20 ms: whatever is outstanding is lost.
                timeouts += 1;
                outstanding = 0;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"size\":{size},\"seconds\":{secs:.3},\"sent\":{sent},\"received\":{received},\"pps\":{:.0},\"goodput_bps\":{:.0},\"loss\":{:.5},\"stalls\":{timeouts}}}",
        received as f64 / secs,
        received as f64 * size as f64 * 8.0 / secs,
        1.0 - received as f64 / sent.max(1) as f64
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.first().map(String::as_str) {
        Some("echo") if args.len() == 2 => args[1].parse().map(echo).ok(),
        Some("blast") if args.len() == 5 => {
            match (
                args[1].parse(),
                args[2].parse(),
                args[3].parse(),
                args[4].parse(),
            ) {
                (Ok(t), Ok(s), Ok(d), Ok(w)) => Some(blast(t, s, d, w)),
                _ => None,
            }
        }
        _ => None,
    };
    match parsed {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            eprintln!("udp_load: {e}");
            std::process::exit(1);
        }
        None => {
            eprintln!(
                "usage: udp_load echo ADDR | udp_load blast TARGET SIZE SECONDS WINDOW\n(a helper of benches/agent_vs_wireguard_go.sh)"
            );
        }
    }
}
