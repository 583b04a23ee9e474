//! An attached agent connection handed to the API layer.

use std::sync::{Arc, Mutex};

use super::connector::AgentStream;

/// An attached connection travelling in a [`crate::Reply`]: taken once
/// by the API layer.
#[derive(Clone)]
pub struct AgentConn(Arc<Mutex<Option<AgentStream>>>);

impl AgentConn {
    pub(crate) fn new(s: AgentStream) -> Self {
        Self(Arc::new(Mutex::new(Some(s))))
    }

    pub fn take(&self) -> Option<AgentStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentConn")
    }
}

impl PartialEq for AgentConn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
