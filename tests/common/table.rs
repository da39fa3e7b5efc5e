//! A table of calls with the return code PKCS#11 prescribes for each, for
//! tests that check many calls and report every mismatch at once.

use cryptoki_sys::CK_RV;

/// One call of a table and what it returned.
pub struct Row {
    pub call: String,
    pub expected: CK_RV,
    pub actual: CK_RV,
}

/// The rows checked so far.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

/// Runs one call of a table: prints its description first, so that a call
/// that crashes the process is named in the output, then records its
/// return code.
#[macro_export]
macro_rules! row {
    ($table:expr, $call:expr, $expected:expr, $actual:expr) => {{
        let call: String = ($call).into();
        eprintln!("call: {call}");
        #[allow(unused_unsafe)]
        let actual = $actual;
        $table.record(call, $expected, actual);
    }};
}

impl Table {
    pub fn record(&mut self, call: String, expected: CK_RV, actual: CK_RV) {
        self.rows.push(Row {
            call,
            expected,
            actual,
        });
    }

    /// Records every `(function, code)` pair of `results` under `case`,
    /// expecting `expected(function)`.
    pub fn record_all(
        &mut self,
        case: &str,
        results: Vec<(&'static str, CK_RV)>,
        expected: impl Fn(&str) -> CK_RV,
    ) {
        for (function, actual) in results {
            self.record(format!("{function} {case}"), expected(function), actual);
        }
    }

    /// Panics with every row whose code differs from the expected one.
    pub fn assert_all(&self) {
        let wrong: Vec<String> = self
            .rows
            .iter()
            .filter(|row| row.expected != row.actual)
            .map(|row| {
                format!(
                    "{}: expected {}, got {}",
                    row.call,
                    name(row.expected),
                    name(row.actual)
                )
            })
            .collect();
        eprintln!("{} calls checked", self.rows.len());
        assert!(
            wrong.is_empty(),
            "{} of {} calls returned the wrong code:\n{}",
            wrong.len(),
            self.rows.len(),
            wrong.join("\n")
        );
    }
}

/// Returns the name and value of a return code, for messages.
pub fn name(rv: CK_RV) -> String {
    format!("{:?} ({rv:#x})", cryptoki::error::Rv::from(rv))
}
