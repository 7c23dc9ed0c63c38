//! How late a timer fires: tokio's `sleep_until` against the driver's
//! `timerfd` timer, for deadlines a probe timeout would set (tens to
//! hundreds of microseconds ahead). The numbers behind the timer section of
//! docs/transport/runtime.md.
//!
//! `cargo run --release --example timer_precision [-- --samples N]`

use std::time::{Duration, Instant};

use mxp::benching::Timer;

const AHEAD: [Duration; 3] = [
    Duration::from_micros(30),
    Duration::from_micros(100),
    Duration::from_micros(300),
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(name: &str, ahead: Duration, mut late: Vec<Duration>) {
    late.sort();
    println!(
        "{name:<28} {:>7.0?} ahead  late p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}",
        ahead,
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late[late.len() - 1]
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let samples: usize = std::env::args()
        .skip_while(|a| a != "--samples")
        .nth(1)
        .map_or(2000, |n| n.parse().expect("--samples N"));
    println!("{samples} deadlines each; lateness = time woken - deadline");
    let mut timer = Timer::new()?;
    for ahead in AHEAD {
        let mut late = Vec::with_capacity(samples);
        for _ in 0..samples {
            let deadline = Instant::now() + ahead;
            tokio::time::sleep_until(deadline.into()).await;
            late.push(Instant::now().saturating_duration_since(deadline));
        }
        report("tokio::time::sleep_until", ahead, late);

        let mut late = Vec::with_capacity(samples);
        for _ in 0..samples {
            let deadline = Instant::now() + ahead;
            timer.set(Some(deadline))?;
            timer.expired().await?;
            late.push(Instant::now().saturating_duration_since(deadline));
        }
        report("timerfd (the driver's timer)", ahead, late);
    }
    Ok(())
}
