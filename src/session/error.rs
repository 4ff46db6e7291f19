//! The core's errors. [`CoreError`] is what the core's API returns to the
//! protocol sessions (which map it to their protocol's error form); a
//! build never fails with an error but with a failing `BuildResult`,
//! inside which [`JobError`] is one derivation's way (what a client is
//! told when no backend's BuildResult answers it) and [`BuildError`] one
//! attempt on one backend. Each says which step failed and is classified
//! ([`Class`]): whose fault it is decides whether a build is retried, how
//! it is counted and logged.

use crate::wire::store_path::StorePath;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The client asked for something the relay cannot do (an input it did
    /// not upload, a derivation no backend could ever build): retrying
    /// cannot help.
    Client,
    /// The backends or the relay itself failed (unreachable, gone
    /// mid-build, a store error): another backend or a later try may do.
    Infrastructure,
    /// The build itself failed, and the backend said so with an error
    /// rather than a failing BuildResult: another backend would fail too.
    Build,
    /// Nobody's fault: every client waiting for the build went away.
    Cancelled,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Client => "client",
            Class::Infrastructure => "infrastructure",
            Class::Build => "build",
            Class::Cancelled => "cancelled",
        }
    }
}

/// Why a core operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("relay store")]
    Store(#[from] crate::store::Error),
    /// The client's own bytes (an upload's NAR, a NAR sent to it).
    #[error("client protocol")]
    Wire(#[from] crate::wire::Error),
    #[error("NAR of {path} ended {missing} bytes before the declared narSize")]
    ShortNar { path: StorePath, missing: u64 },
    #[error("streaming {path} from backend {backend}")]
    Output {
        path: StorePath,
        backend: String,
        #[source]
        source: crate::wire::Error,
    },
    #[error("remote-store build")]
    Derived(#[from] super::derived::DerivedError),
    #[error("substituting from upstream")]
    Upstream(#[from] std::sync::Arc<crate::upstream::Error>),
}

impl CoreError {
    pub fn class(&self) -> Class {
        use crate::store::Error as S;
        match self {
            CoreError::Store(S::Io { .. } | S::BadNarInfo { .. } | S::Compression(_)) => {
                Class::Infrastructure
            }
            CoreError::Store(_) | CoreError::Wire(_) | CoreError::ShortNar { .. } => Class::Client,
            CoreError::Output { .. } => Class::Infrastructure,
            CoreError::Derived(e) => e.class(),
            CoreError::Upstream(_) => Class::Infrastructure,
        }
    }
}

/// Why a job ended without a backend's BuildResult.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "input {0} is not in the relay store (the client did not upload it, and no upstream cache has it)"
    )]
    MissingInput(StorePath),
    #[error("reading the relay store")]
    Store(#[source] crate::store::Error),
    #[error("reading the derivation")]
    Derivation(#[source] crate::wire::Error),
    #[error("fetching inputs from upstream")]
    Upstream(#[source] std::sync::Arc<crate::upstream::Error>),
    #[error(
        "content-addressed derivations with floating outputs (__contentAddressed) are not supported by nix-relay: build them on the client or on a builder directly"
    )]
    FloatingOutputs,
    #[error("reading requiredSystemFeatures")]
    Features(#[source] crate::wire::build::AttrsError),
    #[error("placement")]
    Placement(#[source] crate::scheduler::Error),
    #[error("building on {backend} failed")]
    Backend {
        backend: String,
        #[source]
        source: BuildError,
    },
    #[error("no backend could build it in {0} attempts")]
    Exhausted(u32),
    #[error("cancelled: every client waiting for it is gone")]
    Cancelled,
}

impl JobError {
    pub fn class(&self) -> Class {
        match self {
            JobError::MissingInput(_)
            | JobError::Derivation(_)
            | JobError::FloatingOutputs
            | JobError::Features(_) => Class::Client,
            JobError::Placement(
                crate::scheduler::Error::NoneEligible { .. }
                | crate::scheduler::Error::NoUntrustedBackend { .. },
            ) => Class::Client,
            JobError::Backend { source, .. } if !source.is_infrastructure() => match source {
                BuildError::Build(_) => Class::Build,
                _ => Class::Client,
            },
            JobError::Cancelled => Class::Cancelled,
            _ => Class::Infrastructure,
        }
    }
}

impl From<crate::store::Error> for JobError {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Missing(p) => JobError::MissingInput(p),
            e => JobError::Store(e),
        }
    }
}

impl BuildError {
    /// A failure of the backend or the link to it, not of the build: worth
    /// another backend.
    pub fn is_infrastructure(&self) -> bool {
        use crate::wire::Error as W;
        let wire = |e: &W| matches!(e, W::UnexpectedEof { .. } | W::Read { .. } | W::Write(_));
        match self {
            BuildError::Connect(_) => true,
            BuildError::Inputs(e) | BuildError::Build(e) | BuildError::Outputs(e) => wire(e),
            BuildError::Store(_) | BuildError::Trust(_) | BuildError::Fetch(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("connecting")]
    Connect(#[from] crate::backend::Error),
    #[error("reading the relay store")]
    Store(#[from] crate::store::Error),
    #[error("copying inputs")]
    Inputs(#[source] crate::wire::Error),
    #[error("fetching an input from upstream to push it")]
    Fetch(#[source] std::sync::Arc<crate::upstream::Error>),
    #[error("BuildDerivation")]
    Build(#[source] crate::wire::Error),
    #[error("querying outputs")]
    Outputs(#[source] crate::wire::Error),
    #[error("placement: backend {0} is for the other trust level (untrusted_clients)")]
    Trust(String),
}
