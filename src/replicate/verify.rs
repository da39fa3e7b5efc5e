//! Comparing tokens: every object of the reference token must be on every
//! other token with the same attributes and key material, and nothing
//! else. Nothing is written; sensitive keys are compared by their public
//! values, a key check value or a signature check, never by their
//! material.

use super::objects::{compare_material, differing_attributes, Identity, Material, Object};
use super::report::{
    Kind, ObjectName, Phase, Problem, ProblemKind, Progress, Report, Role, TokenEntry,
};
use super::slots::{self, PhysicalSlot, SlotRef};
use super::token::TokenSession;
use crate::instance::Instance;
use cryptoki_sys::*;
use std::collections::BTreeMap;

/// The caller's request: the tokens to compare.
pub struct Request<'a> {
    /// Compare the members of this WLD slot.
    pub wld_slot: Option<CK_SLOT_ID>,
    pub master: Option<SlotRef>,
    pub others: Vec<SlotRef>,
    /// Compare the master with every other member of its WLD slot.
    pub all: bool,
    pub user_pin: &'a [u8],
    pub flags: CK_ULONG,
}

/// Compares the tokens and returns the report. Its status is CKR_OK when
/// they are equal and CKR_FUNCTION_FAILED when they differ.
pub fn verify(instance: &Instance, request: &Request, progress: &mut Progress) -> Report {
    let mut report = Report::new(Kind::Verify, request.flags);
    progress.report(Phase::Check, None);
    let scan = slots::scan(instance);
    let Some(tokens) = select(instance, &scan, request, &mut report) else {
        return report;
    };
    for (index, slot) in tokens.iter().enumerate() {
        let role = if index == 0 {
            Role::Master
        } else {
            Role::Destination
        };
        report.tokens.push(TokenEntry::new(role, slot));
    }

    let mut sessions = Vec::new();
    for (index, slot) in tokens.iter().enumerate() {
        match open(slot, request.user_pin) {
            Ok(opened) => {
                // Counted as soon as read, so that a run stopped by a later
                // token reports the objects of the tokens read before it.
                report.tokens[index].objects = Some(opened.1.len());
                if index == 0 {
                    report.master_objects = opened.1.len();
                }
                sessions.push(opened);
            }
            Err((kind, rv, message)) => {
                report.fail(Some(index), kind, rv, message);
                // The PIN is tried on no further token once one rejected it.
                return report;
            }
        }
    }
    progress.total = report.master_objects * (sessions.len() - 1);

    let (reference, rest) = sessions
        .split_first()
        .expect("at least one token is selected");
    for (offset, other) in rest.iter().enumerate() {
        compare(reference, other, offset + 1, &mut report, progress);
    }
    if report.status == CKR_OK && report.differences() > 0 {
        report.status = CKR_FUNCTION_FAILED;
    }
    report
}

/// Lists the tokens to compare, the reference first. Comparing the
/// members of a WLD slot needs every configured module reachable and
/// every member up, because a member left out would pass unchecked.
fn select(
    instance: &Instance,
    scan: &slots::Scan,
    request: &Request,
    report: &mut Report,
) -> Option<Vec<PhysicalSlot>> {
    let slots = scan.slots.as_slice();
    let (reference, wld_slot) = match (&request.master, request.wld_slot) {
        (_, Some(id)) => (None, id),
        (Some(master), None) => match slots::resolve(slots, master) {
            Ok(slot) if request.all => match slot.wld_slot {
                Some(id) => (Some(slot.clone()), id),
                None => {
                    report.fail(
                        None,
                        ProblemKind::Token,
                        CKR_ARGUMENTS_BAD,
                        format!(
                            "{} belongs to no WLD slot; name the tokens",
                            slot.describe()
                        ),
                    );
                    return None;
                }
            },
            Ok(slot) => {
                let mut tokens = vec![slot.clone()];
                for other in &request.others {
                    match slots::resolve(slots, other) {
                        Ok(slot) => tokens.push(slot.clone()),
                        Err(message) => {
                            report.fail(None, ProblemKind::Slot, CKR_SLOT_ID_INVALID, message)
                        }
                    }
                }
                return check_selection(tokens, report);
            }
            Err(message) => {
                report.fail(None, ProblemKind::Slot, CKR_SLOT_ID_INVALID, message);
                return None;
            }
        },
        (None, None) => {
            report.fail(
                None,
                ProblemKind::Slot,
                CKR_ARGUMENTS_BAD,
                "name a WLD slot or the tokens to compare".to_owned(),
            );
            return None;
        }
    };

    if instance.topology.slot(wld_slot).is_err() {
        report.fail(
            None,
            ProblemKind::Slot,
            CKR_ARGUMENTS_BAD,
            format!("WLD slot {wld_slot} does not exist"),
        );
        return None;
    }
    let reference_position = reference.as_ref().map(|r| r.position);
    let mut tokens: Vec<PhysicalSlot> = reference.into_iter().collect();
    tokens.extend(
        slots
            .iter()
            .filter(|s| s.wld_slot == Some(wld_slot) && Some(s.position) != reference_position)
            .cloned(),
    );
    for reason in slots::unreachable_members(instance, scan, wld_slot) {
        report.fail(
            None,
            ProblemKind::Slot,
            CKR_DEVICE_REMOVED,
            format!(
                "{reason}, so WLD slot {wld_slot} was not verified; every configured module \
                 must be reachable and every member up"
            ),
        );
    }
    if tokens.is_empty() {
        report.fail(
            None,
            ProblemKind::Slot,
            CKR_SLOT_ID_INVALID,
            format!("WLD slot {wld_slot} has no reachable member"),
        );
        return None;
    }
    check_selection(tokens, report)
}

