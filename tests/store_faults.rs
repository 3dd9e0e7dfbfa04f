//! The store under storage faults: a full disk must give a clear error and
//! leave the store consistent (earlier snapshots intact and restorable).

mod common;

use common::*;

#[test]
fn a_full_disk_fails_clearly_and_keeps_the_store_consistent() {
    require_root();
    let fs = SmallFs::mount("12m");
    let work = tempfile::tempdir().unwrap();
    let hs = Homesync::new(fs.path().join("store"));
    hs.init();

    // A first backup that fits.
    let small = work.path().join("small");
    std::fs::create_dir(&small).unwrap();
    write_file(&small.join("a"), &random_bytes(1, 2 << 20));
    let first = hs.backup(&small, &[]);
    first.expect_ok();
    let first_id = first.snapshot_id();

    // A second one that cannot fit: 30 MiB of incompressible data.
    let big = work.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..6 {
        write_file(&big.join(format!("f{i}")), &random_bytes(10 + i, 5 << 20));
    }
    let full = hs.run(args!["backup", big]);
    assert_eq!(full.code, 1, "a full disk is an error\n{}", full.describe());
    let text = format!("{}{}", full.stdout, full.stderr);
    assert!(
        text.contains("No space left on device"),
        "the error says why\n{}",
        full.describe()
    );

    // No temporary files left behind, no snapshot recorded for the failure.
    let leftovers: Vec<_> = files_under(&fs.path().join("store"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let snaps = hs.run(args!["snapshots"]);
    snaps.expect_ok();
    assert_eq!(snaps.messages("snapshot").len(), 1, "{}", snaps.describe());

    // The earlier snapshot still restores byte for byte.
    let target = work.path().join("restored");
    hs.run(args!["restore", first_id, "--target", target])
        .expect_ok();
    assert_eq!(
        std::fs::read(target.join("a")).unwrap(),
        std::fs::read(small.join("a")).unwrap()
    );
}
