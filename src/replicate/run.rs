//! A replication run: every check on every token first, then the writes.

use super::copy::{self, Writer, Written};
use super::display::escape_nonprintable;
use super::objects::Object;
use super::plan::{self, CannotTravel, Plan, Route};
use super::report::{
    Kind, ObjectName, Phase, Problem, ProblemKind, Progress, Report, Role, TokenEntry,
};
use super::slots::{self, PhysicalSlot, SlotRef};
use super::token::TokenSession;
use super::transport::{DEST_MECHANISMS, MASTER_MECHANISMS, MAX_OAEP_KEY_LEN, PADDED_WRAPS};
use crate::error::Rv;
use crate::instance::Instance;
use cryptoki_sys::*;

/// The caller's request.
pub struct Request<'a> {
    pub master: SlotRef,
    pub destinations: Vec<SlotRef>,
    /// Every other member of the master's WLD slot.
    pub all: bool,
    pub dry_run: bool,
    pub skip_unextractable: bool,
    pub so_pin: &'a [u8],
    pub user_pin: &'a [u8],
    /// The flags as the caller passed them, for the report.
    pub flags: CK_ULONG,
}

/// One destination after the checks.
struct Destination {
    slot: PhysicalSlot,
    token: usize,
    /// A session logged in as the user; `None` until the token is
    /// initialized.
    session: Option<TokenSession>,
    /// Whether the token is initialized but its user PIN is not set, as
    /// after a run killed between C_InitToken and C_InitPIN.
    needs_user_pin: bool,
    objects: Vec<Object>,
    plan: Plan,
    actions: Vec<usize>,
}

/// Replicates the master to the destinations and returns the report.
pub fn replicate(instance: &Instance, request: &Request, progress: &mut Progress) -> Report {
    let mut report = Report::new(Kind::Replicate, request.flags);
    progress.report(Phase::Check, None);
    let scan = slots::scan(instance);

    let Some(master_slot) = resolve_master(&scan.slots, request, &mut report) else {
        return report;
    };
    let Some(targets) = resolve_destinations(instance, &scan, &master_slot, request, &mut report)
    else {
        return report;
    };

    let master = match open_master(&master_slot, request.user_pin) {
        Ok(session) => session,
        Err((kind, rv, message)) => {
            report.fail(Some(0), kind, rv.0, message);
            return report;
        }
    };
    let master_objects = match Object::read_all(&master) {
        Ok(objects) => objects,
        Err(rv) => {
            report.fail(
                Some(0),
                ProblemKind::Failed,
                rv.0,
                format!("reading the objects of the master failed: {rv}"),
            );
            return report;
        }
    };
    report.master_objects = master_objects.len();
    report.tokens[0].objects = Some(master_objects.len());
    let master_mechanisms = master_slot
        .module
        .mechanism_list(master_slot.slot_id)
        .unwrap_or_default();

    let mut destinations = Vec::new();
    for slot in targets {
        let token = report.tokens.len();
        report
            .tokens
            .push(TokenEntry::new(Role::Destination, &slot));
        match check_destination(&slot, token, master_slot.label(), request, &mut report) {
            Some((session, needs_user_pin, objects)) => destinations.push(Destination {
                slot,
                token,
                session,
                needs_user_pin,
                objects,
                plan: Plan::default(),
                actions: Vec::new(),
            }),
            // A PIN a token rejected is not tried on the next one.
            None if report.problems.iter().any(|p| p.kind == ProblemKind::Pin) => return report,
            None => {}
        }
    }
    if report.status != CKR_OK {
        return report;
    }

    for dest in &mut destinations {
        plan_destination(
            dest,
            &master,
            &master_objects,
            &master_mechanisms,
            request,
            &mut report,
        );
        progress.total += dest.plan.steps();
    }
    if request.dry_run {
        // A rejected dry run reports its plan too, so the counts match the
        // planned actions.
        for dest in &destinations {
            let entry = &mut report.tokens[dest.token];
            count_planned(&dest.plan, entry);
            // The writes to the token itself are planned as well.
            entry.initialized_by_run = dest.session.is_none();
            entry.user_pin_set = dest.session.is_none() || dest.needs_user_pin;
        }
        return report;
    }
    if report.status != CKR_OK {
        return report;
    }

    let mut initialized_any = false;
    for (index, dest) in destinations.iter_mut().enumerate() {
        initialized_any |= dest.session.is_none();
        let written = write_destination(
            dest,
            &master,
            &master_objects,
            &master_slot,
            request,
            &mut report,
            progress,
        );
        if written == Written::MasterLost {
            skip_destinations(&mut destinations[index + 1..], &mut report, progress);
            break;
        }
    }
    if initialized_any {
        instance
            .topology
            .refresh(&instance.config, &instance.modules);
    }
    report
}

