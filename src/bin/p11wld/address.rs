//! Slot arguments: positional numbers, PKCS#11 URIs (RFC 7512) naming a
//! token serial, `all`, and the serials expected at positions.

use crate::module::{field_bytes, shown, text};
use crate::sys::{self, P11WLD_PHYSICAL_SLOT, P11WLD_SLOT_REF};
use p11wld::replicate::display::escape_nonprintable;
use std::collections::BTreeMap;
use std::ffi::c_char;
use std::io::{BufRead, IsTerminal, Write};

/// A slot as the operator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotArg {
    Position(usize),
    /// From `pkcs11:serial=...`, with the label bytes the URI requires,
    /// if any.
    Serial {
        serial: String,
        label: Option<Vec<u8>>,
    },
}

/// The maximum length in bytes of a token serial (CK_TOKEN_INFO.serialNumber).
const SERIAL_LEN: usize = 16;

/// Parses a positional number or a PKCS#11 URI.
pub fn parse_slot(text: &str) -> Result<SlotArg, String> {
    let text = text.trim();
    // URI schemes are case-insensitive (RFC 3986, section 3.1).
    const SCHEME: &str = "pkcs11:";
    if text
        .get(..SCHEME.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(SCHEME))
    {
        return parse_uri(&text[SCHEME.len()..]);
    }
    parse_position(text).map(SlotArg::Position).ok_or_else(|| {
        format!(
            "invalid slot {text:?}: expected a positional number from `p11wld list` or a URI \
             pkcs11:serial=SERIAL"
        )
    })
}

/// Parses a positional number: decimal digits only, without a sign.
fn parse_position(text: &str) -> Option<usize> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Decodes the percent-encoded value of a URI attribute, rejecting a `%`
/// that two hexadecimal digits do not follow.
fn decode_value(uri: &str, value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    for (index, _) in value.match_indices('%') {
        let hex = bytes.get(index + 1..index + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "invalid URI pkcs11:{uri}: {value:?} has a % without two hexadecimal digits; \
                 write a literal % as %25"
            ));
        }
    }
    Ok(percent_encoding::percent_decode_str(value).collect())
}

/// Parses the part of a PKCS#11 URI after `pkcs11:`. The path must name
/// the token serial and may name its label; any other attribute, and any
/// query attribute (pin-value would put a PIN on the command line), is
/// rejected.
fn parse_uri(uri: &str) -> Result<SlotArg, String> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    if !query.is_empty() {
        return Err(format!(
            "invalid URI pkcs11:{uri}: query attributes are not accepted; PINs come from \
             P11WLD_SO_PIN and P11WLD_USER_PIN or a prompt"
        ));
    }
    let mut serial = None;
    let mut label = None;
    for attribute in path.split(';').filter(|a| !a.is_empty()) {
        let (name, value) = attribute.split_once('=').ok_or_else(|| {
            format!("invalid URI pkcs11:{uri}: attribute {attribute:?} has no value")
        })?;
        // RFC 7512 percent-encodes any byte, so a label need not be UTF-8.
        let value = decode_value(uri, value)?;
        let slot = match name {
            "serial" => &mut serial,
            "token" => &mut label,
            _ => {
                return Err(format!(
                    "invalid URI pkcs11:{uri}: attribute {name} is not supported; name the token \
                     by serial (and optionally token)"
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("invalid URI pkcs11:{uri}: {name} is given twice"));
        }
    }
    let serial = serial
        .map(String::from_utf8)
        .transpose()
        .map_err(|_| format!("invalid URI pkcs11:{uri}: serial is not UTF-8"))?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("invalid URI pkcs11:{uri}: it must name the token serial"))?;
    if serial.len() > SERIAL_LEN {
        return Err(format!(
            "invalid URI pkcs11:{uri}: a token serial has at most {SERIAL_LEN} bytes"
        ));
    }
    Ok(SlotArg::Serial { serial, label })
}

/// Parses a comma-separated destination list; `None` stands for `all`.
pub fn parse_destinations(text: &str) -> Result<Option<Vec<SlotArg>>, String> {
    if text.trim() == "all" {
        return Ok(None);
    }
    let slots = text
        .split(',')
        .map(parse_slot)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(slots))
}

