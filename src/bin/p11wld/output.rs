//! Text and JSON renderings of the module's results.

use crate::address::describe_label;
use crate::module::{field_bytes, shown, text, Report};
use crate::sys;
use cryptoki_sys::*;
use p11wld::error::ckr_name;
use p11wld::replicate::display::escape_nonprintable;
use serde::Serialize;

#[derive(Serialize)]
pub struct SlotJson {
    position: u64,
    module: String,
    vendor_slot_id: u64,
    token_present: bool,
    initialized: bool,
    user_pin_initialized: bool,
    label: String,
    /// The label's bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_hex: Option<String>,
    serial: String,
    /// `None` when the token belongs to no WLD slot.
    wld_slot: Option<u64>,
}

/// Returns a label for JSON: its text, with invalid UTF-8 replaced, and
/// its bytes in hex when they are not UTF-8, because a JSON string cannot
/// hold them.
fn json_label(field: &[std::ffi::c_char]) -> (String, Option<String>) {
    let bytes = field_bytes(field);
    match std::str::from_utf8(bytes) {
        Ok(label) => (label.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        ),
    }
}

/// Formats a count with the singular or the plural noun: "1 place", "2
/// places".
pub fn counted(count: u64, singular: &str, plural: &str) -> String {
    format!("{count} {}", if count == 1 { singular } else { plural })
}

/// Escapes a string for a terminal.
fn escaped(text: &str) -> String {
    escape_nonprintable(text.as_bytes())
}

pub fn slots_json(slots: &[sys::P11WLD_PHYSICAL_SLOT]) -> Vec<SlotJson> {
    slots
        .iter()
        .map(|s| {
            let (label, label_hex) = json_label(&s.label);
            SlotJson {
                position: s.position,
                module: text(&s.module_name),
                vendor_slot_id: s.vendor_slot_id,
                token_present: s.flags & sys::P11WLD_SLOT_TOKEN_PRESENT != 0,
                initialized: s.flags & sys::P11WLD_SLOT_TOKEN_INITIALIZED != 0,
                user_pin_initialized: s.flags & sys::P11WLD_SLOT_USER_PIN_INITIALIZED != 0,
                label,
                label_hex,
                serial: text(&s.serial),
                wld_slot: (s.wld_slot_id != sys::P11WLD_NO_WLD_SLOT).then_some(s.wld_slot_id),
            }
        })
        .collect()
}

pub fn slots_text(slots: &[sys::P11WLD_PHYSICAL_SLOT]) -> String {
    let mut out = format!(
        "{:>4}  {:<16} {:>10}  {:<32}  {:<16}  {}\n",
        "POS", "MODULE", "SLOT", "LABEL", "SERIAL", "WLD SLOT"
    );
    for s in slots {
        let wld = if s.wld_slot_id == sys::P11WLD_NO_WLD_SLOT {
            "-".to_owned()
        } else {
            s.wld_slot_id.to_string()
        };
        out.push_str(&format!(
            "{:>4}  {:<16} {:>10}  {:<32}  {:<16}  {wld}\n",
            s.position,
            shown(&s.module_name),
            format!("{:#x}", s.vendor_slot_id),
            describe_label(s),
            shown(&s.serial),
        ));
    }
    out
}

#[derive(Serialize)]
pub struct ModuleJson {
    module: String,
    /// "up", "not-initialized" or "no-slots".
    state: &'static str,
    slots: u64,
    members: u64,
    members_down: u64,
    /// The code of the failed C_GetSlotList, if it failed.
    error: Option<&'static str>,
}

fn module_state(state: sys::p11wld_ulong) -> &'static str {
    match state {
        sys::P11WLD_MODULE_UP => "up",
        sys::P11WLD_MODULE_NOT_INITIALIZED => "not-initialized",
        sys::P11WLD_MODULE_NO_SLOTS => "no-slots",
        _ => "unknown",
    }
}

pub fn modules_json(modules: &[sys::P11WLD_MODULE_STATUS]) -> Vec<ModuleJson> {
    modules
        .iter()
        .map(|m| ModuleJson {
            module: text(&m.module_name),
            state: module_state(m.state),
            slots: m.slot_count,
            members: m.member_count,
            members_down: m.members_down,
            error: (m.error != CKR_OK).then(|| ckr_name(m.error)),
        })
        .collect()
}

/// Describes why a module is not reachable, or returns `None` when it is.
pub fn unreachable_reason(module: &sys::P11WLD_MODULE_STATUS) -> Option<String> {
    let name = shown(&module.module_name);
    match module.state {
        sys::P11WLD_MODULE_UP => None,
        sys::P11WLD_MODULE_NOT_INITIALIZED => Some(format!(
            "module {name} is not reachable (C_Initialize failed)"
        )),
        _ if module.error != CKR_OK => Some(format!(
            "module {name} is not reachable (C_GetSlotList failed: {})",
            ckr_name(module.error)
        )),
        _ => Some(format!("module {name} is not reachable (it lists no slot)")),
    }
}