fn resolve_master(
    slots: &[PhysicalSlot],
    request: &Request,
    report: &mut Report,
) -> Option<PhysicalSlot> {
    let slot = match slots::resolve(slots, &request.master) {
        Ok(slot) => slot.clone(),
        Err(message) => {
            report.fail(
                None,
                ProblemKind::Slot,
                CKR_SLOT_ID_INVALID,
                format!("master {message}; nothing was written"),
            );
            return None;
        }
    };
    report.tokens.push(TokenEntry::new(Role::Master, &slot));
    if !slot.is_initialized() {
        report.fail(
            Some(0),
            ProblemKind::Token,
            CKR_TOKEN_NOT_RECOGNIZED,
            format!("master {}: the token is not initialized", slot.describe()),
        );
        return None;
    }
    Some(slot)
}

/// Resolves every destination; any reference that fails rejects the run.
/// With `all`, so does every reason why the members found may not be all
/// of them, such as a configured module that is not reachable.
fn resolve_destinations(
    instance: &Instance,
    scan: &slots::Scan,
    master: &PhysicalSlot,
    request: &Request,
    report: &mut Report,
) -> Option<Vec<PhysicalSlot>> {
    let slots = scan.slots.as_slice();
    let mut targets: Vec<PhysicalSlot> = Vec::new();
    if request.all {
        let Some(wld_slot) = master.wld_slot else {
            report.fail(
                Some(0),
                ProblemKind::Token,
                CKR_ARGUMENTS_BAD,
                format!(
                    "master {} belongs to no WLD slot, so it has no other members to \
                     replicate to; name the destinations",
                    master.describe()
                ),
            );
            return None;
        };
        targets.extend(
            slots
                .iter()
                .filter(|s| s.wld_slot == Some(wld_slot) && s.position != master.position)
                .cloned(),
        );
        for reason in slots::unreachable_members(instance, scan, wld_slot) {
            report.fail(
                None,
                ProblemKind::Slot,
                CKR_DEVICE_REMOVED,
                format!(
                    "{reason}, so replicating to all members of WLD slot {wld_slot} was \
                     rejected and nothing was written; name the reachable destinations instead"
                ),
            );
        }
    } else {
        let mut rejected = false;
        for reference in &request.destinations {
            match slots::resolve(slots, reference) {
                Ok(slot) => targets.push(slot.clone()),
                Err(message) => {
                    rejected = true;
                    report.fail(
                        None,
                        ProblemKind::Slot,
                        CKR_SLOT_ID_INVALID,
                        format!("destination {message}"),
                    );
                }
            }
        }
        if rejected {
            report.fail(
                None,
                ProblemKind::Slot,
                CKR_SLOT_ID_INVALID,
                "a slot reference does not match the token there now; nothing was written"
                    .to_owned(),
            );
            return None;
        }
    }
    for (index, slot) in targets.iter().enumerate() {
        if slot.position == master.position {
            report.fail(
                None,
                ProblemKind::Token,
                CKR_ARGUMENTS_BAD,
                format!("destination {} is the master", slot.describe()),
            );
        } else if targets[..index].iter().any(|s| s.position == slot.position) {
            report.fail(
                None,
                ProblemKind::Token,
                CKR_ARGUMENTS_BAD,
                format!("destination {} is named twice", slot.describe()),
            );
        }
    }
    if targets.is_empty() {
        report.fail(
            None,
            ProblemKind::Token,
            CKR_ARGUMENTS_BAD,
            "no destination to replicate to".to_owned(),
        );
    }
    (report.status == CKR_OK).then_some(targets)
}

type Refusal = (ProblemKind, Rv, String);

