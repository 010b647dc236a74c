//! Replays every input kept under `fuzz/regressions/TARGET/` (seeds, and each crash a fuzzer
//! ever found) through the same entry points the fuzzers call.

use std::path::Path;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

#[test]
fn every_kept_fuzz_input_runs_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let targets: [(&str, Target); 3] = [
        ("config", coalesce_proxy::tools::fuzzing::config),
        ("key", coalesce_proxy::tools::fuzzing::key),
        ("sharing", coalesce_proxy::tools::fuzzing::sharing),
    ];
    let mut replayed = 0;
    for (target, run) in targets {
        let dir = root.join(target);
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read");
            run(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= 3, "no inputs found under {}", root.display());
}