pub fn modules_text(modules: &[sys::P11WLD_MODULE_STATUS]) -> String {
    let mut out = format!(
        "{:<16} {:<15} {:>5} {:>7} {:>5}  {}\n",
        "MODULE", "STATE", "SLOTS", "MEMBERS", "DOWN", "ERROR"
    );
    for m in modules_json(modules) {
        out.push_str(&format!(
            "{:<16} {:<15} {:>5} {:>7} {:>5}  {}\n",
            escaped(&m.module),
            m.state,
            m.slots,
            m.members,
            m.members_down,
            m.error.unwrap_or("-"),
        ));
    }
    out
}

#[derive(Serialize)]
pub struct StatusJson {
    modules: Vec<ModuleJson>,
    members: Vec<MemberJson>,
}

pub fn status_json(
    modules: &[sys::P11WLD_MODULE_STATUS],
    members: &[sys::P11WLD_MEMBER_STATUS],
) -> StatusJson {
    StatusJson {
        modules: modules_json(modules),
        members: members_json(members),
    }
}

#[derive(Serialize)]
pub struct MemberJson {
    wld_slot: u64,
    module: String,
    vendor_slot_id: u64,
    label: String,
    serial: String,
    state: &'static str,
    open_sessions: u64,
    total_sessions: u64,
    failures: u64,
    last_error: Option<&'static str>,
}

pub fn members_json(members: &[sys::P11WLD_MEMBER_STATUS]) -> Vec<MemberJson> {
    members
        .iter()
        .map(|m| MemberJson {
            wld_slot: m.wld_slot_id,
            module: text(&m.module_name),
            vendor_slot_id: m.vendor_slot_id,
            label: text(&m.label),
            serial: text(&m.serial),
            state: if m.state == sys::P11WLD_MEMBER_UP {
                "up"
            } else {
                "down"
            },
            open_sessions: m.open_sessions,
            total_sessions: m.total_sessions,
            failures: m.failures,
            last_error: (m.last_error != CKR_OK).then(|| ckr_name(m.last_error)),
        })
        .collect()
}

pub fn members_text(members: &[sys::P11WLD_MEMBER_STATUS]) -> String {
    let mut out = format!(
        "{:>8}  {:<16} {:>10}  {:<20}  {:<16}  {:<5} {:>8} {:>8} {:>8}  {}\n",
        "WLD SLOT",
        "MODULE",
        "SLOT",
        "LABEL",
        "SERIAL",
        "STATE",
        "SESSIONS",
        "TOTAL",
        "FAILURES",
        "LAST ERROR"
    );
    for (m, raw) in members_json(members).iter().zip(members) {
        out.push_str(&format!(
            "{:>8}  {:<16} {:>10}  {:<20}  {:<16}  {:<5} {:>8} {:>8} {:>8}  {}\n",
            m.wld_slot,
            shown(&raw.module_name),
            format!("{:#x}", m.vendor_slot_id),
            shown(&raw.label),
            shown(&raw.serial),
            m.state,
            m.open_sessions,
            m.total_sessions,
            m.failures,
            m.last_error.unwrap_or("-"),
        ));
    }
    out
}

#[derive(Serialize)]
struct ObjectJson {
    class: u64,
    #[serde(rename = "type")]
    kind: Option<u64>,
    label: String,
    /// The label's bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_hex: Option<String>,
    id: String,
}

fn object_json(object: &sys::P11WLD_OBJECT_REF) -> ObjectJson {
    let stored_len = (object.id_len as usize).min(object.id.len());
    let mut id: String = object.id[..stored_len]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if object.id_len as usize > stored_len {
        id.push_str("...");
    }
    let (label, label_hex) = json_label(&object.label);
    ObjectJson {
        class: object.object_class,
        kind: (object.type_ != sys::P11WLD_NO_TYPE).then_some(object.type_),
        label,
        label_hex,
        id,
    }
}

#[derive(Serialize)]
struct TokenJson {
    role: &'static str,
    position: u64,
    module: String,
    vendor_slot_id: u64,
    label: String,
    /// The label's bytes in hex, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_hex: Option<String>,
    serial: String,
    initialized_by_run: bool,
    user_pin_set: bool,
    complete: bool,
    /// Whether the run read the token's objects; `objects` is 0 otherwise.
    objects_read: bool,
    objects: u64,
    created: u64,
    replaced: u64,
    removed: u64,
    wrapped: u64,
    skipped: u64,
    unchanged: u64,
    differences: u64,
    status: &'static str,
}

