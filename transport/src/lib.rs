//! baton's transport: QUIC connections with mutual TLS, framing and bulk
//! streams. It moves bytes and knows nothing of tensors.
//!
//! Not built yet: the pipeline issue fills this crate in. Until then it only
//! fixes the error type the rest of the workspace will see.

/// Everything the transport can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
}

/// The transport's result type.
pub type Result<T> = std::result::Result<T, Error>;
