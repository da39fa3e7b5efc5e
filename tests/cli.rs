//! The `p11wld` program's commands, options and exit codes, and the
//! extension called directly through the module's C ABI.

mod common;
mod replication;

use replication::*;

isolated! {
    /// `list` shows every physical slot with its position, module, label
    /// or state, and serial.
    #[timeout(120)]
    fn list_shows_every_slot() {
        let lab = lab(Reach::P11Kit, &[Start::Uninitialized], |_| {});
        let slots = list(&lab.config);
        let positions: Vec<u64> = slots.iter().map(|s| s["position"].as_u64().unwrap()).collect();
        assert_eq!(positions, (0..slots.len() as u64).collect::<Vec<_>>());
        let modules: Vec<&str> = slots.iter().map(|s| s["module"].as_str().unwrap()).collect();
        assert_eq!(modules, ["hsm1", "hsm1", "hsm2"], "hsm1: master and free slot; hsm2: free slot");
        assert_eq!(slots[0]["label"], MASTER_LABEL);
        assert_eq!(slots[0]["serial"], lab.master_serial.as_str());
        assert_eq!(slots[0]["wld_slot"], 0);
        assert_eq!(slots[2]["initialized"], false);
        assert!(slots[2]["wld_slot"].is_null());

        let output = run(&lab.config, &["list"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(MASTER_LABEL), "{text}");
        assert!(text.contains(&lab.master_serial), "{text}");
        assert_eq!(text.matches("<uninitialized token>").count(), 2, "{text}");
    }

    /// `status` shows each member of each WLD slot with its state.
    #[timeout(120)]
    fn status_shows_members() {
        let lab = lab(Reach::P11Kit, &[Start::Stale], |_| {});
        let output = run(&lab.config, &["--json", "status"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let status = json(&output);
        let modules = status["modules"].as_array().unwrap();
        assert_eq!(modules.len(), 2, "{modules:#?}");
        for module in modules {
            assert_eq!(module["state"], "up", "{module}");
            assert_eq!(module["members"], 1, "{module}");
        }
        let members = status["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{members:#?}");
        for member in members {
            assert_eq!(member["state"], "up");
            assert_eq!(member["label"], MASTER_LABEL);
            assert_eq!(member["failures"], 0);
            assert!(member["last_error"].is_null());
        }
        let output = run(&lab.config, &["status"], &Pins { so: None, user: None });
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(&lab.stale_serials[&1]), "{text}");
    }

    /// A module whose C_Initialize fails is shown by `status`, and it
    /// rejects `verify`, because its tokens are unknown.
    #[timeout(120)]
    fn status_shows_unreachable_module() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let tokens = lab.hsms[1].softhsm().token_dir();
        std::fs::rename(&tokens, tokens.with_extension("gone")).expect("renaming hsm2's tokens");

        let output = run(&lab.config, &["--json", "status"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let status = json(&output);
        assert_eq!(status["modules"][0]["state"], "up", "{status:#}");
        assert_eq!(status["modules"][1]["module"], "hsm2", "{status:#}");
        assert_eq!(status["modules"][1]["state"], "not-initialized", "{status:#}");
        let members = status["members"].as_array().unwrap();
        assert_eq!(members.len(), 1, "only hsm1's member is known: {members:#?}");

        let output = run(&lab.config, &["verify"], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(reasons[0].contains("module hsm2 is not reachable (C_Initialize failed)"), "{stderr}");

        let output = run(&lab.config, &["list"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("note: module hsm2 is not reachable"), "list names the missing module: {text}");
    }

    /// While an HSM's server is down, `status` lists no member of it, and
    /// its text says so for the module, as `list` does.
    #[timeout(120)]
    fn status_notes_unreachable_module() {
        let mut lab = lab(Reach::P11Kit, &[Start::Stale], |_| {});
        lab.hsms[1].served().kill_hard();
        let output = run(&lab.config, &["status"], &Pins { so: None, user: None });
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!text.contains(&lab.stale_serials[&1]), "{text}");
        let note = "note: module hsm2 is not reachable (it lists no slot), so the members on its \
                    tokens are not listed";
        assert!(text.contains(note), "{text}");
    }

    /// Without --module, the CLI loads libp11wld.so from beside itself,
    /// else from the dynamic loader's path, else from the usual PKCS#11
    /// module directories, which its help and its error name.
    #[timeout(120)]
    fn default_module_lookup() {
        let lab = lab(Reach::Direct, &[], |_| {});
        let dir = tempfile::tempdir().unwrap();
        let cli = dir.path().join("p11wld");
        std::fs::copy(crate::common::paths::p11wld_cli(), &cli).unwrap();
        let run_copy = |library_path: Option<&std::path::Path>| {
            let mut command = std::process::Command::new(&cli);
            command
                .arg("list")
                .env("P11WLD_CONFIG", lab.config.path())
                .env_remove("LD_LIBRARY_PATH")
                .stdin(std::process::Stdio::null());
            if let Some(path) = library_path {
                command.env("LD_LIBRARY_PATH", path);
            }
            command.output().unwrap()
        };
        let dirs = [
            "/usr/lib/x86_64-linux-gnu/pkcs11",
            "/usr/lib/pkcs11",
            "/usr/local/lib",
        ];

        let help = run(&lab.config, &["--help"], &Pins { so: None, user: None });
        let help = String::from_utf8_lossy(&help.stdout);
        for dir in &dirs[1..] {
            assert!(help.contains(dir), "--help names {dir}: {help}");
        }

        let installed = dirs.iter().any(|d| std::path::Path::new(d).join("libp11wld.so").exists());
        if installed {
            eprintln!("libp11wld.so is installed in a module directory; the not-found case is not checked");
        } else {
            let output = run_copy(None);
            assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            for dir in &dirs[1..] {
                assert!(stderr.contains(dir), "the error names {dir}: {stderr}");
            }
        }

        let loader_dir = tempfile::tempdir().unwrap();
        std::fs::copy(crate::common::paths::p11wld_module(), loader_dir.path().join("libp11wld.so")).unwrap();
        let output = run_copy(Some(loader_dir.path()));
        assert!(output.status.success(), "found on the loader's path: {}", describe(&output));

        std::fs::copy(crate::common::paths::p11wld_module(), dir.path().join("libp11wld.so")).unwrap();
        let output = run_copy(None);
        assert!(output.status.success(), "found beside the program: {}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(MASTER_LABEL), "{text}");
    }

    /// Off a terminal, positions without expected serials are rejected,
    /// as are missing PINs and a URI carrying a PIN; each failure gives one
    /// line on stderr and writes nothing.
    #[timeout(120)]
    fn unsafe_invocations_rejected() {
        let lab = lab(Reach::P11Kit, &[Start::Stale], |_| {});
        let stale = lab.stale_serials[&1].clone();
        let none = Pins { so: None, user: None };
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let pin_uri = format!("pkcs11:serial={}?pin-value=123456", lab.master_serial);
        let cases: [(&[&str], &Pins, &str); 4] = [
            (&["replicate", "-s", "0", "-d", "2"], &BOTH_PINS, "--expect-serial"),
            (&["replicate", "-s", &master_uri, "-d", "all"], &none, "P11WLD_SO_PIN"),
            (&["verify"], &none, "P11WLD_USER_PIN"),
            (&["replicate", "-s", &pin_uri, "-d", "all"], &BOTH_PINS, "query attributes"),
        ];
        for (args, pins, reason) in cases {
            let output = run(&lab.config, args, pins);
            assert!(!output.status.success(), "{args:?}: {}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{args:?}: one line on stderr: {stderr}");
            assert!(lines[0].contains(reason), "{args:?}: {stderr}");
        }
        let objects = snapshot(lab.hsms[1].softhsm(), &stale);
        assert_eq!(objects.len(), 1, "only the stale object: {:?}", objects.keys());
    }

    /// Every invalid argument exits with 2 and one line on stderr, and
    /// writes nothing. The cases: options without the ones they need, the
    /// master among the destinations, a destination named twice (also by a
    /// position and a URI), and a WLD slot that does not exist.
    #[timeout(120)]
    fn invalid_arguments_exit_2() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial).to_string();
        let stale_serial = lab.stale_serials[&1].clone();
        let stale = position(&slots, "hsm2", &stale_serial).to_string();
        let expect = format!("{master}={},{stale}={stale_serial}", lab.master_serial);
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let stale_uri = format!("pkcs11:serial={stale_serial}");
        let stale_twice = format!("{stale},{stale}");
        let uris_twice = format!("{stale_uri},{stale_uri}");
        let cases: [&[&str]; 10] = [
            &["verify", "-d", &stale, "--expect-serial", "1=nonsense"],
            &["verify", "--expect-serial", "1=nonsense"],
            &["verify", "-d", "all"],
            &["verify", "--wld-slot", "0", "--expect-serial", "0=nonsense"],
            &["verify", "--wld-slot", "99"],
            &["replicate", "-s", &master, "-d", &master, "--expect-serial", &expect],
            &["replicate", "-s", &master, "-d", &stale_twice, "--expect-serial", &expect],
            &["replicate", "-s", &master_uri, "-d", &uris_twice],
            &["replicate", "-s", &master_uri, "-d", &master, "--expect-serial", &expect],
            &["verify", "-s", &master_uri, "-d", &master, "--expect-serial", &expect],
        ];
        for args in cases {
            let output = run(&lab.config, args, &BOTH_PINS);
            assert_eq!(output.status.code(), Some(2), "{args:?}: {}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
            assert_eq!(reasons.len(), 1, "{args:?}: one reason: {stderr}");
        }
        let objects = snapshot(lab.hsms[1].softhsm(), &stale_serial);
        assert_eq!(objects.len(), 1, "only the stale object: {:?}", objects.keys());
    }

    /// A dry run rejected because private keys cannot travel through
    /// p11-kit still counts what it planned, and its text names the
    /// destination by position and serial, not by report index.
    #[timeout(120)]
    fn rejected_dry_run_counts_plan() {
        let lab = lab(Reach::P11Kit, &[Start::Stale], |_| {});
        let slots = list(&lab.config);
        let stale_serial = lab.stale_serials[&1].clone();
        let stale = position(&slots, "hsm2", &stale_serial);
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let stale_uri = format!("pkcs11:serial={stale_serial}");
        let args = ["replicate", "--dry-run", "-s", master_uri.as_str(), "-d", stale_uri.as_str()];

        let mut json_args = vec!["--json"];
        json_args.extend(args);
        let output = run(&lab.config, &json_args, &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["status"], "CKR_MECHANISM_INVALID", "{report:#}");
        let actions = report["actions"].as_array().unwrap();
        let creates = actions.iter().filter(|a| a["action"] == "create").count();
        let removes = actions.iter().filter(|a| a["action"] == "remove").count();
        assert_eq!(creates, 5, "every object but the two private keys: {actions:#?}");
        assert_eq!(removes, 1, "{actions:#?}");
        assert_eq!(report["tokens"][1]["created"], 5, "{report:#}");
        assert_eq!(report["tokens"][1]["removed"], 1, "{report:#}");

        let output = run(&lab.config, &args, &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        let heading = format!("destination position {stale} (hsm2 slot ");
        assert!(text.contains(&heading), "{text}");
        assert!(text.contains(&format!("serial {stale_serial}")), "{text}");
        assert!(text.contains("to be created 5, to be replaced 0, to be removed 1"), "{text}");
        assert_eq!(text.matches("  plan: create ").count(), 5, "{text}");
        assert_eq!(text.matches("  plan: remove ").count(), 1, "{text}");
        assert!(!text.contains("on token"), "{text}");
        let objects = snapshot(lab.hsms[1].softhsm(), &stale_serial);
        assert_eq!(objects.len(), 1, "only the stale object: {:?}", objects.keys());
    }

    /// A label with a carriage return, which could overwrite what a
    /// terminal shows, is printed escaped by every text output and on
    /// stderr, and exactly in JSON.
    #[timeout(120)]
    fn control_characters_escaped() {
        let evil = "EVIL\r  position 9: WLD_A, serial";
        let escaped = "EVIL\\r  position 9: WLD_A, serial";
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let evil_serial = lab.hsms[1].softhsm().init_token(evil, crate::common::SO_PIN, crate::common::USER_PIN);
        let none = Pins { so: None, user: None };

        let slots = list(&lab.config);
        assert!(slots.iter().any(|s| s["label"] == evil), "JSON keeps the label exact: {slots:#?}");

        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let evil_uri = format!("pkcs11:serial={evil_serial}");
        let cases: [(&[&str], &Pins, Option<i32>); 3] = [
            (&["list"], &none, Some(0)),
            (&["status"], &none, Some(0)),
            (&["replicate", "-s", &master_uri, "-d", &evil_uri], &BOTH_PINS, Some(1)),
        ];
        for (args, pins, code) in cases {
            let output = run(&lab.config, args, pins);
            assert_eq!(output.status.code(), code, "{args:?}: {}", describe(&output));
            assert!(!output.stdout.contains(&b'\r'), "{args:?}: a raw CR on stdout: {}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
            assert!(reasons.iter().all(|l| !l.contains('\r')), "{args:?}: a raw CR on stderr: {stderr}");
            let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), reasons.join("\n"));
            assert!(all.contains(escaped), "{args:?}: the label escaped: {}", describe(&output));
        }
    }

    /// On a terminal, the confirmation names each position's module,
    /// vendor slot id, serial and label, the label escaped so that it
    /// cannot rewrite the lines above it.
    #[timeout(120)]
    fn confirmation_shows_module_and_slot() {
        let evil = "EVIL\r  position 9: WLD_A, serial";
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let evil_serial = lab.hsms[1].softhsm().init_token(evil, crate::common::SO_PIN, crate::common::USER_PIN);
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let target = position(&slots, "hsm2", &evil_serial);
        let free = position(&slots, "hsm2", "");
        let free_slot = slots[free as usize]["vendor_slot_id"].as_u64().unwrap();

        let (code, screen) = run_on_terminal(
            &lab.config,
            &["verify", "-s", &master.to_string(), "-d", &target.to_string()],
            "n",
        );
        assert_eq!(code, Some(2), "{screen}");
        assert!(screen.contains("label EVIL\\r  position 9: WLD_A, serial"), "{screen}");
        assert!(!screen.contains("EVIL\r"), "a raw CR in the label: {screen:?}");
        assert!(screen.contains("cancelled; nothing was written"), "{screen}");

        let (code, screen) = run_on_terminal(
            &lab.config,
            &["replicate", "--dry-run", "-s", &master.to_string(), "-d", &free.to_string()],
            "y",
        );
        assert_eq!(code, Some(0), "{screen}");
        let line = format!("position {free}: module hsm2, vendor slot {free_slot:#x}, serial (none)");
        assert!(screen.contains(&line), "{screen}");
    }

    /// `verify` of several WLD slots prints one JSON document with a
    /// report per slot, and one line for the slot that differs.
    #[timeout(120)]
    fn verify_json_is_one_document() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let other = lab.hsms[1].softhsm().init_token("WLD_Other", crate::common::SO_PIN, crate::common::USER_PIN);

        let output = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let result = json(&output);
        assert_eq!(result["command"], "verify");
        assert_eq!(result["status"], "CKR_FUNCTION_FAILED", "{result:#}");
        let reports = result["reports"].as_array().expect("one report per WLD slot");
        assert_eq!(reports.len(), 2, "{result:#}");
        let differing = reports
            .iter()
            .find(|r| r["tokens"][0]["label"] == MASTER_LABEL)
            .expect("a report of the master's WLD slot");
        let single = reports
            .iter()
            .find(|r| r["tokens"][0]["serial"] == other.as_str())
            .expect("a report of WLD_Other's slot");
        assert_ne!(differing["wld_slot"], single["wld_slot"]);
        assert_eq!(differing["differences"], 8, "7 missing, 1 extra: {differing:#}");
        assert_eq!(single["differences"], 0, "{single:#}");
        assert_eq!(result["differences"], 8);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(reasons[0].contains("differ in 8 places"), "{stderr}");

        let output = run(&lab.config, &["verify"], &BOTH_PINS);
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text.matches("WLD slot ").count(), 2, "a heading per WLD slot: {text}");
    }

    /// A dry run by URIs shows the plan and writes nothing.
    #[timeout(120)]
    fn dry_run_writes_nothing() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let stale = lab.stale_serials[&1].clone();
        let master_uri = format!("pkcs11:token={MASTER_LABEL};serial={}", lab.master_serial);
        let stale_uri = format!("pkcs11:serial={stale}");
        let args = ["replicate", "--dry-run", "-s", master_uri.as_str(), "-d", stale_uri.as_str()];
        let mut json_args = vec!["--json"];
        json_args.extend(args);
        let output = run(&lab.config, &json_args, &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["dry_run"], true);
        assert_eq!(report["tokens"][1]["created"], 7);
        assert_eq!(report["tokens"][1]["removed"], 1);
        assert_eq!(report["tokens"][1]["wrapped"], 3);
        let actions = report["actions"].as_array().unwrap();
        assert_eq!(actions.len(), 8);
        assert!(actions.iter().all(|a| a["done"] == false), "{actions:#?}");
        let removal = actions.iter().find(|a| a["action"] == "remove").unwrap();
        assert_eq!(removal["object"]["label"], STALE_LABEL);

        let output = run(&lab.config, &args, &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("to be created 7"), "{text}");
        assert!(text.contains("plan: remove data object label \"stale-object\""), "{text}");
        let objects = snapshot(lab.hsms[1].softhsm(), &stale);
        assert_eq!(objects.len(), 1, "only the stale object: {:?}", objects.keys());
    }

    /// A dry run to an uninitialized token states that the run would
    /// initialize it and set its user PIN, in the text and in the JSON,
    /// and leaves it uninitialized.
    #[timeout(120)]
    fn dry_run_shows_token_initialization() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial);
        let free = position(&slots, "hsm2", "");
        let output = replicate(&lab, &slots, master, &[free], &["--dry-run"], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let report = json(&output);
        assert_eq!(report["dry_run"], true);
        assert_eq!(report["tokens"][1]["initialized_by_run"], true, "{report:#}");
        assert_eq!(report["tokens"][1]["user_pin_set"], true, "{report:#}");

        let expect = expect_serials(&slots, &[master, free]);
        let (master, free) = (master.to_string(), free.to_string());
        let args = ["replicate", "--dry-run", "-s", &master, "-d", &free, "--expect-serial", &expect];
        let output = run(&lab.config, &args, &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("  to be initialized with the master's label"), "{text}");
        assert!(!text.contains("initialized by this run"), "{text}");
        assert!(tokens(&lab, 1).iter().all(|t| !t.initialized), "{:?}", tokens(&lab, 1));
    }

    /// A problem's message longer than the 256-byte field of the report
    /// reaches the JSON, the text and the line on stderr whole, so that
    /// its end, the remedy, is there.
    #[timeout(120)]
    fn long_problem_message_whole() {
        let lab = lab(Reach::P11Kit, &[Start::Stale], |_| {});
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let stale_uri = format!("pkcs11:serial={}", lab.stale_serials[&1]);
        let args = ["replicate", "--dry-run", "-s", master_uri.as_str(), "-d", stale_uri.as_str()];
        let remedy = "(p11wld replicate --skip-unextractable)";

        let mut json_args = vec!["--json"];
        json_args.extend(args);
        let output = run(&lab.config, &json_args, &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let report = json(&output);
        let blocked: Vec<&serde_json::Value> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "cannot-travel")
            .collect();
        assert_eq!(blocked.len(), 2, "the RSA and EC private keys: {report:#}");
        for problem in blocked {
            let message = problem["message"].as_str().unwrap();
            assert!(message.len() > 255, "longer than the field: {message}");
            assert!(message.ends_with(remedy), "{message}");
        }

        let output = run(&lab.config, &args, &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("cannot-travel: ")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines.iter().all(|l| l.ends_with(remedy)), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(reasons[0].ends_with(remedy), "{stderr}");
    }

    /// Text output uses the singular for a count of one: "1 difference",
    /// "differ in 1 place".
    #[timeout(120)]
    fn one_difference_singular() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let stale = lab.stale_serials[&1].clone();
        let master_uri = format!("pkcs11:serial={}", lab.master_serial);
        let stale_uri = format!("pkcs11:serial={stale}");
        let output = run(&lab.config, &["replicate", "-s", &master_uri, "-d", &stale_uri], &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        lab.hsms[1].softhsm().with_user_session(&stale, crate::common::USER_PIN, |session| {
            create_data_object(session, "one-extra", b"extra");
        });

        let output = run(&lab.config, &["verify", "-s", &master_uri, "-d", &stale_uri], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains(", 1 difference\n"), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("the tokens differ in 1 place\n"), "{stderr}");
    }

    /// A token that a stopped replication initialized without a user PIN
    /// fails `verify` with the remedy. The text shows the objects of the
    /// reference and marks the tokens as not compared, not as equal.
    #[timeout(120)]
    fn verify_token_without_user_pin() {
        let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
        lab.hsms[1].softhsm().with_module(|pkcs11| {
            let free = pkcs11
                .get_slots_with_token()
                .unwrap()
                .into_iter()
                .find(|slot| !pkcs11.get_token_info(*slot).unwrap().token_initialized())
                .expect("SoftHSM2 has a free slot");
            let so_pin = cryptoki::types::AuthPin::from(crate::common::SO_PIN);
            pkcs11.init_token(free, &so_pin, MASTER_LABEL).unwrap();
        });

        let output = run(&lab.config, &["verify"], &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("  7 objects\n"), "the reference was read: {text}");
        assert!(text.contains("CKR_USER_PIN_NOT_INITIALIZED\n  not compared\n"), "{text}");
        assert!(!text.contains(" equal, "), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11wld:")).collect();
        assert_eq!(reasons.len(), 1, "{stderr}");
        assert!(reasons[0].ends_with("replicate to it, which sets the user PIN"), "{stderr}");

        let output = run(&lab.config, &["--json", "verify"], &BOTH_PINS);
        let result = json(&output);
        assert_eq!(result["reports"][0]["tokens"][0]["objects"], 7, "{result:#}");
        assert_eq!(result["reports"][0]["master_objects"], 7, "{result:#}");
    }

    /// A run rejected before it read the master shows no object count for
    /// it, and its JSON says that the objects were not read. A run that
    /// read them shows their number.
    #[timeout(120)]
    fn rejected_run_shows_no_count() {
        let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
        let slots = list(&lab.config);
        let master = position(&slots, "hsm1", &lab.master_serial).to_string();
        let stale = position(&slots, "hsm2", &lab.stale_serials[&1]).to_string();
        let wrong = format!("{master}={},{stale}=0123456789abcdef", lab.master_serial);
        let args = ["replicate", "--dry-run", "-s", &master, "-d", &stale, "--expect-serial", &wrong];
        let output = run(&lab.config, &args, &BOTH_PINS);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.starts_with("master position "), "{text}");
        assert!(!text.contains("0 objects"), "{text}");
        let mut json_args = vec!["--json"];
        json_args.extend(args);
        let report = json(&run(&lab.config, &json_args, &BOTH_PINS));
        assert_eq!(report["tokens"][0]["objects_read"], false, "{report:#}");

        let right = expect_serials(&slots, &[master.parse().unwrap(), stale.parse().unwrap()]);
        let args = ["replicate", "--dry-run", "-s", &master, "-d", &stale, "--expect-serial", &right];
        let output = run(&lab.config, &args, &BOTH_PINS);
        assert!(output.status.success(), "{}", describe(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("  7 objects\n"), "{text}");
        let mut json_args = vec!["--json"];
        json_args.extend(args);
        let report = json(&run(&lab.config, &json_args, &BOTH_PINS));
        assert_eq!(report["tokens"][0]["objects_read"], true, "{report:#}");
        assert_eq!(report["tokens"][1]["objects_read"], true, "{report:#}");
        assert_eq!(report["tokens"][1]["objects"], 1, "the stale object: {report:#}");
    }

    /// The help of `replicate` and `verify` names the variables that carry
    /// the PINs, which no option takes.
    #[timeout(60)]
    fn help_names_pin_variables() {
        let cases: [(&str, &[&str]); 2] = [
            ("replicate", &["P11WLD_SO_PIN", "P11WLD_USER_PIN"]),
            ("verify", &["P11WLD_USER_PIN"]),
        ];
        for (command, variables) in cases {
            let output = std::process::Command::new(crate::common::paths::p11wld_cli())
                .args([command, "--help"])
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", describe(&output));
            let help = String::from_utf8_lossy(&output.stdout);
            for variable in variables {
                assert!(help.contains(variable), "{command} --help names {variable}: {help}");
            }
        }
    }

    /// Ctrl-C at the PIN prompt, which turns the terminal's echo off,
    /// ends the program with the terminal's echo on again.
    #[timeout(60)]
    fn pin_prompt_interrupt_restores_echo() {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut controller, mut terminal) = (-1, -1);
        // SAFETY: openpty fills in two descriptors; the name and settings
        // are not requested.
        let opened = unsafe {
            libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two open descriptors that nothing else owns.
        let (controller, terminal) = unsafe { (OwnedFd::from_raw_fd(controller), OwnedFd::from_raw_fd(terminal)) };
        let echo = |fd: &OwnedFd| {
            let mut settings = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: `fd` is open; tcgetattr fills in `settings` on success.
            assert_eq!(unsafe { libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(fd), settings.as_mut_ptr()) }, 0);
            // SAFETY: tcgetattr returned 0.
            unsafe { settings.assume_init() }.c_lflag & libc::ECHO != 0
        };
        assert!(echo(&terminal), "a new terminal echoes");

        let mut command = std::process::Command::new(crate::common::paths::p11wld_cli());
        command
            .arg("verify")
            .env_remove("P11WLD_USER_PIN")
            .stdin(terminal.try_clone().unwrap())
            .stdout(terminal.try_clone().unwrap())
            .stderr(terminal.try_clone().unwrap());
        // SAFETY: setsid and ioctl are async-signal-safe; they make the
        // terminal the controlling one of the child, which opens /dev/tty.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let mut shown = Vec::new();
        let mut reader = std::fs::File::from(controller.try_clone().unwrap());
        while !String::from_utf8_lossy(&shown).contains("user PIN: ") {
            let mut buffer = [0u8; 256];
            let read = std::io::Read::read(&mut reader, &mut buffer).unwrap();
            assert!(read > 0, "the prompt appears: {:?}", String::from_utf8_lossy(&shown));
            shown.extend_from_slice(&buffer[..read]);
        }
        // rpassword writes the prompt before it turns echo off.
        let shown_at = std::time::Instant::now();
        while echo(&terminal) && shown_at.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!echo(&terminal), "the prompt turns echo off");

        std::io::Write::write_all(&mut std::fs::File::from(controller), b"\x03").unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGINT), "{status:?}");
        assert!(echo(&terminal), "echo is on again after Ctrl-C");
    }

    /// Without a command, the one line on stderr names the commands.
    #[timeout(60)]
    fn missing_command_names_commands() {
        let output = std::process::Command::new(crate::common::paths::p11wld_cli())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("list, status, replicate, verify"), "{stderr}");
    }

    /// A module that cannot be loaded is reported with the dynamic
    /// loader's reason: a missing file, a file that is no shared object.
    #[timeout(60)]
    fn unloadable_module_gives_loader_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("libp11wld.so");
        let not_elf = dir.path().join("not-elf.so");
        std::fs::write(&not_elf, "This text is no shared object; it is longer than an ELF header.\n").unwrap();
        for (module, reason) in [(&missing, "cannot open shared object file"), (&not_elf, "invalid ELF header")] {
            let output = std::process::Command::new(crate::common::paths::p11wld_cli())
                .arg("--module")
                .arg(module)
                .arg("list")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(reason), "{}: {stderr}", module.display());
        }
    }
}

