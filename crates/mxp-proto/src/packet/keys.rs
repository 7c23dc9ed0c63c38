//! Packet keys of an established session and their rotation.
//!
//! Keys rotate automatically (by default every 10,000 packets sent or 60 s,
//! whichever comes first). As in QUIC, one key-phase bit in the protected
//! header says which generation a packet uses: the end that rotates first
//! flips it, the other follows on the first packet that decrypts with the
//! next generation. The previous generation is kept for a grace period so
//! packets still in flight across the switch are not lost, then discarded:
//! after that, anything protected with old keys fails authentication.

use std::time::{Duration, Instant};

use crate::crypto::{DecryptError, HeaderKey, PacketKey, Secret, SessionSecrets};

/// When to rotate keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRotation {
    /// Rotate after this many packets sent with one generation.
    pub packets: u64,
    /// Rotate after a generation has been in use this long.
    pub interval: Duration,
}

impl Default for KeyRotation {
    fn default() -> Self {
        KeyRotation {
            packets: 10_000,
            interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Previous {
    key: PacketKey,
    /// Set once known (the caller supplies the grace period).
    discard_at: Option<Instant>,
}

/// The packet keys of one session.
#[derive(Debug)]
pub struct KeyState {
    local_secret: Secret,
    remote_secret: Secret,
    local: PacketKey,
    remote: PacketKey,
    next_remote: PacketKey,
    prev_remote: Option<Previous>,
    local_hp: HeaderKey,
    remote_hp: HeaderKey,
    phase: bool,
    generation: u64,
    sent_in_phase: u64,
    phase_started: Instant,
    /// First packet number the peer sent us in the current phase. Until
    /// there is one, the peer may not have switched yet, so this end must not
    /// rotate again (it would get two generations ahead).
    first_received_in_phase: Option<u64>,
}

/// What opening a packet did to the key state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Decrypted with the current generation.
    Current,
    /// Decrypted with the previous generation (reordered across a switch).
    Previous,
    /// Decrypted with the next generation: the peer rotated and so did we.
    Rotated,
}

impl KeyState {
    /// Keys of a freshly established session.
    pub fn new(secrets: SessionSecrets, now: Instant) -> Self {
        let SessionSecrets { local, remote } = secrets;
        KeyState {
            local_hp: local.header_key(),
            remote_hp: remote.header_key(),
            local: local.packet_key(),
            remote: remote.packet_key(),
            next_remote: remote.next().packet_key(),
            local_secret: local,
            remote_secret: remote,
            prev_remote: None,
            phase: false,
            generation: 0,
            sent_in_phase: 0,
            phase_started: now,
            // The handshake itself proves the peer holds generation 0.
            first_received_in_phase: Some(0),
        }
    }

    /// Key phase bit to put on outgoing packets.
    pub fn phase(&self) -> bool {
        self.phase
    }

    /// Number of rotations so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Header-protection key for outgoing packets.
    pub fn local_header_key(&self) -> &HeaderKey {
        &self.local_hp
    }

    /// Header-protection key for incoming packets.
    pub fn remote_header_key(&self) -> &HeaderKey {
        &self.remote_hp
    }

    /// AEAD key for the next outgoing packet; counts it toward rotation.
    pub fn seal_key(&mut self) -> &PacketKey {
        self.sent_in_phase += 1;
        &self.local
    }

    /// [`seal_key`](Self::seal_key) together with the header-protection
    /// key, for sealing one packet.
    pub fn seal_keys(&mut self) -> (&PacketKey, &HeaderKey) {
        self.sent_in_phase += 1;
        (&self.local, &self.local_hp)
    }

    /// Rotates if the policy says so and the peer has caught up with the
    /// current generation. Returns whether it rotated.
    pub fn maybe_rotate(&mut self, now: Instant, policy: &KeyRotation, grace: Duration) -> bool {
        let due = self.sent_in_phase >= policy.packets
            || now.saturating_duration_since(self.phase_started) >= policy.interval;
        if !due || self.first_received_in_phase.is_none() {
            return false;
        }
        self.rotate(now, grace);
        self.first_received_in_phase = None;
        true
    }

    fn rotate(&mut self, now: Instant, grace: Duration) {
        let remote_secret = self.remote_secret.next();
        let next_remote = remote_secret.next().packet_key();
        let old_remote = std::mem::replace(
            &mut self.remote,
            std::mem::replace(&mut self.next_remote, next_remote),
        );
        self.remote_secret = remote_secret;
        self.prev_remote = Some(Previous {
            key: old_remote,
            discard_at: Some(now + grace),
        });
        self.local_secret = self.local_secret.next();
        self.local = self.local_secret.packet_key();
        self.phase = !self.phase;
        self.generation += 1;
        self.sent_in_phase = 0;
        self.phase_started = now;
    }

    /// Whether a packet with this phase bit is protected with the current
    /// generation (the common case: one decryption attempt, in place).
    pub fn is_current_phase(&self, phase: bool) -> bool {
        phase == self.phase
    }

    /// Decrypts a packet's payload with the generation its phase bit and
    /// packet number point to. A packet that decrypts only with the next
    /// generation rotates this end too. `open` may be called twice (previous
    /// generation, then next) when the phase bit differs from ours.
    pub fn open<R, E: From<DecryptError>>(
        &mut self,
        now: Instant,
        grace: Duration,
        pn: u64,
        phase: bool,
        mut open: impl FnMut(&PacketKey) -> Result<R, E>,
    ) -> Result<(R, Opened), E> {
        if let Some(prev) = &self.prev_remote {
            if prev.discard_at.is_some_and(|t| now >= t) {
                self.prev_remote = None;
            }
        }
        if phase == self.phase {
            let out = open(&self.remote)?;
            if self.first_received_in_phase.is_none() {
                self.first_received_in_phase = Some(pn);
            }
            return Ok((out, Opened::Current));
        }
        // The other phase: an older packet from the previous generation, or
        // the peer's first packet of the next one.
        let older = self.first_received_in_phase.is_some_and(|first| pn < first);
        if let Some(prev) = &self.prev_remote {
            if let Ok(out) = open(&prev.key) {
                return Ok((out, Opened::Previous));
            }
        }
        if older {
            return Err(DecryptError.into());
        }
        let out = open(&self.next_remote)?;
        self.rotate(now, grace);
        self.first_received_in_phase = Some(pn);
        Ok((out, Opened::Rotated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SECRET_LEN;

    const GRACE: Duration = Duration::from_millis(10);

    fn pair(now: Instant) -> (KeyState, KeyState) {
        let a = Secret::new([1; SECRET_LEN]);
        let b = Secret::new([2; SECRET_LEN]);
        (
            KeyState::new(
                SessionSecrets {
                    local: a.clone(),
                    remote: b.clone(),
                },
                now,
            ),
            KeyState::new(
                SessionSecrets {
                    local: b,
                    remote: a,
                },
                now,
            ),
        )
    }

    /// Seals a payload under the sender's current key; returns (ciphertext, phase).
    fn send(k: &mut KeyState, pn: u64) -> (Vec<u8>, bool) {
        let mut buf = b"frames".to_vec();
        let tag = k.seal_key().seal(pn, b"h", &mut buf);
        buf.extend_from_slice(&tag);
        (buf, k.phase())
    }

    fn recv(
        k: &mut KeyState,
        now: Instant,
        pn: u64,
        (ct, phase): &(Vec<u8>, bool),
    ) -> Result<Opened, DecryptError> {
        k.open(now, GRACE, pn, *phase, |key| {
            let mut c = ct.clone();
            key.open(pn, b"h", &mut c)
        })
        .map(|(_, o)| o)
    }

    #[test]
    fn rotation_by_packet_count_is_followed_by_the_peer_without_loss() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let policy = KeyRotation {
            packets: 3,
            interval: Duration::from_secs(60),
        };
        let mut in_flight = Vec::new();
        for pn in 0..3 {
            assert!(!a.maybe_rotate(now, &policy, GRACE));
            in_flight.push((pn, send(&mut a, pn)));
        }
        assert!(a.maybe_rotate(now, &policy, GRACE));
        let new = (3, send(&mut a, 3));
        // The new-generation packet overtakes the old ones.
        assert_eq!(recv(&mut b, now, new.0, &new.1), Ok(Opened::Rotated));
        for (pn, p) in &in_flight {
            assert_eq!(recv(&mut b, now, *pn, p), Ok(Opened::Previous));
        }
        assert_eq!((a.generation(), b.generation()), (1, 1));
        // b now sends in the new generation and a reads it as current.
        let reply = send(&mut b, 0);
        assert_eq!(recv(&mut a, now, 0, &reply), Ok(Opened::Current));
    }

    #[test]
    fn no_second_rotation_until_the_peer_caught_up() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let policy = KeyRotation {
            packets: 1,
            interval: Duration::from_secs(60),
        };
        send(&mut a, 0);
        assert!(a.maybe_rotate(now, &policy, GRACE));
        send(&mut a, 1);
        assert!(
            !a.maybe_rotate(now, &policy, GRACE),
            "peer has not shown generation 1 yet"
        );
    }

    #[test]
    fn time_based_rotation() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let policy = KeyRotation {
            packets: u64::MAX,
            interval: Duration::from_secs(60),
        };
        assert!(!a.maybe_rotate(now + Duration::from_secs(59), &policy, GRACE));
        assert!(a.maybe_rotate(now + Duration::from_secs(60), &policy, GRACE));
    }

    #[test]
    fn old_keys_are_refused_after_the_grace_period() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let policy = KeyRotation {
            packets: 1,
            interval: Duration::from_secs(60),
        };
        let old = send(&mut a, 0);
        assert!(a.maybe_rotate(now, &policy, GRACE));
        let new = send(&mut a, 1);
        assert_eq!(recv(&mut b, now, 1, &new), Ok(Opened::Rotated));
        // Within the grace period the old packet still opens...
        assert_eq!(recv(&mut b, now + GRACE / 2, 0, &old), Ok(Opened::Previous));
        // ...after it, the old generation is gone for good.
        assert_eq!(recv(&mut b, now + GRACE, 0, &old), Err(DecryptError));
    }
}
