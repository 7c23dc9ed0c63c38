//! A timer with microsecond precision for the driver.
//!
//! Loss recovery in a datacenter works in tens of microseconds, but tokio's
//! timer wheel rounds every deadline up to the next millisecond. On Linux
//! the driver therefore arms a `timerfd` (a high-resolution kernel timer
//! that wakes the reactor when it fires) and falls back to tokio's timer
//! elsewhere.

use std::io;
use std::time::Instant;

/// One re-armable deadline.
#[derive(Debug)]
pub struct Timer {
    imp: imp::Timer,
    deadline: Option<Instant>,
}

impl Timer {
    /// A disarmed timer (on Linux, a `timerfd` registered with the reactor).
    pub fn new() -> io::Result<Timer> {
        Ok(Timer {
            imp: imp::Timer::new()?,
            deadline: None,
        })
    }

    /// Arms the timer for `deadline` (or disarms it). Re-arming with the
    /// same deadline is free.
    pub fn set(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if deadline != self.deadline {
            self.deadline = deadline;
            self.imp.set(deadline)?;
        }
        Ok(())
    }

    /// Waits until the armed deadline passes; never completes if disarmed.
    pub async fn expired(&mut self) -> io::Result<()> {
        match self.deadline {
            None => std::future::pending().await,
            Some(deadline) => {
                self.imp.wait(deadline).await?;
                self.deadline = None;
                Ok(())
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    #[derive(Debug)]
    pub(super) struct Timer {
        fd: AsyncFd<OwnedFd>,
    }

    fn timespec(d: Duration) -> Timespec {
        Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos().into(),
        }
    }

    impl Timer {
        pub(super) fn new() -> io::Result<Timer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // SAFETY: `register_with_interest` requires the fd to stay open
            // and unchanged while registered. The `OwnedFd` is moved into
            // the `AsyncFd`, nothing else holds it, and `AsyncFd`
            // deregisters it before dropping (and so closing) it.
            #[allow(unsafe_code)]
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
            Ok(Timer { fd })
        }

        pub(super) fn set(&mut self, deadline: Option<Instant>) -> io::Result<()> {
            // Relative to now: std's Instant is CLOCK_MONOTONIC but does not
            // expose its raw value. A deadline already due fires in 1 ns
            // (zero would disarm the timer).
            let value = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
                None => Duration::ZERO,
            };
            let spec = Itimerspec {
                it_interval: timespec(Duration::ZERO),
                it_value: timespec(value),
            };
            timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            Ok(())
        }

        pub(super) async fn wait(&mut self, deadline: Instant) -> io::Result<()> {
            loop {
                let mut guard = self.fd.readable().await?;
                let mut expirations = [0u8; 8];
                match rustix::io::read(guard.get_inner(), &mut expirations) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        // Spurious readiness (e.g. re-armed since): if the
                        // deadline has passed anyway, we are done.
                        if Instant::now() >= deadline {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::time::Instant;

    #[derive(Debug)]
    pub struct Timer;

    impl Timer {
        pub fn new() -> io::Result<Timer> {
            Ok(Timer)
        }

        pub fn set(&mut self, _: Option<Instant>) -> io::Result<()> {
            Ok(())
        }

        pub async fn wait(&mut self, deadline: Instant) -> io::Result<()> {
            tokio::time::sleep_until(deadline.into()).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn fires_after_its_deadline_and_can_be_rearmed() {
        let mut t = Timer::new().unwrap();
        for micros in [50u64, 300, 1500] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            t.set(Some(deadline)).unwrap();
            t.expired().await.unwrap();
            assert!(Instant::now() >= deadline);
        }
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_fires_at_once() {
        let mut t = Timer::new().unwrap();
        t.set(Some(Instant::now() - Duration::from_millis(5)))
            .unwrap();
        t.expired().await.unwrap();
    }

    #[tokio::test]
    async fn disarmed_timer_never_fires() {
        let mut t = Timer::new().unwrap();
        t.set(Some(Instant::now() + Duration::from_micros(10)))
            .unwrap();
        t.set(None).unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), t.expired()).await;
        assert!(r.is_err());
    }
}
