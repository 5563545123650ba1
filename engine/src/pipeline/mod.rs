//! Pipeline parallelism: schedules as data, balanced partitions, and the
//! worker runtime as a state machine without I/O.

pub mod adopt;
pub mod checkpoint;
pub mod coordinator;
mod evaluate;
mod host;
pub mod migrate;
pub mod partition;
pub mod plan;
pub mod protocol;
pub mod recompute;
pub mod replica;
mod rollback;
pub mod schedule;
pub mod sim;
pub mod stage;
pub mod worker;

pub use partition::{Layout, Partition};
pub use schedule::{Action, Phase, ScheduleKind};
pub use stage::{Effect, Stage, StageEvent, Work};
