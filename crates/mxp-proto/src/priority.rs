//! The four priority bands every piece of outgoing data belongs to.

/// Scheduling band, highest priority first.
///
/// The scheduler shares the link between bands by weighted fair queuing:
/// a band that becomes busy is served before bands that have been sending
/// (latency-sensitive traffic preempts bulk), and every busy band gets a
/// share proportional to its weight (bulk is never starved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Band {
    /// Calls and responses: someone is waiting on them.
    Critical = 0,
    /// Agent lifecycle: register, discover, heartbeat.
    Control = 1,
    /// Token streams and other chunked transfers.
    #[default]
    Streaming = 2,
    /// Events, acknowledgements and errors.
    Background = 3,
}

impl Band {
    /// Number of bands.
    pub const COUNT: usize = 4;

    /// All bands, highest priority first.
    pub const ALL: [Band; Band::COUNT] = [
        Band::Critical,
        Band::Control,
        Band::Streaming,
        Band::Background,
    ];

    /// Dense index, for per-band arrays.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Critical => "critical",
            Band::Control => "control",
            Band::Streaming => "streaming",
            Band::Background => "background",
        }
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