/// Checks that no slot is named twice. Two names of one token, such as a
/// position and a URI, are caught by the extension.
pub fn check_distinct(slots: &[&SlotArg]) -> Result<(), String> {
    for (index, slot) in slots.iter().enumerate().skip(1) {
        let name = match slot {
            SlotArg::Position(position) => format!("position {position}"),
            SlotArg::Serial { serial, .. } => format!("pkcs11:serial={serial}"),
        };
        let same = |other: &&SlotArg| match (slot, other) {
            (SlotArg::Position(a), SlotArg::Position(b)) => a == b,
            (SlotArg::Serial { serial: a, .. }, SlotArg::Serial { serial: b, .. }) => a == b,
            _ => false,
        };
        if slots[..index].iter().any(same) {
            return Err(format!(
                "{name} is named twice; the source and each destination must be distinct tokens"
            ));
        }
    }
    Ok(())
}

/// The token the operator expects at a position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub serial: String,
    /// The module name; empty when not given.
    pub module: String,
    /// The vendor slot id; `None` when not given.
    pub slot_id: Option<u64>,
}

/// Parses a vendor slot id as `list` shows it (0x-prefixed hexadecimal),
/// or in decimal.
fn parse_slot_id(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Splits `MODULE[:SLOT]` into the module name and the vendor slot id. A
/// suffix after the last colon that is no slot id belongs to the name.
fn split_module(text: &str) -> (&str, Option<u64>) {
    match text.rsplit_once(':') {
        Some((module, slot)) => match parse_slot_id(slot.trim()) {
            Some(slot_id) => (module, Some(slot_id)),
            None => (text, None),
        },
        None => (text, None),
    }
}

/// Parses `--expect-serial POSITION=SERIAL[@MODULE[:SLOT]]` entries. An
/// empty serial expects an uninitialized token without one, and then the
/// module is required. Such tokens often all have an empty serial, so the
/// serial alone would accept another module's uninitialized token after
/// the positions shifted.
pub fn parse_expected(entries: &[String]) -> Result<BTreeMap<usize, Expected>, String> {
    let mut expected = BTreeMap::new();
    for entry in entries {
        let (position, value) = entry.split_once('=').ok_or_else(|| {
            format!("invalid --expect-serial {entry:?}: expected POSITION=SERIAL[@MODULE[:SLOT]]")
        })?;
        let (serial, module) = value.rsplit_once('@').unwrap_or((value, ""));
        let (module, slot_id) = split_module(module.trim());
        let position = parse_position(position.trim()).ok_or_else(|| {
            format!("invalid --expect-serial {entry:?}: {position:?} is not a position")
        })?;
        if serial.len() > SERIAL_LEN {
            return Err(format!(
                "invalid --expect-serial {entry:?}: a token serial has at most {SERIAL_LEN} bytes"
            ));
        }
        let value = Expected {
            serial: serial.trim().to_owned(),
            module: module.trim().to_owned(),
            slot_id,
        };
        if value.serial.is_empty() && value.module.is_empty() {
            return Err(format!(
                "invalid --expect-serial {entry:?}: an empty serial (an uninitialized token) \
                 needs the module too, as {position}=@MODULE or {position}=@MODULE:SLOT with \
                 the module and vendor slot id `p11wld list` shows"
            ));
        }
        if expected.insert(position, value).is_some() {
            return Err(format!("--expect-serial names position {position} twice"));
        }
    }
    Ok(expected)
}

/// Turns the operator's slots into references the extension checks.
///
/// Positions need an expected serial each: from `--expect-serial`, or on a
/// terminal from a confirmation of the current listing. Off a terminal
/// without `--expect-serial` they are rejected, because a position can
/// name another token than the operator saw.
pub fn references(
    slots: &[&SlotArg],
    expected: &BTreeMap<usize, Expected>,
    listing: impl FnOnce() -> Result<Vec<P11WLD_PHYSICAL_SLOT>, String>,
    action: &str,
) -> Result<Vec<P11WLD_SLOT_REF>, String> {
    let positions: Vec<usize> = slots
        .iter()
        .filter_map(|s| match s {
            SlotArg::Position(p) => Some(*p),
            SlotArg::Serial { .. } => None,
        })
        .collect();
    if let Some(unused) = expected.keys().find(|p| !positions.contains(p)) {
        return Err(format!(
            "--expect-serial names position {unused}, which is not used"
        ));
    }
    let missing: Vec<usize> = positions
        .iter()
        .copied()
        .filter(|p| !expected.contains_key(p))
        .collect();
    let mut serials = expected.clone();
    if !missing.is_empty() {
        serials.extend(confirm(&missing, listing()?, action)?);
    }
    slots
        .iter()
        .map(|slot| match slot {
            SlotArg::Position(p) => Ok(slot_ref(sys::P11WLD_REF_POSITION, *p, &serials[p])),
            SlotArg::Serial { serial, .. } => Ok(slot_ref(
                sys::P11WLD_REF_SERIAL,
                0,
                &Expected {
                    serial: serial.clone(),
                    ..Expected::default()
                },
            )),
        })
        .collect()
}

/// Checks the label a URI requires against the current listing.
pub fn check_uri_labels(
    slots: &[&SlotArg],
    listing: &[P11WLD_PHYSICAL_SLOT],
) -> Result<(), String> {
    for slot in slots {
        let SlotArg::Serial {
            serial,
            label: Some(label),
        } = slot
        else {
            continue;
        };
        let found = listing.iter().find(|s| text(&s.serial) == *serial);
        if let Some(found) = found {
            if field_bytes(&found.label) != label.as_slice() {
                return Err(format!(
                    "pkcs11:serial={serial} names a token labelled \"{}\", not \"{}\"",
                    shown(&found.label),
                    escape_nonprintable(label)
                ));
            }
        }
    }
    Ok(())
}

fn slot_ref(kind: sys::p11wld_ulong, position: usize, expected: &Expected) -> P11WLD_SLOT_REF {
    let mut reference = P11WLD_SLOT_REF {
        kind,
        position: position as sys::p11wld_ulong,
        vendor_slot_id: expected.slot_id.unwrap_or(sys::P11WLD_NONE),
        ..Default::default()
    };
    copy_field(&mut reference.serial, &expected.serial);
    copy_field(&mut reference.module_name, &expected.module);
    reference
}

/// Copies `text` into a NUL-terminated field, cut to fit.
fn copy_field(field: &mut [c_char], text: &str) {
    let room = field.len().saturating_sub(1);
    for (dst, src) in field.iter_mut().zip(text.bytes().take(room)) {
        *dst = src as c_char;
    }
}

/// Shows the tokens at `positions` and prompts the operator to confirm
/// them; returns the serial and module seen at each.
fn confirm(
    positions: &[usize],
    listing: Vec<P11WLD_PHYSICAL_SLOT>,
    action: &str,
) -> Result<BTreeMap<usize, Expected>, String> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(format!(
            "positional slot numbers need --expect-serial POSITION=SERIAL when no terminal can \
             confirm them (positions {positions:?}); or name tokens by pkcs11:serial=SERIAL"
        ));
    }
    let mut serials = BTreeMap::new();
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "{action} uses these slots:");
    for &position in positions {
        let slot = listing
            .iter()
            .find(|s| s.position as usize == position)
            .ok_or_else(|| format!("position {position} does not exist; run `p11wld list`"))?;
        let label = describe_label(slot);
        let serial = text(&slot.serial);
        let _ = writeln!(
            stderr,
            "  position {position}: module {}, vendor slot {:#x}, serial {}, label {label}",
            shown(&slot.module_name),
            slot.vendor_slot_id,
            if serial.is_empty() {
                "(none)".to_owned()
            } else {
                shown(&slot.serial)
            },
        );
        serials.insert(
            position,
            Expected {
                serial,
                module: text(&slot.module_name),
                slot_id: Some(slot.vendor_slot_id),
            },
        );
    }
    let _ = write!(stderr, "Proceed? [y/N] ");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| format!("reading the confirmation failed: {e}"))?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        return Err("cancelled; nothing was written".to_owned());
    }
    Ok(serials)
}