fn pin_refusal(what: &str, slot: &PhysicalSlot, rv: Rv) -> Refusal {
    let kind = match rv.0 {
        CKR_PIN_INCORRECT | CKR_PIN_INVALID | CKR_PIN_LEN_RANGE | CKR_PIN_LOCKED
        | CKR_PIN_EXPIRED => ProblemKind::Pin,
        _ => ProblemKind::Token,
    };
    (
        kind,
        rv,
        format!(
            "{what} {}: logging in failed: {rv}; nothing was written",
            slot.describe()
        ),
    )
}

/// Opens the master read-only, so that no token object can be written on
/// it, and logs in as the user.
fn open_master(slot: &PhysicalSlot, user_pin: &[u8]) -> Result<TokenSession, Refusal> {
    let session = TokenSession::open(&slot.module, slot.slot_id, false).map_err(|rv| {
        (
            ProblemKind::Failed,
            rv,
            format!("master {}: opening a session failed: {rv}", slot.describe()),
        )
    })?;
    session
        .login(CKU_USER, user_pin)
        .map_err(|rv| pin_refusal("master", slot, rv))?;
    Ok(session)
}

/// Checks one destination without writing: its label, the SO PIN and the
/// user PIN. Returns its session and objects, or `None` after recording
/// the problem.
fn check_destination(
    slot: &PhysicalSlot,
    token: usize,
    master_label: &[u8],
    request: &Request,
    report: &mut Report,
) -> Option<(Option<TokenSession>, bool, Vec<Object>)> {
    let Some(state) = slot.token.clone() else {
        report.fail(
            Some(token),
            ProblemKind::Token,
            CKR_TOKEN_NOT_PRESENT,
            format!("destination {}: no token is present", slot.describe()),
        );
        return None;
    };
    if request.so_pin.is_empty() || request.user_pin.is_empty() {
        report.fail(
            Some(token),
            ProblemKind::Pin,
            CKR_PIN_INVALID,
            "the SO PIN and the user PIN are both needed".to_owned(),
        );
        return None;
    }
    if !state.initialized {
        // An uninitialized token contains no object.
        report.tokens[token].objects = Some(0);
        return Some((None, false, Vec::new()));
    }
    if state.label != master_label {
        report.fail(
            Some(token),
            ProblemKind::Token,
            CKR_TOKEN_NOT_RECOGNIZED,
            format!(
                "destination {}: its label is \"{}\", not the master's \"{}\"; only \
                 uninitialized tokens and tokens with the master's label are written",
                slot.describe(),
                escape_nonprintable(&state.label),
                escape_nonprintable(master_label),
            ),
        );
        return None;
    }
    let checked = (|| -> Result<(TokenSession, bool, Vec<Object>), Refusal> {
        let session = TokenSession::open(&slot.module, slot.slot_id, true).map_err(|rv| {
            (
                ProblemKind::Failed,
                rv,
                format!(
                    "destination {}: opening a session failed: {rv}",
                    slot.describe()
                ),
            )
        })?;
        session
            .login(CKU_SO, request.so_pin)
            .map_err(|rv| pin_refusal("destination (SO PIN)", slot, rv))?;
        let _ = session.logout();
        let needs_user_pin = !state.user_pin_initialized;
        if !needs_user_pin {
            session
                .login(CKU_USER, request.user_pin)
                .map_err(|rv| pin_refusal("destination (user PIN)", slot, rv))?;
        }
        let objects = Object::read_all(&session).map_err(|rv| {
            (
                ProblemKind::Failed,
                rv,
                format!(
                    "destination {}: reading its objects failed: {rv}",
                    slot.describe()
                ),
            )
        })?;
        Ok((session, needs_user_pin, objects))
    })();
    match checked {
        Ok((session, needs_user_pin, objects)) => {
            report.tokens[token].objects = Some(objects.len());
            Some((Some(session), needs_user_pin, objects))
        }
        Err((kind, rv, message)) => {
            report.fail(Some(token), kind, rv.0, message);
            None
        }
    }
}

