//! In-memory dataplane for unit tests: records what the controller wrote, checks it like the
//! real maps would, and counts nothing (counters read as zero unless a test sets them).

use std::collections::HashMap;

use ftn_common::{
    ResourceKey, ResourceValue, ReturnKey, ReturnValue, ServerValue, GLOBAL_COUNTERS,
};

use super::{
    check_resource_id, check_server_id, Dataplane, DataplaneConfig, DataplaneError, FragmentTarget,
    GlobalCounter, ResourceAssignment, ResourceStats, ReturnTarget, ServerEntry, ServerStats,
};
use crate::model::{ResourceMatch, ReturnMatch};

#[derive(Debug, Default, Clone)]
pub struct MemoryDataplane {
    pub resources: HashMap<ResourceKey, ResourceValue>,
    pub servers: HashMap<u32, ServerValue>,
    pub returns: HashMap<ReturnKey, ReturnValue>,
    pub config: Option<DataplaneConfig>,
    pub resource_stats: HashMap<u32, ResourceStats>,
    pub server_stats: HashMap<u32, ServerStats>,
    /// Number of successful writes, to check batching in tests.
    pub writes: usize,
    /// Number of [`Dataplane::revalidate_flows`] calls.
    pub revalidations: usize,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored for a resource match, if any.
    pub fn resource(&self, m: &ResourceMatch) -> Option<ResourceValue> {
        self.resources.get(&m.to_key()).copied()
    }
}

impl Dataplane for MemoryDataplane {
    fn set_server(&mut self, id: u32, server: &ServerEntry) -> Result<(), DataplaneError> {
        check_server_id(id)?;
        self.servers.insert(id, server.to_value());
        self.writes += 1;
        Ok(())
    }

    fn remove_server(&mut self, id: u32) -> Result<(), DataplaneError> {
        check_server_id(id)?;
        self.servers.remove(&id);
        self.writes += 1;
        Ok(())
    }

    fn set_resource(
        &mut self,
        m: &ResourceMatch,
        a: &ResourceAssignment,
    ) -> Result<(), DataplaneError> {
        check_resource_id(a.resource_id)?;
        if let Some(id) = a.server {
            check_server_id(id)?;
        }
        self.resources.insert(m.to_key(), a.to_value());
        self.writes += 1;
        Ok(())
    }

    fn remove_resource(&mut self, m: &ResourceMatch) -> Result<(), DataplaneError> {
        self.resources.remove(&m.to_key());
        self.writes += 1;
        Ok(())
    }

    fn set_fragments(
        &mut self,
        m: &ResourceMatch,
        t: &FragmentTarget,
    ) -> Result<(), DataplaneError> {
        check_resource_id(t.resource_id)?;
        self.resources.insert(m.to_key(), t.to_value());
        self.writes += 1;
        Ok(())
    }

    fn set_return(&mut self, m: &ReturnMatch, t: &ReturnTarget) -> Result<(), DataplaneError> {
        check_resource_id(t.resource_id)?;
        check_server_id(t.server_id)?;
        self.returns.insert(m.to_key(), t.to_value());
        self.writes += 1;
        Ok(())
    }

    fn remove_return(&mut self, m: &ReturnMatch) -> Result<(), DataplaneError> {
        self.returns.remove(&m.to_key());
        self.writes += 1;
        Ok(())
    }

    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        self.config = Some(*config);
        self.writes += 1;
        Ok(())
    }

    fn revalidate_flows(&mut self) -> Result<(), DataplaneError> {
        self.revalidations += 1;
        Ok(())
    }

    fn resource_stats(&self, id: u32) -> Result<ResourceStats, DataplaneError> {
        check_resource_id(id)?;
        Ok(self.resource_stats.get(&id).copied().unwrap_or_default())
    }

    fn server_stats(&self, id: u32) -> Result<ServerStats, DataplaneError> {
        check_server_id(id)?;
        Ok(self.server_stats.get(&id).copied().unwrap_or_default())
    }

    fn global_stats(&self) -> Result<Vec<(GlobalCounter, u64)>, DataplaneError> {
        debug_assert_eq!(GlobalCounter::ALL.len(), GLOBAL_COUNTERS as usize);
        Ok(GlobalCounter::ALL.iter().map(|c| (*c, 0)).collect())
    }
}
