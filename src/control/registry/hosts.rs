//! A cluster's hosts by identity and by slot: finding a host by its identity in O(1) (by its
//! `host_key`, identities are compared to rule out a hash collision), giving a new host a slot
//! (reusing a vacant one) and freeing it. Every slot a host takes or leaves is marked for the
//! next publication.

use super::*;

impl ClusterState {
    /// The host with this identity.
    pub(super) fn find(&self, identity: &HostIdentity) -> Option<HostId> {
        let key = host_key(identity);
        let is = |id: &HostId| self.hosts.get(id).is_some_and(|h| h.identity == *identity);
        match self.by_key.get(&key) {
            Some(id) if is(id) => Some(*id),
            // Rare: another identity hashes alike.
            Some(_) => self.collisions.iter().find(|id| is(id)).copied(),
            None => None,
        }
    }

    /// Records a new host (its identity not yet known here) in a slot.
    pub(super) fn insert_host(
        &mut self,
        id: HostId,
        identity: HostIdentity,
        weight: u32,
        workers: usize,
    ) {
        let key = host_key(&identity);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(0);
                HostSlot::try_from(self.slots.len() - 1).unwrap_or(HostSlot::MAX)
            }
        };
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = id;
        }
        match self.by_key.entry(key) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.collisions.push(id),
        }
        self.dirty.insert(slot);
        self.hosts.insert(
            id,
            HostRecord {
                name: Arc::from(identity.host_name.as_str()),
                identity,
                key,
                slot,
                weight,
                drained: false,
                weight_override: None,
                data_conns: 0,
                conns: BTreeSet::new(),
                idle_per_worker: vec![0; workers],
            },
        );
    }

    /// Forgets a host and frees its slot.
    pub(super) fn remove_host(&mut self, id: HostId) {
        let Some(host) = self.hosts.remove(&id) else {
            return;
        };
        if self.by_key.get(&host.key) == Some(&id) {
            self.by_key.remove(&host.key);
            // A colliding identity with this key takes its place in the index.
            if let Some(k) = self
                .collisions
                .iter()
                .position(|c| self.hosts.get(c).is_some_and(|h| h.key == host.key))
            {
                let other = self.collisions.swap_remove(k);
                self.by_key.insert(host.key, other);
            }
        } else {
            self.collisions.retain(|c| *c != id);
        }
        if let Some(s) = self.slots.get_mut(host.slot as usize) {
            *s = 0;
        }
        self.free_slots.push(host.slot);
        self.dirty.insert(host.slot);
    }

    /// What workers see in `slot`.
    pub(super) fn snapshot_host(&self, slot: HostSlot) -> SnapshotHost {
        self.slots
            .get(slot as usize)
            .and_then(|id| Some((*id, self.hosts.get(id)?)))
            .map_or_else(SnapshotHost::vacant, |(id, h)| SnapshotHost {
                id,
                key: h.key,
                weight: h.effective_weight(),
                host_name: h.name.clone(),
            })
    }
}