#[derive(Serialize)]
struct ActionJson {
    token: u64,
    action: &'static str,
    object: ObjectJson,
    wrapped: bool,
    done: bool,
}

#[derive(Serialize)]
struct ProblemJson {
    token: Option<u64>,
    kind: &'static str,
    rv: &'static str,
    skipped: bool,
    object: Option<ObjectJson>,
    attribute: Option<u64>,
    message: String,
}

#[derive(Serialize)]
pub struct ReportJson {
    command: &'static str,
    /// The WLD slot a verification compared, when it was called for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    wld_slot: Option<u64>,
    status: &'static str,
    dry_run: bool,
    master_objects: u64,
    differences: u64,
    tokens: Vec<TokenJson>,
    actions: Vec<ActionJson>,
    problems: Vec<ProblemJson>,
}

pub fn problem_kind(kind: sys::p11wld_ulong) -> &'static str {
    match kind {
        sys::P11WLD_PROBLEM_SLOT => "slot",
        sys::P11WLD_PROBLEM_TOKEN => "token",
        sys::P11WLD_PROBLEM_PIN => "pin",
        sys::P11WLD_PROBLEM_CANNOT_TRAVEL => "cannot-travel",
        sys::P11WLD_PROBLEM_FAILED => "failed",
        sys::P11WLD_PROBLEM_CLEANUP => "cleanup",
        sys::P11WLD_PROBLEM_MISSING => "missing",
        sys::P11WLD_PROBLEM_EXTRA => "extra",
        sys::P11WLD_PROBLEM_ATTRIBUTE_DIFFERS => "attribute-differs",
        sys::P11WLD_PROBLEM_KEY_DIFFERS => "key-differs",
        sys::P11WLD_PROBLEM_NOT_COMPARED => "not-compared",
        _ => "unknown",
    }
}

fn action_kind(kind: sys::p11wld_ulong) -> &'static str {
    match kind {
        sys::P11WLD_ACTION_CREATE => "create",
        sys::P11WLD_ACTION_REPLACE => "replace",
        sys::P11WLD_ACTION_REMOVE => "remove",
        _ => "unknown",
    }
}

pub fn report_json(command: &'static str, report: &Report) -> ReportJson {
    let index = |i: u64| (i != sys::P11WLD_NONE).then_some(i);
    ReportJson {
        command,
        wld_slot: None,
        status: ckr_name(report.info.status),
        dry_run: report.info.kind == sys::P11WLD_REPORT_REPLICATE
            && report.info.flags & sys::P11WLD_REPLICATE_DRY_RUN != 0,
        master_objects: report.info.master_objects,
        differences: report.info.differences,
        tokens: report
            .tokens
            .iter()
            .map(|t| {
                let (label, label_hex) = json_label(&t.label);
                TokenJson {
                    role: if t.role == sys::P11WLD_ROLE_MASTER {
                        "master"
                    } else {
                        "destination"
                    },
                    position: t.position,
                    module: text(&t.module_name),
                    vendor_slot_id: t.vendor_slot_id,
                    label,
                    label_hex,
                    serial: text(&t.serial),
                    initialized_by_run: t.flags & sys::P11WLD_TOKEN_INITIALIZED_BY_RUN != 0,
                    user_pin_set: t.flags & sys::P11WLD_TOKEN_USER_PIN_SET != 0,
                    complete: t.flags & sys::P11WLD_TOKEN_COMPLETE != 0,
                    objects_read: t.flags & sys::P11WLD_TOKEN_OBJECTS_READ != 0,
                    objects: t.objects,
                    created: t.created,
                    replaced: t.replaced,
                    removed: t.removed,
                    wrapped: t.wrapped,
                    skipped: t.skipped,
                    unchanged: t.unchanged,
                    differences: t.differences,
                    status: ckr_name(t.status),
                }
            })
            .collect(),
        actions: report
            .actions
            .iter()
            .map(|a| ActionJson {
                token: a.token_index,
                action: action_kind(a.kind),
                object: object_json(&a.object),
                wrapped: a.wrapped != 0,
                done: a.done != 0,
            })
            .collect(),
        problems: report
            .problems
            .iter()
            .zip(&report.messages)
            .map(|(p, message)| ProblemJson {
                token: index(p.token_index),
                kind: problem_kind(p.kind),
                rv: ckr_name(p.rv),
                skipped: p.flags & sys::P11WLD_PROBLEM_SKIPPED != 0,
                object: (p.flags & sys::P11WLD_PROBLEM_HAS_OBJECT != 0)
                    .then(|| object_json(&p.object)),
                attribute: index(p.attribute),
                message: message.clone(),
            })
            .collect(),
    }
}

