//! Where a process is: its run and how it came into it, as one typed value.
//!
//! The kernel keeps both in one map entry ([`ProcRun`]) and sends them in
//! every record header ([`EventHeader`]): a run handle and an attribution
//! word, whose low bits ([`HOW_MASK`]) are the method and whose high bits
//! are flags ([`HOW_FLAG_COUNTED`], …). User space reads the method through
//! [`How::method`] (the event's [`Attributed`]); the raw word exists only at
//! that boundary ([`How::from_word`], [`How::word`]).

use sensor_common::event::{
    EventHeader, HOW_BACKFILL, HOW_ENV, HOW_INHERITED, HOW_LAUNCH, HOW_MASK, HOW_MATCHER, ProcRun,
};

use crate::event::{Attributed, StartedBy};

/// How a process came into its run: the kernel's attribution word (method
/// and flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct How(u32);

impl How {
    /// No method (not in a run).
    pub const NONE: Self = Self(0);
    /// It called `sensor launch`.
    pub const LAUNCH: Self = Self(HOW_LAUNCH);
    /// Its creator's run, at fork.
    pub const INHERITED: Self = Self(HOW_INHERITED);
    /// An `[[agent]]` matcher started the run at its exec.
    pub const MATCHER: Self = Self(HOW_MATCHER);
    /// Placed from /proc at start-up (ancestry or matcher).
    pub const BACKFILL: Self = Self(HOW_BACKFILL);
    /// Placed from its `SENSOR_RUN_ID` marker at start-up.
    pub const ENV: Self = Self(HOW_ENV);

    /// The kernel's word (`ProcRun::how`, `EventHeader::run_how`), as it is.
    #[must_use]
    pub const fn from_word(word: u32) -> Self {
        Self(word)
    }

    /// The word the kernel keeps (method and flags).
    #[must_use]
    pub const fn word(self) -> u32 {
        self.0
    }

    /// The method, without flags.
    #[must_use]
    pub const fn of(method: Attributed) -> Self {
        match method {
            Attributed::Launch => Self::LAUNCH,
            Attributed::Inherited => Self::INHERITED,
            Attributed::Matcher => Self::MATCHER,
            Attributed::Backfill => Self::BACKFILL,
            Attributed::Env => Self::ENV,
            Attributed::Unknown => Self::NONE,
        }
    }

    /// How the first process of a run started by `started_by` came into it.
    #[must_use]
    pub const fn started_by(started_by: StartedBy) -> Self {
        Self::of(started_by.attributed())
    }

    /// The method, as events show it.
    #[must_use]
    pub const fn method(self) -> Attributed {
        match self.0 & HOW_MASK {
            HOW_LAUNCH => Attributed::Launch,
            HOW_INHERITED => Attributed::Inherited,
            HOW_MATCHER => Attributed::Matcher,
            HOW_BACKFILL => Attributed::Backfill,
            HOW_ENV => Attributed::Env,
            _ => Attributed::Unknown,
        }
    }

    /// The flag bits (`HOW_FLAG_*`).
    #[must_use]
    pub const fn flags(self) -> u32 {
        self.0 & !HOW_MASK
    }

    /// The same method without flags.
    #[must_use]
    pub const fn without_flags(self) -> Self {
        Self(self.0 & HOW_MASK)
    }

    /// This method with `flags` (`HOW_FLAG_*` bits) added.
    #[must_use]
    pub const fn with_flags(self, flags: u32) -> Self {
        Self(self.0 | (flags & !HOW_MASK))
    }

    /// The process leads its run (it launched it, or a matcher started it).
    #[must_use]
    pub const fn leads(self) -> bool {
        matches!(self.method(), Attributed::Launch | Attributed::Matcher)
    }
}

/// A process's run (handle, 0: none) and how it came into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub run: u64,
    pub how: How,
}

impl Placement {
    /// In no run.
    pub const NONE: Self = Self {
        run: 0,
        how: How::NONE,
    };

    #[must_use]
    pub const fn new(run: u64, how: How) -> Self {
        Self { run, how }
    }

    /// What a record's header says.
    #[must_use]
    pub const fn of_header(h: &EventHeader) -> Self {
        Self::new(h.run, How::from_word(h.run_how))
    }

    /// What a kernel map entry says.
    #[must_use]
    pub const fn of_entry(e: &ProcRun) -> Self {
        Self::new(e.run, How::from_word(e.how))
    }

    /// The kernel map entry for the process started at `start_ns`.
    #[must_use]
    pub const fn entry(self, start_ns: u64) -> ProcRun {
        ProcRun {
            run: self.run,
            start_ns,
            how: self.how.word(),
            _pad: 0,
        }
    }

    /// In a run.
    #[must_use]
    pub const fn is_placed(self) -> bool {
        self.run != 0
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::event::HOW_FLAG_COUNTED;

    use super::*;

    #[test]
    fn the_method_is_read_without_the_flags() {
        let how = How::INHERITED.with_flags(HOW_FLAG_COUNTED);
        assert_eq!(how.word(), HOW_INHERITED | HOW_FLAG_COUNTED);
        assert_eq!(how.method(), Attributed::Inherited);
        assert_eq!(how.flags(), HOW_FLAG_COUNTED);
        assert_eq!(how.without_flags(), How::INHERITED);
        assert_eq!(How::from_word(0x77).method(), Attributed::Unknown);
        for m in [
            Attributed::Launch,
            Attributed::Inherited,
            Attributed::Matcher,
            Attributed::Backfill,
            Attributed::Env,
        ] {
            assert_eq!(How::of(m).method(), m);
        }
        assert_eq!(How::started_by(StartedBy::Matcher), How::MATCHER);
        assert_eq!(How::started_by(StartedBy::Backfill), How::BACKFILL);
        assert!(How::MATCHER.with_flags(HOW_FLAG_COUNTED).leads());
        assert!(!How::INHERITED.leads());
    }
}
