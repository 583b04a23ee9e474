//! The VM room's tests: whole commands through `Core::execute`.

mod lifecycle;
mod requests;
mod warm;