/// Decides how each master object reaches `dest`.
fn route(
    object: &Object,
    common: &[CK_MECHANISM_TYPE],
    transport_ok: Result<(), String>,
) -> Result<Route, CannotTravel> {
    let blocked = |rv, reason: String| Err(CannotTravel { rv, reason });
    if let Some(kind) = object.arrays.first() {
        return blocked(
            CKR_ATTRIBUTE_TYPE_INVALID,
            format!(
                "{} is set, and attribute templates are not copied",
                super::attributes::name(*kind)
            ),
        );
    }
    match object.class {
        CKO_DATA | CKO_CERTIFICATE | CKO_PUBLIC_KEY | CKO_DOMAIN_PARAMETERS => {
            return Ok(Route::Create)
        }
        CKO_PRIVATE_KEY | CKO_SECRET_KEY => {}
        class => {
            return blocked(
                CKR_FUNCTION_NOT_SUPPORTED,
                format!("objects of class {class:#x} are not copied"),
            )
        }
    }
    if !object.hides_material() {
        return Ok(Route::Create);
    }
    if object.flag(CKA_EXTRACTABLE) != Some(true) {
        return blocked(CKR_KEY_UNEXTRACTABLE, "CKA_EXTRACTABLE is false".to_owned());
    }
    if object.flag(CKA_WRAP_WITH_TRUSTED) == Some(true) {
        return blocked(
            CKR_KEY_NOT_WRAPPABLE,
            "CKA_WRAP_WITH_TRUSTED is true, and the transport key is not trusted".to_owned(),
        );
    }
    if let Err(reason) = transport_ok {
        return blocked(CKR_MECHANISM_INVALID, reason);
    }
    if let Some(mechanism) = PADDED_WRAPS.iter().find(|m| common.contains(m)) {
        return Ok(Route::Wrap(*mechanism));
    }
    // Without padding, AES key wrap (RFC 3394) carries only whole 8-byte
    // blocks: secret keys of 16 bytes or more whose length is a multiple of
    // 8, never a private key's PKCS#8 encoding.
    let whole_blocks = object
        .ulong(CKA_VALUE_LEN)
        .is_some_and(|len| len >= 16 && len % 8 == 0);
    if object.class == CKO_SECRET_KEY && whole_blocks && common.contains(&CKM_AES_KEY_WRAP) {
        return Ok(Route::Wrap(CKM_AES_KEY_WRAP));
    }
    let fits_oaep = object
        .ulong(CKA_VALUE_LEN)
        .is_some_and(|len| len <= MAX_OAEP_KEY_LEN);
    if object.class == CKO_SECRET_KEY && fits_oaep {
        return Ok(Route::Wrap(CKM_RSA_PKCS_OAEP));
    }
    blocked(
        CKR_MECHANISM_INVALID,
        "the tokens share no AES key wrap mechanism (CKM_AES_KEY_WRAP_KWP or \
         CKM_AES_KEY_WRAP_PAD; p11-kit-client.so 0.24 carries none), and only secret keys \
         travel wrapped with RSA-OAEP"
            .to_owned(),
    )
}

fn plan_destination(
    dest: &mut Destination,
    master: &TokenSession,
    master_objects: &[Object],
    master_mechanisms: &[CK_MECHANISM_TYPE],
    request: &Request,
    report: &mut Report,
) {
    let dest_mechanisms = dest
        .slot
        .module
        .mechanism_list(dest.slot.slot_id)
        .unwrap_or_default();
    let common: Vec<CK_MECHANISM_TYPE> = master_mechanisms
        .iter()
        .copied()
        .filter(|m| dest_mechanisms.contains(m))
        .collect();
    let missing: Vec<String> = MASTER_MECHANISMS
        .iter()
        .filter(|m| !master_mechanisms.contains(m))
        .map(|m| format!("the master lacks mechanism {m:#x}"))
        .chain(
            DEST_MECHANISMS
                .iter()
                .filter(|m| !dest_mechanisms.contains(m))
                .map(|m| format!("the destination lacks mechanism {m:#x}")),
        )
        .collect();
    let transport_ok = if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    };

    let view = dest.session.as_ref().map(|s| (s, dest.objects.as_slice()));
    dest.plan = plan::plan(master, master_objects, view, |object| {
        route(object, &common, transport_ok.clone())
    });

    let entry = &mut report.tokens[dest.token];
    entry.unchanged = dest.plan.unchanged;
    entry.skipped = if request.skip_unextractable {
        dest.plan.blocked.len()
    } else {
        0
    };
    let name = dest.slot.describe();
    for (m, blocked) in &dest.plan.blocked {
        let object = &master_objects[*m];
        let outcome = if request.skip_unextractable {
            "skipped at the caller's request"
        } else {
            "nothing was written; to replicate without it, pass \
             P11WLD_REPLICATE_SKIP_UNEXTRACTABLE (p11wld replicate --skip-unextractable)"
        };
        report.problem(Problem {
            token: Some(dest.token),
            kind: ProblemKind::CannotTravel,
            rv: blocked.rv,
            object: Some(ObjectName::of(object)),
            attribute: None,
            skipped: request.skip_unextractable,
            message: format!(
                "destination {name}: {} cannot travel: {}; {outcome}",
                object.describe(),
                blocked.reason
            ),
        });
    }
    dest.actions = copy::record_plan(
        report,
        dest.token,
        &dest.plan,
        master_objects,
        &dest.objects,
    );
}