/// Runs `p11wld` on a terminal, as `script` (util-linux) provides one,
/// with the PINs in the environment, and answers its prompt with
/// `answer`. Returns the exit status and what the terminal showed.
fn run_on_terminal(
    config: &common::ConfigFile,
    args: &[&str],
    answer: &str,
) -> (Option<i32>, String) {
    use std::io::Write;
    let mut words = vec![
        common::paths::p11wld_cli(),
        "--module".into(),
        common::paths::p11wld_module(),
    ];
    words.extend(args.iter().map(Into::into));
    let line: Vec<String> = words.iter().map(|w| format!("'{}'", w.display())).collect();
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &line.join(" "), "/dev/null"])
        .env("P11WLD_CONFIG", config.path())
        .env("P11WLD_SO_PIN", common::SO_PIN)
        .env("P11WLD_USER_PIN", common::USER_PIN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Calls the extension through libp11wld.so's C ABI from the test process.
mod extension {
    use super::replication::*;
    use crate::common::paths;
    use crate::isolated;
    use cryptoki_sys::*;
    use p11wld::ffi::ext::sys;
    use std::ffi::c_void;
    use std::ptr;

    type GetList = unsafe extern "C" fn(*mut *mut sys::P11WLD_FUNCTION_LIST) -> CK_RV;
    type GetInterface = unsafe extern "C" fn(
        *mut CK_UTF8CHAR,
        *mut CK_VERSION,
        *mut *mut CK_INTERFACE,
        CK_FLAGS,
    ) -> CK_RV;
    type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

    /// Records the progress calls: (phase, done, total).
    unsafe extern "C" fn record(context: *mut c_void, progress: *const sys::P11WLD_PROGRESS) {
        // SAFETY: the test passes a Vec as the context and the module a
        // valid progress structure.
        let (calls, progress) =
            unsafe { (&mut *(context as *mut Vec<(u64, u64, u64)>), &*progress) };
        calls.push((progress.phase, progress.done, progress.total));
    }

    fn serial_field(serial: &str) -> [std::ffi::c_char; 17] {
        let mut field = [0; 17];
        for (dst, src) in field.iter_mut().zip(serial.bytes()) {
            *dst = src as std::ffi::c_char;
        }
        field
    }

    fn module_field(name: &str) -> [std::ffi::c_char; 64] {
        let mut field = [0; 64];
        for (dst, src) in field.iter_mut().zip(name.bytes()) {
            *dst = src as std::ffi::c_char;
        }
        field
    }

    /// Reads a NUL-terminated text field of the extension.
    fn field_text(field: &[std::ffi::c_char]) -> String {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Loads libp11wld.so for the rest of the test process and returns its
    /// extension and standard function lists, not yet initialized.
    fn load_lists() -> (
        &'static sys::P11WLD_FUNCTION_LIST,
        &'static CK_FUNCTION_LIST,
    ) {
        // SAFETY: loading the module under test; it stays loaded until the
        // test process exits.
        let library: &'static libloading::Library = Box::leak(Box::new(
            unsafe { libloading::Library::new(paths::p11wld_module()) }.unwrap(),
        ));
        // SAFETY: the symbols have these signatures (include/p11wld.h and
        // PKCS#11 2.40), and the lists they return are static.
        unsafe {
            let get_list = library.get::<GetList>(b"P11WLD_GetFunctionList\0").unwrap();
            let get_functions = library
                .get::<GetFunctionList>(b"C_GetFunctionList\0")
                .unwrap();
            let mut list = ptr::null_mut();
            let mut functions = ptr::null_mut();
            assert_eq!(get_list(&mut list), CKR_OK);
            assert_eq!(get_functions(&mut functions), CKR_OK);
            (&*list, &*functions)
        }
    }

    /// Reads a list of the extension by the two-call convention.
    fn fetch<T: Default + Clone>(call: impl Fn(*mut T, *mut sys::p11wld_ulong) -> CK_RV) -> Vec<T> {
        let mut count = 0;
        assert_eq!(call(ptr::null_mut(), &mut count), CKR_OK);
        let mut list = vec![T::default(); count as usize];
        assert_eq!(call(list.as_mut_ptr(), &mut count), CKR_OK);
        list.truncate(count as usize);
        list
    }

    isolated! {
        /// The extension is reachable both ways, checks its arguments,
        /// reports progress, and hands out reports by the two-call
        /// convention.
        #[timeout(120)]
        fn extension_through_c_abi() {
            let lab = lab(Reach::Direct, &[Start::Stale], |_| {});
            let _config = lab.config.set_env();
            // SAFETY: loading the module under test.
            let library = unsafe { libloading::Library::new(paths::p11wld_module()) }.unwrap();
            // SAFETY: the symbols have these signatures (include/p11wld.h
            // and PKCS#11 3.0).
            let (get_list, get_interface, get_functions) = unsafe {
                (
                    library.get::<GetList>(b"P11WLD_GetFunctionList\0").unwrap(),
                    library.get::<GetInterface>(b"C_GetInterface\0").unwrap(),
                    library.get::<GetFunctionList>(b"C_GetFunctionList\0").unwrap(),
                )
            };
            let mut list = ptr::null_mut();
            let mut interface = ptr::null_mut();
            let mut functions = ptr::null_mut();
            // SAFETY: valid out pointers; the lists are static.
            let (ext, standard) = unsafe {
                assert_eq!(get_list(&mut list), CKR_OK);
                assert_eq!(get_interface(c"p11wld".as_ptr() as *mut _, ptr::null_mut(), &mut interface, 0), CKR_OK);
                assert_eq!((*interface).pFunctionList as *const _, list as *const c_void);
                assert_eq!(get_functions(&mut functions), CKR_OK);
                (&*list, &*functions)
            };
            assert_eq!(
                (u32::from(ext.version.major), u32::from(ext.version.minor)),
                (sys::P11WLD_VERSION_MAJOR, sys::P11WLD_VERSION_MINOR)
            );

            let mut handle: sys::P11WLD_REPORT_HANDLE = 7;
            let args = sys::P11WLD_REPLICATE_ARGS::default();
            // SAFETY: calls with valid or deliberately NULL pointers.
            unsafe {
                assert_eq!(ext.Replicate.unwrap()(&args, &mut handle), CKR_CRYPTOKI_NOT_INITIALIZED);
                assert_eq!(standard.C_Initialize.unwrap()(ptr::null_mut()), CKR_OK);
                assert_eq!(ext.Replicate.unwrap()(ptr::null(), &mut handle), CKR_ARGUMENTS_BAD);
                assert_eq!(handle, 0, "no report without arguments");
                assert_eq!(ext.Replicate.unwrap()(&args, ptr::null_mut()), CKR_ARGUMENTS_BAD);
                let bad_flags = sys::P11WLD_REPLICATE_ARGS { flags: 0x100, ..Default::default() };
                assert_eq!(ext.Replicate.unwrap()(&bad_flags, &mut handle), CKR_ARGUMENTS_BAD);
                let unterminated = sys::P11WLD_REPLICATE_ARGS {
                    master: sys::P11WLD_SLOT_REF { kind: sys::P11WLD_REF_SERIAL, serial: [0x41; 17], ..Default::default() },
                    ..Default::default()
                };
                assert_eq!(ext.Replicate.unwrap()(&unterminated, &mut handle), CKR_ARGUMENTS_BAD);
            }

            let destination = sys::P11WLD_SLOT_REF {
                kind: sys::P11WLD_REF_SERIAL,
                serial: serial_field(&lab.stale_serials[&1]),
                ..Default::default()
            };
            let mut calls: Vec<(u64, u64, u64)> = Vec::new();
            let args = sys::P11WLD_REPLICATE_ARGS {
                master: sys::P11WLD_SLOT_REF {
                    kind: sys::P11WLD_REF_SERIAL,
                    serial: serial_field(&lab.master_serial),
                    ..Default::default()
                },
                destinations: &destination,
                destination_count: 1,
                flags: 0,
                so_pin: crate::common::SO_PIN.as_ptr(),
                so_pin_len: crate::common::SO_PIN.len() as u64,
                user_pin: crate::common::USER_PIN.as_ptr(),
                user_pin_len: crate::common::USER_PIN.len() as u64,
                progress: Some(record),
                progress_context: &mut calls as *mut Vec<(u64, u64, u64)> as *mut c_void,
            };
            // SAFETY: valid arguments that live across the calls.
            unsafe {
                assert_eq!(ext.Replicate.unwrap()(&args, &mut handle), CKR_OK);
                assert_ne!(handle, 0);
                let mut info = sys::P11WLD_REPORT_INFO::default();
                assert_eq!(ext.GetReportInfo.unwrap()(handle, &mut info), CKR_OK);
                assert_eq!(info.kind, sys::P11WLD_REPORT_REPLICATE);
                assert_eq!(info.token_count, 2);
                assert_eq!(info.action_count, 8);

                let mut count = 0;
                assert_eq!(ext.GetReportActions.unwrap()(handle, ptr::null_mut(), &mut count), CKR_OK);
                assert_eq!(count, 8);
                let mut actions = vec![sys::P11WLD_ACTION::default(); 8];
                let mut short = 3;
                assert_eq!(ext.GetReportActions.unwrap()(handle, actions.as_mut_ptr(), &mut short), CKR_BUFFER_TOO_SMALL);
                assert_eq!(short, 8);
                assert_eq!(ext.GetReportActions.unwrap()(handle, actions.as_mut_ptr(), &mut count), CKR_OK);
                assert!(actions.iter().all(|a| a.done == 1));
                let removes = actions.iter().filter(|a| a.kind == sys::P11WLD_ACTION_REMOVE).count();
                assert_eq!(removes, 1);

                let mut tokens = vec![sys::P11WLD_TOKEN_REPORT::default(); 2];
                let mut count = 2;
                assert_eq!(ext.GetReportTokens.unwrap()(handle, tokens.as_mut_ptr(), &mut count), CKR_OK);
                assert_eq!(tokens[1].created, 7);
                assert_eq!(tokens[1].wrapped, 3);
                assert_eq!(tokens[1].removed, 1);
                assert_ne!(tokens[1].flags & sys::P11WLD_TOKEN_COMPLETE, 0);

                assert_eq!(ext.FreeReport.unwrap()(handle), CKR_OK);
                assert_eq!(ext.FreeReport.unwrap()(handle), CKR_ARGUMENTS_BAD);
                let mut info = sys::P11WLD_REPORT_INFO::default();
                assert_eq!(ext.GetReportInfo.unwrap()(handle, &mut info), CKR_ARGUMENTS_BAD);
                assert_eq!(standard.C_Finalize.unwrap()(ptr::null_mut()), CKR_OK);
            }
            let copies: Vec<&(u64, u64, u64)> = calls.iter().filter(|c| c.0 == sys::P11WLD_PHASE_COPY).collect();
            assert_eq!(copies.len(), 7, "{calls:?}");
            assert!(calls.iter().all(|c| c.1 <= c.2), "done never exceeds total: {calls:?}");
            assert_eq!(calls.last().map(|c| (c.1, c.2)), Some((8, 8)), "{calls:?}");
        }

        /// A position reference that expects an uninitialized token (empty
        /// serial) must name its module, and a module or vendor slot id
        /// that no longer matches rejects the run before anything is
        /// written.
        #[timeout(120)]
        fn extension_pins_blank_serial() {
            let lab = lab(Reach::Direct, &[Start::Uninitialized], |_| {});
            let _config = lab.config.set_env();
            let (ext, standard) = load_lists();
            // SAFETY: C_Initialize takes NULL.
            assert_eq!(unsafe { standard.C_Initialize.unwrap()(ptr::null_mut()) }, CKR_OK);
            // SAFETY: the two-call convention with valid buffers.
            let slots = fetch(|list, count| unsafe { ext.ListPhysicalSlots.unwrap()(list, count) });
            let free = slots
                .iter()
                .find(|s| field_text(&s.module_name) == "hsm2" && s.flags & sys::P11WLD_SLOT_TOKEN_INITIALIZED == 0)
                .expect("hsm2 has a free slot");

            let master = sys::P11WLD_SLOT_REF {
                kind: sys::P11WLD_REF_SERIAL,
                serial: serial_field(&lab.master_serial),
                ..Default::default()
            };
            let blank = |module: &str, vendor_slot_id: u64| sys::P11WLD_SLOT_REF {
                kind: sys::P11WLD_REF_POSITION,
                position: free.position,
                module_name: module_field(module),
                vendor_slot_id,
                ..Default::default()
            };
            let replicate = |destination: &sys::P11WLD_SLOT_REF| {
                let args = sys::P11WLD_REPLICATE_ARGS {
                    master,
                    destinations: destination,
                    destination_count: 1,
                    flags: sys::P11WLD_REPLICATE_DRY_RUN,
                    so_pin: crate::common::SO_PIN.as_ptr(),
                    so_pin_len: crate::common::SO_PIN.len() as u64,
                    user_pin: crate::common::USER_PIN.as_ptr(),
                    user_pin_len: crate::common::USER_PIN.len() as u64,
                    ..Default::default()
                };
                let mut handle = 0;
                // SAFETY: valid arguments that live across the call.
                let rv = unsafe { ext.Replicate.unwrap()(&args, &mut handle) };
                let messages: Vec<String> = if handle == 0 {
                    Vec::new()
                } else {
                    // SAFETY: a report handle the call returned.
                    let problems = fetch(|list, count| unsafe {
                        ext.GetReportProblems.unwrap()(handle, list, count)
                    });
                    // SAFETY: as above.
                    assert_eq!(unsafe { ext.FreeReport.unwrap()(handle) }, CKR_OK);
                    problems.iter().map(|p| field_text(&p.message)).collect()
                };
                (rv, handle, messages)
            };

            let (rv, handle, _) = replicate(&blank("", sys::P11WLD_NONE));
            assert_eq!(rv, CKR_ARGUMENTS_BAD, "an empty serial without a module");
            assert_eq!(handle, 0, "no report for unreadable arguments");

            let (rv, _, messages) = replicate(&blank("hsm1", sys::P11WLD_NONE));
            assert_eq!(rv, CKR_SLOT_ID_INVALID, "another module: {messages:?}");
            assert!(messages.iter().any(|m| m.contains("belongs to module hsm2")), "{messages:?}");

            let (rv, _, messages) = replicate(&blank("hsm2", free.vendor_slot_id + 1));
            assert_eq!(rv, CKR_SLOT_ID_INVALID, "another vendor slot: {messages:?}");
            assert!(messages.iter().any(|m| m.contains("vendor slot")), "{messages:?}");

            let (rv, _, messages) = replicate(&blank("hsm2", free.vendor_slot_id));
            assert_eq!(rv, CKR_OK, "module and vendor slot match: {messages:?}");

            // SAFETY: the two-call convention with valid buffers.
            let after = fetch(|list, count| unsafe { ext.ListPhysicalSlots.unwrap()(list, count) });
            let initialized = after.iter().filter(|s| s.flags & sys::P11WLD_SLOT_TOKEN_INITIALIZED != 0).count();
            assert_eq!(initialized, 1, "only the master is initialized");
            // SAFETY: C_Finalize takes NULL.
            assert_eq!(unsafe { standard.C_Finalize.unwrap()(ptr::null_mut()) }, CKR_OK);
        }
    }
}