fn check_selection(tokens: Vec<PhysicalSlot>, report: &mut Report) -> Option<Vec<PhysicalSlot>> {
    for (index, slot) in tokens.iter().enumerate() {
        if !slot.is_initialized() {
            report.fail(
                None,
                ProblemKind::Token,
                CKR_TOKEN_NOT_RECOGNIZED,
                format!("{}: the token is not initialized", slot.describe()),
            );
        } else if tokens[..index].iter().any(|s| s.position == slot.position) {
            report.fail(
                None,
                ProblemKind::Token,
                CKR_ARGUMENTS_BAD,
                format!("{} is named twice", slot.describe()),
            );
        }
    }
    (report.status == CKR_OK).then_some(tokens)
}

type Opened = (TokenSession, Vec<Object>);

fn open(slot: &PhysicalSlot, user_pin: &[u8]) -> Result<Opened, (ProblemKind, CK_RV, String)> {
    let failed = |what: &str, rv: crate::error::Rv| {
        let kind = if matches!(rv.0, CKR_PIN_INCORRECT | CKR_PIN_LOCKED | CKR_PIN_INVALID) {
            ProblemKind::Pin
        } else {
            ProblemKind::Failed
        };
        // A replication stopped between C_InitToken and C_InitPIN leaves
        // a token without user PIN, and the next replication sets it.
        let remedy = if rv.0 == CKR_USER_PIN_NOT_INITIALIZED {
            "; the token has no user PIN yet, so replicate to it, which sets the user PIN"
        } else {
            ""
        };
        (
            kind,
            rv.0,
            format!("{}: {what} failed: {rv}{remedy}", slot.describe()),
        )
    };
    let session = TokenSession::open(&slot.module, slot.slot_id, false)
        .map_err(|rv| failed("opening a session", rv))?;
    session
        .login(CKU_USER, user_pin)
        .map_err(|rv| failed("logging in as the user", rv))?;
    let objects = Object::read_all(&session).map_err(|rv| failed("reading the objects", rv))?;
    Ok((session, objects))
}

/// Compares one token with the reference and records each difference.
fn compare(
    reference: &Opened,
    other: &Opened,
    token: usize,
    report: &mut Report,
    progress: &mut Progress,
) {
    let (ref_session, ref_objects) = reference;
    let (other_session, other_objects) = other;
    let serial = report.tokens[token].serial.clone();
    let mut by_identity: BTreeMap<Identity, Vec<usize>> = BTreeMap::new();
    for (index, object) in other_objects.iter().enumerate() {
        by_identity
            .entry(object.identity())
            .or_default()
            .push(index);
    }
    let mut used = vec![false; other_objects.len()];
    let difference = |report: &mut Report, kind, object: &Object, attribute, message: String| {
        report.problem(Problem {
            token: Some(token),
            kind,
            rv: CKR_OK,
            object: Some(ObjectName::of(object)),
            attribute,
            skipped: false,
            message,
        });
    };

    for object in ref_objects {
        let candidates: Vec<usize> = by_identity
            .get(&object.identity())
            .map(|c| c.iter().copied().filter(|&i| !used[i]).collect())
            .unwrap_or_default();
        let mut best: Option<(usize, Vec<CK_ATTRIBUTE_TYPE>, Material)> = None;
        for &candidate in &candidates {
            let copy = &other_objects[candidate];
            let attributes = differing_attributes(object, copy);
            let material = if attributes.is_empty() {
                compare_material(ref_session, object, ref_objects, other_session, copy)
            } else {
                Material::Differs
            };
            let exact = attributes.is_empty() && material != Material::Differs;
            let closer = best
                .as_ref()
                .is_none_or(|(_, best_attributes, _)| attributes.len() < best_attributes.len());
            if exact || closer {
                best = Some((candidate, attributes, material));
            }
            if exact {
                break;
            }
        }
        progress.step(Phase::Compare, Some(token));
        let Some((candidate, attributes, material)) = best else {
            difference(
                report,
                ProblemKind::Missing,
                object,
                None,
                format!("{serial}: {} is missing", object.describe()),
            );
            continue;
        };
        used[candidate] = true;
        if !attributes.is_empty() {
            for attribute in attributes {
                difference(
                    report,
                    ProblemKind::AttributeDiffers,
                    object,
                    Some(attribute),
                    format!(
                        "{serial}: {} differs in {}",
                        object.describe(),
                        super::attributes::name(attribute)
                    ),
                );
            }
            continue;
        }
        match material {
            Material::Same => report.tokens[token].unchanged += 1,
            Material::Differs => difference(
                report,
                ProblemKind::KeyDiffers,
                object,
                None,
                format!("{serial}: {} has other key material", object.describe()),
            ),
            Material::NotCompared(reason) => {
                report.tokens[token].unchanged += 1;
                difference(
                    report,
                    ProblemKind::NotCompared,
                    object,
                    None,
                    format!(
                        "{serial}: the material of {} was not compared: {reason}",
                        object.describe()
                    ),
                );
            }
        }
    }
    for (index, object) in other_objects.iter().enumerate() {
        if !used[index] {
            difference(
                report,
                ProblemKind::Extra,
                object,
                None,
                format!(
                    "{serial}: {} is not on the reference token",
                    object.describe()
                ),
            );
        }
    }
    let differences = report
        .problems
        .iter()
        .filter(|p| p.token == Some(token) && p.kind.is_difference())
        .count();
    report.tokens[token].differences = differences;
    report.tokens[token].complete = differences == 0;
}