/// The result of `verify`: one report per WLD slot compared, or one for
/// the tokens named.
#[derive(Serialize)]
pub struct VerifyJson {
    command: &'static str,
    /// CKR_OK, or the code of the first verification that failed.
    status: &'static str,
    /// Differences over all reports.
    differences: u64,
    reports: Vec<ReportJson>,
}

/// Builds the result of `verify` from its reports, each with the WLD slot
/// it compared, if it was called for one.
pub fn verify_json(status: CK_RV, reports: &[(Option<u64>, &Report)]) -> VerifyJson {
    let reports: Vec<ReportJson> = reports
        .iter()
        .map(|(wld_slot, report)| ReportJson {
            wld_slot: *wld_slot,
            ..report_json("verify", report)
        })
        .collect();
    VerifyJson {
        command: "verify",
        status: ckr_name(status),
        differences: reports.iter().map(|r| r.differences).sum(),
        reports,
    }
}

/// Describes a planned or written object: class, type, label and id.
fn describe_object(object: &sys::P11WLD_OBJECT_REF) -> String {
    let stored_len = (object.id_len as usize).min(object.id.len());
    let subtype = (object.type_ != sys::P11WLD_NO_TYPE).then_some(object.type_);
    let mut text = p11wld::replicate::objects::describe(
        object.object_class,
        subtype,
        field_bytes(&object.label),
        &object.id[..stored_len],
    );
    if object.id_len as usize > stored_len {
        text.push_str("...");
    }
    text
}

/// Renders a report for people: each token with its counts, the plan of
/// each destination of a dry run, then the problems.
pub fn report_text(report: &Report) -> String {
    let json = report_json("", report);
    let verifying = report.info.kind == sys::P11WLD_REPORT_VERIFY;
    let mut out = String::new();
    for (index, (token, raw)) in json.tokens.iter().zip(&report.tokens).enumerate() {
        let serial = if token.serial.is_empty() {
            "(none)".to_owned()
        } else {
            shown(&raw.serial)
        };
        let role = match (token.role, verifying) {
            ("master", true) => "reference",
            (_, true) => "compared",
            (role, false) => role,
        };
        out.push_str(&format!(
            "{role} position {} ({} slot {:#x}), label \"{}\", serial {serial}: {}\n",
            token.position,
            shown(&raw.module_name),
            token.vendor_slot_id,
            shown(&raw.label),
            token.status
        ));
        if token.role == "master" {
            // A run that stopped before reading the master shows no count.
            if token.objects_read {
                out.push_str(&format!(
                    "  {}\n",
                    counted(token.objects, "object", "objects")
                ));
            }
            continue;
        }
        match (token.initialized_by_run, token.user_pin_set, json.dry_run) {
            (true, _, false) => out.push_str("  initialized by this run, user PIN set\n"),
            (true, _, true) => out.push_str(
                "  to be initialized with the master's label, the SO PIN and the user PIN\n",
            ),
            (false, true, false) => out.push_str("  user PIN set by this run\n"),
            (false, true, true) => out.push_str("  user PIN to be set\n"),
            (false, false, _) => {}
        }
        // A verification stops before comparing anything when a token
        // fails to open, and it reports differences as CKR_FUNCTION_FAILED.
        let compared = matches!(json.status, "CKR_OK" | "CKR_FUNCTION_FAILED");
        if verifying && (token.status != "CKR_OK" || !compared) {
            out.push_str("  not compared\n");
            continue;
        }
        if verifying {
            out.push_str(&format!(
                "  {} equal, {}\n",
                token.unchanged,
                counted(token.differences, "difference", "differences")
            ));
            continue;
        }
        let (verb, wrapped) = if json.dry_run {
            ("to be ", "to travel wrapped")
        } else {
            ("", "travelled wrapped")
        };
        out.push_str(&format!(
            "  {verb}created {}, {verb}replaced {}, {verb}removed {}; unchanged {}, skipped {}; \
             {} {wrapped}\n",
            token.created,
            token.replaced,
            token.removed,
            token.unchanged,
            token.skipped,
            counted(token.wrapped, "key", "keys"),
        ));
        if !json.dry_run {
            continue;
        }
        let planned = report
            .actions
            .iter()
            .filter(|a| a.token_index == index as sys::p11wld_ulong);
        for action in planned {
            let how = if action.wrapped != 0 { ", wrapped" } else { "" };
            out.push_str(&format!(
                "  plan: {} {}{how}\n",
                action_kind(action.kind),
                describe_object(&action.object)
            ));
        }
    }
    for problem in &json.problems {
        out.push_str(&format!(
            "{}: {}\n",
            problem.kind,
            escaped(&problem.message)
        ));
    }
    out
}
