//! What one destination needs: the master's objects matched with the
//! destination's by identity, and the steps that make them equal.
//!
//! Steps never lose an object the master holds. A missing object is
//! created, and a differing one is replaced by creating the new one before
//! the old one is destroyed. Objects the master lacks are removed only
//! after every object of the master is in place. A run killed between two
//! steps leaves at most an extra copy, which the next run removes.

use super::objects::{compare_material, differing_attributes, Identity, Material, Object};
use super::token::TokenSession;
use cryptoki_sys::*;
use std::collections::BTreeMap;

/// The way an object of the master reaches a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// C_CreateObject from its attributes.
    Create,
    /// Wrapped on the master and unwrapped on the destination with this
    /// key wrap mechanism.
    Wrap(CK_MECHANISM_TYPE),
}

/// The reason an object of the master cannot reach a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CannotTravel {
    pub rv: CK_RV,
    pub reason: String,
}

/// One write on a destination; indexes are into the master's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Create {
        master: usize,
        route: Route,
    },
    Replace {
        master: usize,
        route: Route,
        old: CK_OBJECT_HANDLE,
    },
}

/// The plan for one destination.
#[derive(Default)]
pub struct Plan {
    /// Creates and replaces, in the master's object order.
    pub writes: Vec<Step>,
    /// Objects the master lacks, as indexes into the destination's objects;
    /// removed after every write succeeded.
    pub removes: Vec<usize>,
    /// Master objects already equal on the destination.
    pub unchanged: usize,
    /// Master objects that cannot travel, with the reason.
    pub blocked: Vec<(usize, CannotTravel)>,
}

impl Plan {
    pub fn steps(&self) -> usize {
        self.writes.len() + self.removes.len()
    }
}

/// Matches the master's objects with a destination's and plans the steps.
///
/// `route` decides how each master object travels. `dest` is `None` for a
/// destination that is not initialized yet, which gets every object. A
/// destination object with the identity of a master object that cannot
/// travel is kept: removing it would leave the destination without either.
pub fn plan(
    master_session: &TokenSession,
    master: &[Object],
    dest: Option<(&TokenSession, &[Object])>,
    route: impl Fn(&Object) -> Result<Route, CannotTravel>,
) -> Plan {
    let mut plan = Plan::default();
    let dest_objects: &[Object] = dest.map_or(&[], |(_, objects)| objects);
    let mut by_identity: BTreeMap<Identity, Vec<usize>> = BTreeMap::new();
    for (index, object) in dest_objects.iter().enumerate() {
        by_identity
            .entry(object.identity())
            .or_default()
            .push(index);
    }
    let mut used = vec![false; dest_objects.len()];

    // Equal copies first, so that a differing copy of one identity is not
    // taken for the replacement of an object that has an equal one.
    let mut matched = vec![false; master.len()];
    if let Some((dest_session, _)) = dest {
        for (m, object) in master.iter().enumerate() {
            let candidates = by_identity
                .get(&object.identity())
                .cloned()
                .unwrap_or_default();
            let equal = candidates.into_iter().find(|&d| {
                !used[d]
                    && differing_attributes(object, &dest_objects[d]).is_empty()
                    && compare_material(
                        master_session,
                        object,
                        master,
                        dest_session,
                        &dest_objects[d],
                    ) == Material::Same
            });
            if let Some(d) = equal {
                used[d] = true;
                matched[m] = true;
                plan.unchanged += 1;
            }
        }
    }

    for (m, object) in master.iter().enumerate() {
        if matched[m] {
            continue;
        }
        let candidates = by_identity
            .get(&object.identity())
            .cloned()
            .unwrap_or_default();
        let stale = candidates.into_iter().find(|&d| !used[d]);
        if let Some(d) = stale {
            used[d] = true;
        }
        match (route(object), stale) {
            (Ok(route), None) => plan.writes.push(Step::Create { master: m, route }),
            (Ok(route), Some(d)) => plan.writes.push(Step::Replace {
                master: m,
                route,
                old: dest_objects[d].handle,
            }),
            (Err(blocked), _) => plan.blocked.push((m, blocked)),
        }
    }

    plan.removes = (0..dest_objects.len()).filter(|&d| !used[d]).collect();
    plan
}