/// Describes a slot's token for a terminal: its label, escaped, or its
/// state.
pub fn describe_label(slot: &P11WLD_PHYSICAL_SLOT) -> String {
    if slot.flags & sys::P11WLD_SLOT_TOKEN_PRESENT == 0 {
        "<no token>".to_owned()
    } else if slot.flags & sys::P11WLD_SLOT_TOKEN_INITIALIZED == 0 {
        "<uninitialized token>".to_owned()
    } else {
        shown(&slot.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_and_uri_parse() {
        assert_eq!(parse_slot("5"), Ok(SlotArg::Position(5)));
        assert_eq!(
            parse_slot("pkcs11:serial=8d4c5a1f01b3e2c0"),
            Ok(SlotArg::Serial {
                serial: "8d4c5a1f01b3e2c0".into(),
                label: None
            })
        );
        assert_eq!(
            parse_slot("pkcs11:token=WLD%20A;serial=ab"),
            Ok(SlotArg::Serial {
                serial: "ab".into(),
                label: Some(b"WLD A".to_vec())
            })
        );
    }

    #[test]
    fn scheme_case_ignored() {
        assert_eq!(
            parse_slot("PKCS11:serial=ab"),
            Ok(SlotArg::Serial {
                serial: "ab".into(),
                label: None
            })
        );
    }

    #[test]
    fn malformed_escape_rejected() {
        for uri in [
            "pkcs11:serial=a%2",
            "pkcs11:serial=ab%",
            "pkcs11:serial=a%zz",
        ] {
            let error = parse_slot(uri).unwrap_err();
            assert!(error.contains("hexadecimal"), "{uri}: {error}");
        }
        assert_eq!(
            parse_slot("pkcs11:serial=a%25"),
            Ok(SlotArg::Serial {
                serial: "a%".into(),
                label: None
            })
        );
    }

    #[test]
    fn position_digits_only() {
        for text in ["+0", "-1", "", "1e2", "0x1"] {
            assert!(parse_slot(text).is_err(), "{text:?} accepted");
        }
        assert_eq!(parse_slot(" 007 "), Ok(SlotArg::Position(7)));
    }

    #[test]
    fn uri_label_keeps_bytes() {
        assert_eq!(
            parse_slot("pkcs11:token=AB%E2;serial=ab"),
            Ok(SlotArg::Serial {
                serial: "ab".into(),
                label: Some(b"AB\xe2".to_vec())
            })
        );
        assert!(parse_slot("pkcs11:serial=a%E2").is_err());
    }

    #[test]
    fn uri_rejects_pin_and_unknown() {
        assert!(parse_slot("pkcs11:serial=ab?pin-value=1234").is_err());
        assert!(parse_slot("pkcs11:model=x;serial=ab").is_err());
        assert!(parse_slot("pkcs11:token=A").is_err());
        assert!(parse_slot("pkcs11:serial=ab;serial=cd").is_err());
        assert!(parse_slot("x5").is_err());
    }

    #[test]
    fn destinations_and_expected() {
        assert_eq!(parse_destinations("all"), Ok(None));
        assert_eq!(
            parse_destinations("1,3"),
            Ok(Some(vec![SlotArg::Position(1), SlotArg::Position(3)]))
        );
        let expected = parse_expected(&["1=abc".into(), "3=@hsm2".into()]).unwrap();
        assert_eq!(expected[&1].serial, "abc");
        assert_eq!(expected[&3].serial, "");
        let with_module = parse_expected(&["4=@hsm2".into()]).unwrap();
        assert_eq!(with_module[&4].module, "hsm2");
        assert_eq!(with_module[&4].serial, "");
        assert_eq!(with_module[&4].slot_id, None);
        assert!(parse_expected(&["1".into()]).is_err());
        assert!(parse_expected(&["1=a".into(), "1=b".into()]).is_err());
    }

    #[test]
    fn slots_named_twice_rejected() {
        let master = SlotArg::Position(0);
        let other = SlotArg::Position(2);
        let uri = parse_slot("pkcs11:serial=ab").unwrap();
        assert!(check_distinct(&[&master, &other, &uri]).is_ok());
        assert!(check_distinct(&[&master, &master]).is_err());
        assert!(check_distinct(&[&master, &other, &other]).is_err());
        assert!(check_distinct(&[&uri, &other, &uri]).is_err());
    }

    #[test]
    fn empty_serial_needs_module() {
        assert!(parse_expected(&["3=".into()]).is_err());
        assert!(parse_expected(&["3=@".into()]).is_err());
        let pinned = parse_expected(&["3=@hsm2:0x1a".into()]).unwrap();
        assert_eq!(pinned[&3].module, "hsm2");
        assert_eq!(pinned[&3].slot_id, Some(0x1a));
        let decimal = parse_expected(&["3=@hsm2:26".into()]).unwrap();
        assert_eq!(decimal[&3].slot_id, Some(26));
        let colon_in_name = parse_expected(&["3=@vendor:a".into()]).unwrap();
        assert_eq!(colon_in_name[&3].module, "vendor:a");
        assert_eq!(colon_in_name[&3].slot_id, None);
    }

    #[test]
    fn expected_serial_used_without_prompt() {
        let slots = [SlotArg::Position(2)];
        let refs: Vec<&SlotArg> = slots.iter().collect();
        let expected = parse_expected(&["2=beef".into()]).unwrap();
        let built = references(&refs, &expected, || panic!("no listing needed"), "test").unwrap();
        assert_eq!(built[0].position, 2);
        assert_eq!(text(&built[0].serial), "beef");
    }
}
