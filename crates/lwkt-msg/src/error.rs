//! How a message's reply can fail.

use core::fmt;

use crate::header::code;

/// Why a reply is not a success. DragonFly: `ms_error` (an errno).
///
/// ```
/// use lwkt_msg::MsgError;
/// assert_eq!(MsgError::Code(5).to_string(), "handler error 5");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgError {
    /// The originator aborted the message and the target gave up on it
    /// (DragonFly: the target's reply to `lwkt_abortmsg`, usually `EINTR`).
    Aborted,
    /// The port was closed, or its owning thread had exited, before the
    /// message could be queued on it.
    Closed,
    /// An error code chosen by the handler; always positive.
    Code(i32),
}

impl MsgError {
    #[inline]
    pub(crate) fn encode(r: Result<(), MsgError>) -> i32 {
        match r {
            Ok(()) => code::OK,
            Err(MsgError::Aborted) => code::ABORTED,
            Err(MsgError::Closed) => code::CLOSED,
            Err(MsgError::Code(c)) => {
                assert!(
                    c > 0,
                    "lwkt-msg: MsgError::Code must be positive (got {c}); \
                     zero and negative codes are reserved"
                );
                c
            }
        }
    }

    #[inline]
    pub(crate) fn decode(c: i32) -> Result<(), MsgError> {
        match c {
            code::OK => Ok(()),
            code::ABORTED => Err(MsgError::Aborted),
            code::CLOSED => Err(MsgError::Closed),
            c => Err(MsgError::Code(c)),
        }
    }
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgError::Aborted => f.write_str("message aborted"),
            MsgError::Closed => f.write_str("port closed"),
            MsgError::Code(c) => write!(f, "handler error {c}"),
        }
    }
}

impl core::error::Error for MsgError {}
