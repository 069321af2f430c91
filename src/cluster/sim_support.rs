//! What the cluster's seeded simulators share (tests only): a deterministic random source and
//! the schedules to run (`FANOUT_SIM_SCHEDULES`, default 3,000; `FANOUT_SIM_SEED`, the first,
//! default 1). A failing seed is printed with the command that runs it alone.

/// xorshift64*: deterministic from the seed, std only.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seeds to run.
pub(crate) fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let first = var("FANOUT_SIM_SEED").unwrap_or(1);
    first..first + var("FANOUT_SIM_SCHEDULES").unwrap_or(3000)
}
