//! Why a variable store could not be read or written.

/// Why a variable store could not be read, changed or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not an edk2 variable-store firmware volume at all.
    #[error(
        "not an edk2/OVMF variable store: {0}; give an OVMF_VARS*.fd file (not OVMF_CODE*.fd or a combined OVMF.fd)"
    )]
    NotVarStore(String),
    /// The input looks like a variable store but a structure in it is damaged.
    #[error(
        "corrupt variable store at byte {offset:#x}: {what}; start again from an unmodified OVMF_VARS*.fd template"
    )]
    Corrupt {
        /// Byte offset of the damaged structure in the input.
        offset: usize,
        /// What is wrong with it.
        what: String,
    },
    /// A well-formed variable store in a variant this crate does not handle.
    #[error("unsupported variable store: {0}")]
    Unsupported(String),
    /// The live variables do not fit into the template's variable store.
    #[error(
        "the variables need {need} bytes but the template's variable store holds only {have}; start from a larger template such as OVMF_VARS_4M.fd"
    )]
    StoreFull {
        /// Bytes the variable headers, names and data need, store header included.
        need: usize,
        /// Bytes the variable store has.
        have: usize,
    },
    /// A value given by the caller that cannot be stored.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it and what to give instead.
        why: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn corrupt(offset: usize, what: impl Into<String>) -> Error {
    Error::Corrupt { offset, what: what.into() }
}

pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Error {
    Error::Invalid { what, why: why.into() }
}