/// Fills in a dry run's counts from the plan.
fn count_planned(plan: &Plan, entry: &mut TokenEntry) {
    for step in &plan.writes {
        let (plan::Step::Create { route, .. } | plan::Step::Replace { route, .. }) = step;
        match step {
            plan::Step::Create { .. } => entry.created += 1,
            plan::Step::Replace { .. } => entry.replaced += 1,
        }
        if matches!(route, Route::Wrap(_)) {
            entry.wrapped += 1;
        }
    }
    entry.removed = plan.removes.len();
}

/// Records, once for each, the destinations not written because the
/// master's device failed, with the code it failed with.
fn skip_destinations(skipped: &mut [Destination], report: &mut Report, progress: &mut Progress) {
    let rv = report.tokens[0].status;
    for dest in skipped {
        report.fail(
            Some(dest.token),
            ProblemKind::Failed,
            rv,
            format!(
                "destination {}: not written, because the master's device failed",
                dest.slot.describe()
            ),
        );
        progress.done += dest.plan.steps();
    }
}

fn write_destination(
    dest: &mut Destination,
    master: &TokenSession,
    master_objects: &[Object],
    master_slot: &PhysicalSlot,
    request: &Request,
    report: &mut Report,
    progress: &mut Progress,
) -> Written {
    if dest.session.is_none() || dest.needs_user_pin {
        progress.report(Phase::Initialize, Some(dest.token));
        match prepare(dest, master_slot.label(), request, report) {
            Ok(session) => dest.session = Some(session),
            Err(rv) => {
                report.fail(
                    Some(dest.token),
                    ProblemKind::Failed,
                    rv.0,
                    format!(
                        "destination {}: initializing the token failed: {rv}",
                        dest.slot.describe()
                    ),
                );
                progress.done += dest.plan.steps();
                return Written::Incomplete;
            }
        }
    }
    let Some(session) = &dest.session else {
        return Written::Incomplete;
    };
    let writer = Writer {
        master,
        master_objects,
        dest: session,
        dest_objects: &dest.objects,
        token: dest.token,
        name: dest.slot.describe(),
        actions: std::mem::take(&mut dest.actions),
    };
    let written = writer.run(&dest.plan, report, progress);
    report.tokens[dest.token].complete =
        written == Written::Complete && dest.plan.blocked.is_empty();
    written
}

/// Initializes an uninitialized destination, or sets the user PIN of one
/// a killed run initialized, and returns a session logged in as the user.
fn prepare(
    dest: &mut Destination,
    label: &[u8],
    request: &Request,
    report: &mut Report,
) -> crate::error::Result<TokenSession> {
    let entry = &mut report.tokens[dest.token];
    if dest.session.is_none() {
        let (slot_id, state) =
            copy::initialize(&dest.slot, label, request.so_pin, request.user_pin)?;
        entry.initialized_by_run = true;
        entry.user_pin_set = true;
        entry.slot_id = slot_id;
        entry.label = state.label.clone();
        entry.serial = state.serial.clone();
        dest.slot.slot_id = slot_id;
        dest.slot.token = Some(state);
    } else {
        copy::set_user_pin(
            &dest.slot.module,
            dest.slot.slot_id,
            request.so_pin,
            request.user_pin,
        )?;
        entry.user_pin_set = true;
        dest.session = None;
    }
    let session = TokenSession::open(&dest.slot.module, dest.slot.slot_id, true)?;
    session.login(CKU_USER, request.user_pin)?;
    Ok(session)
}
